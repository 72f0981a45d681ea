"""`lmserve bench plot`: result JSON files of `bench generation/throughput/serving` -> one PNG with
output throughput vs concurrency and the CDFs of TTFT, TPOT and end-to-end latency.

Throughput runs and serving runs with a concurrency cap become points of one line per model and
dataset (so `--concurrency 8`, `16`, `32` runs form a curve); generation results give one line per
prompt/completion length pair. CDFs come from the per-request data of throughput and serving runs.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict

import numpy as np

CDF_PANELS = (("ttfts", "TTFT (ms)"), ("tpots", "TPOT (ms)"), ("e2els", "end-to-end latency (ms)"))


def read_results(paths: list[str]) -> list[tuple[str, dict]]:
    results = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
        if not isinstance(result, dict) or "kind" not in result:
            raise ValueError(f"{path} is not a result file of lmserve bench (no 'kind')")
        results.append((os.path.splitext(os.path.basename(path))[0], result))
    return results


def throughput_curves(results: list[tuple[str, dict]]) -> dict[str, list[tuple[float, float]]]:
    """{line label: [(concurrency, output tok/s), ...] sorted by concurrency}."""
    curves: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for name, result in results:
        kind, config = result["kind"], result.get("config", {})
        if kind == "generation":
            for row in result["rows"]:
                label = f"{config.get('model', name)} generation {row['prompt_tokens']}/{row['completion_tokens']}"
                curves[label].append((row["concurrency"], row["output_throughput"]))
        elif kind in ("throughput", "serving"):
            concurrency = config.get("concurrency") or config.get("max_concurrency")
            if concurrency is None and config.get("request_rate") == float("inf"):
                concurrency = config.get("num_prompts")       # all requests at once
            if concurrency is not None:
                label = f"{config.get('model', name)} {kind} {os.path.basename(str(config.get('dataset', '')))}"
                curves[label].append((concurrency, result["summary"]["output_throughput"]))
    return {label: sorted(points) for label, points in curves.items()}


def latency_samples(results: list[tuple[str, dict]], key: str) -> dict[str, np.ndarray]:
    """{file name: sorted latencies in ms} of the runs that kept per-request data."""
    samples = {}
    for name, result in results:
        values = [v for v in result.get("requests", {}).get(key, []) if v is not None]
        if values:
            samples[name] = np.sort(np.asarray(values, dtype=float) * 1000.0)
    return samples


def plot(paths: list[str], output: str) -> int:
    """Draws the report; returns how many panels had data."""
    import matplotlib
    matplotlib.use("Agg")            # files only, no display needed
    import matplotlib.pyplot as plt

    results = read_results(paths)
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    drawn = 0
    ax = axes[0][0]
    for label, points in throughput_curves(results).items():
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o", label=label)
    if ax.lines:
        drawn += 1
        ax.legend(fontsize=7)
    ax.set(title="output throughput vs concurrency", xlabel="concurrent requests", ylabel="output tok/s")
    ax.grid(alpha=0.3)
    for ax, (key, label) in zip([axes[0][1], axes[1][0], axes[1][1]], CDF_PANELS):
        for name, values in latency_samples(results, key).items():
            ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post", label=name)
        if ax.lines:
            drawn += 1
            ax.legend(fontsize=7)
        ax.set(title=f"CDF of {label}", xlabel=label, ylabel="fraction of requests", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    folder = os.path.dirname(output)
    if folder:
        os.makedirs(folder, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return drawn


def main(args) -> None:
    try:
        drawn = plot(args.results, args.output)
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"lmserve bench plot: {e}") from e
    if not drawn:
        raise SystemExit("lmserve bench plot: none of the files has data to plot "
                         "(expected results of bench generation, throughput or serving)")
    print(f"{drawn} panel(s) drawn from {len(args.results)} file(s) -> {args.output}")
