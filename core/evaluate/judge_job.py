"""The `judge` job: the win rate of model X over model Y on an eval set, decided by a local judge model.

X and Y answer the eval prompts (`core.generation.batch_answers`: greedy, or sampled at their own temperature), then
the judge compares every pair in both orders (`core.evaluate.judge`). The judge is a torch model (`core.models`) or a
GGUF run by llama.cpp (`judge_runtime: llama.cpp`; the embedded model's own Q4_1 file when `judge` is the embedded model).

Result (`judge.json`): wins / losses / ties of X, the win rate (wins + ties / 2 over the judged pairs) with a bootstrap
interval, the position-bias rate, the rubric used, every pair (prompt, both answers, both raw replies, verdict), and —
when a vote file of the Chat arena holds human votes on the same pairs (the same prompt and the same two answers) —
judge-human agreement (Cohen's kappa on A / B / tie, Kendall's tau on per-model strengths).
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from core import generation
from core.download import ensure_weights
from core.evaluate import judge as judging
from core.evaluate.spec import DEFAULT_TASK_DATASET
from core.evaluate.task import TaskDataError, load_task
from core.llamacpp import available as llamacpp_available
from core.llamacpp import load_chat_model
from core.models import ModelLoadError, ModelSource, embedded_gguf_path, load_model
from core.runs.jobs import JobContext, JobError
from core.runs.spec import RunSpec, meta
from core.workspace import REPO_ROOT

RUNTIMES = ("torch", "llama.cpp")


@dataclass
class JudgeSpec(RunSpec):
    kind: ClassVar[str] = "judge"

    name: str = field(default="", metadata=meta("A short name for the run folder."))
    model: dict = field(default_factory=lambda: ModelSource().as_dict(), metadata=meta(
        "Model X, whose win rate is measured (a model-source dict: {kind, ref, adapter}).", "models"))
    model_label: str = field(default="", metadata=meta("X's name in the result (empty: the model's own).", "models"))
    model_temperature: float = field(default=0.0, metadata=meta("X's sampling temperature (0 = greedy).", "models", min=0.0, max=5.0))
    baseline: dict = field(default_factory=lambda: ModelSource().as_dict(), metadata=meta(
        "Model Y, the one X is compared with (usually the base model).", "models"))
    baseline_label: str = field(default="", metadata=meta("Y's name in the result (empty: the model's own).", "models"))
    baseline_temperature: float = field(default=0.0, metadata=meta("Y's sampling temperature (0 = greedy).", "models", min=0.0, max=5.0))
    judge: dict = field(default_factory=lambda: ModelSource().as_dict(), metadata=meta(
        "The judge model (a model-source dict; the embedded model by default).", "judge"))
    judge_runtime: str = field(default="torch", metadata=meta(
        "torch (core.models) or llama.cpp (a GGUF judge, or the embedded model's own GGUF file).", "judge", choices=RUNTIMES))
    rubric: str = field(default="", metadata=meta(
        "The judge's instructions with {prompt}, {answer_a}, {answer_b} (empty: the shipped assets/judge/rubric.md).", "judge"))
    verdict_tokens: int = field(default=judging.VERDICT_TOKENS, metadata=meta(
        "Longest judge reply in tokens (its first line must be A, B or tie).", "judge", min=1, max=256))
    eval_dataset: str = field(default=DEFAULT_TASK_DATASET, metadata=meta(
        "Conversations whose prompts both models answer (the part before each row's last assistant turn).", "data"))
    samples: int = field(default=20, metadata=meta("Prompts to judge (a seeded sample; 0 = all).", "data", min=0, max=100_000))
    max_new_tokens: int = field(default=48, metadata=meta("Longest answer of X and Y in tokens.", "data", min=1, max=8192))
    human_votes: str = field(default="", metadata=meta(
        "An arena vote file or folder (human votes with prompt, chosen / rejected and models) for judge-human agreement; "
        "pairs match on the prompt and the two answers.", "data"))
    batch_size: int = field(default=8, metadata=meta("Prompts per forward pass.", "data", min=1, max=512, advanced=True))
    bootstrap_samples: int = field(default=1000, metadata=meta(
        "Bootstrap resamples for the win rate's 95% interval (0 = none).", "data", min=0, max=100_000))
    seed: int = field(default=0, metadata=meta("Seed for the prompt sample, sampled answers and the bootstrap.", min=0, max=2**31 - 1))

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("model", "baseline", "judge"):
            try:
                ModelSource.from_dict(getattr(self, name))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{name}: {exc}") from None
        if self.rubric.strip():
            judging.check_rubric(self.rubric)
        if self.judge_runtime == "llama.cpp" and self.judge_source.kind not in ("gguf", "embedded"):
            raise ValueError("judge_runtime: llama.cpp runs a GGUF file: give the judge as {kind: gguf, ref: file.gguf} or the embedded "
                             "model")
        if self.judge_runtime == "llama.cpp" and self.judge_source.adapter:
            raise ValueError("judge: llama.cpp cannot put an adapter on a GGUF here; export the merged model to GGUF, or use torch")
        if not self.eval_path().is_file():
            raise ValueError(f"eval_dataset: file not found: {self.eval_path()}")
        if self.human_votes.strip() and not Path(self.human_votes).expanduser().exists():
            raise ValueError(f"human_votes: not found: {self.human_votes}")

    @property
    def judge_source(self) -> ModelSource:
        return ModelSource.from_dict(self.judge)

    def eval_path(self) -> Path:
        path = Path(self.eval_dataset).expanduser()
        return path if path.is_absolute() else REPO_ROOT / path

    def labels(self) -> tuple[str, str]:
        """X's and Y's names: as given, else the models' own, told apart by temperature when they are the same model."""
        x, y = ModelSource.from_dict(self.model), ModelSource.from_dict(self.baseline)
        label_x, label_y = self.model_label.strip() or x.label, self.baseline_label.strip() or y.label
        if label_x == label_y:
            label_x, label_y = f"{label_x} (T={self.model_temperature:g})", f"{label_y} (T={self.baseline_temperature:g})"
        if label_x == label_y:
            label_x, label_y = f"{label_x} X", f"{label_y} Y"
        return label_x, label_y


