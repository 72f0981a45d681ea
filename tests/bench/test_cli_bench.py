"""Every `lmserve bench` subcommand once, end to end at tiny sizes, on a tiny random-weight Llama."""
from __future__ import annotations

import csv
import json

import pytest

from lmserve.cli.main import main
from tests.bench.conftest import SMALL_CACHE


def test_generation_writes_one_row_per_combination(tiny_model_dir, tmp_path, capsys):
    out_json, out_csv = tmp_path / "gen.json", tmp_path / "gen.csv"
    main(["bench", "generation", tiny_model_dir, "-c", "1", "3", "--prompt-tokens", "8", "--completion-tokens",
          "4", "6", "--test-round", "2", "--json", str(out_json), "--csv", str(out_csv), "--no-progress", *SMALL_CACHE])
    rows = json.loads(out_json.read_text())["rows"]
    assert [(r["concurrency"], r["completion_tokens"]) for r in rows] == [(1, 4), (1, 6), (3, 4), (3, 6)]
    for r in rows:      # every request of every round produced exactly its tokens
        assert r["generated_tokens"] == r["concurrency"] * r["completion_tokens"] * 2
        assert 0 < r["first_token_latency_min_s"] <= r["first_token_latency_avg_s"] <= r["first_token_latency_max_s"]
        assert r["per_token_latency_p50_ms"] <= r["per_token_latency_p99_ms"]
        assert r["total_throughput"] > r["output_throughput"] > 0 and r["peak_memory_gib"] > 0
    assert len(list(csv.DictReader(out_csv.open()))) == 4
    assert "ftl min s" in capsys.readouterr().out


def test_generation_refuses_lengths_beyond_the_session(tiny_model_dir):
    with pytest.raises(SystemExit, match="exceeds the session length 64"):
        main(["bench", "generation", tiny_model_dir, "-c", "1", "--prompt-tokens", "60", "--completion-tokens", "8",
              "--session-len", "64", "--no-progress", *SMALL_CACHE])


def test_throughput_on_sharegpt_and_random(tiny_model_dir, sharegpt_slice, tokenizer, tmp_path, capsys):
    out = tmp_path / "tp.json"
    main(["bench", "throughput", tiny_model_dir, "--dataset", sharegpt_slice, "--num-prompts", "4",
          "--concurrency", "2", "--goodput", "ttft:60000", "--json", str(out), "--no-progress", *SMALL_CACHE])
    result = json.loads(out.read_text())
    data = json.load(open(sharegpt_slice))
    # the first 4 conversations with a reply are the even ones; their reply lengths are the outputs
    assert result["summary"]["completed"] == 4 and result["summary"]["good_requests"] == 4
    assert result["requests"]["output_lens"] == [
        len(tokenizer.encode(c["conversations"][1]["value"], add_special_tokens=False)) for c in data[0:8:2]]
    assert result["config"]["concurrency"] == 2
    assert "Request goodput" in capsys.readouterr().out

    main(["bench", "throughput", tiny_model_dir, "--dataset", "random", "--num-prompts", "3", "--input-len", "12",
          "--output-len", "5", "--json", str(out), "--no-progress", *SMALL_CACHE])
    summary = json.loads(out.read_text())["summary"]
    assert (summary["total_input_tokens"], summary["total_output_tokens"]) == (36, 15)
    assert summary["tpot_ms"]["mean"] > 0 and summary["itl_ms"]["p99"] >= summary["itl_ms"]["p50"]


def test_compare_hf_generates_the_same_greedy_tokens_in_both(tiny_model_dir, sharegpt_slice, tmp_path, capsys):
    out = tmp_path / "cmp.json"
    main(["bench", "compare-hf", tiny_model_dir, "--dataset", sharegpt_slice, "--num-prompts", "3",
          "--output-len", "6", "--single-output-len", "8", "--single-runs", "1", "--json", str(out),
          "--no-progress", *SMALL_CACHE])
    result = json.loads(out.read_text())
    batch, single = result["batched"], result["single_stream"]
    assert (batch["prompts"], batch["output_tokens"]) == (3, 18)
    assert batch["identical_outputs"] == 3      # same fp32 weights, greedy: a like-for-like comparison
    assert batch["speedup"] == pytest.approx(batch["hf_s"] / batch["lmserve_s"])
    assert single["new_tokens"] == 8 and single["hf_tok_s"] > 0 and single["lmserve_tok_s"] > 0
    assert "speedup" in capsys.readouterr().out


def test_plot_draws_throughput_and_cdfs(tmp_path):
    rows = [{"concurrency": c, "prompt_tokens": 8, "completion_tokens": 4, "output_throughput": 10.0 * c}
            for c in (1, 4)]
    (tmp_path / "gen.json").write_text(json.dumps({"kind": "generation", "config": {"model": "m"}, "rows": rows}))
    run = {"kind": "throughput", "config": {"model": "m", "dataset": "d", "concurrency": 4},
           "summary": {"output_throughput": 30.0},
           "requests": {"ttfts": [0.1, 0.2, 0.4], "tpots": [0.01, None, 0.03], "e2els": [0.5, 0.6, 0.9]}}
    (tmp_path / "tp.json").write_text(json.dumps(run))
    png = tmp_path / "out" / "report.png"
    main(["bench", "plot", str(tmp_path / "gen.json"), str(tmp_path / "tp.json"), "--output", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    (tmp_path / "bad.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(SystemExit, match="not a result file"):
        main(["bench", "plot", str(tmp_path / "bad.json"), "--output", str(png)])
