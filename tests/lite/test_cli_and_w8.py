"""CLI smoke tests at tiny sizes, and the 8-bit paths (W8A16 via GPTQ format, SmoothQuant W8A8)."""
from __future__ import annotations

import json

import pytest
import torch

from lmserve.cli.main import main


def _hidden(path, ids):
    from lmserve.eval.forward import DirectModel
    return DirectModel.load(path, 64).hidden_states(ids)


def test_cli_auto_awq_eval_ppl_and_chat_format(tiny_dir, text_file, tmp_path, capsys):
    out = tmp_path / "q4"
    main(["lite", "auto_awq", tiny_dir, "--calib-dataset", text_file, "--calib-samples", "2",
          "--calib-seqlen", "32", "--w-group-size", "64", "--search-grid", "4",
          "--work-dir", str(out)])
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "awq"
    assert (out / "tokenizer.json").exists()
    main(["eval", "ppl", str(out), "--dataset", text_file, "--window", "32", "--max-windows", "2",
          "--json", str(tmp_path / "ppl.json")])
    result = json.loads((tmp_path / "ppl.json").read_text())
    assert result["windows"] == 2 and result["tokens_scored"] == 62 and result["ppl"] > 1
    assert "ppl" in capsys.readouterr().out
    # the engine serves it (the chat command's path): format found from config.json
    from lmserve import GenerationConfig, pipeline
    pipe = pipeline(str(out))
    try:
        response = pipe(["Hello"], GenerationConfig(max_new_tokens=4, ignore_eos=True))[0]
        assert len(response.token_ids) == 4
    finally:
        pipe.close()


def test_cli_errors_are_messages_not_tracebacks(tiny_dir, tmp_path):
    with pytest.raises(SystemExit, match="neither a local file nor one of wikitext2"):
        main(["lite", "calibrate", tiny_dir, "--calib-dataset", "nope.txt", "--work-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="--stride must be in"):
        main(["eval", "ppl", tiny_dir, "--dataset", "x.txt", "--window", "8", "--stride", "9"])


def test_w8a16_and_smoothquant_w8a8_stay_close_to_float(tiny_dir, text_file, tmp_path):
    from lmserve.eval.forward import DirectModel
    from lmserve.kernels.int8_linear import Int8Weight
    from lmserve.kernels.quant_weight import QuantWeight
    main(["lite", "calibrate", tiny_dir, "--calib-dataset", text_file, "--calib-samples", "2",
          "--calib-seqlen", "32", "--work-dir", str(tmp_path / "calib")])
    main(["lite", "auto_awq", tiny_dir, "--calib-stats", str(tmp_path / "calib"), "--w-bits", "8",
          "--w-group-size", "64", "--search-grid", "4", "--work-dir", str(tmp_path / "w8")])
    main(["lite", "smooth_quant", tiny_dir, "--calib-stats", str(tmp_path / "calib"),
          "--work-dir", str(tmp_path / "w8a8")])
    assert json.loads((tmp_path / "w8" / "config.json").read_text())["quantization_config"]["quant_method"] == "gptq"
    ids = list(range(100, 164))
    ref = _hidden(tiny_dir, ids)
    w8 = DirectModel.load(str(tmp_path / "w8"), 64)
    sq = DirectModel.load(str(tmp_path / "w8a8"), 64)
    assert isinstance(w8.model.layers[0].qkv_proj.weight, QuantWeight)
    assert w8.model.layers[0].qkv_proj.weight.bits == 8
    assert isinstance(sq.model.layers[0].down_proj.weight, Int8Weight)
    scale = ref.pow(2).mean()
    assert (w8.hidden_states(ids) - ref).pow(2).mean() < 1e-3 * scale
    assert (sq.hidden_states(ids) - ref).pow(2).mean() < 2e-2 * scale


def test_eval_ppl_with_a_quantized_kv_cache(tiny_dir, text_file, tmp_path, capsys):
    results = {}
    for i, flags in enumerate(([], ["--quant-policy", "8"], ["--kv-cache-dtype", "int4"])):
        out = tmp_path / f"ppl{i}.json"
        main(["eval", "ppl", tiny_dir, "--dataset", text_file, "--window", "32", "--max-windows", "2",
              "--json", str(out), *flags])
        result = json.loads(out.read_text())
        results[result["quant_policy"]] = result
    assert "int4+rot" in capsys.readouterr().out
    assert results[4]["kv_rotated"] and not results[8]["kv_rotated"]
    assert results[4]["kv_bytes_per_token"] < results[8]["kv_bytes_per_token"] < results[0]["kv_bytes_per_token"]
    assert results[8]["ppl"] != results[0]["ppl"]
    assert abs(results[8]["ppl"] / results[0]["ppl"] - 1) < 0.01


def test_lite_auto_prints_the_ladder_and_recommends(tiny_dir, text_file, tmp_path, capsys):
    main(["lite", "auto", tiny_dir, "--dataset", text_file, "--calib-dataset", text_file,
          "--calib-samples", "2", "--calib-seqlen", "32", "--window", "32", "--max-windows", "2",
          "--rungs", "fp,w8a16-rtn,w4a16-rtn,kv-int8,kv-int4,w4a16-awq+kv-int8", "--tolerance", "0.5",
          "--work-dir", str(tmp_path / "a"), "--json", str(tmp_path / "auto.json")])
    printed = capsys.readouterr().out
    assert "KV B/token" in printed and "recommended:" in printed
    result = json.loads((tmp_path / "auto.json").read_text())
    rungs = {r["name"]: r for r in result["rungs"]}
    assert list(rungs) == ["fp", "w8a16-rtn", "w4a16-rtn", "kv-int8", "kv-int4", "w4a16-awq+kv-int8"]
    ok = [r for r in result["rungs"] if r["within_tolerance"]]
    best = min(ok, key=lambda r: (r["weight_bytes"], r["kv_bytes_per_token"]))
    assert result["recommended"] == best["name"]
    assert rungs["w4a16-rtn"]["weight_ratio"] < rungs["w8a16-rtn"]["weight_ratio"] < 1
    # tiny model: 2 layers x 2 KV heads x head_dim 32; float16 32 x 2 B, int8 32 + 4, int4 16 + 4
    assert [rungs[n]["kv_bytes_per_token"] for n in ("fp", "kv-int8", "kv-int4")] == \
        [2 * 2 * 2 * 64, 2 * 2 * 2 * 36, 2 * 2 * 2 * 20]
    # the KV rungs keep their weights: float for kv-int*, the AWQ model (built once) for the last
    assert rungs["kv-int8"]["weight_bytes"] == rungs["fp"]["weight_bytes"]
    assert rungs["w4a16-awq+kv-int8"]["weight_bytes"] < rungs["w8a16-rtn"]["weight_bytes"]
    assert rungs["w4a16-awq+kv-int8"]["path"].endswith("w4a16-awq")
    assert rungs["kv-int8"]["ppl"] != rungs["fp"]["ppl"] and rungs["kv-int8"]["kv_bits"] == 8
