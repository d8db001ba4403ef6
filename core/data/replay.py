"""Replay: general rows mixed into a task's training rows, the usual remedy for forgetting.

`fraction` is the share of the *mixed* training rows that are general: with n task rows that train,
round(f · n / (1 − f)) general rows are added, so 0.25 over 300 task rows adds 100 (100 / 400 = 25 %).
Rows are picked in a seeded order of the replay set; a row that would train nothing (masking policy,
max_length) is passed over and the next one taken, so the proportion holds for the rows that train. A set
smaller than what is needed is cycled (in a fresh seeded order each pass) and the record says how often.

`general` means: the general instructions of `assets/general/replay_prompts.txt` answered by the run's OWN base
model, so replaying them rehearses that model's general behaviour (self-rehearsal). The set the workbench ships
(`assets/general/replay.jsonl`, see its README) holds the embedded SmolLM2-135M's answers and is used only when the
base IS the embedded model; for any other base, its answers are generated once by the `teacher_answers` job
(`ensure_answers`, the Train job's first stage) and cached in the workspace as the curated dataset
`datasets/replay-<model>-<key>/`, keyed by the model's identity (kind, id / path, revision, adapter, and a hash of its
weight files' sizes and safetensors headers), and reused by every later run of the same base. A base with no cached
set where none can be generated is refused (`ReplayError`), never silently given the 135M model's answers.
Any file or dataset folder that `core.data.formats` reads can be named instead of `general`.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from core.data.formats import DatasetLoadError, load_dataset_file
from core.models import EMBEDDED_NAME, ModelLoadError, ModelSource, resolve_model_path
from core.runs.jobs import JobError, job_kind
from core.workspace import REPO_ROOT, atomic_write_text, datasets_dir, safe_name

SHIPPED = "general"
SHIPPED_FILE = REPO_ROOT / "assets" / "general" / "replay.jsonl"
PROMPTS_FILE = REPO_ROOT / "assets" / "general" / "replay_prompts.txt"
SHIPPED_LABEL = "general instructions answered by the embedded model (assets/general/replay.jsonl)"
ANSWERS_PREFIX = "replay-"
MAX_FRACTION = 0.9
T = TypeVar("T")


class ReplayError(ValueError):
    """The replay data cannot be used; the message names the file and why."""


@dataclass
class ReplaySet:
    rows: list[dict]
    source: str  # "general" or the path as given
    path: str
    sha256: str
    answered_by: str = ""  # the model that wrote the answers, when known ("general" sets)
    label: str = ""


# --------------------------------------------------------------------------- whose answers: the base model's own


def uses_shipped_answers(model: ModelSource | None) -> bool:
    """The shipped answers are the embedded model's: only a run on the embedded model (no adapter) replays them."""
    return model is None or (model.kind == "embedded" and not model.adapter)


def weights_fingerprint(model: ModelSource) -> str | None:
    """A hash of the model's weight files: names, sizes and safetensors headers (cheap; changes when the weights do)."""
    try:
        folder = Path(resolve_model_path(model))
    except (ModelLoadError, OSError, ValueError):
        return None
    digest = hashlib.sha256()
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    for path in files:
        digest.update(f"{path.name}:{path.stat().st_size}:".encode())
        if path.suffix == ".safetensors":
            with open(path, "rb") as handle:
                head = handle.read(8)
                length = int.from_bytes(head, "little") if len(head) == 8 else 0
                digest.update(handle.read(min(length, 100_000_000)))
    return digest.hexdigest() if files else None


