"""The hostile-input catalogue (tests/hostile_catalogue.py), each case through the core function its page calls.

Every case must end in a specific message (a refusal of one of the expected types, matching the catalogue's regex
that names the file / row / field) or in a safe, reported acceptance; and after it: the sentinel outside the workspace
and that folder's listing are unchanged, the workspace lost nothing, and a dataset saved before is byte-identical.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import hostile_catalogue as catalogue
import pytest
from hostile_catalogue import CASES

IDS = [case["id"] for case in CASES]


def test_catalogue_is_well_formed():
    assert len(CASES) >= 60 and len(set(IDS)) == len(IDS)
    surfaces = {case["surface"] for case in CASES}
    assert surfaces == set(SURFACES), surfaces ^ set(SURFACES)
    for case in CASES:
        assert callable(getattr(catalogue, case["build"], None)), case["id"]
        re.compile(case["expect"])


def _tree(root: Path) -> dict[str, str]:
    """Every entry under root (links not followed): relative path -> content hash, link target or 'dir'."""
    listing = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                listing[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                listing[rel] = "dir"
            else:
                listing[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return listing


@pytest.fixture
def arena(tmp_path, monkeypatch):
    """tmp/outside/sentinel.txt (watched), tmp/a/b/home (the workspace, deep enough for ../../ to land in tmp/a),
    tmp/a/b/inputs (the hostile inputs), and one dataset saved in the workspace before anything hostile happens."""
    from core.data.curate import export_curated

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel.txt").write_text("do not touch\n")
    home = tmp_path / "a" / "b" / "home"
    home.mkdir(parents=True)
    inputs = tmp_path / "a" / "b" / "inputs"
    inputs.mkdir()
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(inputs)
    saved = export_curated([catalogue.ROW, {"prompt": "b", "completion": "c"}], "keep", {"path": "test", "sha256": "0"}, id_column=None)
    return {"root": tmp_path, "home": home, "inputs": inputs, "saved": saved}


# ------------------------------------------------------------------ surfaces: the core function each page calls


def _render_dataset(loaded) -> str:
    errors = "; ".join(f"row {e.row} {e.field}: {e.message}" for e in loaded.report.first_errors())
    return f"loaded {len(loaded.rows)} rows" + (f"; {errors}" if errors else "")


def _dataset(value, arena):
    from core.data.formats import load_dataset_file

    return _render_dataset(load_dataset_file(value))


def _dataset_roundtrip(value, arena):
    """What the loader keeps must read back: loaded, written as the workspace writes datasets, loaded again."""
    from core.data.formats import load_dataset_file, write_jsonl

    loaded = load_dataset_file(value)
    again = load_dataset_file(write_jsonl(loaded.rows, arena["inputs"] / "roundtrip.jsonl"))
    return f"loaded {len(loaded.rows)} rows, kept score {[r.get('score') for r in loaded.rows]}, reloaded {len(again.rows)} rows"


def _upload(value, arena):
    from core.data.formats import load_uploaded

    filename, data = value
    return _render_dataset(load_uploaded(filename, data))


def _upload_saved(value, arena):
    from core.data.formats import save_upload

    filename, data = value
    return f"saved as {save_upload(filename, data).relative_to(arena['home']).as_posix()}"


def _corpus(value, arena):
    from core.rag.corpus import load_corpus

    corpus = load_corpus(value)
    return f"loaded {len(corpus.documents)} documents"


def _questions(value, arena):
    from core.rag.questions import load_questions

    return f"loaded {len(load_questions(value))} questions"


def _spec_yaml(value, arena):
    from core.runs.jobs import parse_spec, read_spec_dict

    folder = arena["inputs"] / "spec-run"
    folder.mkdir(exist_ok=True)
    (folder / "spec.yaml").write_bytes(value if isinstance(value, bytes) else value.encode("utf-8"))
    parse_spec(read_spec_dict(folder))
    return "accepted"


def _merge(value, arena):
    from core.merge.config import export_yaml
    from core.runs.jobs import parse_spec

    return export_yaml(parse_spec(value))


def _model(value, arena):
    from core.models import ModelSource, resolve_model_path

    return resolve_model_path(ModelSource.parse(value), weights=False)


def _run_name(value, arena):
    from core.runs import new_run_dir

    return f"saved as {new_run_dir('train', value).relative_to(arena['home']).as_posix()}"


def _dataset_name(value, arena):
    from core.data.curate import export_curated

    path = export_curated([{"prompt": "x", "completion": "y"}], value, {"path": "hostile", "sha256": "0"}, id_column=None)
    return f"saved as {path.relative_to(arena['home']).as_posix()}"


def _export_name(value, arena):
    from core.workspace import safe_name

    return safe_name(value, max_len=60)


def _hub(value, arena):
    """The listing the download job reads (remote_repo), then the download itself, against tests/hub_server.py."""
    import huggingface_hub
    from hub_server import HubRepo, HubServer

    from core import hub

    repos = [] if value["files"] is None else [HubRepo(value["repo_id"], value["files"])]
    with HubServer(repos) as server, pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_ENDPOINT", server.url)
        patch.setenv("HF_HUB_OFFLINE", "0")
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        patch.delenv("HF_TOKEN", raising=False)
        repo = hub.remote_repo(value["repo_id"])
        snapshot, _, _ = hub.download(repo, list(repo.files))
    return f"downloaded into {snapshot}"


SURFACES = {
    "dataset": _dataset, "dataset_roundtrip": _dataset_roundtrip, "upload": _upload, "upload_saved": _upload_saved, "corpus": _corpus,
    "questions": _questions, "spec_yaml": _spec_yaml, "merge": _merge, "model": _model,
    "run_name": _run_name, "dataset_name": _dataset_name, "export_name": _export_name, "hub": _hub,
}


def _refusals() -> tuple[type[BaseException], ...]:
    from core.data.formats import DatasetLoadError
    from core.hub import HubError
    from core.models import ModelLoadError
    from core.rag.corpus import CorpusError
    from core.rag.questions import QuestionsError
    from core.runs.jobs import InvalidSpec

    return (DatasetLoadError, CorpusError, QuestionsError, InvalidSpec, ModelLoadError, HubError, ValueError,
            FileNotFoundError, FileExistsError)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_hostile_input(case, arena):
    root, home = arena["root"], arena["home"]
    value = getattr(catalogue, case["build"])(arena["inputs"])
    outside_before = {k: v for k, v in _tree(root).items() if not k.startswith(("a/b/home", "a/b/inputs"))}
    home_before = _tree(home)
    saved_before = {p.name: p.read_bytes() for p in arena["saved"].iterdir()}

    try:
        outcome, refused = SURFACES[case["surface"]](value, arena), False
    except _refusals() as exc:
        if isinstance(exc, (UnicodeError, json.JSONDecodeError)):  # ValueErrors, but bare: the loader did not word them
            raise
        outcome, refused = str(exc), True
    # anything else (RecursionError, UnicodeDecodeError, KeyError, ...) is a bare failure and fails the test itself

    assert re.search(case["expect"], outcome), f"{case['id']}: outcome {outcome[:500]!r} does not match {case['expect']!r}"
    assert refused == case["refused"], f"{case['id']}: {'refused' if refused else 'accepted'}: {outcome[:300]!r}"
    assert "Traceback" not in outcome and len(outcome) < 2000, outcome[:300]

    outside_after = {k: v for k, v in _tree(root).items() if not k.startswith(("a/b/home", "a/b/inputs"))}
    assert outside_after == outside_before, f"{case['id']} touched files outside the workspace"
    home_after = _tree(home)
    lost = {k for k in home_before if k not in home_after or (home_before[k] != home_after[k] and k.startswith("datasets/keep"))}
    assert not lost, f"{case['id']} lost or changed {sorted(lost)}"
    assert {p.name: p.read_bytes() for p in arena["saved"].iterdir()} == saved_before
