"""The header of a GGUF file (metadata and tensor table) and memory-mapped views of its tensor data.

Why not `gguf.GGUFReader`: it builds a numpy view for every part of every metadata field, which is
~1 M small arrays for a 49k-token vocabulary and takes 2.6 s on our 2-core machines before a single
weight is read. Here the header is walked once with `struct` (~0.1 s) and the data section stays a
memory map, so only the pages a caller touches are read. The type codes and block sizes still come
from the `gguf` package, and dequantization of exotic types is still delegated to it.
"""
from __future__ import annotations

import logging
import mmap
import struct
from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

logger = logging.getLogger(__name__)

_MAGIC = b"GGUF"
_VERSIONS = (2, 3)
_DEFAULT_ALIGNMENT = 32
# GGUF metadata value types -> struct format, for the fixed-width ones (8 = string, 9 = array).
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                   10: "<Q", 11: "<q", 12: "<d"}
_NUMPY_DTYPES = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
                 6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
_STRING, _ARRAY = 8, 9


@dataclass(slots=True)
class GGUFTensorInfo:
    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]       # torch order: (out_features, in_features) for a linear weight
    offset: int                  # absolute byte offset of the data in the file
    nbytes: int

    @property
    def row_bytes(self) -> int:
        block, type_size = GGML_QUANT_SIZES[self.qtype]
        return self.shape[-1] // block * type_size


class GGUFFile:
    """Parsed header plus lazy access to tensor bytes. Keep it alive while its views are in use."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            # ACCESS_COPY gives writable (copy-on-write) pages, so torch.from_numpy does not warn;
            # nothing is ever written back to the file.
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        if self._map[:4] != _MAGIC:
            raise ValueError(f"{path} is not a GGUF file (it does not start with the bytes 'GGUF')")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", self._map, 4)
        if version not in _VERSIONS:
            hint = " (it looks big-endian, which is not supported)" if version > 0xFFFF else ""
            raise ValueError(f"{path} is GGUF version {version}{hint}; supported versions: {_VERSIONS}")
        self.version = version
        pos = 24
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key, pos = self._read_string(pos)
            (vtype,) = struct.unpack_from("<I", self._map, pos)
            self.metadata[key], pos = self._read_value(pos + 4, vtype)
        infos = []
        for _ in range(n_tensors):
            name, pos = self._read_string(pos)
            (n_dims,) = struct.unpack_from("<I", self._map, pos)
            dims = struct.unpack_from(f"<{n_dims}Q", self._map, pos + 4)
            qtype_id, offset = struct.unpack_from("<IQ", self._map, pos + 4 + 8 * n_dims)
            pos += 4 + 8 * n_dims + 12
            infos.append((name, tuple(reversed(dims)), qtype_id, offset))
        alignment = int(self.metadata.get("general.alignment", _DEFAULT_ALIGNMENT))
        data_start = (pos + alignment - 1) // alignment * alignment
        self.tensors: dict[str, GGUFTensorInfo] = {}
        for name, shape, qtype_id, offset in infos:
            try:
                qtype = GGMLQuantizationType(qtype_id)
            except ValueError:
                raise ValueError(f"{path}: tensor {name} has ggml type id {qtype_id}, which the installed "
                                 f"gguf package does not know; upgrade gguf") from None
            block, type_size = GGML_QUANT_SIZES[qtype]
            if shape[-1] % block:
                raise ValueError(f"{path}: tensor {name} of shape {shape} is not a whole number of "
                                 f"{qtype.name} blocks of {block}")
            nbytes = prod(shape) // block * type_size
            self.tensors[name] = GGUFTensorInfo(name, qtype, shape, data_start + offset, nbytes)
        end = max((t.offset + t.nbytes for t in self.tensors.values()), default=data_start)
        if end > len(self._map):
            raise ValueError(f"{path} is truncated: its tensors need {end} bytes, the file has "
                             f"{len(self._map)}")
        logger.debug("%s: GGUF v%d, %d metadata keys, %d tensors", path, version, n_kv, n_tensors)

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as uint8 [rows, row_bytes] (rows = product of all but the last dim)."""
        info = self.tensors[name]
        flat = np.frombuffer(self._map, dtype=np.uint8, count=info.nbytes, offset=info.offset)
        return flat.reshape(-1, info.row_bytes)

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def close(self) -> None:
        self._map.close()

    def _read_string(self, pos: int) -> tuple[str, int]:
        (length,) = struct.unpack_from("<Q", self._map, pos)
        pos += 8
        # errors="replace": some vocabularies hold partial UTF-8 byte tokens
        return self._map[pos:pos + length].decode("utf-8", errors="replace"), pos + length

    def _read_value(self, pos: int, vtype: int) -> tuple[Any, int]:
        if vtype in _SCALAR_FORMATS:
            fmt = _SCALAR_FORMATS[vtype]
            return struct.unpack_from(fmt, self._map, pos)[0], pos + struct.calcsize(fmt)
        if vtype == _STRING:
            return self._read_string(pos)
        if vtype == _ARRAY:
            (item_type, count) = struct.unpack_from("<IQ", self._map, pos)
            pos += 12
            if item_type in _NUMPY_DTYPES:
                dtype = np.dtype(_NUMPY_DTYPES[item_type])
                values = np.frombuffer(self._map, dtype=dtype, count=count, offset=pos).tolist()
                return values, pos + count * dtype.itemsize
            values = []
            for _ in range(count):
                value, pos = self._read_value(pos, item_type)
                values.append(value)
            return values, pos
        raise ValueError(f"{self.path}: metadata value of unknown GGUF type {vtype} at byte {pos}")
