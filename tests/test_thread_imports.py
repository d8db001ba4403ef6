"""transformers' lazy package raises "cannot import name 'AutoTokenizer'" when two threads import it for the first time at once
(a browser journey failed on it: the Template page's script thread against the Train page's data check). app.py imports it
once before any page or thread; this holds both halves: the race is real without it, and gone after it."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RACE = """
import threading
{prelude}
errors = []
def first_use(name):
    try:
        exec(f"from transformers import {{name}}")
    except Exception as error:
        errors.append(repr(error))
threads = [threading.Thread(target=first_use, args=(n,)) for n in
           ("AutoTokenizer", "AutoModelForCausalLM", "AutoConfig", "PreTrainedTokenizerFast", "AutoTokenizer", "AutoModelForCausalLM")]
for t in threads: t.start()
for t in threads: t.join()
print(len(errors))
"""


def _race(prelude: str, tries: int) -> list[int]:
    return [int(subprocess.run([sys.executable, "-c", RACE.format(prelude=prelude)], capture_output=True, text=True, check=True,
                               cwd=ROOT).stdout.strip()) for _ in range(tries)]


def test_app_imports_transformers_before_any_page_runs():
    tree = ast.parse((ROOT / "app.py").read_text())
    first_import = next(node.lineno for node in ast.walk(tree) if isinstance(node, ast.Import)
                        and any(alias.name == "transformers" for alias in node.names))
    page_run = next(node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "run")
    assert first_import < page_run


def test_concurrent_first_imports_fail_without_the_prelude_and_never_after_it():
    assert sum(_race("", 2)) > 0, "the race did not show: transformers may have fixed it, and app.py's import may go"
    assert _race("import transformers", 2) == [0, 0]