def load_judge(source: ModelSource, runtime: str) -> Any:
    """The judge as a loaded model: torch through core.models, or llama.cpp on the GGUF file."""
    if runtime == "llama.cpp":
        if not llamacpp_available():
            raise JobError("judge_runtime llama.cpp: the llama-cpp-python package is not installed; use the torch runtime")
        path = embedded_gguf_path() if source.kind == "embedded" else Path(source.ref).expanduser()
        try:
            return load_chat_model(path)
        except (FileNotFoundError, ValueError) as exc:
            raise JobError(f"judge: {exc}") from exc
    try:
        return load_model(source)
    except ModelLoadError as exc:
        raise JobError(f"judge: {exc}") from exc


def _answers(ctx: JobContext, source: ModelSource, temperature: float, prompts: list, spec: JudgeSpec, span: tuple[float, float],
             label: str) -> list[str]:
    ctx.progress(span[0], f"loading {label}")
    try:
        loaded = load_model(source)
    except ModelLoadError as exc:
        raise JobError(f"{label}: {exc}") from exc
    done = [0]

    def advance(count: int) -> None:
        done[0] += count
        ctx.progress(span[0] + (span[1] - span[0]) * done[0] / len(prompts), f"{label}: answered {done[0]} / {len(prompts)} prompts")

    ids = [generation.prompt_ids(messages, loaded.tokenizer) for messages in prompts]
    answers = generation.batch_answers(loaded.model, loaded.tokenizer, ids, max_new_tokens=spec.max_new_tokens, batch_size=spec.batch_size,
                                       temperature=temperature, seed=spec.seed, should_stop=lambda: ctx.stop_requested, on_progress=advance)
    del loaded
    gc.collect()
    return [a.text for a in answers]


