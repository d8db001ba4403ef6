"""Every page has one shape and uses the shared helpers (checked on the source, so a new page is held to it too)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT

PAGES = sorted((ROOT / "app_pages").glob("*.py"))
HEAVY = ("torch", "transformers", "peft", "trl", "unsloth", "bitsandbytes")
SHARED = ("choose_dataset", "arch_of", "cached_arch", "model_picker", "start_run", "send_model_buttons", "run_selector",
          "cached_dataset_upload", "cached_dataset_file", "cached_model", "live_run", "spec_form")


def _is_header(node: ast.stmt) -> bool:
    if isinstance(node, (ast.Import, ast.ImportFrom)) or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
        return True
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return all(isinstance(t, ast.Name) and t.id.isupper() for t in targets)
    return False


def test_the_pages_folder_is_not_called_pages():
    """Streamlit auto-discovers a `pages/` folder beside st.navigation and flashes its legacy sidebar."""
    assert not (ROOT / "pages").exists() and PAGES


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_shape_definitions_then_title_and_flow(page: Path):
    tree = ast.parse(page.read_text(encoding="utf-8"))
    flow = [n for n in tree.body if not _is_header(n) and not isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert flow, f"{page.name} renders nothing"
    late = [d.name for d in defs if d.lineno > flow[0].lineno]
    assert not late, f"{page.name}: define {', '.join(late)} before the title and the flow"
    first = ast.get_source_segment(page.read_text(encoding="utf-8"), flow[0])
    assert first.startswith("st.title("), f"{page.name}: the flow starts with st.title, not {first[:40]!r}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_pages_stay_thin_and_use_the_shared_helpers(page: Path):
    text = page.read_text(encoding="utf-8")
    tree = ast.parse(text)
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & set(HEAVY), f"{page.name} imports {imported & set(HEAVY)}: that belongs in core"
    own = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert not own & set(SHARED), f"{page.name} rebuilds {own & set(SHARED)}: use pages_common's"
    assert len(text.splitlines()) <= 230, f"{page.name} is {len(text.splitlines())} lines: move logic into core"


@pytest.mark.parametrize("page", [*PAGES, *sorted((ROOT / "app_pages").glob("*/*.py")), ROOT / "pages_common.py"],
                         ids=lambda p: p.name)
def test_no_page_uses_the_deprecated_width_keyword(page: Path):
    """Streamlit deprecated use_container_width (it fills the terminal with warnings): width="stretch" says the same."""
    calls = [n for n in ast.walk(ast.parse(page.read_text(encoding="utf-8"))) if isinstance(n, ast.Call)]
    assert not [n.lineno for n in calls if any(k.arg == "use_container_width" for k in n.keywords)]


def test_an_upload_is_hashed_once_not_on_every_rerun():
    import hashlib

    import pages_common

    class Upload:
        file_id, name, reads = "upload-1", "rows.jsonl", 0

        def getbuffer(self):
            Upload.reads += 1
            return memoryview(b'{"prompt": "a", "completion": "b"}\n')

    upload = Upload()
    first = pages_common.upload_digest(upload)
    assert pages_common.upload_digest(upload) == first == hashlib.sha256(b'{"prompt": "a", "completion": "b"}\n').hexdigest()
    assert Upload.reads == 1


def test_every_hand_off_to_train_goes_through_one_helper():
    """Pages hand a recipe to Train with pages_common.send_recipe_to_train (named keys, one landing), never by hand."""
    offenders = [page.name for page in [*PAGES, *sorted((ROOT / "app_pages").glob("*/*.py"))]
                 if any(key in page.read_text(encoding="utf-8") for key in ('"train_recipe', '"train_run_id"'))]
    assert offenders == []
