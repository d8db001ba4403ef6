"""The evaluate job: adapter probe, end-to-end through the worker's code (in this process), checkpoints, stop, spec validation,
and (slow) the demo fine-tune's gain in JSON validity on the embedded model."""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import pytest
from inprocess import run_in_process

from core import runs
from core.evaluate import job as evaluate_job
from core.evaluate.job import run as run_eval_job
from core.evaluate.report import render_html, render_markdown, top_changes
from core.evaluate.spec import EvalSpec
from core.evaluate.variants import checkpoint_variants
from core.models import ModelSource
from core.runs.jobs import JobContext, JobError, read_result, result_path
from core.runs.spec import spec_from_dict, spec_to_yaml

TINY_SIZES = {"task_samples": 4, "general_samples": 4, "mc_samples": 6, "max_new_tokens": 8, "bootstrap_samples": 200, "batch_size": 4}


def make_adapter(model_dir: Path, target: Path, *, random_weights: bool, seed: int = 0) -> Path:
    """A LoRA adapter for the tiny model: random A and B (changes the logits) or PEFT's default zero B (changes nothing)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=not random_weights)
    get_peft_model(model, config).save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def adapters(tiny_llama_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "random": make_adapter(tiny_llama_dir, root / "random", random_weights=True),
        "random2": make_adapter(tiny_llama_dir, root / "random2", random_weights=True, seed=1),
        "zero": make_adapter(tiny_llama_dir, root / "zero", random_weights=False),
    }


def tiny_spec(tiny_llama_dir: Path, adapter: Path | None = None, **changes) -> dict:
    base = {"kind": "local", "ref": str(tiny_llama_dir)}
    variants = [{"label": "fine-tuned", "model": {**base, "adapter": str(adapter)}}] if adapter else []
    return {"kind": "evaluate", "name": "tiny", "base": base, "variants": variants, **TINY_SIZES, **changes}


def in_process_context(run_dir: Path, spec: dict, stop_after: float | None = None) -> JobContext:
    started = time.time()
    return JobContext.in_process(run_dir, spec, log=logging.getLogger("test.evaluate"),
                                 stop=lambda: stop_after is not None and time.time() - started > stop_after)


def test_spec_validation_and_round_trip(tiny_llama_dir):
    spec = EvalSpec.from_dict(tiny_spec(tiny_llama_dir, Path("/some/adapter")))
    again = spec_from_dict(EvalSpec, __import__("yaml").safe_load(spec_to_yaml(spec)))
    assert again == spec and again.task_samples == 4
    assert EvalSpec.from_dict({"checkpoints_of": "/x"}).forgetting_threshold == 3.0
    with pytest.raises(ValueError, match="at least one fine-tuned variant"):
        EvalSpec.from_dict({"base": {"kind": "embedded"}})
    with pytest.raises(ValueError, match="variants\\[0\\] needs a label"):
        EvalSpec.from_dict({"variants": [{"model": {"kind": "embedded"}}]})
    with pytest.raises(ValueError, match="used twice"):
        EvalSpec.from_dict({"variants": [{"label": "a", "model": {}}, {"label": "a", "model": {}}]})
    with pytest.raises(ValueError, match="task_samples"):
        EvalSpec.from_dict({"variants": [{"label": "a", "model": {}}], "task_samples": -1})
    with pytest.raises(ValueError, match="unknown field"):
        EvalSpec.from_dict({"variants": [{"label": "a", "model": {}}], "samples": 3})


def test_adapter_wrap_and_unload_leave_the_base_unchanged(tiny_llama_dir, adapters):
    from core.evaluate import scoring
    from core.evaluate.job import _variant_model
    from core.evaluate.variants import Variant
    from core.models import load_model

    base_source = ModelSource("local", str(tiny_llama_dir))
    base = load_model(base_source)
    before = scoring.probe_logits(base.model, base.tokenizer)
    for name in ("random", "random2"):
        with _variant_model(base, Variant(name, base_source.with_adapter(str(adapters[name])))) as loaded:
            assert scoring.probe_difference(before, scoring.probe_logits(loaded.model, loaded.tokenizer)) > 1e-3
    assert scoring.probe_difference(before, scoring.probe_logits(base.model, base.tokenizer)) == 0.0


def test_zero_initialised_adapter_stops_with_a_clear_error(workspace, tiny_llama_dir, adapters):
    run_dir, status = run_in_process(tiny_spec(tiny_llama_dir, adapters["zero"]))  # the worker's code, in this process
    assert status.state == "failed", runs.log_tail(run_dir)
    assert "adapter not applied / no effect" in status.error
    assert not result_path(run_dir, "evaluate").exists()


def test_a_model_of_its_own_is_probed_when_loaded_for_scoring_once_not_twice(workspace, tiny_llama_dir, tmp_path, monkeypatch):
    """A variant that is a model of its own (merged / pruned / distilled) is loaded once: probed, then scored. An unchanged
    copy of the base still stops with the probe's error, naming the model."""
    import torch
    from transformers import AutoModelForCausalLM

    same = Path(shutil.copytree(tiny_llama_dir, tmp_path / "same-weights"))
    changed = Path(shutil.copytree(tiny_llama_dir, tmp_path / "changed"))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    torch.manual_seed(0)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.add_(0.05 * torch.randn_like(model.model.layers[0].mlp.down_proj.weight))
    model.save_pretrained(changed)
    loads: list[str] = []
    real = evaluate_job.load_model
    monkeypatch.setattr(evaluate_job, "load_model", lambda source, *a, **k: loads.append(source.ref) or real(source, *a, **k))
    finished = {}
    for folder, label in ((changed, "changed"), (same, "same")):
        spec = {**tiny_spec(tiny_llama_dir), "variants": [{"label": label, "model": {"kind": "local", "ref": str(folder)}}]}
        finished[label] = run_in_process(spec)
        assert loads.count(str(folder)) == 1, loads
    report = read_result(finished["changed"][0], "evaluate")
    assert [m["label"] for m in report["models"]] == ["base", "changed"] and report["models"][1]["probe_difference"] > 0
    run_dir, status = finished["same"]
    assert status.state == "failed" and "adapter not applied / no effect" in status.error and str(same) in status.error, status.error
    assert not result_path(run_dir, "evaluate").exists()


