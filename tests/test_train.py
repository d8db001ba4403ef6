"""Training jobs on the tiny random Llama: the labels the trainer sees, methods, faults, stop / resume.

Most runs use the worker in-process (`Worker(run_dir).run()`, same code path as the subprocess minus the
interpreter start-up) to keep the file fast on two cores; stop / resume and kill -9 use real launches.
"""
from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from inprocess import run_in_process, work_here
from safetensors.torch import load_file

from core import runs
from core.data.masking import IGNORE_INDEX, encode_conversation
from core.runs.metrics import whole_run_figures
from core.runs.status import read_status
from core.train.data import file_sha256, pack_features
from core.train.spec import TrainSpec

pytestmark = pytest.mark.slow

QUESTIONS = [("2+2?", "4"), ("Capital of France?", "Paris"), ("Colour of the sky?", "Blue"), ("Opposite of hot?", "Cold"),
             ("3*3?", "9"), ("First letter?", "A"), ("Ice is?", "Frozen water"), ("Sun rises in the?", "East")]


def _rows(n: int = 8) -> list[dict]:
    return [{"messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": q},
                          {"role": "assistant", "content": a}]} for q, a in (QUESTIONS * 4)[:n]]


@pytest.fixture
def data_file(tmp_path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    return path


def _spec(model_dir: Path, data: Path, **changes) -> TrainSpec:
    fields = dict(model={"kind": "local", "ref": str(model_dir)}, dataset=str(data), max_steps=3, batch_size=2, max_length=64,
                  eval_fraction=0.0, learning_rate=1e-2, warmup_ratio=0.0, lora_r=4, lora_alpha=8, save_steps=100,
                  eval_on_start=False, logging_steps=1)
    fields.update(changes)
    return TrainSpec(**fields)


def _update_spec(run_dir: Path, updates: dict) -> None:
    data = runs.read_spec_dict(run_dir)
    data.update(updates)
    (run_dir / runs.SPEC_FILE).write_text(yaml.safe_dump(data, sort_keys=False))


def _metrics(run_dir: Path) -> list[dict]:
    return runs.read_all_metrics(run_dir / runs.METRICS_FILE)


# ---------------------------------------------------------------- backend choice


def _hardware(**changes):
    from core.hardware import HardwareInfo

    fields = dict(device="cpu", device_name="CPU", gpu_count=0, total_memory_gb=16.0, free_memory_gb=12.0, bf16=False,
                  cpu_cores=2, system_ram_gb=16.0, bnb_4bit=True, unsloth=False)
    fields.update(changes)
    return HardwareInfo(**fields)


def test_backend_choice_prefers_unsloth_only_where_it_can_run(tiny_llama_dir, data_file):
    from core.train.backends import choose_backend

    gpu_with_unsloth = _hardware(device="cuda", device_name="GPU", gpu_count=1, bf16=True, unsloth=True)
    backend, notes = choose_backend(_spec(tiny_llama_dir, data_file), gpu_with_unsloth)
    assert backend.name == "unsloth" and notes == []

    backend, notes = choose_backend(_spec(tiny_llama_dir, data_file), _hardware())
    assert backend.name == "hf" and notes == ["unsloth backend not used: Unsloth needs a CUDA GPU"]

    backend, notes = choose_backend(_spec(tiny_llama_dir, data_file), _hardware(device="cuda", gpu_count=1))
    assert backend.name == "hf" and "not installed" in notes[0]

    backend, _ = choose_backend(_spec(tiny_llama_dir, data_file, method="dora"), gpu_with_unsloth)
    assert backend.name == "hf", "Unsloth does not train DoRA"

    backend, notes = choose_backend(_spec(tiny_llama_dir, data_file, backend="hf"), gpu_with_unsloth)
    assert backend.name == "hf" and notes == []

    with pytest.raises(ValueError, match="unsloth backend not used: Unsloth needs a CUDA GPU"):
        choose_backend(_spec(tiny_llama_dir, data_file, backend="unsloth"), _hardware())


# ---------------------------------------------------------------- labels


@pytest.mark.gpuset
def test_trainer_receives_exactly_the_masking_labels(workspace, tiny_llama_dir, data_file, embedded_tokenizer):
    from core.hardware import detect
    from core.models import ModelSource, load_tokenizer
    from core.train.backends import HFBackend
    from core.train.data import prepare_data
    from core.train.trainer import build_trainer

    spec = _spec(tiny_llama_dir, data_file, masking_policy="last_assistant")
    tokenizer = load_tokenizer(ModelSource("local", str(tiny_llama_dir)))
    data = prepare_data(spec, tokenizer)
    model, tokenizer = HFBackend().load(spec, detect())
    trainer = build_trainer(spec, Path(workspace) / "probe", model, tokenizer, data, device="cpu", bf16=False, fp16=False, callbacks=[])
    seen = []
    for batch in trainer.get_train_dataloader():
        for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
            n = int(mask.sum())
            assert (labels[n:] == IGNORE_INDEX).all(), "padding is never trained"
            seen.append((tuple(ids[:n].tolist()), tuple(labels[:n].tolist())))
    expected = []
    for row in _rows():
        encoded = encode_conversation(row["messages"], embedded_tokenizer, policy="last_assistant", max_length=64)
        expected.append((tuple(encoded.input_ids), tuple(encoded.labels)))
    assert Counter(seen) == Counter(expected)
    assert all(any(x != IGNORE_INDEX for x in labels) for _, labels in seen)


def test_packing_keeps_each_rows_labels_and_restarts_positions():
    features = [{"input_ids": list(range(1, n + 1)), "labels": [IGNORE_INDEX] * 2 + list(range(3, n + 1))} for n in (5, 9, 3, 7, 4)]
    packed = pack_features(features, max_length=12)
    assert all(len(p["input_ids"]) <= 12 for p in packed)
    assert sum(len(p["input_ids"]) for p in packed) == sum(len(f["input_ids"]) for f in features)
    pieces = []
    for p in packed:
        starts = [i for i, pos in enumerate(p["position_ids"]) if pos == 0] + [len(p["input_ids"])]
        for a, b in zip(starts, starts[1:]):
            assert p["position_ids"][a:b] == list(range(b - a))
            pieces.append((p["input_ids"][a:b], p["labels"][a:b]))
    originals = sorted((f["input_ids"], f["labels"]) for f in features)
    assert sorted(pieces) == originals  # first label of each row is already masked in these rows


def test_unsloth_packed_batch_is_one_row_with_the_lengths_its_attention_needs(tiny_llama_dir):
    """Unsloth keeps packed rows apart only through `packed_seq_lengths` on a flattened batch (its padding-free
    form); without them its attention is causal across the whole row. Check the contract, then check that a
    batch in that form really keeps rows apart in a model that honours position ids (transformers)."""
    from transformers import AutoModelForCausalLM

    from core.train.data import PadCollator

    features = [{"input_ids": list(range(10, 10 + n)), "labels": list(range(10, 10 + n))} for n in (6, 9, 4, 7, 5)]
    packed = pack_features(features, max_length=16)
    batch = PadCollator(pad_token_id=0, flatten_packed=True)(packed)
    lengths = batch["packed_seq_lengths"].tolist()
    assert batch["input_ids"].shape == (1, sum(len(f["input_ids"]) for f in features)) and "attention_mask" not in batch
    assert batch["packed_seq_lengths"].dtype == torch.int32 and sum(lengths) == batch["input_ids"].shape[1]
    starts = [0] + list(torch.tensor(lengths).cumsum(0)[:-1].tolist())
    assert (batch["position_ids"][0] == 0).nonzero().flatten().tolist() == starts, "every row restarts its positions"
    assert all(batch["labels"][0, s] == IGNORE_INDEX for s in starts), "no row learns the first token of the next"
    assert PadCollator(pad_token_id=0)(packed)["input_ids"].shape[0] == len(packed), "hf keeps one packed sequence per row"

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    with torch.no_grad():
        # use_cache=False as in training: transformers reads packed rows from position ids only without a cache
        together = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        offset = 0
        for n in lengths:
            alone = model(input_ids=batch["input_ids"][:, offset:offset + n]).logits[0]
            assert torch.allclose(together[offset:offset + n], alone, atol=1e-4), "a packed row saw its neighbours"
            offset += n


def test_workspace_dataset_records_its_manifest_hash(workspace, tiny_llama_dir, embedded_tokenizer):
    from core.train.data import prepare_data
    from core.workspace import datasets_dir

    folder = datasets_dir() / "curated"
    folder.mkdir()
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    (folder / "manifest.json").write_text(json.dumps({"operations": ["dedup"], "rows": 8}))
    data = prepare_data(_spec(tiny_llama_dir, folder, eval_fraction=0.25), embedded_tokenizer)
    manifest = data.manifest()
    assert manifest["sha256"] == file_sha256(folder / "data.jsonl")
    assert manifest["manifest_sha256"] == file_sha256(folder / "manifest.json")
    assert (manifest["train_rows"], manifest["eval_rows"]) == (6, 2)
    assert manifest["trained_tokens"] == sum(sum(1 for x in f["labels"] if x != IGNORE_INDEX) for f in data.train.features)


def test_live_summary_and_charts_keep_the_latest_value_per_step():
    from core.train.live import live_summary, loss_figure, small_figures

    rows = [{"event": "start", "step": 0, "total_steps": 4}, {"step": 1, "loss": 3.0, "tokens_per_s": 10.0, "eta_s": 9.0},
            {"step": 2, "loss": 2.5}, {"event": "start", "step": 1, "total_steps": 4}, {"step": 2, "loss": 2.4},
            {"step": 2, "eval_loss": 2.6}]
    summary = live_summary(rows)
    assert (summary.step, summary.total_steps, summary.loss, summary.eval_loss) == (2, 4, 2.4, 2.6)
    assert summary.fraction == 0.5 and "step 2 / 4" in summary.label
    fig = loss_figure(rows, log_scale=True)
    assert list(fig.data[0].y) == [3.0, 2.4] and fig.layout.yaxis.type == "log"
    assert len(small_figures(rows)) == 4


# ---------------------------------------------------------------- runs in the worker


@pytest.mark.gpuset
def test_lora_run_writes_metrics_adapter_checkpoint_and_run_card(workspace, tiny_llama_dir, tmp_path):
    data = tmp_path / "more.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(12)))
    run_dir, status = run_in_process(_spec(tiny_llama_dir, data, eval_fraction=0.25, eval_on_start=True, merge_after=True))
    assert status.state == "succeeded", status.error
    rows = _metrics(run_dir)
    assert rows[0]["eval_loss"] > 0 and rows[0]["step"] == 0, "the starting eval loss comes first"
    start = next(r for r in rows if r.get("event") == "start")
    assert start["total_steps"] == 3
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    assert all(r["tokens_per_s"] > 0 and r["peak_memory_bytes"] > 0 and r["learning_rate"] > 0 for r in train_rows)
    assert train_rows[-1]["eta_s"] == 0
    assert rows[-1]["eval_loss"] > 0 and rows[-1]["step"] == 3
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert (run_dir / "adapter" / "tokenizer_config.json").is_file()
    assert (run_dir / "checkpoints" / "checkpoint-3" / "trainer_state.json").is_file(), "a final checkpoint is always saved"
    card = runs.read_result(run_dir)
    assert card["data"]["sha256"] == file_sha256(data)
    assert card["data"]["train_rows"] == 9 and card["data"]["eval_rows"] == 3
    assert card["final_metrics"]["global_step"] == 3 and card["tokens_per_s"] > 0 and card["peak_memory_bytes"] > 0
    assert card["final_metrics"]["eval_loss"] < card["final_metrics"]["eval_loss_start"], "lr 1e-2 on 9 rows must move the eval loss"
    assert card["backend"] == "hf" and card["device"] == "cpu" and "predicted_memory_bytes" in card
    from core.hardware import detect

    assert card["precision"]["bf16"] == detect().bf16, "bf16 autocast exactly where the CPU computes bf16 natively"
    assert card["predicted_memory_note"].startswith("LoRA, " + ("bf16 autocast" if detect().bf16 else "fp32"))
    assert status.result["global_step"] == 3 and status.result["adapter"].endswith("adapter")

    merged = run_dir / "merged"
    assert (merged / "config.json").is_file() and card["outputs"]["merged"] == str(merged)

    from core.models import ModelSource, load_model

    loaded = load_model(ModelSource("local", str(tiny_llama_dir), adapter=str(run_dir / "adapter")))
    assert loaded.info.adapter

    # "Train 2 more steps" on the finished run: same folder, resumes from the final checkpoint.
    from core.train import continue_updates

    assert continue_updates(run_dir, 2) == {"max_steps": 5}
    _update_spec(run_dir, continue_updates(run_dir, 2))
    work_here(run_dir)
    again = read_status(run_dir)
    assert again.state == "succeeded" and again.result["global_step"] == 5 and again.attempts == 2
    assert [r["step"] for r in _metrics(run_dir) if "loss" in r] == [1, 2, 3, 4, 5]
    assert runs.read_result(run_dir)["resumed_from_step"] == 3
    # run-level figures cover both segments (29 item 5), not only the 2 steps of the second
    card, losses = runs.read_result(run_dir), [r["loss"] for r in _metrics(run_dir) if "loss" in r]
    assert card["segments"] == 2 and card["tokens_trained"] > card["tokens_trained_this_attempt"] > 0
    assert card["final_metrics"]["train_loss_mean"] == pytest.approx(sum(losses) / 5)
    assert card["tokens_per_s"] == whole_run_figures(_metrics(run_dir))["tokens_per_s"]
    assert again.run_seconds > again.elapsed, "the duration counts the first launch too"


def _lora_b_tensors(adapter: Path) -> dict[str, torch.Tensor]:
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    return {k: v for k, v in weights.items() if "lora_B" in k}


def test_lora_configs_follow_the_method():
    from core.train.backends import lora_config

    for method in ("lora", "dora", "rslora", "qlora"):
        config = lora_config(TrainSpec(method=method, lora_r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
        assert (config.r, config.lora_alpha, set(config.target_modules)) == (8, 16, {"q_proj", "v_proj"})
        assert config.use_dora is (method == "dora") and config.use_rslora is (method == "rslora")
    assert lora_config(TrainSpec()).target_modules == "all-linear"


@pytest.mark.parametrize("method", ["dora"])
def test_adapter_methods_train(workspace, tiny_llama_dir, data_file, method):
    run_dir, status = run_in_process(_spec(tiny_llama_dir, data_file, method=method, max_steps=2))
    assert status.state == "succeeded", status.error
    b = _lora_b_tensors(run_dir / "adapter")
    assert b and all(t.abs().sum() > 0 for t in b.values()), "LoRA B starts at zero; training must move every one"
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["use_dora"] is (method == "dora") and config["use_rslora"] is (method == "rslora")
    if method == "dora":
        assert any("lora_magnitude_vector" in k for k in load_file(str(run_dir / "adapter" / "adapter_model.safetensors")))


def test_full_fine_tune_saves_a_changed_model(workspace, tiny_llama_dir, data_file):
    run_dir, status = run_in_process(_spec(tiny_llama_dir, data_file, method="full", max_steps=2, learning_rate=1e-3))
    assert status.state == "succeeded", status.error
    saved = load_file(str(run_dir / "model" / "model.safetensors"))
    original = load_file(str(tiny_llama_dir / "model.safetensors"))
    changed = [k for k in original if k in saved and not torch.equal(original[k], saved[k])]
    assert len(changed) >= len(original) // 2
    assert not (run_dir / "adapter").exists()


@pytest.mark.gpuset
def test_qlora_on_cpu_updates_every_lora_weight_even_after_an_eval(workspace, tiny_llama_dir, data_file):
    from core.hardware import detect

    if not detect().bnb_4bit:
        pytest.skip("bitsandbytes 4-bit is not usable on this machine")
    # eval_on_start runs an eval-mode forward first: on AVX512-BF16 CPUs that used to freeze most LoRA gradients.
    run_dir, status = run_in_process(_spec(tiny_llama_dir, data_file, method="qlora", max_steps=2, eval_fraction=0.25, eval_on_start=True))
    assert status.state == "succeeded", status.error
    b = _lora_b_tensors(run_dir / "adapter")
    assert len(b) == 14, "2 layers x 7 linear layers get adapters"
    frozen = [k for k, t in b.items() if t.abs().sum() == 0]
    assert not frozen, f"LoRA weights that never received a gradient: {frozen}"


@pytest.mark.gpuset
def test_packing_run(workspace, tiny_llama_dir, data_file):
    run_dir, status = run_in_process(_spec(tiny_llama_dir, data_file, packing=True, max_steps=1, batch_size=1))
    assert status.state == "succeeded", status.error
    rows = [r for r in _metrics(run_dir) if "loss" in r]
    assert [r["step"] for r in rows] == [1] and rows[0]["tokens_per_s"] > 0


# ---------------------------------------------------------------- refusals and failures


def test_no_trainable_tokens_is_refused_before_training(workspace, tiny_llama_dir, tmp_path):
    long_prompt = [{"messages": [{"role": "user", "content": "word " * 80}, {"role": "assistant", "content": "ok"}]}] * 3
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in long_prompt))
    run_dir, status = run_in_process(_spec(tiny_llama_dir, data, max_length=32))
    assert status.state == "failed"
    assert "none of the 3" in status.error and "max_length" in status.error
    assert not (run_dir / "checkpoints").exists() and not _metrics(run_dir)


@pytest.mark.parametrize("fault, expected", [
    ("error@2", "injected failure at step 2"),
    ("oom@2", "Out of memory"),
])
def test_faults_end_as_failed_with_their_message(workspace, tiny_llama_dir, data_file, fault, expected, caplog):
    run_dir, status = run_in_process(_spec(tiny_llama_dir, data_file, fault_injection=fault))
    assert status.state == "failed"
    assert expected in status.error
    if fault.startswith("oom"):
        assert "batch_size 2" in status.error and "max_length 64" in status.error and "QLoRA" in status.error
    assert [r["step"] for r in _metrics(run_dir) if "loss" in r] == [1]
    assert "Traceback" in caplog.text, "the worker logs the traceback (worker.log when launched)"


# ---------------------------------------------------------------- real launches: stop, resume, kill


def _wait_rows(run_dir: Path, n: int, timeout: float = 120) -> list[dict]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = [r for r in _metrics(run_dir) if "loss" in r]
        if len(rows) >= n:
            return rows
        status = read_status(run_dir)
        assert not status.is_final, f"run ended early: {status.state} {status.error}\n{runs.log_tail(run_dir)}"
        time.sleep(0.2)
    raise AssertionError(f"fewer than {n} metric rows after {timeout} s")


@pytest.mark.gpuset
def test_stop_saves_then_resume_continues_then_kill_is_detected(workspace, tiny_llama_dir, data_file):
    run_dir = runs.create_run(_spec(tiny_llama_dir, data_file, max_steps=500, save_steps=1000))
    runs.launch(run_dir)
    _wait_rows(run_dir, 2)
    assert read_status(run_dir).state == "running"
    assert runs.stop(run_dir)
    stopped = runs.wait(run_dir, timeout=120)
    assert stopped.state == "stopped", stopped.error
    done = stopped.result["global_step"]
    assert 2 <= done < 500
    assert (run_dir / "checkpoints" / f"checkpoint-{done}" / "trainer_state.json").is_file(), "stop saves a checkpoint where it is"
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert runs.read_result(run_dir)["state"] == "stopped"

    pid = runs.relaunch(run_dir)
    _wait_rows(run_dir, len([r for r in _metrics(run_dir) if "loss" in r]) + 1)
    rows = _metrics(run_dir)
    starts = [i for i, r in enumerate(rows) if r.get("event") == "start"]
    assert [rows[i]["resumed_from"] for i in starts] == [0, done]
    first_resumed = next(r for r in rows[starts[1]:] if "loss" in r)
    assert first_resumed["step"] == done + 1, "the resumed run continues the global step, not from 0"
    assert read_status(run_dir).attempts == 2

    os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 15
    while read_status(run_dir).state != "failed" and time.time() < deadline:
        time.sleep(0.1)
    status = read_status(run_dir)
    assert status.state == "failed" and "ended without recording a result" in status.error
