"""Showing and saving benchmark results: aligned tables on screen, JSON and CSV files."""
from __future__ import annotations

import csv
import datetime
import json
import os
import platform

import torch

from lmserve import __version__


def format_table(headers: list[str], rows: list[list]) -> str:
    """A plain aligned table; floats with 2 decimals, numbers right-aligned."""
    def cell(v):
        return f"{v:.2f}" if isinstance(v, float) else str(v)
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) for i in range(len(headers))]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def format_summary(title: str, summary: dict) -> str:
    """The summary of a throughput or serving run, one metric a line, latencies in ms."""
    lines = [f" {title} ".center(60, "=")]

    def add(name, value, unit=""):
        text = f"{value:.2f}" if isinstance(value, float) else str(value)
        lines.append(f"{name + (' (' + unit + ')' if unit else ''):<44}{text:>16}")
    add("Successful requests", summary["completed"])
    if summary["failed"]:
        add("Failed requests", summary["failed"])
    add("Benchmark duration", summary["duration_s"], "s")
    add("Total input tokens", summary["total_input_tokens"])
    add("Total generated tokens", summary["total_output_tokens"])
    add("Request throughput", summary["request_throughput"], "req/s")
    if "request_goodput" in summary:
        limits = " ".join(f"{k}:{v:g}" for k, v in summary["goodput_limits_ms"].items())
        add(f"Request goodput [{limits}]", summary["request_goodput"], "req/s")
    add("Input token throughput", summary["input_throughput"], "tok/s")
    add("Output token throughput", summary["output_throughput"], "tok/s")
    add("Total token throughput", summary["total_token_throughput"], "tok/s")
    for key, label in (("ttft_ms", "Time to First Token"), ("tpot_ms", "Time per Output Token (excl. 1st)"),
                       ("itl_ms", "Inter-token Latency"), ("e2el_ms", "End-to-end Latency")):
        lines.append(f" {label} ".center(60, "-"))
        for stat, value in summary[key].items():
            if stat not in ("std", "median"):    # median is p50
                add(f"{'Mean' if stat == 'mean' else stat.upper()} {key[:-3].upper()}",
                    value, "ms")
    lines.append("=" * 60)
    return "\n".join(lines)


def _cpu_name() -> str:
    try:        # Linux names the model here; platform.processor() is often empty there
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def environment() -> dict:
    """Where a result was measured, stored with it so numbers are never separated from their machine."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else _cpu_name()
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "lmserve": __version__, "torch": torch.__version__, "device": device,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform()}


def engine_flags(args) -> dict:
    """The engine flags of a run, stored with its result."""
    names = ("max_batch_size", "cache_max_entry_count", "num_blocks", "max_prefill_token_num",
             "enable_prefix_caching", "dtype", "device", "load_format", "session_len", "quant_policy",
             "kv_cache_dtype", "kv_rotation")
    return {k: getattr(args, k, None) for k in names}


def write_json(path: str, result: dict) -> None:
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)


def write_csv(path: str, rows: list[dict]) -> None:
    """One line per row dict; nested dicts flattened as `outer_inner` columns."""
    flat = []
    for row in rows:
        out = {}
        for key, value in row.items():
            if isinstance(value, dict):
                out.update({f"{key}_{k}": v for k, v in value.items()})
            elif not isinstance(value, list):
                out[key] = value
        flat.append(out)
    columns = list(dict.fromkeys(k for row in flat for k in row))
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(flat)
