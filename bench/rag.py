"""RAG → RAFT → evaluation on the demo handbook and the embedded SmolLM2-135M, every step through the real worker.

Stages (each can run on its own, so a shared 2-core machine can take it in pieces; state lives in the workspace):

- retrieval:  index build time (cold: a fresh index, the embedding model loaded; warm: reused) and recall@1/5 of
              dense, BM25 and hybrid retrieval on the 150 questions (in process; the index job measures the same);
- baseline:   the Decide page's three-way baseline (zero-shot, 3-shot, RAG with the base model) — the `baseline` job;
- build:      the RAFT set and its SFT twin (the `raft` job: k = 4, P = 0.2, hard negatives, 30 held-out questions);
- train-sft / train-raft: LoRA runs on them (the `train` job); a run still going after --budget-min minutes is
              stopped (it saves) and the next call resumes it;
- evaluate:   base + RAG, SFT + RAG, RAFT + RAG under oracle + distractors and distractors only (the `raft_eval` job);
- report:     the figures as one JSON line (the whole walk's wall time is the sum of the stages' times).

    .venv/bin/python bench/rag.py                                   # every stage, then the JSON line
    .venv/bin/python bench/rag.py --workspace /tmp/rag-bench --stage build   # one stage; rerun with the next
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
STAGES = ("retrieval", "baseline", "build", "train-sft", "train-raft", "evaluate", "report")
STATE_FILE = "bench_rag_state.json"
TRAIN = {"sft": {"max_steps": 45, "learning_rate": 1e-3}, "raft": {"max_steps": 30, "learning_rate": 1e-3}}  # 3 and 2 epochs of 120 rows


def state_path(home: Path) -> Path:
    return home / STATE_FILE


def load_state(home: Path) -> dict:
    from core.workspace import read_json

    return read_json(state_path(home), {}) or {}


def save_state(home: Path, state: dict) -> None:
    from core.workspace import atomic_write_json

    atomic_write_json(state_path(home), state)


def run_job(spec, timeout: float = 3600):
    from core import runs

    run_dir = runs.create_run(spec)
    runs.launch(run_dir)
    status = runs.wait(run_dir, timeout=timeout)
    if status.state != "succeeded":
        raise SystemExit(f"{spec.kind} run {run_dir} ended {status.state}: {status.error}\n{runs.log_tail(run_dir)}")
    return run_dir, status


def stage_retrieval(home: Path, state: dict) -> dict:
    import shutil

    from core.rag.corpus import load_corpus
    from core.rag.index import RagIndex, build_index, indexes_dir
    from core.rag.questions import gold_chunk_ids, load_questions, recall_at_k
    from core.rag.spec import DEMO_DOCUMENTS, DEMO_QUESTIONS, resolve_path

    corpus = load_corpus(resolve_path(DEMO_DOCUMENTS))
    shutil.rmtree(indexes_dir(), ignore_errors=True)
    started = time.perf_counter()
    cold = build_index(corpus)
    cold_s = time.perf_counter() - started
    started = time.perf_counter()
    warm = build_index(load_corpus(resolve_path(DEMO_DOCUMENTS)))
    warm_s = time.perf_counter() - started
    assert cold.rebuilt and not warm.rebuilt
    index = RagIndex(cold.folder)
    questions = load_questions(resolve_path(DEMO_QUESTIONS))
    golds = [gold_chunk_ids(q, index.chunks) for q in questions]
    recall = {}
    for mode in ("dense", "bm25", "hybrid"):
        started = time.perf_counter()
        hits = index.search_many([q.question for q in questions], 5, mode)
        seconds = time.perf_counter() - started
        r = recall_at_k([[h.chunk.id for h in row] for row in hits], golds, (1, 5))
        recall[mode] = {"recall@1": round(r["recall@1"], 3), "recall@5": round(r["recall@5"], 3), "mrr": round(r["mrr"], 3),
                        "queries_per_s": round(len(questions) / seconds, 1)}
        print(f"{mode:6s} recall@1 {r['recall@1']:.3f} recall@5 {r['recall@5']:.3f} ({len(questions) / seconds:.0f} queries/s)")
    print(f"index: {len(index)} chunks, cold build {cold_s:.1f} s (embedding model load included: {cold.seconds:.1f} s of work), "
          f"warm reuse {warm_s * 1000:.0f} ms")
    return {"index_chunks": len(index), "index_build_cold_s": round(cold_s, 2), "index_build_work_s": cold.seconds,
            "index_reuse_ms": round(warm_s * 1000, 1), "recall": recall}


def stage_baseline(home: Path, state: dict) -> dict:
    from core.decide import BaselineSpec
    from core.runs.jobs import read_result

    spec = BaselineSpec(eval_dataset="assets/handbook/questions.jsonl", n=30, shots=[0, 3], scorer="contains_answer", max_new_tokens=48,
                        documents="assets/handbook/docs", rag_k=3)
    run_dir, status = run_job(spec)
    result = read_result(run_dir)
    print("Decide baseline (contains_answer, 30 handbook questions): " + ", ".join(f"{k} {v:.0%}" for k, v in result["scores"].items()))
    return {"baseline": {k: round(v, 3) for k, v in result["scores"].items()}, "baseline_rows": result["n"],
            "baseline_generate_s": result["seconds"]}


def stage_build(home: Path, state: dict) -> dict:
    from core.rag.spec import RaftSpec
    from core.runs.jobs import read_result

    run_dir, _ = run_job(RaftSpec(name="handbook-raft", overwrite=True))
    result = read_result(run_dir)
    print(f"RAFT set: {result['counts']}")
    return {"raft_dataset": result["dataset"], "sft_dataset": result["sft_dataset"], "raft_examples": result["counts"]["examples"],
            "raft_distractor_only": result["counts"]["distractor_only"], "raft_longest_tokens": result["counts"]["tokens"]["longest"],
            "raft_mean_tokens": result["counts"]["tokens"]["mean"], "heldout": result["heldout"]}


def stage_train(home: Path, state: dict, which: str, budget_s: float) -> dict:
    """Train (or resume) one run; stop it at the budget so the next call continues from its checkpoint."""
    from core import runs
    from core.hardware import detect
    from core.train.spec import hardware_defaults

    key = f"{which}_train_run"
    run_dir = Path(state[key]) if state.get(key) else None
    if run_dir is None:
        longest = state["raft_longest_tokens"] if which == "raft" else 128
        spec = replace(hardware_defaults(detect()), name=f"bench-{which}", dataset=state[f"{which}_dataset"], eval_fraction=0.0,
                       max_length=-(-int(longest) // 64) * 64, save_steps=5, **TRAIN[which])
        run_dir = runs.create_run(spec)
        state[key] = str(run_dir)
        save_state(home, state)
        runs.launch(run_dir)
    elif runs.read_status(run_dir).state in ("stopped", "failed"):
        runs.relaunch(run_dir)
    try:
        status = runs.wait(run_dir, timeout=budget_s)
    except TimeoutError:
        runs.stop(run_dir)
        status = runs.wait(run_dir, timeout=600)
        print(f"{which}: stopped at the {budget_s / 60:.0f}-minute budget ({status.message}); run this stage again to resume")
        return {"done": False}
    if status.state != "succeeded":
        raise SystemExit(f"{which} training ended {status.state}: {status.error}\n{runs.log_tail(run_dir)}")
    card = runs.read_result(run_dir)
    rows = runs.read_all_metrics(run_dir / runs.METRICS_FILE)
    losses = [r["loss"] for r in rows if "loss" in r]
    print(f"{which}: {card['final_metrics']['global_step']} steps in {card['train_seconds']:.0f} s, loss {losses[0]:.3f} → "
          f"{losses[-1]:.3f}, {card['tokens_per_s']:.0f} tokens/s")
    return {"done": True, f"{which}_adapter": str(run_dir / "adapter"), f"{which}_train_s": card["train_seconds"],
            f"{which}_steps": card["final_metrics"]["global_step"], f"{which}_loss": [round(losses[0], 3), round(losses[-1], 3)],
            f"{which}_tokens_per_s": card["tokens_per_s"]}


def stage_evaluate(home: Path, state: dict) -> dict:
    from core.rag.spec import RaftEvalSpec
    from core.runs.jobs import read_result

    spec = RaftEvalSpec(dataset="handbook-raft", sft_model=state["sft_adapter"], raft_model=state["raft_adapter"], max_new_tokens=80)
    run_dir, _ = run_job(spec)
    report = read_result(run_dir)
    figures = {}
    for model in report["models"]:
        for condition, metrics in model["metrics"].items():
            for metric, interval in metrics.items():
                figures[f"{model['role']}.{condition}.{metric}"] = [round(interval["value"], 1), round(interval["low"], 1),
                                                                    round(interval["high"], 1)]
    for model in report["models"]:
        cells = " · ".join(f"{c}: acc {m['accuracy']['value']:.0f}% quote {m['quote_from_oracle']['value']:.0f}% abstain "
                           f"{m['abstention']['value']:.0f}%"
                           for c, m in model["metrics"].items())
        print(f"{model['label']:12s} {cells}")
    print(f"verdict: {report['verdict']['verdict']} — {report['verdict']['headline']}")
    for reason in report["verdict"]["reasons"]:
        print(f"  {reason}")
    return {"eval": figures, "verdict": report["verdict"]["verdict"], "eval_questions": report["n"], "eval_wall_s": report["wall_seconds"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=("all",) + STAGES, default="all")
    parser.add_argument("--workspace", type=Path, help="keep state here between stages (default: a fresh temporary workspace)")
    parser.add_argument("--budget-min", type=float, default=12.0, help="a training stage stops (and saves) after this many minutes")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.workspace:
        from core.workspace import models_dir

        cache = models_dir()
        args.workspace.mkdir(parents=True, exist_ok=True)
        if not (args.workspace / "models").exists():
            (args.workspace / "models").symlink_to(cache, target_is_directory=True)
        os.environ["WORKBENCH_HOME"] = str(args.workspace)
        home = args.workspace
    else:
        sys.path.insert(0, str(ROOT / "bench"))
        from _train_common import bench_workspace

        home = bench_workspace()
    state = load_state(home)
    stages = STAGES if args.stage == "all" else (args.stage,)
    for stage in stages:
        if stage == "report":
            break
        started = time.time()
        if stage == "retrieval":
            out = stage_retrieval(home, state)
        elif stage == "baseline":
            out = stage_baseline(home, state)
        elif stage == "build":
            out = stage_build(home, state)
        elif stage.startswith("train-"):
            which = stage.split("-", 1)[1]
            out = stage_train(home, state, which, args.budget_min * 60 if args.stage != "all" else 3 * 3600)
        else:
            out = stage_evaluate(home, state)
        elapsed = time.time() - started
        state.setdefault("stage_seconds", {})
        state["stage_seconds"][stage] = round(state["stage_seconds"].get(stage, 0.0) + elapsed, 1)
        out.pop("done", None)
        state.update(out)
        save_state(home, state)
    if args.stage in ("all", "report"):
        figures = {k: v for k, v in state.items() if not k.endswith(("_dataset", "_train_run", "_adapter"))}
        figures["walk_wall_s"] = round(sum(state.get("stage_seconds", {}).values()), 1)
        figures["cores"] = os.cpu_count()
        figures["load_average"] = round(os.getloadavg()[0], 2)
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
