"""The evaluate job: base vs fine-tuned variants on the task and on general ability → report.json with a verdict.

Order: load the task rows and the general sets; load the base; check every variant changes the base's
logits on a probe prompt (an adapter that changes nothing stops the job before any scoring); then score
the base and each variant: greedy answers + answer-token loss on the task rows, perplexity on the general
texts, log-likelihood multiple choice; finally the bootstrap intervals, paired deltas and verdicts.

When a variant was trained with a preference objective, or the spec names `pairs_dataset`, every model (and the adapter
a preference run started from) also scores held-out preference pairs: the report's preference section
(core.evaluate.preference; the scoring is core.evaluate.pairs).

An adapter variant on the same base reuses the loaded base (PEFT wraps it, then unloads), so the base
weights are read once; a merged model or another base is loaded on its own.
"""
from __future__ import annotations

import copy
import gc
import time
from contextlib import contextmanager
from typing import Any, Iterator

from core import generation
from core.download import ensure_weights
from core.evaluate import harness, scoring
from core.evaluate import judge as judging
from core.evaluate.general import MC_SET_NAME, TEXT_SET_NAME, GeneralSetError, load_general_sets
from core.evaluate.pairs import pair_accuracy, pair_logprobs
from core.evaluate.preference import PreferencePlan, build_section, plan_preference
from core.evaluate.report import ModelResult, build_report, metric_defs
from core.evaluate.spec import EvalSpec
from core.evaluate.task import TaskDataError, TaskSetup, load_task, score_answer
from core.evaluate.variants import Variant, adapter_chat_template, expand_variants
from core.models import LoadedModel, ModelLoadError, ModelSource, apply_adapter, load_model, unwrap_adapter
from core.runs.jobs import JobContext, JobError
from core.runs.spec import spec_to_dict
from core.scorers import choice_accuracy


class _Progress:
    """Fraction of the whole job done, from units of work (one prompt, one text, one item = one unit)."""

    def __init__(self, ctx: JobContext, total: int):
        self.ctx, self.total, self.done, self.stage = ctx, max(1, total), 0, ""

    def set_stage(self, stage: str) -> None:
        self.stage = stage
        self.ctx.progress(self.done / self.total, stage)

    def advance(self, units: int) -> None:
        self.done += units
        self.ctx.progress(self.done / self.total, self.stage)


def run(ctx: JobContext) -> dict:
    started = time.time()
    spec: EvalSpec = ctx.spec
    base_source = spec.base_source
    try:
        variants = expand_variants(spec.variants, spec.checkpoints_of, base_source)
        setup = load_task(spec.task_path(), spec.task_samples, spec.seed, spec.free_text_fields)
        general = load_general_sets(spec.general_samples, spec.mc_samples, spec.seed)
        pairs = plan_preference(str(spec.pairs_path()) if spec.pairs_dataset else "", spec.pair_samples, spec.seed, variants, base_source)
    except (ValueError, TaskDataError, GeneralSetError) as exc:
        raise JobError(str(exc)) from exc
    n_models = 1 + len(variants)
    per_model = 2 * len(setup.examples) + len(general.texts) + len(general.mc_items)
    pair_units = 2 * len(pairs.pairs) * (n_models + len(pairs.starts)) if pairs else 0
    judge_units = 2 * len(setup.examples) * len(variants) if spec.judge else 0
    progress = _Progress(ctx, n_models * per_model + len(variants) + pair_units + judge_units)
    ctx.log.info("evaluating %s against %d variant(s): %d task rows, %d texts, %d MC items",
                 base_source.label, len(variants), len(setup.examples), len(general.texts), len(general.mc_items))

    ensure_weights(ctx, [base_source] + [v.source for v in variants])  # Hub models not in the cache yet
    progress.set_stage(f"loading {base_source.label}")
    base = _load(base_source)
    base_probe = scoring.probe_logits(base.model, base.tokenizer)
    probe_differences = _check_variants_change_the_model(base, base_probe, variants, progress)

    results: list[ModelResult] = []
    pair_scores: dict = {}
    try:
        results.append(_evaluate(ctx, "base", "base", base, base_source, setup, general, spec, progress))
        _score_pairs(ctx, pairs, "base", base, spec, progress, pair_scores)
        for start in pairs.starts if pairs else []:
            with _variant_model(base, start) as loaded:
                _score_pairs(ctx, pairs, start.label, loaded, spec, progress, pair_scores)
        for variant in variants:
            with _variant_model(base, variant) as loaded:
                if variant.label not in probe_differences:  # a model of its own: probed now that it is loaded
                    probe_differences[variant.label] = _probe_variant(base, base_probe, variant, loaded)
                    progress.advance(1)
                result = _evaluate(ctx, variant.label, "variant", loaded, variant.source, setup, general, spec, progress)
                _score_pairs(ctx, pairs, variant.label, loaded, spec, progress, pair_scores)
            result.step, result.probe_difference = variant.step, probe_differences[variant.label]
            results.append(result)
    except generation.Stopped:
        ctx.log.info("stopped after %d of %d models; no report written", len(results), n_models)
        return {"stopped": True, "models_done": len(results)}

    lm_eval = _lm_eval(spec, base, variants, progress)
    try:
        judged = _judge_over_base(ctx, spec, setup, results, progress) if spec.judge else None
    except generation.Stopped:
        ctx.log.info("stopped while judging; no report written")
        return {"stopped": True, "models_done": len(results)}
    progress.set_stage("bootstrap intervals and verdict")
    report = build_report(
        spec=spec_to_dict(spec), task=_task_summary(setup), general=_general_summary(general),
        results=results, examples=_example_rows(setup), defs=metric_defs(setup.fields, setup.is_json),
        wall_seconds=time.time() - started, lm_eval=lm_eval, notes=_notes(setup, base),
        preference=build_section(pairs, pair_scores, variants, resamples=spec.bootstrap_samples, seed=spec.seed) if pairs else None,
    )
    if judged is not None:
        report["judge"] = judged
        lines = [judging.win_rate_line(label, summary, judged["judge"]) for label, summary in judged["variants"].items()]
        report["notes"] = list(report.get("notes") or []) + lines  # the Markdown / HTML exports list the notes
        if report.get("preference"):
            report["preference"]["win_rate"] = {"status": "judged", "note": "; ".join(lines)}
    ctx.write_result(report)
    ctx.log.info("report written: %s", ", ".join(v["headline"] for v in report["verdicts"]))
    return {"report": ctx.result_path().name, "verdicts": {v["label"]: v["verdict"] for v in report["verdicts"]},
            "wall_seconds": report["wall_seconds"]}


