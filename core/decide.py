"""Prompt, RAG or fine-tune? A short questionnaire scored into options with reasons, a starting recipe for the
Train page, and a quick prompt-only baseline ("measure before you decide").

- `recommend(Questionnaire) -> Recommendation`: each option (prompt, RAG, fine-tune) gets a 0-100 score from
  named, additive reasons; the top option wins, RAG + fine-tune is offered together when both a knowledge gap
  and a behaviour gap are present and both score well. The fine-tune method (full / LoRA / QLoRA) is the
  least-compromising one that `core.memory` says fits the hardware.
- `starting_recipe(...)`: run-spec field names → values for `st.session_state["train_recipe"]`.
- `prompt_baseline(loaded_model, rows, n=8, shots=(0, 3), rag=...)`: zero-shot, few-shot and RAG-with-the-base-model
  greedy answers on the same eval rows, scored by the same metric (exact match, JSON field accuracy, contains-answer).
- `BaselineSpec` / `run_baseline`: that measurement as a `baseline` job (progress, stop, result file), so the page
  never generates in its script thread.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Sequence

from core import memory, scorers
from core.data.formats import DatasetLoadError, load_dataset_file
from core.generation import Stopped, greedy_chat_answers
from core.models import ModelLoadError, ModelSource, load_model
from core.rag.corpus import CorpusError, load_corpus
from core.rag.index import MODE_LABELS, open_index
from core.rag.prompt import answer_part, rag_messages
from core.rag.spec import resolve_path
from core.runs.jobs import JobError
from core.runs.spec import RunSpec, meta
from core.workspace import atomic_write_bytes, safe_name, subdir

GAPS = ("knowledge", "behaviour", "steering")
GAP_LABELS = {
    "knowledge": "Knowledge: facts the model does not know (products, policies, documents)",
    "behaviour": "Behaviour: a format, style or tone it does not hold reliably",
    "steering": "Steering: a rule or an edge case it gets wrong",
}
FRESHNESS = ("static", "yearly", "monthly", "weekly", "daily")
OPTIONS = ("prompt", "rag", "fine-tune")
OPTION_LABELS = {"prompt": "Prompting (instructions + few-shot examples)", "rag": "RAG (retrieve documents into the prompt)",
                 "fine-tune": "Fine-tune"}

LORA_LEARNING_RATE = 2e-4  # adapters learn ~10x faster than a full fine-tune's weights
FULL_LEARNING_RATE = 2e-5
FIT_SHARE = 0.85  # leave 15% of the device free for the unexpected


@dataclass
class Questionnaire:
    gaps: tuple[str, ...] = field(default=("behaviour",), metadata=meta("What is missing: knowledge, behaviour (format/style) "
                                                                        "and/or steering."))
    knowledge_changes: str = field(default="static", metadata=meta("How often the needed facts change.", choices=FRESHNESS))
    knowledge_fits_in_prompt: bool = field(default=False, metadata=meta("All the facts needed fit comfortably in one prompt."))
    prompt_success: float | None = field(default=None, metadata=meta("Share of requests a good prompt already gets right (0-1; measure it "
                                                                     "with the quick baseline)."))
    failure_share: float | None = field(default=None, metadata=meta("Share of all requests that hit the failing case (a rare edge case is "
                                                                    "below 0.05)."))
    labelled_rows: int = field(default=0, metadata=meta("Good input → output examples you have (or can write)."))
    latency_sensitive: bool = field(default=False, metadata=meta("Every request must answer fast (extra retrieval / long prompts hurt)."))
    cost_sensitive: bool = field(default=False, metadata=meta("Per-request token cost matters (long prompts are paid on every call)."))
    model: memory.ModelArch | None = field(default=None, metadata=meta("The model to adapt (for the memory check)."))
    hardware: Any = field(default=None, metadata=meta("core.hardware.HardwareInfo of the training machine."))
    max_length: int = field(default=1024, metadata=meta("Typical example length in tokens (for the memory check)."))
    measured: dict | None = field(default=None, metadata=meta(
        "Scores of the measured baseline on your eval rows, 0-1 by condition ('0-shot', '3-shot', 'rag'): cited in the reasons."))

    def __post_init__(self) -> None:
        self.gaps = tuple(self.gaps)
        unknown = [g for g in self.gaps if g not in GAPS]
        if unknown or not self.gaps:
            raise ValueError(f"questionnaire: gaps must be one or more of {GAPS}, got {list(self.gaps)}")
        if self.knowledge_changes not in FRESHNESS:
            raise ValueError(f"questionnaire: knowledge_changes must be one of {FRESHNESS}, got {self.knowledge_changes!r}")
        for name in ("prompt_success", "failure_share"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"questionnaire: {name} must be between 0 and 1, got {value!r}")
        if int(self.labelled_rows) < 0:
            raise ValueError(f"questionnaire: labelled_rows cannot be negative, got {self.labelled_rows!r}")
        if int(self.max_length) < 16:
            raise ValueError(f"questionnaire: max_length must be at least 16 tokens, got {self.max_length!r}")
        for condition, value in (self.measured or {}).items():
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"questionnaire: measured[{condition!r}] must be between 0 and 1, got {value!r}")

    def measured_prompting(self) -> float | None:
        values = [v for k, v in (self.measured or {}).items() if k != "rag"]
        return max(values) if values else None


@dataclass
class OptionScore:
    option: str
    score: int  # 0-100
    reasons: list[str]  # "+20 ..." / "-15 ..." sentences, the score's arithmetic

    @property
    def label(self) -> str:
        return OPTION_LABELS[self.option]


@dataclass
class MethodFit:
    method: str
    total_bytes: int
    fits: bool | None
    batch_size: int
    gradient_checkpointing: bool


@dataclass
class Recommendation:
    choice: str  # "prompt" | "rag" | "fine-tune" | "rag + fine-tune"
    headline: str
    options: list[OptionScore]  # best first
    fine_tune_method: str | None
    method_fits: list[MethodFit]
    recipe: dict
    notes: list[str]

    def as_dict(self) -> dict:
        return asdict(self)


class _Score:
    def __init__(self, option: str, base: int, why: str):
        self.option, self.points, self.reasons = option, base, [f"{base:+d} starting point: {why}"]

    def add(self, points: int, reason: str) -> None:
        self.points += points
        self.reasons.append(f"{points:+d} {reason}")

    def result(self) -> OptionScore:
        return OptionScore(self.option, max(0, min(100, self.points)), self.reasons)


def _pct(value: float) -> str:
    return f"{100 * value:.0f}%"


def _score_prompt(q: Questionnaire) -> OptionScore:
    s = _Score("prompt", 40, "no data, no infrastructure, changes in minutes")
    if "steering" in q.gaps:
        s.add(25, "a rule or an edge case is exactly what an instruction or one worked example in the prompt fixes")
    if q.failure_share is not None and q.failure_share <= 0.05:
        s.add(20, f"the failing case is rare ({_pct(q.failure_share)} of requests): handle it in the prompt rather than train on it")
    if q.prompt_success is not None:
        if q.prompt_success >= 0.95:
            s.add(25, f"prompting already gets {_pct(q.prompt_success)} right")
        elif q.prompt_success < 0.5:
            s.add(-20, f"prompting gets only {_pct(q.prompt_success)} right")
        elif q.prompt_success < 0.8:
            s.add(-10, f"prompting gets {_pct(q.prompt_success)} right, well short of reliable")
    if "behaviour" in q.gaps and q.prompt_success is not None and q.prompt_success < 0.95 and q.labelled_rows >= 100:
        s.add(-15, f"a format that a prompt holds only {_pct(q.prompt_success)} of the time keeps drifting; training makes it the default")
    if "knowledge" in q.gaps:
        if q.knowledge_fits_in_prompt:
            s.add(10, "the facts fit in the prompt: paste them in")
        else:
            s.add(-25, "the facts do not fit in one prompt")
    if q.labelled_rows < 50:
        s.add(10, f"{q.labelled_rows} examples are too few to train on, but enough for few-shot prompting")
    if q.cost_sensitive or q.latency_sensitive:
        s.add(-5, "long instructions and few-shot examples are paid for on every request")
    return s.result()


def _score_rag(q: Questionnaire) -> OptionScore:
    s = _Score("rag", 20, "retrieval puts current documents into the prompt at answer time")
    if "knowledge" in q.gaps:
        s.add(40, "the gap is facts, and retrieval supplies facts with their sources")
        fresh = FRESHNESS.index(q.knowledge_changes)
        if fresh >= FRESHNESS.index("monthly"):
            s.add(25, f"the facts change {q.knowledge_changes}: re-indexing keeps answers current, trained weights go stale")
        elif q.knowledge_changes == "yearly":
            s.add(10, "the facts change every year: an index is cheaper to refresh than a model")
        if not q.knowledge_fits_in_prompt:
            s.add(10, "the facts are too many for one prompt, so they must be selected per question")
    else:
        s.add(-20, "there is nothing to look up: the gap is behaviour, not missing facts")
    rag, prompting = (q.measured or {}).get("rag"), q.measured_prompting()
    if rag is not None and prompting is not None:
        measured = f"RAG with the base model scored {_pct(rag)} against {_pct(prompting)} for the best prompting alone, on the same rows"
        if rag - prompting >= 0.15:
            s.add(25, f"measured: {measured}")
        elif rag - prompting > 0.02:
            s.add(5, f"measured: retrieval helped a little ({measured})")
        else:
            s.add(-20, f"measured: retrieval did not help ({measured})")
    if q.latency_sensitive:
        s.add(-5, "a search plus a longer prompt adds latency to every request")
    return s.result()


def _score_fine_tune(q: Questionnaire, method: str | None, fits_known: bool) -> OptionScore:
    s = _Score("fine-tune", 20, "training changes the model's default behaviour")
    if "behaviour" in q.gaps:
        s.add(30, "a format, style or tone is what fine-tuning teaches most reliably")
        if q.prompt_success is not None and 0.5 <= q.prompt_success < 0.95:
            s.add(20, f"prompting holds it only {_pct(q.prompt_success)} of the time: a LoRA adapter makes it consistent")
    if q.prompt_success is not None and q.prompt_success >= 0.95:
        s.add(-20, f"prompting already gets {_pct(q.prompt_success)} right: a training run would buy little")
    rows = q.labelled_rows
    if rows >= 500:
        s.add(15, f"{rows:,} examples are plenty for a LoRA run")
    elif rows >= 100:
        s.add(8, f"{rows:,} examples are enough for a first LoRA run (more help)")
    elif rows < 50:
        s.add(-30, f"only {rows} examples: collect at least a few hundred before training")
    if "knowledge" in q.gaps:
        if FRESHNESS.index(q.knowledge_changes) >= FRESHNESS.index("monthly"):
            s.add(-25, f"facts that change {q.knowledge_changes} would need a new training run each time")
        else:
            s.add(-5, "fine-tuning teaches form more reliably than facts; it may still hallucinate details")
    if "steering" in q.gaps and q.failure_share is not None and q.failure_share <= 0.05:
        s.add(-20, "one rare edge case gives too little signal to train on, and training on it risks forgetting")
    if q.cost_sensitive or q.latency_sensitive:
        s.add(10, "a tuned model needs no long instructions or examples in each request")
    if fits_known and method is None:
        s.add(-30, "no fine-tuning method fits this machine's memory for this model")
    return s.result()


# --------------------------------------------------------------------------- hardware and recipe


def _capacity_bytes(hardware: Any) -> float | None:
    total = getattr(hardware, "total_memory_gb", None)
    return total * memory.GB if total else None


def _precision_for(device: str, method: str) -> str:
    if device == "cpu":
        return "fp32"
    return "bf16" if method == "full" else "mixed"


def fit_methods(arch: memory.ModelArch, hardware: Any, max_length: int = 1024) -> list[MethodFit]:
    """For full, LoRA and QLoRA: the largest batch (8, 4, 2, 1 — at most 4 on CPU; checkpointing only if
    needed) that fits in 85% of the device's memory, or the smallest configuration's total when nothing fits."""
    device = getattr(hardware, "device", "cuda") if getattr(hardware, "device", None) in memory.DEVICES else "cuda"
    capacity = _capacity_bytes(hardware)
    methods = ["full", "lora"] + (["qlora"] if device == "cuda" or getattr(hardware, "bnb_4bit", False) else [])
    batches = (4, 2, 1) if device == "cpu" else (8, 4, 2, 1)  # a CPU step on a bigger batch is too slow to be useful
    fits = []
    for method in methods:
        best = None
        for checkpointing in (False, True):
            for batch in batches:
                spec = memory.MemorySpec(arch, method=method, precision=_precision_for(device, method), device=device,
                                         batch_size=batch, seq_len=max_length, gradient_checkpointing=checkpointing)
                total = memory.estimate(spec).total_bytes
                if capacity is None or total <= FIT_SHARE * capacity:
                    best = MethodFit(method, total, None if capacity is None else True, batch, checkpointing)
                    break
                best = MethodFit(method, total, False, batch, checkpointing)
            if best.fits is not False:
                break
        fits.append(best)
    return fits


def choose_method(fits: Sequence[MethodFit], rows: int) -> str | None:
    """Full fine-tuning only with lots of data (>= 20k rows) and memory to spare; else LoRA; QLoRA when only it fits."""
    fitting = {f.method for f in fits if f.fits is not False}
    if "full" in fitting and rows >= 20_000:
        return "full"
    for method in ("lora", "qlora"):
        if method in fitting:
            return method
    return None


def starting_recipe(method: str, rows: int, fit: MethodFit | None = None, max_length: int = 1024) -> dict:
    """Run-spec field names → values for the Train page (`st.session_state["train_recipe"]`)."""
    rank = 8 if rows < 1000 else 16
    epochs = 3 if rows < 300 else 2 if rows < 3000 else 1
    return {
        "method": method,
        "lora_r": rank,
        "lora_alpha": 2 * rank,  # scale alpha / r = 2
        "learning_rate": FULL_LEARNING_RATE if method == "full" else LORA_LEARNING_RATE,
        "target_modules": ["all-linear"],
        "num_epochs": epochs,
        "max_steps": 0,  # the epochs run: a step cap left from another form would silently cut them short
        "batch_size": fit.batch_size if fit else 4,
        "max_length": max_length,
        "gradient_checkpointing": fit.gradient_checkpointing if fit else False,
    }


def recipe_from_memory_spec(spec: memory.MemorySpec, num_epochs: float = 1) -> dict:
    """The Budget page's what-if settings as a Train-page recipe (same field names as `starting_recipe`)."""
    targets = ["all-linear"] if isinstance(spec.lora_targets, str) else list(spec.lora_targets)
    return {
        "method": spec.method,
        "lora_r": spec.lora_r,
        "lora_alpha": 2 * spec.lora_r,
        "learning_rate": FULL_LEARNING_RATE if spec.method == "full" else LORA_LEARNING_RATE,
        "target_modules": targets,
        "num_epochs": num_epochs,
        "max_steps": 0,  # the epochs run, not the CPU demo's step cap
        "objective": spec.objective,
        "precompute_ref_log_probs": spec.precompute_ref_log_probs,
        "batch_size": spec.batch_size,
        "max_length": spec.seq_len,
        "gradient_checkpointing": spec.gradient_checkpointing,
    }


