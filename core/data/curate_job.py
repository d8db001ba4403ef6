"""The `curate` job: the Data page's heavy operations, run by a worker so the page can be left and reattached.

One job runs any of: exact / near / semantic de-duplication, decontamination, the response audit, the
diversity map and a diversity selection, on one dataset, in this process or on Ray (exact, near and
decontamination; `core.data.ray_curate`). The dataset is read again by the worker with the same loader, and
its source hash must be the one the page saw, so every row index in the result means the same row there.

The result file (`curation.json`) holds each operation's result as a plain mapping
(``DedupResult.to_dict()`` and friends); `load_results` turns it back into result objects. A diversity map
also leaves its embeddings (`embeddings.npy`) in the run folder, where a later selection finds them.
"""
from __future__ import annotations

import importlib
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from core.data import decontam, dedup, ray_curate
from core.data.audit import AuditConfig, audit_rows
from core.data.decontam import DecontamConfig
from core.data.dedup import ExactDedupConfig, NearDedupConfig, SemanticDedupConfig
from core.data.diversity import SELECTION_METHODS, DiversityConfig, DiversityMap, embedding_map, select_diverse
from core.data.formats import DatasetLoadError
from core.data.preference import load_any_dataset
from core.data.ray_curate import RayUnavailable, decontaminate_ray, describe_cluster, ray_session
from core.runs import list_runs
from core.runs.jobs import JobContext, JobError, read_result
from core.runs.spec import DatasetJobSpec, meta
from core.workspace import atomic_write_bytes

ENGINES = ("local", "ray")
OPERATIONS = ("exact", "near", "semantic", "decontam", "audit", "diversity", "select")
RAY_OPERATIONS = ("exact", "near", "decontam")
EMBEDDINGS_FILE = "embeddings.npy"


@dataclass
class CurateSpec(DatasetJobSpec):
    kind: ClassVar[str] = "curate"

    engine: str = field(default="local", metadata=meta("Where the work runs: this machine, or Ray (RAY_ADDRESS for a cluster; exact, near "
                                                       "and decontamination).",
                                                      "engine", choices=ENGINES))
    exact: dict | None = field(default=None, metadata=meta(
        "Exact de-duplication settings (core.data.dedup.ExactDedupConfig), or empty to skip.", "operations"))
    near: dict | None = field(default=None, metadata=meta(
        "Near de-duplication settings (NearDedupConfig), or empty to skip.", "operations"))
    semantic: dict | None = field(default=None, metadata=meta(
        "Semantic de-duplication settings (SemanticDedupConfig), or empty to skip.", "operations"))
    decontam: dict | None = field(default=None, metadata=meta(
        "Decontamination: DecontamConfig fields plus `benchmarks` (shipped names) and `eval_files` (your own eval sets), or empty to skip.",
        "operations"))
    audit: dict | None = field(default=None, metadata=meta(
        "Response audit settings (core.data.audit.AuditConfig), or empty to skip.", "operations"))
    diversity: dict | None = field(default=None, metadata=meta(
        "Diversity map settings (core.data.diversity.DiversityConfig), or empty to skip.", "operations"))
    select: dict | None = field(default=None, metadata=meta(
        "Diversity selection: {n, method, map_run (a run folder holding a diversity map; empty: this run's map)}, or empty to skip.",
        "operations"))
    name: str = field(default="", metadata=meta("A label for the run folder."))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not str(self.dataset).strip():
            raise ValueError("dataset: name the dataset to curate")
        chosen = self.operations
        if not chosen:
            raise ValueError(f"choose at least one operation ({', '.join(OPERATIONS)})")
        if self.engine == "ray" and set(chosen) - set(RAY_OPERATIONS):
            raise ValueError(f"engine ray runs {', '.join(RAY_OPERATIONS)}; "
                             f"run {', '.join(sorted(set(chosen) - set(RAY_OPERATIONS)))} locally")
        for name in chosen:
            _config(name, getattr(self, name))  # raises ValueError naming the bad setting
        if self.select is not None and not self.select.get("map_run") and self.diversity is None:
            raise ValueError("select: needs a diversity map, from this run (diversity) or an earlier one (map_run)")

    @property
    def operations(self) -> list[str]:
        return [name for name in OPERATIONS if getattr(self, name) is not None]


