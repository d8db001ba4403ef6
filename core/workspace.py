"""The workspace: every file the user makes lives under $WORKBENCH_HOME (default ~/.workbench).

Layout: datasets/<name>/, runs/<id>/, models/ (converted model cache), reports/.
Also the two write helpers everything uses so nothing is ever half-written.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any, Callable

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_RESERVED = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))})
FAULT_ENV = "WORKBENCH_FAULT_AT"
REPO_ROOT = Path(__file__).resolve().parents[1]  # the checkout: workers run from here, shipped assets live here


def fault_point(stage: str) -> None:
    """TEST HOOK (tests/test_fault_drill.py): when $WORKBENCH_FAULT_AT names this stage, the process SIGKILLs
    itself here, as kill -9 or the out-of-memory killer would, so a fault drill kills at a stage marker instead
    of after a sleep. Stages: every status message the worker reports ("started", "step 3/10", "saving", ...)
    and "write:<file name>" between a finished temp file and its rename. A value ending in "*" is a prefix.
    Unset (always, outside the drill) it costs one environment lookup."""
    target = os.environ.get(FAULT_ENV)
    if target and (stage == target or (target.endswith("*") and stage.startswith(target[:-1]))):
        os.kill(os.getpid(), signal.SIGKILL)


def workbench_home() -> Path:
    home = Path(os.environ.get("WORKBENCH_HOME", "~/.workbench")).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def subdir(name: str) -> Path:
    path = workbench_home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def display_path(path: str | Path) -> str:
    """How a table shows a path: relative to the workspace ("runs/20261207-train/adapter") or to the app's folder
    ("assets/demo/train.jsonl"), "~/…" under the home folder, else as given. Anything not an absolute path is returned as is."""
    text = str(path)
    if not text.startswith(("/", "~")):
        return text
    resolved = Path(text).expanduser()
    for root, prefix in ((workbench_home(), ""), (Path(__file__).resolve().parents[1], ""), (Path.home(), "~/")):
        try:
            return prefix + resolved.relative_to(root.resolve()).as_posix()
        except ValueError:
            continue
    return text


def datasets_dir() -> Path:
    return subdir("datasets")


def runs_dir() -> Path:
    return subdir("runs")


def models_dir() -> Path:
    return subdir("models")


def reports_dir() -> Path:
    return subdir("reports")


def safe_name(text: str, default: str = "unnamed", max_len: int = 80) -> str:
    """A name that is safe as one path component: no separators, no dots at the start, bounded."""
    cleaned = _UNSAFE.sub("-", str(text)).strip("-.")[:max_len].strip("-.")
    if cleaned.split(".")[0].upper() in _RESERVED:  # names Windows refuses for a file (the workspace may be shared)
        cleaned = f"{cleaned}_"
    return cleaned or default


def links_outside(folder: str | Path) -> list[tuple[str, Path]]:
    """The symbolic links under `folder` (not followed) whose targets lie outside it: (relative path, target)."""
    folder = Path(folder)
    root = folder.resolve()
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(root):
                    found.append((path.relative_to(folder).as_posix(), target))
    return found


def refuse_links_outside(folder: str | Path, error: type[Exception] = ValueError) -> None:
    """Raise `error` naming the first link in an uploaded / chosen folder that points outside it: reading through it
    would take in (or, for a writer, overwrite) a file the user never gave."""
    outside = links_outside(folder)
    if outside:
        rel, target = outside[0]
        more = f" (and {len(outside) - 1} more)" if len(outside) > 1 else ""
        raise error(f"{folder}: {rel} is a link to {target}, outside the folder{more}; copy the file into the folder instead")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write to a temp file in the same folder, fsync, then rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        fault_point(f"write:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def folder_bytes(path: str | Path | None) -> int:
    """Bytes on disk of a folder's files (a saved adapter or model: weights, config, tokenizer); 0 when it is absent."""
    if not path or not Path(path).is_dir():
        return 0
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def child_env() -> dict[str, str]:
    """The environment of a workbench process this one starts (a worker, a rank): this checkout importable, output
    unbuffered (the log is read live), tokenizers' own thread pool off (the process runs its own threads)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def read_json(path: str | Path, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return default


def atomic_write_dir(target: str | Path, write: Callable[[Path], Any]) -> Path:
    """Fill a temp folder beside `target` with write(tmp), then swap it into place: readers see the old folder
    or the new one, never a half-written or missing one (the old one is moved aside first, deleted last)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        write(tmp)
        fault_point(f"write:{target.name}")
        if target.exists():
            retired = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
            os.replace(target, retired / target.name)
            os.replace(tmp, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