def recommend(q: Questionnaire) -> Recommendation:
    notes: list[str] = []
    fits: list[MethodFit] = []
    length = q.max_length
    if getattr(q.hardware, "device", None) == "cpu" and length > 512:
        length = 512
        notes.append("On CPU the recipe caps max_length at 512 tokens and the batch at 4: a 135M model trains in minutes, larger "
                     "ones take hours.")
    if q.model is not None and q.hardware is not None:
        fits = fit_methods(q.model, q.hardware, length)
        method = choose_method(fits, q.labelled_rows)
        where = getattr(q.hardware, "device_name", "this machine")
        notes.append(f"Memory check for {q.model.name} on {where}: " + "; ".join(
            f"{memory.METHOD_LABELS[f.method]} {f.total_bytes / memory.GB:.1f} GB "
            f"({'fits' if f.fits else 'does not fit' if f.fits is False else 'unknown'})" for f in fits))
    else:
        method = "full" if q.labelled_rows >= 20_000 else "lora"
        notes.append("No model or hardware given: the method assumes LoRA fits; check it on the Budget page.")
    if q.measured:
        notes.insert(0, "Measured on your eval rows: " + ", ".join(f"{k} {_pct(v)}" for k, v in q.measured.items()) + ".")
    options = sorted([_score_prompt(q), _score_rag(q), _score_fine_tune(q, method, bool(fits))], key=lambda o: -o.score)
    by_name = {o.option: o for o in options}
    choice = options[0].option
    both_gaps = "knowledge" in q.gaps and "behaviour" in q.gaps
    if both_gaps and by_name["rag"].score >= 50 and by_name["fine-tune"].score >= 50 and method:
        choice = "rag + fine-tune"
    fine_method = method if choice in ("fine-tune", "rag + fine-tune") else None
    fit = next((f for f in fits if f.method == method), None)
    recipe = starting_recipe(method or "lora", q.labelled_rows, fit, length)
    return Recommendation(choice, _headline(choice, fine_method, by_name), options, fine_method, fits, recipe, notes)