def _config(name: str, settings: dict) -> Any:
    """The operation's config dataclass from its settings mapping (ValueError names the operation)."""
    settings = dict(settings or {})
    try:
        if name == "decontam":
            settings.pop("benchmarks", None), settings.pop("eval_files", None)
            return DecontamConfig(**settings)
        if name == "select":
            if settings.get("method", "k_center") not in SELECTION_METHODS:
                raise ValueError(f"method must be one of {', '.join(SELECTION_METHODS)}")
            if not isinstance(settings.get("n"), int) or settings["n"] < 1:
                raise ValueError("n must be a positive number of rows")
            return settings
        classes = {"exact": ExactDedupConfig, "near": NearDedupConfig, "semantic": SemanticDedupConfig, "audit": AuditConfig,
                   "diversity": DiversityConfig}
        if "lsh_weights" in settings:
            settings["lsh_weights"] = tuple(settings["lsh_weights"])
        return classes[name](**settings)
    except TypeError as exc:
        raise ValueError(f"{name}: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


# ---------------------------------------------------------------- the job


def run(ctx: JobContext) -> dict:
    spec: CurateSpec = ctx.spec
    loaded = _load(spec)
    rows = loaded.rows
    ctx.log.info("curating %s: %d rows, operations %s on %s", loaded.source, len(rows), ", ".join(spec.operations), spec.engine)
    results: dict[str, Any] = {}
    steps = spec.operations
    ray_context = _ray_if_needed(spec)
    with ray_context as ray_info:
        if ray_info:
            ctx.log.info("Ray: %s", ray_info)
        for k, name in enumerate(steps):
            if ctx.stop_requested:
                ctx.log.info("stop requested before %s", name)
                break
            started = time.perf_counter()
            progress = _sub_progress(ctx, k, len(steps), name)
            results[name] = _run_operation(ctx, spec, name, rows, results, progress)
            ctx.log.info("%s done in %.1f s", name, time.perf_counter() - started)
            ctx.write_result(_payload(spec, loaded, results, ray_info))  # partial results survive a stop
    ctx.progress(1.0, "done")
    return {"rows": len(rows), "operations": list(results), "engine": spec.engine}


def _payload(spec: CurateSpec, loaded: Any, results: dict, ray_info: dict | None) -> dict:
    return {"dataset": spec.dataset, "dataset_sha256": loaded.source_hash, "n_rows": len(loaded.rows), "engine": spec.engine,
            "ray": ray_info, "results": {name: r.to_dict() for name, r in results.items()}}


def _load(spec: CurateSpec) -> Any:
    try:  # preference pairs as pairs (the Data page reads them so), so dedup / decontamination see prompt + chosen + rejected
        loaded = load_any_dataset(spec.dataset, split=spec.split or None)
    except (DatasetLoadError, ValueError, OSError) as exc:
        raise JobError(f"dataset {spec.dataset}: {exc}") from None
    if spec.dataset_sha256 and loaded.source_hash != spec.dataset_sha256:
        raise JobError(f"dataset {spec.dataset} changed since it was opened (sha256 {loaded.source_hash[:12]}…, "
                       f"expected {spec.dataset_sha256[:12]}…): open it again on the Data page")
    if not loaded.rows:
        raise JobError(f"dataset {spec.dataset} has no valid row ({loaded.report.summary()})")
    return loaded


class _NoRay:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


class _Ray:
    def __enter__(self):
        self._session = ray_session()
        try:
            self._session.__enter__()
        except RayUnavailable as exc:
            raise JobError(str(exc)) from None
        return describe_cluster()

    def __exit__(self, *exc):
        return self._session.__exit__(*exc)


def _ray_if_needed(spec: CurateSpec):
    return _Ray() if spec.engine == "ray" else _NoRay()


def _sub_progress(ctx: JobContext, k: int, total: int, name: str):
    return lambda fraction, message: ctx.progress((k + max(0.0, min(1.0, fraction))) / total, f"{name}: {message}")


def _run_operation(ctx: JobContext, spec: CurateSpec, name: str, rows: list, results: dict, progress) -> Any:
    config = _config(name, getattr(spec, name))
    try:
        if name in ("exact", "near", "semantic"):
            return _dedup(name, spec.engine, rows, config, progress)
        if name == "decontam":
            return _decontam(spec, rows, config, progress)
        if name == "audit":
            return audit_rows(rows, config, progress)
        if name == "diversity":
            result, embeddings = embedding_map(rows, config, progress)
            _save_array(ctx.path(EMBEDDINGS_FILE), embeddings)
            return result
        return _select(ctx, spec, config, results, progress)
    except ValueError as exc:
        raise JobError(f"{name}: {exc}") from None


def _dedup(name: str, engine: str, rows: list, config: Any, progress) -> Any:
    if engine == "ray":
        finder = {"exact": ray_curate.find_exact_duplicates_ray, "near": ray_curate.find_near_duplicates_ray}[name]
    else:
        finder = {"exact": dedup.find_exact_duplicates, "near": dedup.find_near_duplicates,
                  "semantic": dedup.find_semantic_duplicates}[name]
    return finder(rows, config, progress)


def _decontam(spec: CurateSpec, rows: list, config: Any, progress) -> Any:
    settings = spec.decontam or {}
    benchmarks = [decontam.load_builtin_benchmark(n) for n in settings.get("benchmarks") or decontam.builtin_benchmark_names()]
    for path in settings.get("eval_files") or []:
        benchmarks.append(decontam.load_benchmark_file(path))
    if spec.engine == "ray":
        return decontaminate_ray(rows, benchmarks, config, progress)
    return decontam.decontaminate(rows, benchmarks, config, progress)


def _save_array(path: Path, array: Any) -> None:
    """np.save through temp + rename: a killed job never leaves a half-written map that `select` would load."""
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write_bytes(path, buffer.getvalue())


def _select(ctx: JobContext, spec: CurateSpec, settings: dict, results: dict, progress) -> Any:
    import numpy as np

    if "diversity" in results:
        embeddings, labels = np.load(ctx.run_dir / EMBEDDINGS_FILE), results["diversity"].labels
    else:
        folder = Path(settings["map_run"])
        earlier = (read_result(folder, "curate") or {}).get("results", {})
        if "diversity" not in earlier or not (folder / EMBEDDINGS_FILE).is_file():
            raise JobError(f"select: {folder} holds no diversity map; make the map first")
        if read_result(folder, "curate").get("dataset_sha256") != _load(spec).source_hash:
            raise JobError(f"select: the diversity map in {folder.name} was made for another version of the dataset")
        embeddings, labels = np.load(folder / EMBEDDINGS_FILE), DiversityMap.from_dict(earlier["diversity"]).labels
    return select_diverse(embeddings, int(settings["n"]), settings.get("method", "k_center"), labels=labels, progress=progress)


# ---------------------------------------------------------------- reading results (pages, tests)


RESULT_TYPES = {
    "exact": "core.data.dedup:DedupResult", "near": "core.data.dedup:DedupResult", "semantic": "core.data.dedup:DedupResult",
    "decontam": "core.data.decontam:DecontamResult", "audit": "core.data.audit:AuditResult",
    "diversity": "core.data.diversity:DiversityMap", "select": "core.data.diversity:SelectionResult",
}


def load_results(run_dir: str | Path) -> dict[str, Any]:
    """The operation results a curate run has written so far, as result objects."""
    payload = read_result(run_dir, "curate") or {}
    out = {}
    for name, data in (payload.get("results") or {}).items():
        module, cls = RESULT_TYPES[name].split(":")
        out[name] = getattr(importlib.import_module(module), cls).from_dict(data)
    return out


def curation_runs(dataset_sha256: str, operation: str | None = None) -> list[Any]:
    """This dataset's curate runs (newest first), optionally only those that include `operation`."""
    found = []
    for run in list_runs("curate"):
        spec = run.spec or {}
        if spec.get("dataset_sha256") == dataset_sha256 and (operation is None or spec.get(operation) is not None):
            found.append(run)
    return found
