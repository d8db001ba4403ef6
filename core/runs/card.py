"""One card per run: `card.json` + a Hub-style `README.md` that link data manifest hash → mask statistics →
predicted / measured memory → curves → evaluation reports → the merges / prunes / distills / exports made
from it, and the lineage graph they form.

Lineage is read from the specs themselves: a run's parents are the runs whose folders its spec.yaml names
(an adapter path, a merged model, a source_run); its descendants are the runs that name it. So nothing is
registered anywhere, and a card can always be rebuilt from the run folders.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from core.models import ModelSource
from core.runs.jobs import JOBS, job_kind, read_result, read_spec_dict
from core.runs.metrics import read_all_metrics
from core.runs.status import METRICS_FILE, read_status
from core.workspace import atomic_write_json, atomic_write_text, runs_dir

CARD_FILE = "card.json"
README_FILE = "README.md"
# kind -> (files in the run folder that are its artifacts)
RELATION = {"evaluate": "evaluated by", "merge": "merged into", "prune": "pruned into", "distill": "distilled into",
            "export": "exported as", "train": "trained further in"}


@dataclass
class RunNode:
    run_id: str
    path: Path
    kind: str
    spec: dict


def _walk_strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _walk_strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _walk_strings(item)


def referenced_runs(spec: dict, root: Path) -> list[str]:
    """Run ids whose folders a spec names (any string path under the runs folder)."""
    root = root.resolve()
    found: list[str] = []
    for text in _walk_strings(spec):
        if "/" not in text:
            continue
        try:
            relative = Path(text).expanduser().resolve().relative_to(root)
        except (ValueError, OSError):
            continue
        if relative.parts and relative.parts[0] not in found:
            found.append(relative.parts[0])
    return found


def scan(root: Path | None = None) -> dict[str, RunNode]:
    root = root or runs_dir()
    nodes = {}
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if path.is_dir() and not path.name.startswith("."):
            try:
                spec = read_spec_dict(path)
            except (FileNotFoundError, ValueError):
                continue
            nodes[path.name] = RunNode(path.name, path, spec.get("kind", ""), spec)
    return nodes


@dataclass
class Lineage:
    parents: dict[str, list[str]]
    children: dict[str, list[str]]

    def descendants(self, run_id: str) -> list[str]:
        seen: list[str] = []
        frontier = list(self.children.get(run_id, []))
        while frontier:
            current = frontier.pop(0)
            if current not in seen and current != run_id:
                seen.append(current)
                frontier.extend(self.children.get(current, []))
        return seen

    def ancestors(self, run_id: str) -> list[str]:
        seen: list[str] = []
        frontier = list(self.parents.get(run_id, []))
        while frontier:
            current = frontier.pop(0)
            if current not in seen and current != run_id:
                seen.append(current)
                frontier.extend(self.parents.get(current, []))
        return seen


def lineage(nodes: dict[str, RunNode], root: Path | None = None) -> Lineage:
    root = root or runs_dir()
    parents = {run_id: [p for p in referenced_runs(node.spec, root) if p in nodes and p != run_id] for run_id, node in nodes.items()}
    children: dict[str, list[str]] = {run_id: [] for run_id in nodes}
    for run_id, found in parents.items():
        for parent in found:
            children[parent].append(run_id)
    return Lineage(parents, children)


def source_run_of(path: str | Path, root: Path | None = None) -> str | None:
    """The run an artifact (a GGUF file, a merged folder, an adapter) belongs to: any artifact reopens its run."""
    root = (root or runs_dir()).resolve()
    try:
        relative = Path(path).expanduser().resolve().relative_to(root)
    except ValueError:
        return None
    return relative.parts[0] if relative.parts else None


# --------------------------------------------------------------------------- the card


def _artifacts(node: RunNode) -> list[dict]:
    found = []
    for name in job_kind(node.kind).outputs if node.kind in JOBS else ():
        path = node.path / name
        if path.exists():
            found.append({"name": name, "path": str(path)})
    if node.kind == "export":
        for artifact in read_result(node.path, "export", {}).get("artifacts", []):
            checks = artifact.get("checks", [])
            found.append({"name": artifact["kind"], "path": artifact["path"], "size_bytes": artifact.get("size_bytes"),
                          "checks_passed": all(c.get("passed") is not False for c in checks)})
    return found


def _curves(node: RunNode) -> dict:
    rows = read_all_metrics(node.path / METRICS_FILE)
    losses = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_loss" in r]
    if not losses and not evals:
        return {}
    return {"logged_steps": len(losses), "first_loss": losses[0]["loss"] if losses else None,
            "last_loss": losses[-1]["loss"] if losses else None, "last_step": losses[-1]["step"] if losses else None,
            "eval_losses": [{"step": r["step"], "eval_loss": r["eval_loss"]} for r in evals],
            "metrics_file": str(node.path / METRICS_FILE)}


def _report_headline(node: RunNode) -> dict | None:
    report = read_result(node.path, "evaluate", {})
    if not report:
        return None
    verdicts = report.get("verdicts") or []
    return {"run_id": node.run_id, "verdicts": [{k: v.get(k) for k in ("label", "verdict", "summary") if k in v} for v in verdicts],
            "models": [m.get("label") for m in report.get("models", [])] if isinstance(report.get("models"), list) else []}


def build_card(run_id: str, nodes: dict[str, RunNode] | None = None, graph: Lineage | None = None) -> dict:
    nodes = nodes if nodes is not None else scan()
    graph = graph or lineage(nodes)
    node = nodes[run_id]
    status = read_status(node.path)
    train_card = read_result(node.path, "train", {}) if node.kind == "train" else {}
    data = train_card.get("data") or {}
    spec = node.spec
    descendants = []
    for child_id in graph.descendants(run_id):
        child = nodes[child_id]
        descendants.append({"run_id": child_id, "kind": child.kind, "relation": RELATION.get(child.kind, "used by"),
                            "parents": graph.parents.get(child_id, []), "state": read_status(child.path).state,
                            "artifacts": _artifacts(child)})
    reports = [h for d in descendants if d["kind"] == "evaluate" for h in [_report_headline(nodes[d["run_id"]])] if h]
    if node.kind == "evaluate":
        reports.insert(0, _report_headline(node) or {})
    card = {
        "run_id": run_id, "kind": node.kind, "name": spec.get("name") or run_id, "state": status.state,
        "created_at": status.created_at, "finished_at": status.finished_at, "elapsed_s": status.run_seconds,
        "command": f"python -m core.runs.worker {node.path}",
        "spec": spec,
        "base_model": spec.get("model") or spec.get("base") or {},
        "data": {k: data.get(k) for k in ("source", "format", "sha256", "manifest_sha256", "train_rows", "eval_rows")} if data else {},
        "masking": ({"policy": spec.get("masking_policy"), "train_eot": spec.get("train_eot"), "reasoning": spec.get("reasoning", "train"),
                     **{k: data.get(k) for k in ("train_tokens", "trained_tokens", "dropped_zero_trained", "truncated_rows")}}
                    if data else {}),
        "memory": ({"predicted_bytes": train_card.get("predicted_memory_bytes"), "measured_peak_bytes": train_card.get("peak_memory_bytes"),
                    "note": train_card.get("predicted_memory_note")} if train_card else {}),
        "curves": _curves(node),
        "final_metrics": train_card.get("final_metrics") or status.result or {},
        "tokens_per_s": train_card.get("tokens_per_s"),
        "reports": reports,
        "artifacts": _artifacts(node),
        "parents": graph.parents.get(run_id, []),
        "ancestors": graph.ancestors(run_id),
        "descendants": descendants,
        "versions": train_card.get("versions") or {},
        "written_at": time.time(),
    }
    return card


def write_card(run_id: str, nodes: dict[str, RunNode] | None = None, graph: Lineage | None = None) -> dict:
    nodes = nodes if nodes is not None else scan()
    card = build_card(run_id, nodes, graph)
    folder = nodes[run_id].path
    atomic_write_json(folder / CARD_FILE, card)
    atomic_write_text(folder / README_FILE, model_card_markdown(card))
    return card


def refresh_lineage(run_dir: Path) -> None:
    """Rewrite the card of a run and of every run it descends from (their descendant lists just grew)."""
    root = Path(run_dir).parent
    nodes = scan(root)
    if Path(run_dir).name not in nodes:
        return
    graph = lineage(nodes, root)
    for run_id in [Path(run_dir).name] + graph.ancestors(Path(run_dir).name):
        write_card(run_id, nodes, graph)


# --------------------------------------------------------------------------- rendering


def lineage_dot(run_id: str, nodes: dict[str, RunNode] | None = None, graph: Lineage | None = None) -> str:
    """A small Graphviz graph: data → base → this run's ancestors → the run → its descendants."""
    nodes = nodes if nodes is not None else scan()
    graph = graph or lineage(nodes)
    family = [run_id] + graph.ancestors(run_id) + graph.descendants(run_id)
    lines = ['digraph lineage {', '  rankdir=LR; node [shape=box, style="rounded,filled", fillcolor="#f4f4f8", fontsize=10];']
    for member in family:
        node = nodes[member]
        fill = "#ffe9a8" if member == run_id else "#f4f4f8"
        state = read_status(node.path).state
        lines.append(f'  "{member}" [label="{node.kind}\\n{_short(member)}\\n{state}", fillcolor="{fill}"];')
    for member in family:
        for parent in graph.parents.get(member, []):
            if parent in family:
                lines.append(f'  "{parent}" -> "{member}" [label="{RELATION.get(nodes[member].kind, "")}", fontsize=8];')
    for member in family:
        spec = nodes[member].spec
        if nodes[member].kind == "train" and not graph.parents.get(member):
            data = Path(str(spec.get("dataset", ""))).name or "data"
            model = _model_label(spec.get("model") or {})
            lines.append(f'  "data:{member}" [label="dataset\\n{data}", shape=note];  "data:{member}" -> "{member}";')
            lines.append(f'  "base:{member}" [label="base\\n{model}", shape=component];  "base:{member}" -> "{member}";')
    lines.append("}")
    return "\n".join(lines)


