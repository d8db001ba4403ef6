"""Replay: general rows mixed into a task's training rows, the usual remedy for forgetting.

`fraction` is the share of the *mixed* training rows that are general: with n task rows that train,
round(f · n / (1 − f)) general rows are added, so 0.25 over 300 task rows adds 100 (100 / 400 = 25 %).
Rows are picked in a seeded order of the replay set; a row that would train nothing (masking policy,
max_length) is passed over and the next one taken, so the proportion holds for the rows that train. A set
smaller than what is needed is cycled (in a fresh seeded order each pass) and the record says how often.

`general` names the set the workbench ships (`assets/general/replay.jsonl`, see its README): general
instructions answered by the embedded model itself, so replaying them rehearses the base model's own
general behaviour. Any file or dataset folder that `core.data.formats` reads can be used instead.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED = "general"
SHIPPED_FILE = REPO_ROOT / "assets" / "general" / "replay.jsonl"
SHIPPED_LABEL = "general instructions answered by the embedded model (assets/general/replay.jsonl)"
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


def load_replay_set(source: str) -> ReplaySet:
    from core.data.formats import DatasetLoadError, load_dataset_file

    if not str(source).strip():
        raise ReplayError("replay_dataset: name the replay data ('general' for the shipped set, or a file)")
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
    return ReplaySet(rows=list(loaded.rows), source=source.strip(), path=str(path), sha256=digest)


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
        "label": SHIPPED_LABEL if replay.source == SHIPPED else replay.source,
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


def mix(task_rows: int, fraction: float, source: str, seed: int, encode: Callable[[dict], T | None]) -> tuple[list[T], dict]:
    """The encoded replay rows to add to `task_rows` training rows, and their record (see the module docstring).

    encode(row) returns the row as the trainer needs it, or None when it would train nothing."""
    replay = load_replay_set(source)
    needed = rows_needed(task_rows, fraction)
    encoded: dict[int, T | None] = {}

    def trains(i: int) -> bool:
        encoded[i] = encode(replay.rows[i])
        return encoded[i] is not None

    picked, passes = pick_rows(len(replay.rows), needed, seed, trains)
    return [encoded[i] for i in picked], replay_record(replay, fraction, task_rows, picked, passes)
