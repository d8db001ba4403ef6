"""What the Export, Runs and Chat pages show of an export, computed here so the pages stay thin readers."""
from __future__ import annotations

from pathlib import Path

from core.runs import list_runs
from core.runs.jobs import model_kinds
from core.runs.jobs import read_result as read_job_result

OUTCOMES = {True: "✅ pass", False: "❌ fail", None: "➖ not run"}  # the mark and the word: a colour-blind reader needs the word


def read_result(run_dir: str | Path) -> dict:
    return read_job_result(run_dir, "export", {}) or {}


def check_outcome(check: dict) -> str:
    return "⚠️ pass, with a warning" if check.get("passed") and check.get("warning") else OUTCOMES[check.get("passed")]


def checks_summary(checks: list[dict]) -> str:
    """One artifact's checks in words: "✅ 5 passed", "❌ 1 failed · ✅ 4 passed", "not checked"."""
    failed = sum(c.get("passed") is False for c in checks)
    passed = sum(c.get("passed") is True for c in checks)
    parts = ([f"❌ {failed} failed"] if failed else []) + ([f"✅ {passed} passed"] if passed else [])
    return " · ".join(parts) or ("➖ not run" if checks else "not checked")


def artifact_rows(result: dict) -> list[dict]:
    """One row per artifact: what, file, size, time, and its checks in one line."""
    rows = []
    for artifact in result.get("artifacts", []):
        checks = artifact.get("verified", {}).get("checks") or artifact.get("checks", [])
        rows.append({"artifact": artifact["kind"], "file": Path(artifact["path"]).name,
                     "size MB": round(artifact["size_bytes"] / 1e6, 2), "seconds": round(artifact["seconds"], 1),
                     "checks": checks_summary(checks)})
    return rows


def check_rows(result: dict) -> list[dict]:
    rows = []
    for artifact in result.get("artifacts", []):
        for check in artifact.get("verified", {}).get("checks") or artifact.get("checks", []):
            summary = check["summary"] + (f" — ⚠️ {check['warning']}" if check.get("warning") else "")
            rows.append({"artifact": artifact["kind"], "outcome": check_outcome(check), "check": check["name"], "result": summary})
    return rows


def gguf_files(result: dict) -> list[dict]:
    return [a for a in result.get("artifacts", []) if a["path"].endswith(".gguf") and Path(a["path"]).is_file()]


def gguf_choices() -> dict[str, str]:
    """label -> path of every GGUF an export run wrote (newest first), checks passed or not."""
    choices = {}
    for run in list_runs("export"):
        for artifact in gguf_files(read_result(run.path)):
            passed = all(c.get("passed") is not False for c in artifact.get("checks", []))
            choices[f"{Path(artifact['path']).name} · {run.run_id}{'' if passed else ' (checks failed)'}"] = artifact["path"]
    return choices


def small_files(result: dict) -> list[Path]:
    """The Modelfile and recipe files, offered as downloads."""
    files = []
    for artifact in result.get("artifacts", []):
        path = Path(artifact["path"])
        if artifact["kind"] == "modelfile" and path.is_file():
            files.append(path)
        if artifact["kind"] == "recipes" and path.is_dir():
            files.extend(sorted(path.glob("*.yaml")))
    return files


def export_sources() -> dict[str, str]:
    """Finished runs that hold a model to export: label -> run folder (newest first)."""
    found = {}
    for run in list_runs():
        if run.kind in model_kinds() and run.status.state in ("succeeded", "stopped"):
            found[f"{run.run_id} ({run.kind}, {run.status.state})"] = str(run.path)
    return found