def model_identity(model: ModelSource) -> dict:
    """What names a base model for the answers cache: source, revision, adapter (with its weights), weights hash."""
    identity = {"kind": model.kind, "ref": model.ref, "revision": model.revision, "weights": weights_fingerprint(model.with_adapter(None))}
    if model.adapter:
        weights = Path(model.adapter).expanduser() / "adapter_model.safetensors"
        identity["adapter"] = model.adapter
        identity["adapter_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else None
    return identity


def answers_name(model: ModelSource) -> str:
    """The workspace dataset that holds `model`'s answers to the general prompts."""
    key = hashlib.sha256(json.dumps(model_identity(model), sort_keys=True).encode()).hexdigest()[:12]
    return f"{ANSWERS_PREFIX}{safe_name(model.label, max_len=40)}-{key}"


def cached_answers(model: ModelSource) -> Path | None:
    """The folder of `model`'s cached general answers (data.jsonl + manifest.json), or None when there is none yet."""
    folder = datasets_dir() / answers_name(model)
    return folder if (folder / "manifest.json").is_file() and (folder / "data.jsonl").is_file() else None


def needs_answers(source: str, model: ModelSource | None) -> bool:
    """Whether replay from `source` needs `model`'s own answers that are not cached yet."""
    return source.strip() == SHIPPED and not uses_shipped_answers(model) and cached_answers(model) is None


def missing_answers_message(model: ModelSource) -> str:
    return (f"replay_dataset general: no general answers written by {model.label} are cached yet "
            f"(datasets/{answers_name(model)}), and the shipped set was answered by the embedded {EMBEDDED_NAME}: replaying it "
            f"would distill {model.label} from a 135M model. Start the run as a job (its first stage answers the general prompts "
            "with this base model and caches them), or name a replay file of your own.")


def resolve_source(source: str, model: ModelSource | None) -> tuple[str, str, str]:
    """(path or dataset to read, the model that answered it, a label for the run card) for a replay source.

    `general` → the shipped file for the embedded model, else `model`'s cached answers; ReplayError when those are
    missing (the job generates them first with `ensure_answers`)."""
    if source.strip() != SHIPPED:  # a file named by the user: replayed as given (the shipped file says whose it is)
        return source, EMBEDDED_NAME if replay_path(source).resolve() == SHIPPED_FILE else "", source.strip()
    if uses_shipped_answers(model):
        return SHIPPED, EMBEDDED_NAME, SHIPPED_LABEL
    folder = cached_answers(model)
    if folder is None:
        raise ReplayError(missing_answers_message(model))
    return str(folder), model.label, f"general instructions answered by the base model {model.label} (datasets/{folder.name})"


def prepare_answers(ctx: Any, source: str, model: ModelSource, *, max_new_tokens: int = 256, prompts: int = 0,
                    keep_unfinished: bool = False, span: tuple[float, float] = (0.0, 0.0)) -> dict | None:
    """ensure_answers when replay from `source` is `model`'s own general answers (None when the shipped set or a file is used)."""
    if source.strip() != SHIPPED or uses_shipped_answers(model):
        return None
    return ensure_answers(ctx, model, max_new_tokens=max_new_tokens, prompts=prompts, keep_unfinished=keep_unfinished, span=span)


def ensure_answers(ctx: Any, model: ModelSource, *, max_new_tokens: int, prompts: int = 0, keep_unfinished: bool = False,
                   span: tuple[float, float] = (0.0, 0.1)) -> dict:
    """`model`'s answers to the general prompts: the cached set, else written now by the `teacher_answers` job run
    as a stage of `ctx`'s job (in `<run>/replay_answers/`) and cached for later runs of the same base."""
    name = answers_name(model)
    folder = cached_answers(model)
    if folder is not None:
        ctx.log.info("replay: reusing the general answers of %s cached in datasets/%s", model.label, name)
        return {"dataset_dir": str(folder), "answered_by": model.label, "generated": False}
    lines = [line.strip() for line in PROMPTS_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
    lines = lines[:prompts] if prompts > 0 else lines
    child = ctx.path("replay_answers", "prompts.jsonl")
    atomic_write_text(child, "".join(json.dumps({"messages": [{"role": "user", "content": p}]}) + "\n" for p in lines))
    spec = {"kind": "teacher_answers", "name": name, "teacher": model.as_dict(), "data": "dataset", "dataset_path": str(child),
            "decoding": "greedy", "max_new_tokens": max_new_tokens, "json_only": "no", "keep_unfinished": keep_unfinished,
            "output_name": name, "max_rows": len(lines)}
    label = f"replay: {model.label} answering {len(lines)} general prompts"
    ctx.log.info("%s (greedy, up to %d new tokens) — cached as datasets/%s for later runs of this base", label, max_new_tokens, name)
    sub = ctx.child("replay_answers", spec, span, label)
    result = job_kind("teacher_answers").run_function()(sub) or {}
    if not result.get("dataset_dir"):
        raise JobError(f"replay: the general answers of {model.label} were not written ({result.get('note', 'no dataset')})")
    ctx.log.info("replay: %s rows answered by %s in %.1f s", result.get("rows"), model.label, result.get("generation_seconds", 0.0))
    return {"dataset_dir": result["dataset_dir"], "answered_by": model.label, "generated": True, "rows": result.get("rows"),
            "generation_seconds": result.get("generation_seconds")}


def rows_needed(task_rows: int, fraction: float) -> int:
    """General rows to add to `task_rows` so that they are `fraction` of the mixed rows."""
    if not 0.0 <= fraction <= MAX_FRACTION:
        raise ReplayError(f"replay_fraction: {fraction} is outside 0 to {MAX_FRACTION}")
    return round(fraction * task_rows / (1.0 - fraction)) if fraction > 0 else 0


def replay_path(source: str) -> Path:
    if source.strip() == SHIPPED:
        return SHIPPED_FILE
    path = Path(source.strip()).expanduser()
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        path = REPO_ROOT / path
    if path.is_dir() and (path / "data.jsonl").is_file():
        return path / "data.jsonl"
    return path


def load_replay_set(source: str, model: ModelSource | None = None) -> ReplaySet:
    """The replay rows of `source` for a run on `model` (see resolve_source: `general` is the model's own answers)."""
    if not str(source).strip():
        raise ReplayError("replay_dataset: name the replay data ('general' for the shipped set, or a file)")
    given = source
    source, answered_by, label = resolve_source(source, model)
    path = replay_path(source)
    if not path.exists():
        raise ReplayError(f"replay_dataset {source}: not found ({path})")
    try:
        loaded = load_dataset_file(path)
    except (DatasetLoadError, ValueError, OSError) as exc:
        raise ReplayError(f"replay_dataset {source}: {exc}") from exc
    if not loaded.rows:
        raise ReplayError(f"replay_dataset {source}: no valid rows ({loaded.report.summary()})")
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else str(loaded.source_hash)
    return ReplaySet(rows=list(loaded.rows), source=given.strip(), path=str(path), sha256=digest, answered_by=answered_by, label=label)


def pick_rows(available: int, needed: int, seed: int, trains: Callable[[int], bool]) -> tuple[list[int], int]:
    """(indices of `needed` replay rows for which trains(i) is true, passes over the set beyond the first).

    Rows are tried in a seeded order and only until enough train; raises ReplayError when none trains."""
    if needed <= 0:
        return [], 0
    rng = random.Random(seed)
    order = list(range(available))
    rng.shuffle(order)
    picked: list[int] = []
    for i in order:
        if len(picked) == needed:
            return picked, 0
        if trains(i):
            picked.append(i)
    if not picked:
        raise ReplayError("no replay row keeps a trained token under this masking policy and max_length")
    usable, passes = set(picked), 0
    while len(picked) < needed:  # the whole set went in: cycle the rows that train, a new order each pass
        passes += 1
        rng.shuffle(order)
        picked += [i for i in order if i in usable][: needed - len(picked)]
    return picked, passes


def replay_record(replay: ReplaySet, fraction: float, task_rows: int, picked: Sequence[int], passes: int) -> dict:
    """What the run card records: where the rows came from and the exact proportion trained."""
    total = task_rows + len(picked)
    return {
        "source": replay.source,
        "label": replay.label or (SHIPPED_LABEL if replay.source == SHIPPED else replay.source),
        "answered_by": replay.answered_by or "not recorded (your own file)",
        "path": replay.path,
        "sha256": replay.sha256,
        "fraction_requested": fraction,
        "task_rows": task_rows,
        "replay_rows": len(picked),
        "distinct_replay_rows": len(set(picked)),
        "replay_rows_available": len(replay.rows),
        "extra_passes": passes,
        "fraction": round(len(picked) / total, 6) if total else 0.0,
        "rows_sha256": hashlib.sha256(",".join(map(str, picked)).encode()).hexdigest()[:16],
    }


def mix(task_rows: int, fraction: float, source: str, seed: int, encode: Callable[[dict], T | None],
        model: ModelSource | None = None) -> tuple[list[T], dict]:
    """The encoded replay rows to add to `task_rows` training rows, and their record (see the module docstring).

    encode(row) returns the row as the trainer needs it, or None when it would train nothing. `model` is the run's
    base model: `general` replays its own answers (None: the embedded model's, the shipped set)."""
    replay = load_replay_set(source, model)
    needed = rows_needed(task_rows, fraction)
    encoded: dict[int, T | None] = {}

    def trains(i: int) -> bool:
        encoded[i] = encode(replay.rows[i])
        return encoded[i] is not None

    picked, passes = pick_rows(len(replay.rows), needed, seed, trains)
    return [encoded[i] for i in picked], replay_record(replay, fraction, task_rows, picked, passes)