def _judge_over_base(ctx: JobContext, spec: EvalSpec, setup: TaskSetup, results: list[ModelResult], progress: _Progress) -> dict:
    """Every variant's task answers against the base's, judged in both orders by `spec.judge` (the win rate over base)."""
    source = ModelSource.from_dict(spec.judge)
    progress.set_stage(f"loading the judge {source.label}")
    judge_model = _load(source)
    progress.set_stage(f"judge {source.label}: variants against the base")
    prompts = [ex.prompt for ex in setup.examples]
    summaries = judging.win_rates_over_base(judge_model, prompts, results[0].answers, {r.label: r.answers for r in results[1:]},
                                            batch_size=spec.batch_size, resamples=spec.bootstrap_samples, seed=spec.seed,
                                            should_stop=lambda: ctx.stop_requested, on_progress=progress.advance)
    for label, summary in summaries.items():
        ctx.log.info("%s", judging.win_rate_line(label, summary, source.label))
    return {"judge": source.label, "rubric": judging.DEFAULT_RUBRIC, "variants": summaries}


def _load(source: ModelSource) -> LoadedModel:
    try:
        return load_model(source)
    except ModelLoadError as exc:
        raise JobError(str(exc)) from exc


def _tokenizer_for(tokenizer: Any, source: ModelSource) -> Any:
    """Prompts for an adapter are rendered with the template it was trained with, when it saved one."""
    template = adapter_chat_template(source.adapter) if source.adapter else None
    if not template or template == getattr(tokenizer, "chat_template", None):
        return tokenizer
    tokenizer = copy.copy(tokenizer)
    tokenizer.chat_template = template
    return tokenizer


def _same_base(a: ModelSource, b: ModelSource) -> bool:
    return (a.kind, a.ref, a.revision, a.trust_remote_code) == (b.kind, b.ref, b.revision, b.trust_remote_code)


@contextmanager
def _variant_model(base: LoadedModel, variant: Variant) -> Iterator[LoadedModel]:
    """The variant as a loaded model: the shared base wrapped with the adapter (unwrapped afterwards), or
    its own load when it is a merged model / another base."""
    source = variant.source
    if _wraps_base(base, variant):
        try:
            wrapped = apply_adapter(base.model, source.adapter)
        except ModelLoadError as exc:
            raise JobError(f"{variant.label}: {exc}") from exc
        wrapped.eval()
        try:
            yield LoadedModel(model=wrapped, tokenizer=_tokenizer_for(base.tokenizer, source), info=base.info, source=source)
        finally:
            unwrap_adapter(wrapped)  # removes the adapter layers without merging: base.model is the base again
        return
    try:
        loaded = load_model(source)
    except ModelLoadError as exc:
        raise JobError(f"{variant.label}: {exc}") from exc
    loaded.tokenizer = _tokenizer_for(loaded.tokenizer, source)
    try:
        yield loaded
    finally:
        del loaded
        gc.collect()


