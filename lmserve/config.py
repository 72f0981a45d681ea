"""User-facing configuration: how the engine runs and how one request generates.

Names and defaults follow LMDeploy's `PytorchEngineConfig` and `GenerationConfig` so their users'
habits carry over. Every check names the flag and the allowed range.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace


def _check_range(flag: str, value, lo=None, hi=None, lo_open=False, hi_open=False):
    bad = (lo is not None and (value < lo or (lo_open and value == lo))) or \
          (hi is not None and (value > hi or (hi_open and value == hi)))
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else lo
        hi_s = "inf" if hi is None else hi
        raise ValueError(f"{flag} must be in {left}{lo_s}, {hi_s}{right}, got {value}")


@dataclass(slots=True)
class EngineConfig:
    """How the engine runs (LMDeploy: PytorchEngineConfig)."""
    dtype: str = "auto"                  # auto | float32 | float16 | bfloat16
    device: str = "auto"                 # auto | cpu | cuda
    tp: int = 1
    session_len: int | None = None       # max tokens of one session; None = the model's context
    max_batch_size: int = 64
    cache_max_entry_count: float = 0.8   # GPU: fraction of free memory; CPU: fraction of a capped budget
    cache_block_seq_len: int = 64
    num_blocks: int | None = None        # explicit KV block count, overrides cache_max_entry_count
    max_prefill_token_num: int = 4096    # token budget of one step; longer prompts are chunked
    enable_prefix_caching: bool = False
    quant_policy: int = 0                # 0 | 4 | 8 : KV cache int4/int8 (LMDeploy's meaning); CPU only
    # rotate each K/V row by an orthogonal (Hadamard) matrix before quantizing it: our own addition
    # beyond LMDeploy, which int4 needs to stay close to float. auto = on for int4, off for int8.
    kv_rotation: str = "auto"            # auto | on | off
    load_format: str = "auto"            # auto | hf | gguf | dummy
    eager_mode: bool = False
    # GGUF Q4_0/Q4_1/Q8_0 weights run low-bit on CPU (about 5x less memory traffic per token);
    # True dequantizes them to `dtype` instead, for float math identical to transformers' load.
    dequantize_gguf: bool = False
    # CPU low-bit matmuls of more than a decode's rows (prefill, large batches): float32 is exact;
    # bfloat16 runs ~7x the fp32 FLOP rate on CPUs with AMX-BF16, at bf16 rounding of activations;
    # bf16x3 (three bf16 products of split halves, accumulated in fp32) is accurate to ~2^-16
    cpu_gemm_dtype: str = "float32"      # float32 | bfloat16 | bf16x3
    seed: int = 0
    # tensor parallelism past one process (docs/serving.md): rendezvous as torchrun's; None reads
    # MASTER_ADDR / MASTER_PORT, else 127.0.0.1 and a free port (one node only)
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    tp_timeout: float = 300.0            # s: set-up, and the longest wait inside one step's collectives
    tp_oversubscribe: bool = False       # CPU: allow more ranks on a node than its cores

    @property
    def kv_rotated(self) -> bool:
        """Whether a quantized KV cache stores rotated rows (--kv-rotation)."""
        return self.kv_rotation == "on" or (self.kv_rotation == "auto" and self.quant_policy == 4)

    def __post_init__(self):
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ValueError(f"--dtype must be one of auto, float32, float16, bfloat16, got {self.dtype!r}")
        if self.cpu_gemm_dtype not in ("float32", "bfloat16", "bf16x3"):
            raise ValueError(f"--cpu-gemm-dtype must be float32, bfloat16 or bf16x3, got {self.cpu_gemm_dtype!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"--device must be one of auto, cpu, cuda, got {self.device!r}")
        _check_range("--tp", self.tp, 1)
        _check_range("--nnodes", self.nnodes, 1)
        _check_range("--node-rank", self.node_rank, 0, self.nnodes - 1)
        if self.tp % self.nnodes:
            raise ValueError(f"--tp must be a multiple of --nnodes (each node runs tp/nnodes ranks), "
                             f"got --tp {self.tp} --nnodes {self.nnodes}")
        if self.master_port is not None:
            _check_range("--master-port", self.master_port, 1, 65535)
        _check_range("--tp-timeout", self.tp_timeout, 0, lo_open=True)
        if self.session_len is not None:
            _check_range("--session-len", self.session_len, 1)
        _check_range("--max-batch-size", self.max_batch_size, 1)
        _check_range("--cache-max-entry-count", self.cache_max_entry_count, 0, 1, lo_open=True)
        if self.cache_block_seq_len < 1 or self.cache_block_seq_len & (self.cache_block_seq_len - 1):
            raise ValueError(f"--cache-block-seq-len must be a power of two >= 1, got {self.cache_block_seq_len}")
        if self.num_blocks is not None:
            _check_range("--num-blocks", self.num_blocks, 1)
        _check_range("--max-prefill-token-num", self.max_prefill_token_num, 16)
        if self.quant_policy not in (0, 4, 8):
            raise ValueError(f"--quant-policy must be 0, 4 or 8, got {self.quant_policy}")
        if self.kv_rotation not in ("auto", "on", "off"):
            raise ValueError(f"--kv-rotation must be one of auto, on, off, got {self.kv_rotation!r}")
        if self.load_format not in ("auto", "hf", "gguf", "dummy"):
            raise ValueError(f"--load-format must be one of auto, hf, gguf, dummy, got {self.load_format!r}")


@dataclass(slots=True)
class GenerationConfig:
    """How one request generates (LMDeploy: GenerationConfig; defaults are LMDeploy's).

    Sampling is off unless `do_sample` is set, so the defaults are greedy and reproducible.
    """
    n: int = 1
    max_new_tokens: int = 512
    do_sample: bool = False
    top_p: float = 1.0
    top_k: int = 50
    min_p: float = 0.0
    temperature: float = 0.8
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    ignore_eos: bool = False
    random_seed: int | None = None
    stop_words: list[str] | None = None
    stop_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    bad_token_ids: list[int] | None = None
    min_new_tokens: int | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    logprobs: int | None = None          # number of top logprobs per token, 0 = only the chosen one
    include_stop_str_in_output: bool = False

    def __post_init__(self):
        _check_range("n", self.n, 1, 128)
        _check_range("max_new_tokens", self.max_new_tokens, 1)
        _check_range("top_p", self.top_p, 0, 1, lo_open=True)
        _check_range("top_k", self.top_k, 0)
        _check_range("min_p", self.min_p, 0, 1)
        _check_range("temperature", self.temperature, 0, 2)
        _check_range("repetition_penalty", self.repetition_penalty, 0, lo_open=True)
        _check_range("presence_penalty", self.presence_penalty, -2, 2)
        _check_range("frequency_penalty", self.frequency_penalty, -2, 2)
        if self.min_new_tokens is not None:
            _check_range("min_new_tokens", self.min_new_tokens, 0, self.max_new_tokens)
        if self.logprobs is not None:
            _check_range("logprobs", self.logprobs, 0, 20)
        if isinstance(self.stop_words, str):
            self.stop_words = [self.stop_words]
        if self.stop_words is not None and any(not isinstance(s, str) or not s for s in self.stop_words):
            raise ValueError(f"stop_words must be non-empty strings, got {self.stop_words!r}")

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0 or self.top_k == 1

    def with_seed(self, seed: int | None) -> "GenerationConfig":
        return replace(self, random_seed=seed)


@dataclass(slots=True)
class ChatTemplateConfig:
    """Which chat template to use (LMDeploy: ChatTemplateConfig).

    `model_name` picks a built-in template (`lmserve list`); None uses the model's own jinja template.
    """
    model_name: str | None = None
    meta_instruction: str | None = None   # the system prompt
    extra: dict = field(default_factory=dict)
