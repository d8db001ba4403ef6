"""Optional lm-evaluation-harness tasks on the already loaded models. Never required: when `lm-eval` is not
installed (or a task cannot be loaded, e.g. its data set needs the Hub while offline) the report says so."""
from __future__ import annotations

import importlib.util
from typing import Any


def lm_eval_available() -> bool:
    return importlib.util.find_spec("lm_eval") is not None


def skipped_note(tasks: list[str]) -> dict:
    return {"status": "skipped", "tasks": tasks,
            "note": "lm-eval is not installed (pip install lm-eval), so these tasks were skipped: " + ", ".join(tasks)}


def run_lm_eval(model: Any, tokenizer: Any, tasks: list[str], *, limit: int, batch_size: int) -> dict:
    """{"status": "ran", "results": {task: {metric: value}}} or {"status": "failed", "note": why}."""
    if not lm_eval_available():
        return skipped_note(tasks)
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        # HFLM wants a transformers model: a PEFT wrapper's inner model still has its LoRA layers active
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        wrapped = HFLM(pretrained=inner, tokenizer=tokenizer, batch_size=batch_size)
        output = simple_evaluate(model=wrapped, tasks=list(tasks), limit=limit or None, log_samples=False)
    except Exception as exc:  # noqa: BLE001 - an optional extra never fails the evaluation
        return {"status": "failed", "tasks": tasks, "note": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
    results = {}
    for task, values in (output or {}).get("results", {}).items():
        results[task] = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {"status": "ran", "tasks": tasks, "results": results, "note": f"lm-eval, limit {limit or 'none'} per task"}
