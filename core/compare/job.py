"""The `feature_extraction` and `method_comparison` jobs.

The comparison is an orchestrator: every method trains as its own `train` run (a real worker, so each one's
peak memory is its own process's and its curves, card and artifact live where the Train, Chat and Evaluate
pages find them), then one `evaluate` run scores all of them against the base with core.evaluate, and the
feature-extraction baseline runs as its own job. Those children take the exclusive job lock in turn; the
orchestrator holds none (it only waits), and a Stop is passed on to the child that is running.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from core.compare.features import FeatureError, encode_with_minilm, encode_with_model, feature_baseline, load_labelled
from core.compare.spec import FeatureExtractionSpec, MethodComparisonSpec
from core.compare.table import to_csv
from core.embeddings import EMBEDDING_MODEL_NAME
from core.evaluate.spec import EvalSpec
from core.hardware import detect
from core.models import ModelLoadError, load_model
from core.runs import create_run, launch, read_status, stop
from core.runs.jobs import JobContext, JobError, read_result
from core.runs.spec import spec_to_dict
from core.train.data import data_file
from core.train.methods import METHODS
from core.train.preflight import training_refusal
from core.train.spec import TrainSpec
from core.train.trainer import MemoryProbe
from core.workspace import atomic_write_text

HEAD_FILE = "head.json"
COMPARISON_CSV = "comparison.csv"
CHILDREN_FILE = "children.json"
POLL_SECONDS = 0.2  # a status.json read: a child that ends waits at most this long for the next step (runs.wait polls as often)


# ---------------------------------------------------------------- feature extraction


def run_feature_extraction(ctx: JobContext) -> dict:
    started = time.time()
    spec: FeatureExtractionSpec = ctx.spec
    try:
        train = load_labelled(data_file(spec.dataset), spec.label_field)
        test = load_labelled(data_file(spec.test_dataset), spec.label_field)
    except FeatureError as exc:
        raise JobError(str(exc)) from None
    probe = MemoryProbe(detect().device)
    ctx.progress(0.05, f"{len(train.texts)} training and {len(test.texts)} test rows; loading the encoder")
    if spec.encoder == "minilm":
        encode, name, encoder_params = encode_with_minilm, EMBEDDING_MODEL_NAME, None
    else:
        try:
            loaded = load_model(spec.model_source)
        except ModelLoadError as exc:
            raise JobError(str(exc)) from None
        name, encoder_params = loaded.info.name, loaded.info.parameters

        def encode(texts):
            return encode_with_model(loaded, texts, batch_size=spec.batch_size, max_length=spec.max_length,
                                     should_stop=lambda: ctx.stop_requested)

    ctx.progress(0.2, f"encoding {len(train.texts) + len(test.texts)} texts with the frozen {name}")
    try:
        result = feature_baseline(train, test, spec.label_field, encode, name, seed=spec.seed)
    except FeatureError as exc:
        raise JobError(str(exc)) from None
    except InterruptedError:
        return {"stopped": True}
    report = {**result.as_dict(), "encoder_params": encoder_params, "peak_memory_bytes": probe.peak(),
              "wall_seconds": round(time.time() - started, 2), "train_dataset": train.source, "test_dataset": test.source}
    ctx.write_json(HEAD_FILE, result.head)
    ctx.write_result({**report, "head_bytes": (ctx.run_dir / HEAD_FILE).stat().st_size})
    ctx.log.info("feature extraction (%s): %.1f%% accuracy on %d test rows (majority label %.1f%%)", name, 100 * result.accuracy,
                 result.test_rows, 100 * result.majority_accuracy)
    return {"accuracy": result.accuracy, "majority_accuracy": result.majority_accuracy, "report": ctx.result_path().name}


# ---------------------------------------------------------------- method comparison


def run_comparison(ctx: JobContext) -> dict:
    started = time.time()
    spec: MethodComparisonSpec = ctx.spec
    children: dict[str, str] = ctx.read_json(CHILDREN_FILE, {}) or {}  # step -> run folder (a resumed comparison reuses them)
    steps = len(spec.methods) + 1 + (1 if spec.feature_field.strip() else 0)
    rows: dict[str, dict] = {}
    for n, method in enumerate(spec.methods):
        if ctx.stop_requested:
            break
        refusal = _refusal(spec, method)
        if refusal:  # the train job's own refusal, asked here: no worker started only to give it
            ctx.log.info("%s: refused: %s", METHODS[method].label, refusal)
            rows[method] = {**train_row(spec, method, None), "state": "failed", "error": refusal}
        else:
            run_dir = _child(ctx, children, method, lambda m=method: train_spec_for(spec, m))
            if run_dir is not None:
                _follow(ctx, run_dir, n, steps, METHODS[method].label)
            rows[method] = train_row(spec, method, run_dir)
        ctx.metrics(step=n + 1, method=method, **{k: v for k, v in rows[method].items() if k != "method"})

    report = None
    trained = {m: r for m, r in rows.items() if r["state"] in ("succeeded", "stopped") and r.get("artifact")}
    if trained and not ctx.stop_requested:
        run_dir = _child(ctx, children, "evaluate", lambda: evaluate_spec_for(spec, trained))
        _follow(ctx, run_dir, len(spec.methods), steps, "evaluation")
        report = read_result(run_dir, "evaluate")
        if report is None:
            note = _child_error(run_dir)
            for row in trained.values():
                row["error"] = row.get("error") or f"evaluation failed: {note}"
    base_scores = _scores(report, "base", spec.feature_field) if report else {}
    for method, row in rows.items():
        row.update(_scores(report, method, spec.feature_field) if report else {})

    if spec.feature_field.strip() and not ctx.stop_requested:
        run_dir = _child(ctx, children, "feature_extraction", lambda: feature_spec_for(spec))
        _follow(ctx, run_dir, steps - 1, steps, "feature extraction")
        rows["feature_extraction"] = feature_row(spec, run_dir, base_scores)

    table = list(rows.values())
    result = {"spec": spec_to_dict(spec), "rows": table, "base": base_scores,
              "evaluation_run": children.get("evaluate"), "wall_seconds": round(time.time() - started, 1),
              "stopped": ctx.stop_requested, "notes": comparison_notes(spec)}
    ctx.write_result(result)
    atomic_write_text(ctx.path(COMPARISON_CSV), to_csv(table))
    done = [r for r in table if r["state"] == "succeeded"]
    return {"table": ctx.result_path().name, "csv": COMPARISON_CSV, "methods": len(table), "succeeded": len(done)}


def comparison_notes(spec: MethodComparisonSpec) -> list[str]:
    return [f"Same data ({spec.dataset}), seed {spec.seed}, {spec.max_steps} steps of {spec.batch_size} rows for every method; "
            "learning rates per method: " + ", ".join(f"{m} {spec.learning_rate(m):g}" for m in spec.methods) + ".",
            "Bottleneck adapters (the chapter's 'adapters' row) are not offered: the `adapters` library pins transformers 4.x."]


def train_spec_for(spec: MethodComparisonSpec, method: str) -> Any:
    return TrainSpec(
        name=f"{spec.name or 'compare'}-{method}", model=dict(spec.model), dataset=spec.dataset, method=method,
        max_steps=spec.max_steps, batch_size=spec.batch_size, max_length=spec.max_length, seed=spec.seed,
        learning_rate=spec.learning_rate(method), warmup_ratio=0.0, eval_fraction=0.0, eval_on_start=False,
        save_steps=spec.max_steps, save_total_limit=1, lora_r=spec.lora_r, lora_alpha=2 * spec.lora_r,
        num_virtual_tokens=spec.num_virtual_tokens, frozen_layers=spec.frozen_layers, logging_steps=1,
    )


def _refusal(spec: MethodComparisonSpec, method: str) -> str | None:
    """Why the train run of `method` would fail at once (training_refusal, as the train job asks it), or None; an
    invalid spec is left to _child, which records it."""
    try:
        train_spec = train_spec_for(spec, method)
    except ValueError:
        return None
    return training_refusal(train_spec, detect(), launching_here=False)


def evaluate_spec_for(spec: MethodComparisonSpec, trained: dict[str, dict]) -> Any:
    variants = []
    for method, row in trained.items():
        model = {**spec.model, "adapter": row["artifact"]} if METHODS[method].peft else {"kind": "local", "ref": row["artifact"]}
        variants.append({"label": method, "model": model})
    return EvalSpec(name=f"{spec.name or 'compare'}-evaluate", base=dict(spec.model), variants=variants, task_dataset=spec.eval_dataset,
                    task_samples=spec.task_samples, general_samples=spec.general_samples, mc_samples=spec.mc_samples,
                    max_new_tokens=spec.max_new_tokens, seed=spec.seed, bootstrap_samples=200)


def feature_spec_for(spec: MethodComparisonSpec) -> Any:
    return FeatureExtractionSpec(name=f"{spec.name or 'compare'}-features", model=dict(spec.model), encoder=spec.feature_encoder,
                                 dataset=spec.dataset, test_dataset=spec.eval_dataset, label_field=spec.feature_field.strip(),
                                 seed=spec.seed)


def _child(ctx: JobContext, children: dict, key: str, make_spec) -> Path | None:
    """The child run for `key`: the one recorded earlier when it succeeded, else a new one (None if its spec is invalid)."""
    recorded = children.get(key)
    if recorded and Path(recorded).is_dir() and read_status(Path(recorded)).state == "succeeded":
        return Path(recorded)
    try:
        spec = make_spec()
    except ValueError as exc:
        ctx.log.warning("%s: not run: %s", key, exc)
        children[key] = ""
        children[f"{key}:error"] = str(exc)
        ctx.write_json(CHILDREN_FILE, children)
        return None
    run_dir = create_run(spec)
    children[key] = str(run_dir)
    ctx.write_json(CHILDREN_FILE, children)
    return run_dir


def _follow(ctx: JobContext, run_dir: Path | None, index: int, steps: int, what: str) -> None:
    """Launch the child (unless it already finished) and wait for it, passing a Stop on and mirroring its progress."""
    if run_dir is None or read_status(run_dir).state == "succeeded":
        return
    ctx.log.info("%s: %s", what, run_dir.name)
    launch(run_dir)
    stop_sent = False
    while True:
        status = read_status(run_dir)
        if status.is_final:
            ctx.log.info("%s: %s%s", what, status.state, f" ({status.error})" if status.error else "")
            return
        if ctx.stop_requested and not stop_sent:
            stop(run_dir)
            stop_sent = True
        ctx.progress((index + status.progress) / steps, f"{what}: {status.message or status.state}")
        time.sleep(POLL_SECONDS)


def _child_error(run_dir: Path | None) -> str:
    if run_dir is None:
        return "not started"
    status = read_status(run_dir)
    return status.error or status.state


def train_row(spec: MethodComparisonSpec, method: str, run_dir: Path | None) -> dict:
    info = METHODS[method]
    row: dict[str, Any] = {"method": method, "label": info.label, "mergeable": info.mergeable, "learning_rate": spec.learning_rate(method)}
    if run_dir is None:
        return {**row, "state": "not run", "error": "invalid settings for this method"}
    status = read_status(run_dir)
    card = read_result(run_dir, "train") or {}
    outputs = card.get("outputs") or {}
    final = card.get("final_metrics") or {}
    return {
        **row, "state": status.state, "error": status.error or "", "run_id": run_dir.name,
        "artifact": outputs.get("adapter") or outputs.get("model"),
        "trainable_params": card.get("trainable_params"), "total_params": card.get("total_params"),
        "trainable_share": card.get("trainable_share"), "artifact_bytes": card.get("artifact_bytes"),
        "predicted_memory_bytes": card.get("predicted_memory_bytes"), "peak_memory_bytes": card.get("peak_memory_bytes"),
        "tokens_per_s": card.get("tokens_per_s"), "train_seconds": card.get("train_seconds"),
        "wall_seconds": card.get("wall_time_s"), "final_loss": final.get("loss"), "steps": final.get("global_step"),
    }


def _scores(report: dict | None, label: str, feature_field: str) -> dict:
    model = next((m for m in (report or {}).get("models", []) if m["label"] == label), None)
    if model is None:
        return {}
    metrics = model["metrics"]
    value = lambda key: (metrics.get(key) or {}).get("value")  # noqa: E731
    return {"task_score": value("task_score"), "general_score": value("general_mc_acc_norm"),
            "general_perplexity": value("general_perplexity"),
            "label_accuracy": value(f"field:{feature_field.strip()}") if feature_field.strip() else None,
            "json_valid": value("json_valid")}


def feature_row(spec: MethodComparisonSpec, run_dir: Path | None, base_scores: dict) -> dict:
    row: dict[str, Any] = {"method": "feature_extraction", "label": f"Feature extraction ({spec.feature_encoder}) → {spec.feature_field}",
                           "mergeable": False}
    if run_dir is None:
        return {**row, "state": "not run", "error": "invalid settings"}
    status = read_status(run_dir)
    report = read_result(run_dir, "feature_extraction") or {}
    total = (report.get("encoder_params") or 0) + (report.get("head_params") or 0)
    return {
        **row, "state": status.state, "error": status.error or "", "run_id": run_dir.name,
        "trainable_params": report.get("head_params"), "total_params": total or None,
        "trainable_share": (report["head_params"] / total) if total and report.get("head_params") else None,
        "artifact_bytes": os.path.getsize(run_dir / HEAD_FILE) if (run_dir / HEAD_FILE).is_file() else None,
        "peak_memory_bytes": report.get("peak_memory_bytes"), "wall_seconds": report.get("wall_seconds"),
        "train_seconds": (report.get("encode_seconds") or 0) + (report.get("fit_seconds") or 0) if report else None,
        "label_accuracy": 100 * report["accuracy"] if "accuracy" in report else None,
        "majority_accuracy": 100 * report["majority_accuracy"] if "majority_accuracy" in report else None,
        # The backbone is frozen and untouched: its general ability is the base model's by construction.
        "general_score": base_scores.get("general_score"), "general_perplexity": base_scores.get("general_perplexity"),
    }
