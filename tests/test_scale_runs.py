"""Two CPU processes (gloo) through the real worker and the real launchers, on the tiny random Llama.

- a DDP run reaches `succeeded` and its loss curve matches a one-process run with doubled gradient accumulation
  (same rows per optimizer step) within LOSS_TOLERANCE; the trained weights match too;
- accelerate launch with the generated config trains the same curve;
- a rank killed with SIGKILL fails the run naming that rank, with its log tail; every rank's log is kept;
- Stop reaches both ranks, which stop after the same step and save.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core import runs
from core.train.distributed import read_rank_records
from core.train.spec import TrainSpec

pytestmark = pytest.mark.slow

# Relative difference allowed per logged loss between 2 processes x accumulation A and 1 process x accumulation 2A.
# Measured here: identical to the last printed digit (gloo sums two fp32 gradients, accumulation adds the same two);
# the tolerance leaves room for a different reduction order on other machines.
LOSS_TOLERANCE = 1e-4
QA = [("2+2?", "4"), ("Capital of France?", "Paris"), ("Colour of the sky?", "Blue"), ("Opposite of hot?", "Cold"),
      ("3*3?", "9"), ("First letter?", "A"), ("Ice is?", "Frozen water"), ("Sun rises in the?", "East")]


@pytest.fixture
def data_file(tmp_path) -> Path:
    path = tmp_path / "train.jsonl"
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QA * 4]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _spec(model_dir: Path, data: Path, **changes) -> TrainSpec:
    fields = dict(model={"kind": "local", "ref": str(model_dir)}, dataset=str(data), max_steps=4, batch_size=2, max_length=64,
                  eval_fraction=0.0, learning_rate=1e-2, warmup_ratio=0.0, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                  save_steps=100, eval_on_start=False, logging_steps=1)
    fields.update(changes)
    return TrainSpec(**fields)


def _run(spec: TrainSpec, timeout: float = 600) -> tuple[Path, object]:
    run_dir = runs.create_run(spec)
    runs.launch(run_dir)
    return run_dir, runs.wait(run_dir, timeout=timeout)


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in runs.read_all_metrics(run_dir / runs.METRICS_FILE) if "loss" in r}


def test_ddp_on_two_processes_matches_one_process_with_doubled_accumulation(workspace, tiny_llama_dir, data_file):
    common = dict(method="full", learning_rate=3e-3, max_steps=6)
    ddp_dir, ddp = _run(_spec(tiny_llama_dir, data_file, processes_per_node=2, gradient_accumulation=1, **common))
    assert ddp.state == "succeeded", runs.log_tail(ddp_dir)
    one_dir, one = _run(_spec(tiny_llama_dir, data_file, processes_per_node=1, gradient_accumulation=2, **common))
    assert one.state == "succeeded", runs.log_tail(one_dir)

    ddp_losses, one_losses = _losses(ddp_dir), _losses(one_dir)
    assert sorted(ddp_losses) == list(range(1, 7)), "rank 0 alone writes metrics.jsonl: one row per step, none twice"
    for step, loss in one_losses.items():
        assert abs(ddp_losses[step] - loss) <= LOSS_TOLERANCE * abs(loss), (step, ddp_losses[step], loss)
    assert ddp_losses[6] < ddp_losses[1] - 0.3, f"the curve must move for the match to mean anything: {ddp_losses}"
    ddp_weights = load_file(ddp_dir / "model" / "model.safetensors")
    one_weights = load_file(one_dir / "model" / "model.safetensors")
    worst = max(float((ddp_weights[k].float() - one_weights[k].float()).abs().max()) for k in one_weights)
    assert worst < 1e-4, f"gradients were not averaged across the ranks: max weight difference {worst}"

    card = runs.read_result(ddp_dir)
    assert card["distribution"]["world_size"] == 2 and card["distribution"]["global_batch"] == 4
    assert len(card["distribution"]["peak_memory_bytes_per_rank"]) == 2 and "distribution" not in runs.read_result(one_dir)
    assert ddp.result["world_size"] == 2 and ddp.result["strategy"] == "DDP"
    records = read_rank_records(ddp_dir)
    assert [r["rank"] for r in records] == [0, 1] and all(r["state"] == "succeeded" for r in records)
    for rank in (0, 1):
        assert "rank %d of 2" % rank in (ddp_dir / "ranks" / f"rank-{rank}.log").read_text()
    assert "torchrun --standalone --nnodes 1 --nproc_per_node 2 -m core.train.rank" in (ddp_dir / "worker.log").read_text()
    assert (ddp_dir / "launch" / "command.sh").is_file() and (ddp_dir / "launch" / "accelerate.yaml").is_file()


def test_accelerate_launch_with_the_generated_config_trains_the_same_curve(workspace, tiny_llama_dir, data_file):
    torchrun_dir, first = _run(_spec(tiny_llama_dir, data_file, processes_per_node=2, max_steps=3))
    accelerate_dir, second = _run(_spec(tiny_llama_dir, data_file, processes_per_node=2, max_steps=3, launcher="accelerate"))
    assert first.state == "succeeded" and second.state == "succeeded", runs.log_tail(accelerate_dir)
    assert "accelerate launch --config_file" in (accelerate_dir / "worker.log").read_text()
    a, b = _losses(torchrun_dir), _losses(accelerate_dir)
    assert a.keys() == b.keys() == {1, 2, 3}
    assert all(abs(a[s] - b[s]) <= LOSS_TOLERANCE * abs(a[s]) for s in a)
    assert (accelerate_dir / "adapter" / "adapter_config.json").is_file(), "rank 0 saved the adapter"


def test_a_rank_that_dies_fails_the_run_with_its_log_tail(workspace, tiny_llama_dir, data_file):
    run_dir, status = _run(_spec(tiny_llama_dir, data_file, processes_per_node=2, max_steps=6, fault_injection="kill@2:1"))
    assert status.state == "failed"
    assert status.error.startswith("Rank 1 of 2 was killed by SIGKILL"), status.error
    assert "after step 1/6" in status.error and "stopped the other ranks" in status.error
    tail = runs.log_tail(run_dir)
    assert "===== rank 1 of 2: last lines of" in tail and "fault_injection: SIGKILL at step 2" in tail
    assert "rank 0 of 2" in (run_dir / "ranks" / "rank-0.log").read_text(), "every rank's log is kept"
    records = {r["rank"]: r for r in read_rank_records(run_dir)}
    assert records[1]["state"] == "running", "killed: it never recorded an end"
    assert records[0]["state"] == "failed", "rank 0 lost its peer"
    assert not (run_dir / "adapter").exists(), "nothing half-written"


def test_stop_reaches_every_rank_and_they_save_at_the_same_step(workspace, tiny_llama_dir, data_file):
    run_dir = runs.create_run(_spec(tiny_llama_dir, data_file, processes_per_node=2, max_steps=500, save_steps=1000))
    runs.launch(run_dir)
    deadline = time.time() + 300
    while not _losses(run_dir):
        assert time.time() < deadline and runs.read_status(run_dir).is_active, runs.log_tail(run_dir)
        time.sleep(0.3)
    assert runs.stop(run_dir)
    status = runs.wait(run_dir, timeout=300)
    assert status.state == "stopped", status.error or runs.log_tail(run_dir)
    step = status.result["global_step"]
    assert 1 <= step < 500 and (run_dir / "checkpoints" / f"checkpoint-{step}").is_dir()
    assert [r["state"] for r in read_rank_records(run_dir)] == ["stopped", "stopped"]
    assert torch.load(run_dir / "checkpoints" / f"checkpoint-{step}" / "rng_state_1.pth", weights_only=False) is not None
