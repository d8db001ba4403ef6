"""Pre-flight for a training spec, before anything is launched: will the data train, will it fit, how long.

The Train page shows this; the job records the same memory prediction in the run card next to the
measured peak, so the estimator (`core.memory`, the one the Budget page uses) can be checked run by run.
`memory_spec_from_train_spec` is the one adapter from a TrainSpec to core.memory's MemorySpec.
"""
from __future__ import annotations

import hashlib
import json
import math
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import core.hardware
from core.data.masking import MaskingError
from core.data.replay import cached_answers, uses_shipped_answers
from core.data.templates import propose_template
from core.memory import DEVICES, MemorySpec, arch_from_source
from core.memory import estimate as estimate_memory
from core.memory.distributed import distribution_from_train_spec, estimate_per_device
from core.models import ModelLoadError, load_tokenizer
from core.runs.spec import spec_to_dict
from core.train import data as train_data
from core.train.backends import UnslothBackend, choose_backend, choose_precision
from core.train.data import DataError, data_file, file_sha256
from core.train.distributed import distribution_notes, distribution_refusal
from core.train.methods import method_refusal_for
from core.train.spec import TrainSpec


@dataclass
class Preflight:
    """Everything the Train page shows before Start: the data check's figures (read through as the pre-flight's own:
    report.rows, report.tokens, report.template, ...), the steps, the memory, the backend and the one refusal."""

    data: DataCheck = field(default_factory=lambda: DataCheck())
    refusal: str | None = None  # why training would be refused (the data's refusal included), or None
    total_steps: int | None = None
    predicted_memory_bytes: int | None = None  # the whole peak (with CUDA context), for the fits check
    available_memory_bytes: int | None = None
    memory_note: str = ""
    memory_parts: dict = field(default_factory=dict)  # what a preference objective adds (core.memory's objective_parts), bytes by name
    backend: str = ""
    backend_notes: list[str] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        if name != "data" and name in DataCheck.__dataclass_fields__:
            return getattr(self.data, name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @property
    def fits(self) -> bool | None:
        if self.predicted_memory_bytes is None or self.available_memory_bytes is None:
            return None
        return self.predicted_memory_bytes <= self.available_memory_bytes


def total_steps(spec: TrainSpec, train_rows: int) -> int:
    """Optimizer steps the run will take (HF Trainer's rule: batches per epoch / accumulation, rounded)."""
    if spec.max_steps > 0:
        return spec.max_steps
    batches = math.ceil(train_rows / spec.batch_size)
    per_epoch = max(1, batches // spec.gradient_accumulation + int(batches % spec.gradient_accumulation > 0))
    return math.ceil(per_epoch * spec.num_epochs)


def memory_spec_from_train_spec(spec: TrainSpec, hardware: Any, arch: Any = None, backend: str | None = None,
                                seq_len: int | None = None) -> Any:
    """The `MemorySpec` a `core.train.spec.TrainSpec` run will have on `hardware` (the precision rules of
    core.train.backends: fp32 or bf16 autocast on CPU; on CUDA a bf16 base with autocast — pure bf16 for full
    fine-tuning). `backend` is the one the run actually gets (choose_backend, after any fallback); default: the
    spec's own choice, "auto" counting as hf. Unsloth computes the loss in chunks and does not upcast embeddings /
    head to fp32. `seq_len`: the longest tokenized training row when known (a padded batch is never wider), else
    max_length; for preference rows, the longest prompt + answer (each side of a pair is one sequence)."""

    device = getattr(hardware, "device", "cpu")
    device = device if device in DEVICES else "cpu"
    arch = arch or arch_from_source(spec.model_source)
    method = {"rslora": "lora"}.get(spec.method, spec.method)
    wanted = spec.precision
    if device == "cpu":  # the job's own rule (core.train.backends): fp32, or bf16 autocast over fp32 weights
        precision = "autocast" if choose_precision(spec, "cpu", bool(getattr(hardware, "bf16", False))).bf16 else "fp32"
    elif device != "cuda" or wanted == "fp32":
        precision = "fp32"
    elif method in ("full", "partial", "bitfit") and wanted in ("auto", "bf16") and getattr(hardware, "bf16", True):
        precision = "bf16"
    else:
        precision = "mixed"
    targets = list(spec.target_modules or ["all-linear"])
    unsloth = (backend or spec.backend) == "unsloth"
    return MemorySpec(
        model=arch, method=method, precision=precision, optimizer="adamw", lora_r=spec.lora_r,
        lora_targets="all-linear" if "all-linear" in targets else tuple(targets),
        batch_size=spec.batch_size, seq_len=min(spec.max_length, seq_len or spec.max_length),
        gradient_checkpointing=spec.gradient_checkpointing,
        attention="sdpa", chunked_loss=unsloth, kbit_upcast=not unsloth,
        grad_accumulation=spec.gradient_accumulation, device=device,
        num_virtual_tokens=spec.num_virtual_tokens, frozen_layers=spec.frozen_layers,
        lora_dropout=0.0 if unsloth else spec.lora_dropout,  # Unsloth's fast path runs without dropout
        # preference objectives: pairs go through as 2 x batch_size rows of the pair's length (seq_len: prompt + the
        # longer answer), DPO / KTO add the reference (core.memory.estimator: reference_forward_bytes / reference_weight_bytes)
        objective=spec.objective, precompute_ref_log_probs=spec.precompute_ref_log_probs,
        # GRPO: seq_len is the longest prompt + max_completion_length (core.train.data.prompt_split); sampling's KV cache
        # and, with beta > 0, the reference are counted by core.memory.estimator (generation_kv_bytes)
        **({"completion_len": spec.max_completion_length, "beta": spec.beta} if spec.objective == "grpo" else {}),
    )


def estimate_for_spec(spec: TrainSpec, hardware: Any = None, backend: str | None = None, seq_len: int | None = None) -> Any:
    """The estimate for a Train-page run spec (`core.train.spec.TrainSpec`) on `hardware` (default: detected).
    `.total_bytes` is the full peak for the fits check; `.measurable_bytes` is what the run card compares."""
    if hardware is None:
        hardware = core.hardware.detect()
    return estimate_memory(memory_spec_from_train_spec(spec, hardware, backend=backend, seq_len=seq_len))


def estimate_per_device_for_spec(spec: TrainSpec, hardware: Any = None, backend: str | None = None,
                                 seq_len: int | None = None) -> Any:
    """Per-device peak of a multi-process spec (core.memory.distributed: the model state divided as its
    distributed_strategy divides it; activations per device)."""
    if hardware is None:
        hardware = core.hardware.detect()
    return estimate_per_device(memory_spec_from_train_spec(spec, hardware, backend=backend, seq_len=seq_len),
                               distribution_from_train_spec(spec))


def memory_estimate(spec: TrainSpec, hardware: Any, backend: str | None = None, seq_len: int | None = None) -> tuple[Any, str]:
    """(core.memory's MemoryEstimate or None, a note) — the estimator the Budget page shows, for the backend the run
    gets (by default the one choose_backend picks here); for several processes, the peak of ONE device."""
    if backend is None:
        try:
            backend = choose_backend(spec, hardware)[0].name
        except ValueError:
            backend = None
    try:
        if spec.uses_launcher:  # the model state divided as the strategy divides it
            estimate = estimate_per_device_for_spec(spec, hardware, backend=backend, seq_len=seq_len)
        else:
            estimate = estimate_for_spec(spec, hardware, backend=backend, seq_len=seq_len)
    except Exception as exc:  # noqa: BLE001 - an estimate is advice; never block training on it
        return None, f"no estimate: {exc}"
    return estimate, estimate.note


def predict_memory(spec: TrainSpec, hardware: Any, backend: str | None = None, seq_len: int | None = None) -> tuple[int | None, str]:
    """The peak a run's memory probe should see (CUDA: live tensors; CPU: the process above its baseline)."""
    estimate, note = memory_estimate(spec, hardware, backend, seq_len)
    return (int(estimate.measurable_bytes) if estimate is not None else None), note


def available_memory_bytes(hardware: Any) -> int | None:
    free = getattr(hardware, "free_memory_gb", None)
    return int(free * 1e9) if free else None


def model_defaults(source: Any, hardware: Any) -> tuple[dict, list[str]]:
    """Form defaults that depend on the model and the backend it will get, each with the sentence the form shows:
    a proposed chat template for a base model (a tokenizer without one), lora_dropout 0 where Unsloth trains."""
    updates, notes = {}, []
    try:
        tokenizer = load_tokenizer(source)
    except ModelLoadError as exc:
        return updates, [f"The tokenizer could not be read, so the pre-flight below will refuse: {exc}"]
    if not getattr(tokenizer, "chat_template", None):
        proposal = propose_template(tokenizer)
        updates["chat_template"] = proposal.name
        notes.append(f"{source.label} has no chat template (a base model). Proposed: **{proposal.name}**, because "
                     f"{proposal.reason.removeprefix('the tokenizer has no chat template, and ')}. It is set in "
                     "Advanced · data → chat template (change it there); the run card records it.")
    if UnslothBackend().unavailable_reason(TrainSpec(model=source.as_dict()), hardware) is None:
        updates["lora_dropout"] = 0.0
        notes.append("Unsloth will train this run: lora_dropout defaults to 0, which keeps Unsloth's fast LoRA kernels "
                     "(any dropout above 0 makes it fall back to its slower path).")
    return updates, notes


# Fields that change how a run trains but not what its data tokenizes to: the pre-flight's data check is reused
# across edits of these (any other field, including ones added later, re-tokenizes: a miss, never a stale answer).
TRAINING_ONLY_FIELDS = frozenset({
    "name", "learning_rate", "lr_scheduler", "warmup_ratio", "num_epochs", "max_steps", "batch_size", "gradient_accumulation",
    "weight_decay", "max_grad_norm", "lora_r", "lora_alpha", "lora_dropout", "target_modules", "gradient_checkpointing",
    "backend", "precision", "logging_steps", "eval_steps", "eval_on_start", "save_steps", "save_total_limit", "merge_after",
    "fault_injection", "init_adapter", "beta", "dpo_loss_type", "label_smoothing", "sft_weight", "precompute_ref_log_probs",
    "desirable_weight", "undesirable_weight", "simpo_gamma",
})


@dataclass(frozen=True)
class DataCheck:
    """What tokenizing and linting the run's data found (the expensive half of the pre-flight)."""

    rows: int = 0
    eval_rows: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    zero_trained_rows: int = 0
    truncated_rows: int = 0
    failed_rows: int = 0
    invalid_rows: int = 0
    sequences: int = 0  # training sequences after packing: what the step count is computed from
    longest: int = 0  # tokens of the longest training sequence: the memory estimate's padded width
    replay_rows: int = 0  # general rows mixed in (replay), included in `rows`
    replay_fraction: float = 0.0
    replay_label: str = ""
    lint_warnings: tuple[str, ...] = ()
    refusal: str | None = None
    template: dict = field(default_factory=dict)  # the chat template the run will render with (name, source, reason)


@lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:  # noqa: ARG001 - size / mtime key the memo on the file's version
    return file_sha256(Path(path))


def content_digest(dataset: str) -> str:
    """sha256 of the file a dataset field names (hashed once per file version), or the text itself when it is
    not a local file (a Hub id: its loader pins the content)."""
    path = data_file(dataset)
    if not path.is_file():
        return f"not-a-file:{dataset}"
    stat = path.stat()
    return _file_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def data_key(spec: TrainSpec) -> str:
    """A key that changes exactly when the data check's answer can: the data's content hash plus every spec field
    that tokenization reads (model / tokenizer, template, masking, length, packing, split, ...)."""
    fields = {k: v for k, v in spec_to_dict(spec).items() if k not in TRAINING_ONLY_FIELDS}
    fields["dataset_sha256"] = content_digest(spec.dataset)
    if spec.eval_dataset.strip():
        fields["eval_dataset_sha256"] = content_digest(spec.eval_dataset)
    if spec.replay_fraction > 0 and spec.replay_dataset.strip() not in ("", "general"):
        fields["replay_dataset_sha256"] = content_digest(spec.replay_dataset)
    elif spec.replay_fraction > 0:  # 'general': the base's own cached answers, once the job has written them
        model = spec.replay_model_source
        fields["replay_answers"] = "" if uses_shipped_answers(model) else str(cached_answers(model) or "")
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def check_data(spec: TrainSpec) -> DataCheck:
    """Tokenize, lint and split the data the way the job will (loads only the tokenizer)."""
    try:
        data = train_data.prepare_data(spec, load_tokenizer(spec.model_source), replay_estimate=True)
    except (DataError, ModelLoadError, MaskingError) as exc:
        return DataCheck(refusal=str(exc))
    except Exception as exc:  # noqa: BLE001 - any data or template failure is a refusal on the page, never a crash
        return DataCheck(refusal=f"The data cannot be prepared with this model's tokenizer: {type(exc).__name__}: {exc}")
    train = data.train
    return DataCheck(
        rows=train.n_rows, eval_rows=data.eval.n_kept if data.eval else 0, tokens=train.tokens, trained_tokens=train.trained_tokens,
        zero_trained_rows=train.n_zero_trained, truncated_rows=train.n_truncated, failed_rows=train.n_failed,
        invalid_rows=data.n_invalid_rows, sequences=len(train.features), longest=train.longest,
        replay_rows=data.replay["replay_rows"] if data.replay else 0, replay_fraction=data.replay["fraction"] if data.replay else 0.0,
        replay_label=data.replay["label"] if data.replay else "",
        lint_warnings=tuple(f"{issue.message} ({issue.count} rows)" for issue in data.lint.warnings),
        template=dict(data.template_choice),
    )


# ---------------------------------------------------------------- the data check in the background

DATA_CHECK_WAIT_S = 3.0  # how long the page waits for a fresh data check before it shows "checking the data…" and polls


class DataChecks:
    """Data checks (tokenize + lint, `check_data`) on one background thread, keyed by `data_key`: the page's script
    thread never tokenizes a large dataset itself, and a spec edit that leaves the data alone reuses the answer.
    A newer key cancels the checks still waiting in the queue (the form moved on); the newest `keep` answers stay."""

    def __init__(self, keep: int = 16):
        self.keep = keep
        self._lock = threading.Lock()
        self._futures: OrderedDict[str, Future] = OrderedDict()
        self._pool: ThreadPoolExecutor | None = None

    def submit(self, key: str, spec: TrainSpec) -> Future:
        with self._lock:
            future = self._futures.get(key)
            if future is not None and not future.cancelled():
                self._futures.move_to_end(key)
                return future
            for other, waiting in list(self._futures.items()):
                if not waiting.running() and waiting.cancel():
                    del self._futures[other]
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="workbench-data-check")
            future = self._futures[key] = self._pool.submit(check_data, spec)
            while len(self._futures) > self.keep:
                oldest = next(iter(self._futures))
                if not self._futures[oldest].done():
                    break
                del self._futures[oldest]
            return future

    def result(self, spec: TrainSpec, wait: float = 0.0) -> DataCheck | None:
        """The data check of `spec`, started in the background if it is new; None while it still runs after `wait` s."""
        future = self.submit(data_key(spec), spec)
        try:
            return future.result(timeout=wait)
        except TimeoutError:
            return None


DATA_CHECKS = DataChecks()


def data_check(spec: TrainSpec, wait: float = 0.0) -> DataCheck | None:
    """`check_data(spec)` from the background checks (see DataChecks): None while it is still running."""
    return DATA_CHECKS.result(spec, wait)


def training_refusal(spec: TrainSpec, hardware: Any, *, launching_here: bool = True) -> str | None:
    """Why this spec cannot train on `hardware`, or None: the one list of refusals the Train page's pre-flight, the train
    job and its multi-process supervisor all ask (distribution, backend, then method; the data's are DataCheck's).
    `launching_here`: Start would start the processes on this machine (see distribution_refusal)."""
    refusal = distribution_refusal(spec, hardware, launching_here=launching_here)
    if refusal:
        return refusal
    try:
        choose_backend(spec, hardware)
    except ValueError as exc:
        return str(exc)
    return method_refusal_for(spec)


def run_preflight(spec: TrainSpec, hardware: Any, data: DataCheck | None = None) -> Preflight:
    """Everything the Train page shows before Start. Loads only the tokenizer, never the model. `data` is a data
    check already made for this spec's `data_key` (the page caches it), else the data is checked here."""
    report = Preflight(available_memory_bytes=available_memory_bytes(hardware))
    data = data if data is not None else check_data(spec)
    estimate, report.memory_note = memory_estimate(spec, hardware, seq_len=data.longest or None)
    report.predicted_memory_bytes = int(estimate.total_bytes) if estimate is not None else None
    report.memory_parts = dict(getattr(getattr(estimate, "single", estimate), "objective_parts", None) or {})
    if estimate is not None and spec.uses_launcher and getattr(hardware, "device", "cpu") == "cpu":
        # CPU processes share one machine's RAM: the fits check is against all of them together.
        report.predicted_memory_bytes *= spec.processes_per_node
        report.memory_note += f"; × {spec.processes_per_node} processes sharing this machine's RAM"
    try:
        backend, notes = choose_backend(spec, hardware)
        report.backend, report.backend_notes = backend.name, notes
    except ValueError:
        pass  # training_refusal says why
    report.refusal = training_refusal(spec, hardware)
    report.backend_notes = report.backend_notes + distribution_notes(spec, hardware)
    report.data = data
    if data.refusal:
        report.refusal = report.refusal or data.refusal
        return report
    report.total_steps = total_steps(spec, data.sequences)
    return report