def _headline(choice: str, method: str | None, by_name: dict[str, OptionScore]) -> str:
    name = memory.METHOD_LABELS.get(method or "", "")
    if choice == "rag + fine-tune":
        return f"RAG for the facts + {name} for the behaviour"
    if choice == "fine-tune":
        return f"Fine-tune with {name}" if name else "Fine-tune"
    return {"prompt": "Prompting is enough", "rag": "Use retrieval (RAG)"}[choice]


# --------------------------------------------------------------------------- measure before you decide


def split_row(row: dict) -> tuple[list[dict], str]:
    """(prompt messages, reference answer) from a chat row (`messages`, last assistant turn is the answer),
    a prompt/completion row, an instruction/input/output (Alpaca) row or a question/answer row."""
    if not isinstance(row, dict):
        raise ValueError(f"an eval row must be a JSON object, got {type(row).__name__}")
    if isinstance(row.get("messages"), list):
        messages = row["messages"]
        last = max((i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "assistant"), default=-1)
        if last <= 0:
            raise ValueError("a chat row needs a user turn followed by an assistant answer")
        return [{"role": m["role"], "content": str(m.get("content", ""))} for m in messages[:last]], str(messages[last].get("content", ""))
    if "instruction" in row and "output" in row:
        text = str(row["instruction"]) + (f"\n\n{row['input']}" if row.get("input") else "")
        return [{"role": "user", "content": text}], _answer_text(row["output"])
    for prompt_key, answer_key in (("prompt", "completion"), ("prompt", "response"), ("question", "answer"), ("input", "output")):
        if prompt_key in row and answer_key in row:
            return [{"role": "user", "content": str(row[prompt_key])}], _answer_text(row[answer_key])
    raise ValueError(f"cannot tell prompt from answer in a row with keys {sorted(row)}: use messages, prompt/completion, "
                     "instruction/output or question/answer")