def _wraps_base(base: LoadedModel, variant: Variant) -> bool:
    """The variant is an adapter on the loaded base (wrapped in place), not a model loaded on its own."""
    source = variant.source
    return bool(source.adapter) and _same_base(source, base.source) and not base.source.adapter


def _check_variants_change_the_model(base: LoadedModel, base_probe: Any, variants: list[Variant], progress: _Progress) -> dict[str, float]:
    """The probe check of every adapter on the base, before any scoring. A variant that is a model of its own (merged,
    pruned, distilled) is checked by _probe_variant when it is loaded for its scoring: loaded once, not twice."""
    differences = {}
    for variant in variants:
        if not _wraps_base(base, variant):
            continue
        progress.set_stage(f"checking that {variant.label} changes the model")
        with _variant_model(base, variant) as loaded:
            differences[variant.label] = _probe_variant(base, base_probe, variant, loaded)
        progress.advance(1)
    return differences


def _probe_variant(base: LoadedModel, base_probe: Any, variant: Variant, loaded: LoadedModel) -> float:
    """The variant's largest logit difference from the base on the probe prompt; a JobError when it changes nothing."""
    # the same prompt ids as the base (an adapter's own chat template must not mask an unchanged model)
    tokenizer = base.tokenizer if _same_base(variant.source, base.source) else loaded.tokenizer
    difference = scoring.probe_difference(base_probe, scoring.probe_logits(loaded.model, tokenizer))
    if difference < scoring.PROBE_TOLERANCE:
        what = f"the adapter {variant.source.adapter}" if variant.source.adapter else f"the model {variant.source.ref}"
        raise JobError(
            f"adapter not applied / no effect: {variant.label} gives the same logits as the base model on a probe prompt "
            f"(largest difference {difference:.1e}), so {what} changes nothing. A LoRA adapter whose B matrices are still "
            "zero (untrained, or saved before the first optimizer step) does this; check that training ran and that this "
            "is the adapter folder it saved."
        )
    return difference


def _evaluate(ctx: JobContext, label: str, role: str, loaded: LoadedModel, source: ModelSource, setup: TaskSetup,
              general, spec: EvalSpec, progress: _Progress) -> ModelResult:
    started, cpu_started = time.time(), time.process_time()
    model, tokenizer = loaded.model, loaded.tokenizer
    common = {"batch_size": spec.batch_size, "should_stop": lambda: ctx.stop_requested, "on_progress": progress.advance}
    stage_seconds: dict[str, float] = {}
    stage_started = time.time()

    def stage_done(name: str) -> None:
        nonlocal stage_started
        stage_seconds[name] = round(time.time() - stage_started, 2)
        stage_started = time.time()

    progress.set_stage(f"{label}: answering {len(setup.examples)} task prompts")
    prompts = [generation.prompt_ids(ex.prompt, tokenizer) for ex in setup.examples]
    answers = generation.greedy_answers(model, tokenizer, prompts, max_new_tokens=spec.max_new_tokens, **common)
    rows = [score_answer(answer, ex.reference, setup) for answer, ex in zip(answers, setup.examples)]
    stage_done("generate")
    progress.set_stage(f"{label}: loss on the reference answers")
    try:
        task_nll = scoring.conversation_nll(model, tokenizer, [ex.messages for ex in setup.examples], max_length=spec.max_length, **common)
    except scoring.MaskingError as exc:
        raise JobError(str(exc)) from exc
    stage_done("task_loss")
    progress.set_stage(f"{label}: perplexity on {len(general.texts)} general texts")
    text_nll = scoring.text_nll(model, tokenizer, [t["text"] for t in general.texts], max_length=spec.max_length, **common)
    stage_done("general_perplexity")
    progress.set_stage(f"{label}: {len(general.mc_items)} multiple-choice items")
    logliks = scoring.choice_logliks(model, tokenizer, general.mc_items, **common)
    stage_done("multiple_choice")
    mc = []
    for item, values in zip(general.mc_items, logliks):
        acc, acc_norm = choice_accuracy(values, item["choices"], int(item["gold"]))
        mc.append({"id": item.get("id"), "logliks": values, "acc": acc, "acc_norm": acc_norm})
    result = ModelResult(
        label=label, role=role, source=source.as_dict(), answers=answers, task_rows=rows,
        task_nll=[(r.nll, r.tokens) for r in task_nll], text_nll=[(r.nll, r.tokens) for r in text_nll], mc=mc,
        seconds=time.time() - started, cpu_seconds=time.process_time() - cpu_started, stage_seconds=stage_seconds,
    )
    _log_summary(ctx, result)
    return result


