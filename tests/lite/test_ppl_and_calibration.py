"""Perplexity equals a direct torch computation; calibration data sources and their errors."""
from __future__ import annotations

import json
import math

import pytest
import torch

from lmserve.eval.ppl import PplConfig, perplexity, windows


def _scored(n, cfg):
    return [p for _, end, first in windows(n, cfg) for p in range(first, end)]


def test_windows_score_each_token_once():
    for n, cfg in ((1000, PplConfig(512, 200)), (50, PplConfig(16, 5))):
        assert _scored(n, cfg) == list(range(1, n))          # overlapping: all but the first
    # independent windows: each window's first token has no context and is not scored
    assert _scored(1000, PplConfig(512)) == [p for p in range(1000) if p % 512]
    assert len(windows(10_000, PplConfig(512, max_windows=3))) == 3
    with pytest.raises(ValueError, match=r"--stride must be in \[1, --window=16\]"):
        PplConfig(16, 32)


def test_perplexity_equals_a_direct_torch_computation(tiny_dir, text_file):
    from transformers import AutoModelForCausalLM
    from lmserve.eval.forward import DirectModel
    from lmserve.eval.ppl import read_text_tokens
    scorer = DirectModel.load(tiny_dir, 48)
    ids = read_text_tokens(scorer.tokenizer, text_file)[:150]
    cfg = PplConfig(48, 32)
    ours = perplexity(scorer, ids, cfg, progress=False)
    hf = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for begin, end, first in windows(len(ids), cfg):
            logits = hf(torch.tensor([ids[begin:end]])).logits[0].double()
            logp = torch.log_softmax(logits, -1)
            for pos in range(first, end):
                nll -= logp[pos - begin - 1, ids[pos]].item()
                count += 1
    assert ours.tokens_scored == count == len(ids) - 1
    assert math.isclose(ours.ppl, math.exp(nll / count), rel_tol=1e-4)


def test_calibration_text_from_local_files(tmp_path):
    from lmserve.lite.calib_data import load_calibration_text
    (tmp_path / "a.jsonl").write_text('{"text": "alpha"}\n{"text": "beta"}\n')
    (tmp_path / "b.json").write_text(json.dumps([{"conversations": [{"from": "human", "value": "hi"},
                                                                     {"from": "gpt", "value": "hello"}]}]))
    assert load_calibration_text(str(tmp_path / "a.jsonl")) == "alpha\n\nbeta"
    assert load_calibration_text(str(tmp_path / "b.json")) == "hi\n\nhello"
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(ValueError, match="holds no text"):
        load_calibration_text(str(tmp_path / "empty.json"))


def test_dataset_names_offline_say_to_pass_a_local_file(monkeypatch):
    import builtins
    from lmserve.lite.calib_data import load_calibration_text
    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("no datasets here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(ValueError, match="pass a local .txt/.json/.jsonl file"):
        load_calibration_text("wikitext2")
    with pytest.raises(FileNotFoundError, match="neither a local file nor one of wikitext2"):
        load_calibration_text("no-such-dataset")


def test_calibration_records_statistics_per_linear_input(tiny_dir, text_file, tmp_path):
    from lmserve.lite.calibrate import STATS_FILE, calibrate
    scorer, stats = calibrate(tiny_dir, text_file, 2, 32, str(tmp_path), progress=False)
    saved = torch.load(tmp_path / STATS_FILE, weights_only=False)
    layer = saved["layers"][0]
    assert set(layer) == {"qkv", "o", "gate_up", "down"} and saved["tokens"] == 64
    assert layer["down"]["gram"].shape == (256, 256) and layer["qkv"]["absmax"].shape == (128,)
    # the outlier channels planted in the norm weights show in the recorded activations
    assert layer["qkv"]["absmean"][:4].mean() > 5 * layer["qkv"]["absmean"][4:].mean()
    assert torch.all(layer["qkv"]["absmax"] >= layer["qkv"]["absmean"])
