"""Benchmark scripts: each ends with one JSON line (checked by running them elsewhere) and never writes into the
user's workspace: a script that creates runs switches to a temporary one first (bench/_train_common.py)."""
from __future__ import annotations

import re

import pytest

from conftest import ROOT

SCRIPTS = sorted(p for p in (ROOT / "bench").glob("*.py") if not p.name.startswith("_"))
MAKES_RUNS = re.compile(r"create_run|run_worker\(|runs\.launch|export_curated")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmarks_that_make_runs_use_a_temporary_workspace(script):
    text = script.read_text(encoding="utf-8")
    if MAKES_RUNS.search(text):
        assert "bench_workspace()" in text or "WORKBENCH_HOME\"] =" in text or '"WORKBENCH_HOME": str(' in text, \
            f"{script.name} creates runs: call _train_common.bench_workspace() first"


def test_the_bench_workspace_is_temporary_and_keeps_the_model_cache(monkeypatch, tmp_path):
    import os
    import sys

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "user"))
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from _train_common import bench_workspace

    home = bench_workspace()
    try:
        assert os.environ["WORKBENCH_HOME"] == str(home) and home != tmp_path / "user"
        assert (home / "models").resolve() == (tmp_path / "user" / "models").resolve()
    finally:
        monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "user"))
        sys.modules.pop("_train_common", None)
