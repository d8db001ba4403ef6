"""Turn curation results into operations and export the curated dataset with its manifest.

A curated dataset is a workspace folder ``datasets/<name>/`` holding

- ``data.jsonl`` — the kept rows, in the loader's normal form, in their original order;
- ``manifest.json`` — where the rows came from and what was done to them (schema below). The
  Train page and the run card hash this file, so its content is the dataset's identity.

Manifest schema (``"schema": "workbench.dataset/1"``)::

    {
      "schema": "workbench.dataset/1",
      "name": "support-tickets-clean",
      "created": "2025-01-01T12:00:00+00:00",
      "source": {"path": ..., "sha256": ..., "format": ..., "rows": 300,
                 "rows_read": 302, "rows_rejected": 2, "columns": ["id", "source"]},
      "id_column": "id",
      "operations": [
        {"name": "exact_dedup", "label": ..., "params": {...}, "rows_before": 300,
         "rows_after": 296, "dropped": [12, 40, 41, 77],
         "dropped_ids": ["t-12", "t-40", "t-41", "t-77"], "seconds": 0.01},
        ...
      ],
      "rows": 290,
      "data": {"file": "data.jsonl", "sha256": ..., "bytes": ...}
    }

Row indices in ``dropped`` are positions in the loaded source rows (after validation), so
every operation can be replayed against the source. Operations apply in order; a row already
dropped by an earlier operation is not counted again. When the rows carry an id column of the
user's own (``id``, ``uuid``, ... or the one chosen), ``dropped_ids`` lists the same rows by it.
Every source column rides along on the kept rows in ``data.jsonl``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from core.workspace import atomic_write_bytes, atomic_write_dir, atomic_write_json, datasets_dir, safe_name

MANIFEST_SCHEMA = "workbench.dataset/1"
DATA_FILE = "data.jsonl"
MANIFEST_FILE = "manifest.json"


@dataclass
class CurationOperation:
    """One curation step: its name, its parameters and the source rows it drops."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    drop: list[int] = field(default_factory=list)
    label: str = ""
    seconds: float = 0.0


@dataclass
class DatasetSource:
    path: str
    sha256: str
    format: str = ""
    rows: int = 0
    rows_read: int = 0
    rows_rejected: int = 0
    columns: list[str] = field(default_factory=list)  # the source's own columns kept on the rows
    id_column: str | None = None

    @classmethod
    def from_loaded(cls, loaded: Any) -> "DatasetSource":
        """From a core.data.formats.LoadedDataset."""
        report = loaded.report
        return cls(
            path=str(loaded.source),
            sha256=str(loaded.source_hash),
            format=str(loaded.detected_format),
            rows=len(loaded.rows),
            rows_read=int(report.n_read),
            rows_rejected=int(report.n_invalid),
            columns=list(getattr(loaded, "columns", []) or []),
            id_column=getattr(loaded, "id_column", None),
        )


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def operation_from_dedup(result: Any, skip_clusters: Iterable[int] = ()) -> CurationOperation:
    """A DedupResult as an operation; clusters whose index is in `skip_clusters` keep every member."""
    skipped = set(skip_clusters)
    drop = sorted(i for k, c in enumerate(result.clusters) if k not in skipped for i in c.dropped)
    params = dict(result.params) | {"clusters": len(result.clusters), "clusters_kept_whole": len(skipped)}
    return CurationOperation(
        name=f"{result.method}_dedup",
        label=f"{result.method} de-duplication ({result.field})",
        params=_jsonable(params),
        drop=drop,
        seconds=round(result.seconds, 3),
    )


def operation_from_decontam(result: Any) -> CurationOperation:
    """A DecontamResult as an operation dropping every contaminated row."""
    per_benchmark = {r.benchmark: r.summary() for r in result.reports}
    return CurationOperation(
        name="decontamination",
        label=f"decontamination: {result.mode} ({result.field})",
        params=_jsonable(dict(result.params) | {"per_benchmark": per_benchmark}),
        drop=list(result.rows_to_drop),
        seconds=round(result.seconds, 3),
    )


def operation_from_leakage(report: Any, eval_source: str = "") -> CurationOperation:
    """A LeakageReport as an operation dropping the train rows that leak into the eval set."""
    return CurationOperation(
        name="eval_leakage",
        label="train/eval leakage",
        params=_jsonable(dict(report.params) | {"eval_source": eval_source, "eval_rows": report.n_eval,
                                                 "matched_eval_rows": len(report.matched_eval_rows)}),
        drop=list(report.leaked_train_rows),
        seconds=round(report.seconds, 3),
    )