def _answer_text(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


BASELINE_CONDITIONS = ("shots", "rag")


@dataclass
class BaselineResult:
    scorer: str
    n: int
    scores: dict[str, float]  # condition ("0-shot", "3-shot", "rag") → mean score in [0, 1]
    json_validity: dict[str, float] | None  # condition → share of valid JSON answers (JSON tasks only)
    examples: list[dict]  # condition, prompt, reference, prediction, score
    seconds: float
    notes: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)  # condition → what was measured, for the page

    def best_prompting(self) -> tuple[str, float]:
        """The best condition without retrieval (what "prompting already gets right" means)."""
        return max(((k, v) for k, v in self.scores.items() if k != "rag"), key=lambda item: item[1])

    def best(self) -> tuple[str, float]:
        return max(self.scores.items(), key=lambda item: item[1])

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class RagContext:
    """Retrieval for the baseline's RAG condition: `retrieve(questions)` → the chunks to put before each question."""
    retrieve: Callable[[list[str]], list[list[Any]]]
    label: str = "RAG with the base model"


def _resolve_scorer(scorer: str | Callable | None, references: Iterable[str]) -> tuple[str, Callable[[str, str], float]]:
    if scorer is None or scorer == "auto":
        return scorers.choose_scorer(references)
    if isinstance(scorer, str):
        if scorer not in scorers.SCORERS:
            raise ValueError(f"unknown scorer {scorer!r}; choose from {sorted(scorers.SCORERS)}")
        return scorer, scorers.SCORERS[scorer]
    return getattr(scorer, "__name__", "custom"), scorer