def test_end_to_end_job_writes_a_complete_report(workspace, tiny_llama_dir, adapters):
    spec = tiny_spec(tiny_llama_dir, adapters["random"], lm_eval_tasks=["hellaswag"])
    run_dir, status = run_in_process(spec)  # the worker's code, in this process: the worker process is not what this tests
    assert status.state == "succeeded", (status.error, runs.log_tail(run_dir))
    assert status.progress == 1.0 and status.result["report"] == result_path(run_dir).name == "report.json"
    report = read_result(run_dir, "evaluate")
    for section in ("spec", "definitions", "thresholds", "metrics", "task", "general", "models", "comparisons", "verdicts", "examples",
                    "lm_eval"):
        assert section in report, section
    assert [m["label"] for m in report["models"]] == ["base", "fine-tuned"]
    assert report["task"]["is_json"] and report["task"]["fields"] == {"summary": "rouge_l", "next_step": "exact", "urgency": "exact"}
    base_metrics = report["models"][0]["metrics"]
    for key in ("task_score", "json_valid", "task_perplexity", "general_mc_acc_norm", "general_perplexity"):
        entry = base_metrics[key]
        assert entry["low"] <= entry["value"] <= entry["high"], key
    assert report["models"][1]["probe_difference"] > 0
    assert set(report["models"][0]["stage_seconds"]) == {"generate", "task_loss", "general_perplexity", "multiple_choice"}
    verdict = report["verdicts"][0]
    assert verdict["verdict"] in ("improved", "no effect", "forgetting") and verdict["advice"]
    assert "general_perplexity" in report["comparisons"]["fine-tuned"]
    assert len(report["examples"]) == 4 and set(report["examples"][0]["answers"]) == {"base", "fine-tuned"}
    assert report["lm_eval"]["status"] == "skipped" and "lm-eval is not installed" in report["lm_eval"]["note"]
    metrics_rows = runs.read_all_metrics(run_dir / runs.METRICS_FILE)
    assert [r["model"] for r in metrics_rows] == ["base", "fine-tuned"]
    markdown, page = render_markdown(report), render_html(report)
    assert "## Verdict" in markdown and verdict["headline"] in markdown
    assert "<h2>Verdict</h2>" in page and "<script" not in page
    regressions, wins = top_changes(report, "fine-tuned")
    assert all(r["delta"] < 0 for r in regressions) and all(w["delta"] > 0 for w in wins)


