"""A --tp that cannot work is refused before any process starts, with the reason; the step plan that
rank 0 sends the workers survives its wire form. No worker is started here."""
from __future__ import annotations

import multiprocessing

import pytest

from lmserve.cli.main import main
from lmserve.config import EngineConfig
from lmserve.engine.engine import Engine
from lmserve.engine.step_plan import StepPlan
from lmserve.engine.tp.validate import check_model_split, check_placement, valid_tp_sizes
from lmserve.model.config import ModelConfig


def model(heads: int, kv: int, inter: int = 2304) -> ModelConfig:
    return ModelConfig("llama", 1000, heads * 64, inter, 2, heads, kv, 64)


def test_heads_that_tp_does_not_divide_are_refused_with_the_valid_choices():
    with pytest.raises(ValueError, match=r"--tp 2 does not divide the model's 9 attention heads.*: 1, 3, 9$"):
        check_model_split(2, model(9, 3))


def test_kv_heads_and_tp_must_divide_one_another():
    check_model_split(4, model(4, 1))        # one KV head, replicated on every rank
    check_model_split(2, model(8, 4))
    with pytest.raises(ValueError, match=r"--tp 6 and the model's 4 KV heads must divide one another"):
        check_model_split(6, model(12, 4))
    assert valid_tp_sizes(model(12, 4)) == [1, 2, 4, 12]


def test_more_ranks_than_cores_or_gpus_is_refused():
    with pytest.raises(ValueError, match=r"--tp 3 runs 3 ranks on this machine but only 2 CPU core.*--tp-oversubscribe"):
        check_placement(EngineConfig(tp=3), "cpu", cpus=2)
    check_placement(EngineConfig(tp=3, tp_oversubscribe=True), "cpu", cpus=2)
    check_placement(EngineConfig(tp=4, nnodes=2), "cpu", cpus=2)       # 2 ranks per node
    with pytest.raises(ValueError, match=r"--tp 2 runs 2 ranks on this machine, one GPU each, but torch sees 1 GPU"):
        check_placement(EngineConfig(tp=2), "cuda", cuda_devices=1)


def test_rendezvous_flags_are_checked():
    with pytest.raises(ValueError, match=r"--tp must be a multiple of --nnodes"):
        EngineConfig(tp=3, nnodes=2)
    with pytest.raises(ValueError, match=r"--node-rank must be in \[0, 1\]"):
        EngineConfig(tp=2, nnodes=2, node_rank=2)


def test_default_model_refuses_tp2_before_starting_workers(default_loaded):
    with pytest.raises(ValueError, match="--tp 2 does not divide the model's 9 attention heads"):
        Engine(default_loaded, EngineConfig(tp=2, num_blocks=8))
    assert not multiprocessing.active_children()


def test_cli_refuses_tp2_on_the_default_model(default_loaded):
    with pytest.raises(SystemExit, match="lmserve serve api_server: --tp 2 does not divide .* 9 attention heads"):
        main(["serve", "api_server", "--tp", "2", "--num-blocks", "8"])
    assert not multiprocessing.active_children()


def test_step_plan_survives_its_wire_form():
    plan = StepPlan(input_ids=[5, 6, 7, 8, 9], positions=[3, 0, 1, 2, 7], slots=[19, 32, 33, 34, 7],
                    decode_rows=[0, 4], decode_tables=[[2], [0, 5]], decode_lens=[4, 8],
                    prefills=[(1, 3, 3, [4])], sample_rows=[0, 3, 4])
    header, payload = plan.pack()
    assert payload.numel() == StepPlan.payload_len(header)
    assert StepPlan.unpack(header, payload) == plan
    empty = StepPlan()
    assert StepPlan.unpack(*empty.pack()) == empty