def _few_shot_messages(prompt: list[dict], shots: list[tuple[list[dict], str]]) -> list[dict]:
    system = [m for m in prompt if m["role"] == "system"]
    messages = list(system)
    for shot_prompt, answer in shots:
        messages += [m for m in shot_prompt if m["role"] != "system"] + [{"role": "assistant", "content": answer}]
    return messages + [m for m in prompt if m["role"] != "system"]


def _question(prompt: list[dict]) -> str:
    return next((str(m["content"]) for m in reversed(prompt) if m["role"] == "user"), str(prompt[-1]["content"]))


def prompt_baseline(loaded_model: Any, rows: Sequence[dict], n: int = 8, shots: Sequence[int] = (0, 3),
                    scorer: str | Callable | None = None, max_new_tokens: int = 96, *, rag: RagContext | None = None,
                    batch_size: int = 8, should_stop: Callable[[], bool] | None = None,
                    on_progress: Callable[[int, int], None] | None = None) -> BaselineResult:
    """Score the model on the same eval rows under each condition: k-shot prompting for each k in `shots`, and —
    when `rag` is given — zero-shot with retrieved documents in the prompt (`core.rag.prompt`).

    The few-shot examples come from the first rows and are never among the scored ones. Every answer is scored by
    the same scorer, on its answer part (`core.rag.prompt.answer_part`: the text after an ##Answer: marker, or
    all of it): JSON field accuracy when every reference is a JSON object, else normalised exact match, unless a
    scorer is named. Greedy, batched answers through `core.generation` (the Evaluate job's path: same prompts,
    same lock, same JSON-validity rule); `on_progress(done, total)` per batch."""
    if n < 1:
        raise ValueError(f"prompt baseline: n must be at least 1, got {n}")
    shots = sorted({int(k) for k in shots})
    if not shots or shots[0] < 0:
        raise ValueError(f"prompt baseline: shots must be non-negative counts, got {list(shots)}")
    parsed = []
    for index, row in enumerate(rows):
        try:
            parsed.append(split_row(row))
        except ValueError as exc:
            raise ValueError(f"eval row {index + 1}: {exc}") from exc
    notes = []
    pool_size = min(max(shots), max(0, len(parsed) - 1))
    if pool_size < max(shots):
        notes.append(f"only {len(parsed)} rows: few-shot runs use {pool_size} examples instead of {max(shots)}")
    pool, scored = parsed[:pool_size], parsed[pool_size:pool_size + n]
    if not scored:
        raise ValueError("prompt baseline: no eval rows to score")
    name, score_fn = _resolve_scorer(scorer, [ref for _, ref in scored])
    tokenizer = loaded_model.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        notes.append("the tokenizer has no chat template: prompts are plain 'role: text' lines")
    started = time.perf_counter()
    conditions: dict[str, list[list[dict]]] = {f"{k}-shot": [_few_shot_messages(p, pool[: min(k, len(pool))]) for p, _ in scored]
                                               for k in shots}
    labels = {f"{k}-shot": ("zero-shot prompting" if k == 0 else f"{k}-shot prompting") for k in shots}
    if rag is not None:
        contexts = rag.retrieve([_question(p) for p, _ in scored])
        conditions["rag"] = [rag_messages(p, chunks) for (p, _), chunks in zip(scored, contexts)]
        labels["rag"] = rag.label
    total, done = len(conditions) * len(scored), 0
    scores, validity, examples = {}, {}, []
    for key, chats in conditions.items():
        def advance(count: int) -> None:
            nonlocal done
            done += count
            if on_progress:
                on_progress(done, total)

        predictions = greedy_chat_answers(loaded_model, chats, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                          should_stop=should_stop, on_progress=advance)
        values = []
        for (prompt, reference), prediction in zip(scored, predictions):
            value = float(score_fn(answer_part(prediction), reference))
            values.append(value)
            examples.append({"condition": key, "prompt": _question(prompt), "reference": reference,
                             "prediction": prediction, "score": value})
        scores[key] = sum(values) / len(values)
        validity[key] = sum(scorers.json_validity(e["prediction"]) for e in examples if e["condition"] == key) / len(values)
    is_json = name == "json_field_accuracy"
    return BaselineResult(name, len(scored), scores, validity if is_json else None, examples, round(time.perf_counter() - started, 2),
                          notes, labels)


