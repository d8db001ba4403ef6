"""The `answer_loss` job: every row's answer loss under a model, for the response audit's high-loss rule.

An answer the model finds very unlikely (a high mean token loss) is often a mislabelled, garbled or
off-task row. The loss is the mean negative log-likelihood of exactly the tokens training would learn:
the row is encoded by `core.data.masking` with the chosen chat template (tool definitions passed), and
`core.evaluate.scoring.token_logprobs` scores the trained tokens in length-sorted, padded batches.
The model is loaded through `core.models`; the job holds the accelerator (an exclusive job).

Result (`answer_loss.json`): per row the mean loss (None where the row could not be encoded) and the
number of scored tokens, the model, the template and the dataset's source hash.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

from core.data.curate_job import CurateSpec, _load
from core.data.masking import IGNORE_INDEX, MaskingError, encode_row
from core.data.templates import chat_template_text
from core.evaluate.scoring import token_logprobs
from core.generation import Stopped
from core.models import ModelLoadError, ModelSource, load_model
from core.runs.jobs import JobContext, JobError
from core.runs.spec import DatasetJobSpec, meta
from core.train.data import DataError


@dataclass
class AnswerLossSpec(DatasetJobSpec):
    kind: ClassVar[str] = "answer_loss"

    model: dict = field(default_factory=dict, metadata=meta("The model, as a core.models source (empty: the embedded default).", "model"))
    chat_template: str = field(default="", metadata=meta("A shipped template name or a .jinja file; empty: the model's own.", "model"))
    max_length: int = field(default=1024, metadata=meta("Rows are cut to this many tokens before scoring.", "scoring", min=16, max=131072))
    batch_size: int = field(default=8, metadata=meta("Rows per forward pass.", "scoring", min=1, max=512))
    name: str = field(default="", metadata=meta("A label for the run folder."))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not str(self.dataset).strip():
            raise ValueError("dataset: name the dataset to score")

        try:
            ModelSource.from_dict(self.model or {})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"model: {exc}") from None


def answer_losses(rows: Sequence[dict], model: Any, tokenizer: Any, *, chat_template: str | None = None, max_length: int = 1024,
                  batch_size: int = 8, should_stop: Callable[[], bool] | None = None,
                  on_progress: Callable[[int], None] | None = None) -> tuple[list[float | None], list[int]]:
    """(mean loss of each row's trained tokens, number of those tokens); None / 0 where a row cannot be scored."""
    sequences, scored, index = [], [], []
    for k, row in enumerate(rows):
        try:
            encoded = encode_row(row, tokenizer, chat_template=chat_template, max_length=max_length)
        except MaskingError:
            continue
        if encoded.n_trained:
            sequences.append(encoded.input_ids)
            scored.append([label != IGNORE_INDEX for label in encoded.labels])
            index.append(k)
    logprobs = token_logprobs(model, sequences, scored, batch_size=batch_size, should_stop=should_stop, on_progress=on_progress)
    losses: list[float | None] = [None] * len(rows)
    counts = [0] * len(rows)
    for k, values in zip(index, logprobs):
        if len(values):
            losses[k] = round(float(-values.mean()), 5)
            counts[k] = int(len(values))
    return losses, counts


def run(ctx: JobContext) -> dict:
    spec: AnswerLossSpec = ctx.spec
    loaded = _load(CurateSpec(dataset=spec.dataset, split=spec.split, dataset_sha256=spec.dataset_sha256, exact={}))
    source = ModelSource.from_dict(spec.model or {})
    try:
        template = chat_template_text(spec.chat_template)
    except DataError as exc:
        raise JobError(str(exc)) from None
    ctx.progress(0.02, f"loading {source.label}")
    try:
        model = load_model(source)
    except ModelLoadError as exc:
        raise JobError(str(exc)) from None
    started, done = time.perf_counter(), [0]
    n = len(loaded.rows)

    def advance(count: int) -> None:
        done[0] += count
        ctx.progress(0.05 + 0.95 * min(done[0], n) / n, f"scored {min(done[0], n):,} / {n:,} rows")

    try:
        losses, counts = answer_losses(loaded.rows, model.model, model.tokenizer, chat_template=template, max_length=spec.max_length,
                                       batch_size=spec.batch_size, should_stop=lambda: ctx.stop_requested, on_progress=advance)
    except Stopped:
        ctx.log.info("stop requested: no partial losses are kept")
        return {"rows": n, "stopped": True}
    known = [v for v in losses if v is not None]
    result = {
        "dataset": spec.dataset, "dataset_sha256": loaded.source_hash, "n_rows": n, "model": source.label,
        "chat_template": spec.chat_template or "(model's own)", "loss": losses, "tokens": counts,
        "scored_rows": len(known), "median_loss": round(sorted(known)[len(known) // 2], 5) if known else None,
        "seconds": round(time.perf_counter() - started, 2),
    }
    ctx.write_result(result)
    ctx.metrics(scored_rows=len(known), median_loss=result["median_loss"] if known else math.nan)
    return {"rows": n, "scored_rows": len(known), "median_loss": result["median_loss"]}