def operation_from_audit(result: Any, drop: Iterable[int]) -> CurationOperation:
    """The response audit as an operation: the rows the user chose to drop, each with the rules that flagged it."""
    drop = sorted(set(drop))
    reasons = {str(row): sorted({f.rule for f in result.flags.get(row, [])}) for row in drop}
    return CurationOperation(
        name="response_audit",
        label="response audit",
        params=_jsonable(dict(result.params) | {"flag_counts": result.counts, "flagged_rows": len(result.flags),
                                                "dropped_by_rule": reasons}),
        drop=drop,
        seconds=round(result.seconds, 3),
    )


def operation_from_selection(result: Any) -> CurationOperation:
    """A diversity selection as an operation dropping every row that was not selected."""
    selected = set(result.selected)
    return CurationOperation(
        name="diversity_selection",
        label=f"diversity selection: {result.method} ({len(selected):,} rows)",
        params=_jsonable(dict(result.params) | {"coverage": result.coverage}),
        drop=[i for i in range(result.n_rows) if i not in selected],
        seconds=round(result.seconds, 3),
    )


def apply_operations(n_rows: int, operations: Sequence[CurationOperation]) -> tuple[list[int], list[dict]]:
    """(kept row indices, one manifest record per operation with its before/after counts)."""
    if n_rows <= 0:
        raise ValueError("the dataset is empty: there is nothing to curate or export")
    dropped: set[int] = set()
    records = []
    for op in operations:
        bad = [i for i in op.drop if not (isinstance(i, int) and 0 <= i < n_rows)]
        if bad:
            raise ValueError(f"operation {op.name!r} drops row(s) {bad[:5]} outside the {n_rows} source rows")
        new = sorted(set(op.drop) - dropped)
        before = n_rows - len(dropped)
        dropped.update(new)
        records.append(
            {
                "name": op.name,
                "label": op.label or op.name,
                "params": _jsonable(op.params),
                "rows_before": before,
                "rows_after": n_rows - len(dropped),
                "dropped": new,
                "seconds": op.seconds,
            }
        )
    return [i for i in range(n_rows) if i not in dropped], records


def curated_dataset_dir(name: str) -> Path:
    return datasets_dir() / safe_name(name, default="curated")


def export_curated(
    rows: Sequence[Mapping[str, Any]],
    name: str,
    source: DatasetSource | Mapping[str, Any] | Any,
    operations: Sequence[CurationOperation] = (),
    *,
    overwrite: bool = False,
    id_column: str | None = "auto",
) -> Path:
    """Write ``datasets/<safe name>/data.jsonl`` + ``manifest.json`` and return the folder.

    `rows` are the loaded source rows; the operations' drops are applied here, so the counts in
    the manifest always describe the file written beside it. `id_column` names the rows' own id, listed
    beside every operation's dropped positions ("auto": the source's detected one; None: none). The folder is assembled under a
    temporary name and renamed into place: readers see the old dataset or the new, never half.
    """
    if not isinstance(source, DatasetSource):
        source = DatasetSource(**dict(source)) if isinstance(source, Mapping) else DatasetSource.from_loaded(source)
    if not str(name).strip():
        raise ValueError("give the curated dataset a name")
    kept, records = apply_operations(len(rows), operations)
    if not kept:
        raise ValueError("every row was dropped: there is nothing to export")
    id_column = source.id_column if id_column == "auto" else id_column
    if id_column:
        missing = [i for i, row in enumerate(rows) if id_column not in row]
        if missing:
            raise ValueError(f"id column {id_column!r} is missing on row(s) {missing[:5]}; choose another id column or none")
        for record in records:
            record["dropped_ids"] = [rows[i][id_column] for i in record["dropped"]]
    target = curated_dataset_dir(name)
    if target.exists() and not overwrite:
        raise FileExistsError(f"a dataset named {target.name!r} already exists in {target.parent}; pick another name or overwrite it")

    data = "".join(json.dumps(rows[i], ensure_ascii=False) + "\n" for i in kept).encode("utf-8")
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "name": target.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": _jsonable(source.__dict__),
        "id_column": id_column,
        "operations": records,
        "rows": len(kept),
        "data": {"file": DATA_FILE, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)},
    }
    def write(staging: Path) -> None:
        atomic_write_bytes(staging / DATA_FILE, data)
        atomic_write_json(staging / MANIFEST_FILE, manifest)

    return atomic_write_dir(target, write)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist: not a curated dataset folder") from None