QUESTION_ANSWER_MAPPING = {"prompt": "question", "completion": "answer"}


def load_eval_rows(path: Any, limit: int | None = None) -> list[dict]:
    """Eval rows of any dataset file the Data page reads (JSONL / JSON / CSV / Parquet; chat, Alpaca,
    ShareGPT, prompt/completion, or question/answer), normalised to {"messages": [...]} by core.data.formats."""
    try:
        loaded = load_dataset_file(path, limit=limit)
    except DatasetLoadError as exc:
        try:  # question / answer rows (the RAG demo's, or a user's own): read as prompt / completion
            loaded = load_dataset_file(path, limit=limit, mapping=QUESTION_ANSWER_MAPPING)
        except DatasetLoadError:
            raise ValueError(str(exc)) from exc
    if not loaded.rows:
        raise ValueError(f"{path} has no valid rows")
    return loaded.rows


def save_eval_upload(name: str, data: bytes, digest: str | None = None) -> Any:
    """An uploaded eval file kept in the workspace (uploads/<hash>-<name>) so a baseline job can read it; the same
    bytes are written once (digest: their sha256 when the caller already has it)."""
    digest = digest or hashlib.sha256(data).hexdigest()
    path = subdir("uploads") / f"{digest[:12]}-{safe_name(name, default='eval.jsonl')}"
    return path if path.is_file() else atomic_write_bytes(path, data)