def _fake_train_run(root: Path, tiny_llama_dir: Path, adapters: dict) -> Path:
    import shutil

    run = root / "train-run"
    for step, name in ((2, "random"), (4, "random2")):
        shutil.copytree(adapters[name], run / "checkpoints" / f"checkpoint-{step}")
    shutil.copytree(adapters["random2"], run / "adapter")
    (run / "spec.yaml").write_text(f"kind: train\nmodel:\n  kind: local\n  ref: {tiny_llama_dir}\n")
    return run


def test_checkpoints_of_a_training_run_make_the_learning_vs_forgetting_curve(workspace, tmp_path, tiny_llama_dir, adapters):
    train_run = _fake_train_run(tmp_path, tiny_llama_dir, adapters)
    variants = checkpoint_variants(train_run, ModelSource())  # the adapters go on the model the run trained
    assert [(v.label, v.step) for v in variants] == [("step 2", 2), ("step 4", 4), ("final", 5)]
    assert all(v.source.ref == str(tiny_llama_dir) and v.source.adapter for v in variants)
    spec = tiny_spec(tiny_llama_dir, checkpoints_of=str(train_run), bootstrap_samples=50)
    run_dir = tmp_path / "eval"
    run_dir.mkdir()
    result = run_eval_job(in_process_context(run_dir, spec))
    report = read_result(run_dir, "evaluate")
    assert set(result["verdicts"]) == {"step 2", "step 4", "final"}
    assert [p["step"] for p in report["checkpoints"]] == [0, 2, 4, 5]
    assert all(p["task_score"] is not None and p["general_score"] is not None for p in report["checkpoints"])
    from core.evaluate.charts import checkpoint_curve, delta_bars, metric_bars

    assert checkpoint_curve(report) is not None and delta_bars(report) is not None
    assert len(metric_bars(report, "points").data) == 4


def test_stop_request_ends_without_a_report(tmp_path, tiny_llama_dir, adapters):
    spec = tiny_spec(tiny_llama_dir, adapters["random"])
    result = run_eval_job(in_process_context(tmp_path, spec, stop_after=0.0))
    assert result["stopped"] and not result_path(tmp_path, "evaluate").exists()


def test_missing_task_dataset_is_a_clear_job_error(tmp_path, tiny_llama_dir, adapters):
    spec = tiny_spec(tiny_llama_dir, adapters["random"], task_dataset=str(tmp_path / "nope.jsonl"))
    with pytest.raises(JobError, match="task dataset not found"):
        run_eval_job(in_process_context(tmp_path, spec))


def test_an_adapter_is_prompted_with_the_chat_template_it_was_trained_with(tiny_llama_dir, adapters, tmp_path):
    import shutil

    from core.evaluate.job import _tokenizer_for
    from core.models import load_tokenizer

    tokenizer = load_tokenizer(ModelSource("local", str(tiny_llama_dir)))
    assert _tokenizer_for(tokenizer, ModelSource("local", str(tiny_llama_dir), adapter=str(adapters["random"]))) is tokenizer
    adapter = shutil.copytree(adapters["random"], tmp_path / "templated")
    (adapter / "chat_template.jinja").write_text("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                                                 "{% if add_generation_prompt %}<assistant>{% endif %}")
    templated = _tokenizer_for(tokenizer, ModelSource("local", str(tiny_llama_dir), adapter=str(adapter)))
    rendered = templated.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered == "<user>hi\n<assistant>" and tokenizer.chat_template != templated.chat_template
