"""Packages that fail when two threads import them for the first time at once. A browser journey failed on each: transformers'
lazy package ("cannot import name 'AutoTokenizer'": the Template page's script thread against the Train page's data check),
and pandas (a deadlock on pandas.core.frame, "partially initialized module 'pandas'": plotly's first chart in one session
against st.dataframe in another). app.py imports them once before any page or thread; this holds both halves for each:
the race is real without the import, and gone after it."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RACE = """
import threading
{prelude}
errors = []
def first_use(code):
    try:
        exec(code)
    except Exception as error:
        errors.append(repr(error))
threads = [threading.Thread(target=first_use, args=(code,)) for code in {uses!r}]
for t in threads: t.start()
for t in threads: t.join()
print(len(errors))
"""
FIRST_USES = {
    "transformers": [f"from transformers import {name}" for name in
                     ("AutoTokenizer", "AutoModelForCausalLM", "AutoConfig", "PreTrainedTokenizerFast", "AutoTokenizer",
                      "AutoModelForCausalLM")],
    # plotly's optional import of pandas (a chart), and what st.dataframe reaches (pyarrow, the DataFrame module)
    "pandas": ["get_module('pandas').Series", "import pandas\npandas.Series", "import pyarrow\nimport pandas.core.frame"] * 2,
}
# what the app has imported before any page runs (streamlit and plotly import no pandas)
BEFORE = {"transformers": "", "pandas": "import plotly.graph_objects\nfrom _plotly_utils.optional_imports import get_module"}


def _race(package: str, prelude: str, tries: int) -> list[int]:
    script = RACE.format(prelude=BEFORE[package] + "\n" + prelude, uses=FIRST_USES[package])
    return [int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT,
                               timeout=120).stdout.strip()) for _ in range(tries)]


@pytest.mark.parametrize("package", sorted(FIRST_USES))
def test_app_imports_it_before_any_page_runs(package):
    tree = ast.parse((ROOT / "app.py").read_text())
    first_import = next(node.lineno for node in ast.walk(tree) if isinstance(node, ast.Import)
                        and any(alias.name == package for alias in node.names))
    page_run = next(node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "run")
    assert first_import < page_run


@pytest.mark.parametrize("package", sorted(FIRST_USES))
def test_concurrent_first_imports_fail_without_the_prelude_and_never_after_it(package):
    assert sum(_race(package, "", 2)) > 0, f"the race did not show: {package} may have fixed it, and app.py's import may go"
    assert _race(package, f"import {package}", 2) == [0, 0]