def run(ctx: JobContext) -> dict:
    started = time.time()
    spec: JudgeSpec = ctx.spec
    try:
        setup = load_task(spec.eval_path(), spec.samples, spec.seed)
        votes = judging.read_votes(spec.human_votes) if spec.human_votes.strip() else []
    except (ValueError, TaskDataError) as exc:
        raise JobError(str(exc)) from exc
    prompts = [ex.prompt for ex in setup.examples]
    label_x, label_y = spec.labels()
    rubric = spec.rubric if spec.rubric.strip() else judging.DEFAULT_RUBRIC
    ensure_weights(ctx, [ModelSource.from_dict(spec.model), ModelSource.from_dict(spec.baseline)]
                   + ([spec.judge_source] if spec.judge_runtime == "torch" else []))
    try:
        answers_x = _answers(ctx, ModelSource.from_dict(spec.model), spec.model_temperature, prompts, spec, (0.0, 0.3), label_x)
        answers_y = _answers(ctx, ModelSource.from_dict(spec.baseline), spec.baseline_temperature, prompts, spec, (0.3, 0.6), label_y)
        ctx.progress(0.6, f"loading the judge ({spec.judge_source.label}, {spec.judge_runtime})")
        judge_model = load_judge(spec.judge_source, spec.judge_runtime)
        done = [0]

        def advance(count: int) -> None:
            done[0] += count
            ctx.progress(0.62 + 0.38 * done[0] / (2 * len(prompts)), f"judged {done[0]} / {2 * len(prompts)} orders")

        try:
            verdicts = judging.judge_pairs(judge_model, [(p, x, y) for p, x, y in zip(prompts, answers_x, answers_y)], rubric,
                                           max_new_tokens=spec.verdict_tokens, batch_size=spec.batch_size,
                                           should_stop=lambda: ctx.stop_requested, on_progress=advance)
        finally:
            if judging.is_llamacpp(judge_model):
                judge_model.close()
    except generation.Stopped:
        ctx.log.info("stop requested: no partial result is kept")
        return {"stopped": True}
    summary = judging.summarise(verdicts, resamples=spec.bootstrap_samples, seed=spec.seed)
    rows = []
    for ex, prompt, x, y, verdict in zip(setup.examples, prompts, answers_x, answers_y, verdicts):
        rows.append({"row": ex.index, "prompt": judging.render_prompt(prompt), "prompt_key": judging.prompt_key(prompt),
                     "model_a": label_x, "model_b": label_y, "answer_a": x, "answer_b": y, **verdict.as_dict(),
                     "judge": verdict.verdict})
    matched = judging.match_votes(rows, votes)
    result = {
        "model": label_x, "baseline": label_y, "judge": spec.judge_source.label, "judge_runtime": spec.judge_runtime,
        "rubric": rubric, "rubric_is_default": rubric == judging.DEFAULT_RUBRIC, "eval_dataset": spec.eval_dataset,
        **summary.as_dict(),
        "agreement": judging.agreement(matched) if matched else None,
        "human_votes": {"file": spec.human_votes, "votes": len(votes), "matched_pairs": len(matched)} if spec.human_votes.strip() else None,
        "pairs": rows, "wall_seconds": round(time.time() - started, 2),
    }
    ctx.write_result(result)
    win = summary.win_rate
    ctx.metrics(win_rate=win["value"] if win else None, position_bias=summary.position_bias, unparsed=summary.unparsed,
                pairs=summary.n_pairs)
    ctx.log.info("%s over %s: %s wins, %s losses, %s ties, %s unparsed; position bias %s", label_x, label_y, summary.wins,
                 summary.losses, summary.ties, summary.unparsed, summary.position_bias)
    return {"win_rate": win["value"] if win else None, "position_bias": summary.position_bias, "pairs": summary.n_pairs,
            "unparsed": summary.unparsed}