def load_eval_upload(name: str, data: bytes, limit: int | None = None) -> list[dict]:
    """The same for an uploaded file's bytes (written to a temporary file under its sanitised name)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / safe_name(name, default="upload.jsonl")
        path.write_bytes(data)
        return load_eval_rows(path, limit=limit)


# --------------------------------------------------------------------------- the baseline as a job

SCORER_CHOICES = ("auto",) + tuple(scorers.SCORERS)


@dataclass
class BaselineSpec(RunSpec):
    """The measured baseline as a job: zero-shot, few-shot and RAG with the base model on the same eval rows."""

    kind: ClassVar[str] = "baseline"

    name: str = field(default="", metadata=meta("A short name for the run folder."))
    model: dict = field(default_factory=lambda: {"kind": "embedded"}, metadata=meta("The model to measure, as a model-source dict."))
    eval_dataset: str = field(default="assets/demo/eval.jsonl", metadata=meta(
        "Eval rows with reference answers (any format the Data page reads, or question/answer rows)."))
    n: int = field(default=8, metadata=meta("Rows to score (after the few-shot examples).", min=1, max=10_000))
    shots: list = field(default_factory=lambda: [0, 3], metadata=meta("Few-shot counts to measure (0 = zero-shot)."))
    scorer: str = field(default="auto", metadata=meta(
        "auto: JSON field accuracy for JSON references, else exact match; contains_answer suits short factual answers.",
        choices=SCORER_CHOICES))
    max_new_tokens: int = field(default=96, metadata=meta("Longest answer in tokens (greedy).", min=1, max=4096))
    documents: str = field(default="", metadata=meta(
        "Documents for the RAG condition (a folder of .txt / .md / .pdf, or a JSONL of {id, title, text}); empty = no RAG."))
    rag_k: int = field(default=3, metadata=meta("Chunks retrieved into each RAG prompt.", min=1, max=50))
    retrieval_mode: str = field(default="hybrid", metadata=meta("dense, bm25 or hybrid (rank fusion).",
                                                                choices=("hybrid", "dense", "bm25")))
    chunk_tokens: int = field(default=64, metadata=meta("Chunk length in the retriever's tokens.", min=8, max=256))
    overlap: int = field(default=16, metadata=meta("Tokens shared by consecutive chunks.", min=0, max=255))
    batch_size: int = field(default=8, metadata=meta("Prompts per generation batch.", min=1, max=256))

    def __post_init__(self) -> None:
        super().__post_init__()
        self.shots = sorted({int(k) for k in self.shots})
        if not self.shots or self.shots[0] < 0:
            raise ValueError(f"shots: non-negative few-shot counts, got {self.shots}")
        if self.overlap >= self.chunk_tokens:
            raise ValueError(f"overlap ({self.overlap}) must be below chunk_tokens ({self.chunk_tokens})")


def _rag_context(spec: BaselineSpec, progress: Callable[[float, str], None]) -> RagContext:
    index, _ = open_index(load_corpus(resolve_path(spec.documents)), spec.chunk_tokens, spec.overlap, progress)
    mode = spec.retrieval_mode
    return RagContext(lambda questions: [[h.chunk for h in hits] for hits in index.search_many(questions, spec.rag_k, mode)],
                      f"RAG with the base model ({MODE_LABELS[mode].split(' (')[0].lower()} top-{spec.rag_k}, {len(index)} chunks)")


def run_baseline(ctx: Any) -> dict:
    """The `baseline` job: load the model, measure every condition, write the result file (BaselineResult.as_dict())."""
    try:
        spec = ctx.spec
        rows = load_eval_rows(resolve_path(spec.eval_dataset))
        rag = _rag_context(spec, lambda f, m: ctx.progress(0.1 * f, m)) if spec.documents.strip() else None
        source = ModelSource.from_dict(spec.model)
        ctx.progress(0.1, f"loading {source.label}")
        loaded = load_model(source)
    except (ValueError, CorpusError, ModelLoadError, FileNotFoundError) as exc:
        raise JobError(str(exc)) from exc
    try:
        result = prompt_baseline(loaded, rows, n=spec.n, shots=spec.shots, scorer=spec.scorer, max_new_tokens=spec.max_new_tokens,
                                 rag=rag, batch_size=spec.batch_size, should_stop=lambda: ctx.stop_requested,
                                 on_progress=lambda done, total: ctx.progress(0.1 + 0.9 * done / total, f"{done} / {total} answers"))
    except Stopped:
        return {"stopped": True}
    except ValueError as exc:
        raise JobError(str(exc)) from exc
    ctx.write_result(result.as_dict() | {"model": source.as_dict(), "eval_dataset": spec.eval_dataset})
    ctx.metrics(**{f"score_{k}": v for k, v in result.scores.items()})
    return {"scores": result.scores, "scorer": result.scorer, "n": result.n}