def _short(run_id: str) -> str:
    return run_id if len(run_id) <= 36 else run_id[:33] + "…"


def _model_label(model: dict) -> str:
    try:
        return ModelSource.from_dict(model).label
    except (TypeError, ValueError):
        return "?"


def model_card_markdown(card: dict) -> str:
    """A Hugging Face Hub-style README (YAML front matter + sections) for the run."""
    spec = card["spec"]
    base = card.get("base_model") or {}
    front: dict[str, Any] = {"library_name": "peft" if spec.get("method", "lora") != "full" and card["kind"] == "train" else "transformers",
                             "pipeline_tag": "text-generation", "tags": ["post-training-workbench", card["kind"]]}
    if base:
        try:
            front["base_model"] = ModelSource.from_dict(base).hub_name
        except (TypeError, ValueError):
            pass
    if spec.get("method"):
        front["tags"].append(spec["method"])
    if card["data"].get("source"):
        front["datasets"] = [str(card["data"]["source"])]
    out = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {card['name']}", ""]
    out.append(f"A **{card['kind']}** run of the Post-Training Workbench ({card['state']}). Reproduce it headless with "
               f"`{card['command']}` from the folder holding its `spec.yaml`.")
    if card["data"]:
        d = card["data"]
        out += ["", "## Data", "", f"- source: `{d.get('source')}` ({d.get('format')}), sha256 `{(d.get('sha256') or '')[:16]}`"
                + (f", curated manifest sha256 `{d['manifest_sha256'][:16]}`" if d.get("manifest_sha256") else ""),
                f"- rows: {d.get('train_rows')} train, {d.get('eval_rows')} eval"]
    if card["masking"]:
        m = card["masking"]
        out += [f"- masking: `{m.get('policy')}`, end-of-turn trained: {m.get('train_eot')}, reasoning: `{m.get('reasoning', 'train')}`; "
                f"{m.get('trained_tokens')} of "
                f"{m.get('train_tokens')} tokens trained; {m.get('dropped_zero_trained')} rows dropped with nothing to train, "
                f"{m.get('truncated_rows')} truncated"]
    if spec and card["kind"] == "train":
        keys = ("method", "lora_r", "lora_alpha", "lora_dropout", "target_modules", "learning_rate", "lr_scheduler", "num_epochs",
                "max_steps", "batch_size", "gradient_accumulation", "max_length", "packing", "seed")
        out += ["", "## Training hyperparameters", "", "| field | value |", "|---|---|"]
        out += [f"| {k} | {spec.get(k)} |" for k in keys if k in spec]
    if card["memory"]:
        mem = card["memory"]
        out += ["", "## Memory", "", f"- predicted {_gb(mem.get('predicted_bytes'))}, measured peak {_gb(mem.get('measured_peak_bytes'))}"]
    if card["curves"] or card["final_metrics"]:
        c, f = card["curves"], card["final_metrics"]
        out += ["", "## Results", ""]
        if c:
            out.append(f"- train loss {c.get('first_loss')} → {c.get('last_loss')} over {c.get('logged_steps')} logged steps")
        if f.get("eval_loss") is not None:
            out.append(f"- eval loss {f.get('eval_loss_start')} → {f.get('eval_loss')}")
    for report in card["reports"]:
        for verdict in report.get("verdicts", []):
            out.append(f"- evaluation {report.get('run_id')}: **{verdict.get('label')}** — {verdict.get('verdict')}"
                       + (f": {verdict['summary']}" if verdict.get("summary") else ""))
    if card["ancestors"]:
        out += ["", "## Made from", ""] + [f"- `{a}`" for a in card["ancestors"]]
    if card["descendants"]:
        out += ["", "## Made from this run", ""]
        for d in card["descendants"]:
            artifacts = ", ".join(f"`{Path(a['path']).name}`" + ("" if a.get("checks_passed", True) else " (checks failed)")
                                  for a in d["artifacts"]) or "—"
            out.append(f"- {d['relation']} `{d['run_id']}` ({d['state']}): {artifacts}")
    if card["versions"]:
        out += ["", "## Framework versions", ""] + [f"- {k} {v}" for k, v in card["versions"].items()]
    return "\n".join(out) + "\n"


def _gb(value: Any) -> str:
    return f"{value / 1e9:.2f} GB" if isinstance(value, (int, float)) else "?"