def _score_pairs(ctx: JobContext, plan: PreferencePlan | None, label: str, loaded: LoadedModel, spec: EvalSpec, progress: _Progress,
                 out: dict) -> None:
    """The preference section's pair log-probabilities of one model (every model renders the pairs with the template
    the preference run trained with, so policy and reference score the same tokens)."""
    if plan is None or not plan.pairs:
        return
    progress.set_stage(f"{label}: {len(plan.pairs)} preference pairs")
    try:
        out[label] = pair_logprobs(loaded.model, loaded.tokenizer, plan.pairs, chat_template=plan.chat_template, max_length=spec.max_length,
                                   batch_size=spec.batch_size, should_stop=lambda: ctx.stop_requested, on_progress=progress.advance)
    except ValueError as exc:
        raise JobError(f"pairs ({plan.source}): {exc}") from exc
    ctx.log.info("%s: pair accuracy (log-prob) %.1f%% on %d pairs", label,
                 100 * pair_accuracy(out[label]), len(out[label]))


def _log_summary(ctx: JobContext, result: ModelResult) -> None:
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    task_tokens = sum(t for _, t in result.task_nll)
    text_tokens = sum(t for _, t in result.text_nll)
    row = {
        "model": result.label,
        "task_score": mean([r["task_score"] for r in result.task_rows]),
        "json_valid": mean([r["json_valid"] for r in result.task_rows if "json_valid" in r]),
        "task_loss": sum(n for n, _ in result.task_nll) / task_tokens if task_tokens else None,
        "general_loss": sum(n for n, _ in result.text_nll) / text_tokens if text_tokens else None,
        "general_mc_acc_norm": mean([m["acc_norm"] for m in result.mc]),
        "seconds": round(result.seconds, 2),
        "cpu_seconds": round(result.cpu_seconds, 2),
    }
    ctx.metrics(**row)
    ctx.log.info("%s: %s", result.label, row)


def _lm_eval(spec: EvalSpec, base: LoadedModel, variants: list[Variant], progress: _Progress) -> dict:
    if not spec.lm_eval_tasks:
        return {"status": "not requested"}
    if not harness.lm_eval_available():
        return harness.skipped_note(spec.lm_eval_tasks)
    progress.set_stage("lm-eval tasks")
    out = {"status": "ran", "tasks": spec.lm_eval_tasks, "models": {}}
    out["models"]["base"] = harness.run_lm_eval(base.model, base.tokenizer, spec.lm_eval_tasks, limit=spec.lm_eval_limit,
                                                batch_size=spec.batch_size)
    for variant in variants:
        with _variant_model(base, variant) as loaded:
            out["models"][variant.label] = harness.run_lm_eval(loaded.model, loaded.tokenizer, spec.lm_eval_tasks,
                                                                limit=spec.lm_eval_limit, batch_size=spec.batch_size)
    failed = [label for label, r in out["models"].items() if r.get("status") != "ran"]
    if failed:
        out["status"] = "failed"
        out["note"] = "; ".join(f"{label}: {out['models'][label].get('note', '')}" for label in failed)
    else:
        out["note"] = f"tasks {', '.join(spec.lm_eval_tasks)}, limit {spec.lm_eval_limit or 'none'}"
    return out


def _task_summary(setup: TaskSetup) -> dict:
    return {"source": setup.source, "n": len(setup.examples), "n_rows": setup.n_rows, "is_json": setup.is_json,
            "fields": setup.field_methods()}


def _general_summary(general) -> dict:
    return {"text_set": TEXT_SET_NAME, "mc_set": MC_SET_NAME, "n_texts": len(general.texts), "n_mc": len(general.mc_items)}


def _example_rows(setup: TaskSetup) -> list[dict]:
    rows = []
    for position, ex in enumerate(setup.examples):
        user = [m["content"] for m in ex.prompt if m.get("role") == "user"]
        rows.append({"position": position, "row": ex.index, "prompt": user[-1] if user else ex.prompt[-1]["content"],
                     "reference": ex.reference})
    return rows


def _notes(setup: TaskSetup, base: LoadedModel) -> list[str]:
    notes = []
    if not getattr(base.tokenizer, "chat_template", None):
        notes.append("the tokenizer has no chat template: prompts were laid out as plain 'role: content' lines")
    if setup.is_json and setup.free_text_fields:
        notes.append(f"free-text JSON fields scored with ROUGE-L F1: {', '.join(setup.free_text_fields)}")
    return notes
