"""The RAG / RAFT jobs: `rag_index` (index + retrieval recall@k), `raft` (the RAFT dataset builder) and
`raft_eval` (base vs SFT vs RAFT, each with the documents in context, under both conditions)."""
from __future__ import annotations

import gc
import hashlib
import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from core.data.masking import MaskingError, encode_row
from core.evaluate import scoring
from core.generation import Stopped, greedy_chat_answers
from core.models import LoadedModel, ModelLoadError, ModelSource, load_model, load_tokenizer
from core.rag.corpus import Corpus, CorpusError, load_corpus
from core.rag.evaluation import CONDITION_LABELS, CONDITIONS, ROLE_LABELS, conversations, eval_items, summarize
from core.rag.index import MODES, RagIndex, open_index
from core.rag.questions import Question, QuestionsError, gold_chunk_ids, load_questions, recall_at_k
from core.rag.raft import (
    HELDOUT_FILE,
    MANIFEST_FILE,
    RAFT_FILE,
    RaftSettings,
    build_raft,
    dataset_folder,
    parse_generated,
    question_prompts,
    raft_manifest,
    sft_rows,
    split_heldout,
    write_dataset,
)
from core.rag.spec import RaftEvalSpec, RaftSpec, RagIndexSpec, resolve_path
from core.runs.eta import source_bytes
from core.runs.jobs import JobContext, JobError
from core.workspace import read_json


def _corpus(path: str) -> Corpus:
    try:
        return load_corpus(resolve_path(path))
    except CorpusError as exc:
        raise JobError(str(exc)) from exc


def _index(ctx: JobContext, corpus: Corpus, chunk_tokens: int, overlap: int, share: float) -> tuple[RagIndex, bool]:
    """The index and whether it was reused (built by an earlier job: then it took no time)."""
    index, built = open_index(corpus, chunk_tokens, overlap, progress=lambda f, m: ctx.progress(share * f, m))
    ctx.log.info("index %s: %d chunks (%s)", index.folder.name, len(index),
                 f"built in {built.seconds:.1f} s" if built.rebuilt else "reused")
    return index, not built.rebuilt


def retriever(index: RagIndex, mode: str):
    """core.rag.raft.Retrieve over an index: ranked chunk ids per question."""
    return lambda queries, depth: [[h.chunk.id for h in hits] for hits in index.search_many(list(queries), depth, mode)]


def _load(source: ModelSource) -> LoadedModel:
    try:
        return load_model(source)
    except ModelLoadError as exc:
        raise JobError(str(exc)) from exc


def greedy_replies(ctx: JobContext, loaded: LoadedModel, chats: Sequence[list[dict]], *, max_new_tokens: int, batch_size: int,
                   on_progress=None) -> list[str]:
    """Greedy replies through the one generation path (`core.generation`), stoppable between batches."""
    return greedy_chat_answers(loaded, chats, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               should_stop=lambda: ctx.stop_requested, on_progress=on_progress)


# ---------------------------------------------------------------- rag_index


def run_index(ctx: JobContext) -> dict:
    spec: RagIndexSpec = ctx.spec
    corpus = _corpus(spec.documents)
    index, reused = _index(ctx, corpus, spec.chunk_tokens, spec.overlap, 0.7)
    result = {"index": index.manifest, "folder": str(index.folder), "retrieval": {}, "notes": list(corpus.notes)}
    if str(spec.questions).strip():
        try:
            questions = load_questions(resolve_path(spec.questions))
            golds = [gold_chunk_ids(q, index.chunks) for q in questions]
        except QuestionsError as exc:
            raise JobError(str(exc)) from exc
        ks = sorted({1, spec.top_k})
        for n, mode in enumerate(MODES):
            ctx.progress(0.7 + 0.3 * n / len(MODES), f"retrieval recall@k: {mode}")
            started = time.perf_counter()
            hits = index.search_many([q.question for q in questions], max(ks), mode)
            seconds = time.perf_counter() - started
            ranked = [[h.chunk.id for h in row] for row in hits]
            recall = recall_at_k(ranked, golds, ks)
            misses = [{"question_id": q.id, "question": q.question, "gold": g, "retrieved": r[: max(ks)]}
                      for q, g, r in zip(questions, golds, ranked) if g and not set(g) & set(r[:1])]
            result["retrieval"][mode] = recall | {"seconds": round(seconds, 3),
                                                  "queries_per_s": round(len(questions) / max(seconds, 1e-9), 1),
                                                  "misses_at_1": misses[:25]}
            ctx.metrics(mode=mode, **{k: v for k, v in recall.items() if k != "n"})
        result["questions"] = {"path": str(resolve_path(spec.questions)), "count": len(questions), "with_gold": sum(bool(g) for g in golds)}
    ctx.write_result(result)
    return {"chunks": len(index), "corpus_bytes": source_bytes(spec.documents), "index_reused": reused,  # for core.runs.eta
            "recall": {m: {k: v for k, v in r.items() if k.startswith("recall")} for m, r in result["retrieval"].items()}}


# ---------------------------------------------------------------- raft


def _generated_questions(ctx: JobContext, spec: RaftSpec, index: RagIndex) -> tuple[list[Question], dict]:
    chunks = list(index.chunks)
    if spec.max_chunks and spec.max_chunks < len(chunks):
        chunks = sorted(random.Random(spec.seed).sample(chunks, spec.max_chunks), key=lambda c: index.chunks.index(c))
    source = spec.question_source_model
    ctx.progress(0.3, f"loading {source.label} to write questions")
    ctx.log.info("writing questions with %s", source.label)
    loaded = _load(source)
    done = [0]

    def advance(n: int) -> None:
        done[0] += n
        ctx.progress(0.3 + 0.5 * done[0] / len(chunks), f"writing questions: {done[0]} / {len(chunks)} chunks")

    replies = greedy_replies(ctx, loaded, question_prompts(chunks), max_new_tokens=spec.max_new_tokens, batch_size=spec.batch_size,
                             on_progress=advance)
    del loaded
    gc.collect()
    questions, rejected = parse_generated(chunks, replies)
    ctx.log.info("generated %d usable questions from %d chunks; rejected: %s", len(questions), len(chunks),
                 {k: len(v) for k, v in rejected.items()})
    return questions, {"source": "generate", "model": source.as_dict(), "chunks": len(chunks), "count": len(questions),
                       "rejected": {k: len(v) for k, v in rejected.items()},
                       "samples": [{"chunk_id": c.id, "reply": r} for c, r in list(zip(chunks, replies))[:10]]}


def run_raft(ctx: JobContext) -> dict:
    spec: RaftSpec = ctx.spec
    started = time.time()
    settings = RaftSettings(spec.k, spec.distractor_only_fraction, spec.distractors, spec.absent_target, spec.seed)
    for name in [spec.name] + ([f"{spec.name}-sft"] if spec.also_sft else []):
        if dataset_folder(name).exists() and not spec.overwrite:
            raise JobError(f"a dataset named {dataset_folder(name).name!r} already exists: pick another name or set overwrite")
    corpus = _corpus(spec.documents)
    index, _reused = _index(ctx, corpus, spec.chunk_tokens, spec.overlap, 0.3)
    if spec.question_source == "generate":
        try:
            questions, question_info = _generated_questions(ctx, spec, index)
        except Stopped:
            return {"stopped": True}
    else:
        path = resolve_path(spec.questions)
        try:
            questions = load_questions(path)
        except QuestionsError as exc:
            raise JobError(str(exc)) from exc
        question_info = {"source": "file", "path": str(path), "count": len(questions), "sha256": _sha256(path)}
    if not questions:
        raise JobError("no usable questions: " + ", ".join(f"{v} {k}" for k, v in question_info.get("rejected", {}).items())
                       + ". A larger generator model, or your own question file, gives more.")
    train, heldout = split_heldout(questions, spec.heldout_fraction, spec.seed)
    ctx.progress(0.85, f"building {len(train)} RAFT examples")
    try:
        build = build_raft(train, index.chunks, settings, retriever(index, spec.retrieval_mode) if spec.distractors == "hard" else None)
    except (ValueError, QuestionsError) as exc:
        raise JobError(str(exc)) from exc
    if not build.rows:
        raise JobError("no RAFT example could be built: " + "; ".join(f"{len(v)} × {k}" for k, v in build.skipped.items()))
    sft_name = f"{dataset_folder(spec.name).name}-sft" if spec.also_sft else None
    index_info = {"key": index.folder.name, "folder": str(index.folder), "chunk_tokens": spec.chunk_tokens, "overlap": spec.overlap,
                  "chunks": len(index), "retrieval_mode": spec.retrieval_mode}
    manifest = raft_manifest(build, settings, corpus=corpus.summary(), index=index_info, questions=question_info, heldout=len(heldout),
                             sft_dataset=sft_name, seconds=time.time() - started)
    manifest["raft"]["tokens"] = _token_lengths(spec, build.rows)
    folder = write_dataset(spec.name, build.rows, manifest, {RAFT_FILE: build.records, HELDOUT_FILE: [q.as_dict() for q in heldout]},
                           overwrite=spec.overwrite)
    sft_folder = None
    if spec.also_sft:
        used = {r["question_id"] for r in build.records}
        raft_data = (read_json(folder / MANIFEST_FILE) or {}).get("data", {})
        sft_manifest = {"source": {"path": str(folder), "sha256": raft_data.get("sha256", ""), "format": "raft-sft", "rows": len(used)},
                        "operations": [{"name": "raft_sft_baseline", "label": f"plain SFT baseline of {folder.name}: question → answer",
                                        "params": {"raft_dataset": folder.name}, "rows_before": len(used), "rows_after": len(used),
                                        "dropped": [], "seconds": 0.0}]}
        sft_folder = write_dataset(sft_name, sft_rows([q for q in train if q.id in used]), sft_manifest, overwrite=spec.overwrite)
    counts = build.counts() | {"tokens": manifest["raft"]["tokens"]}
    ctx.log.info("wrote %s: %s", folder, counts)
    result = {"dataset": str(folder), "sft_dataset": str(sft_folder) if sft_folder else None, "counts": counts, "heldout": len(heldout),
              "questions": question_info, "index": index_info, "skipped": {k: v[:20] for k, v in build.skipped.items()},
              "example": build.rows[0], "seconds": round(time.time() - started, 2)}
    ctx.write_result(result)
    return {"dataset": str(folder), "examples": counts["examples"], "distractor_only": counts["distractor_only"], "heldout": len(heldout),
            "corpus_bytes": source_bytes(spec.documents)}


def _token_lengths(spec: RaftSpec, rows: list[dict]) -> dict:
    """Row lengths in the target model's tokens (chat template included): what max_length must hold on the Train page."""
    source = ModelSource.from_dict(spec.model)
    try:
        tokenizer = load_tokenizer(source)
        lengths = [len(encode_row(row, tokenizer).input_ids) for row in rows]
    except (ModelLoadError, MaskingError, OSError, ValueError) as exc:
        return {"model": source.label, "note": f"row lengths not measured: {exc}"}
    return {"model": source.label, "longest": max(lengths), "mean": round(sum(lengths) / len(lengths), 1)}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- raft_eval


def resolve_dataset(text: str) -> Path:
    """A dataset folder from a workspace name or a path."""
    direct = Path(str(text)).expanduser()
    folder = direct if (direct / MANIFEST_FILE).is_file() else dataset_folder(str(text))
    if not (folder / MANIFEST_FILE).is_file():
        raise JobError(f"dataset not found: {text!r} is neither a workspace dataset nor a folder with a manifest.json")
    return folder


def model_from(text: str, base: ModelSource) -> ModelSource:
    """An adapter folder goes on the base; any other folder is a model of its own."""
    path = Path(str(text).strip()).expanduser()
    if (path / "adapter_config.json").is_file():
        return base.with_adapter(str(path))
    if path.is_dir():
        return ModelSource("local", str(path))
    raise JobError(f"{path} is neither an adapter folder (adapter_config.json) nor a model folder")


def _check_changes_model(base_probe: Any, loaded: LoadedModel, role: str, source: ModelSource) -> None:
    difference = scoring.probe_difference(base_probe, scoring.probe_logits(loaded.model, loaded.tokenizer))
    if difference < scoring.PROBE_TOLERANCE:
        raise JobError(f"adapter not applied / no effect: the {ROLE_LABELS[role].split(' ')[0]} model "
                       f"{source.adapter or source.ref} gives the base model's logits on a probe prompt (largest difference "
                       f"{difference:.1e}); check that its training ran")


def run_raft_eval(ctx: JobContext) -> dict:
    spec: RaftEvalSpec = ctx.spec
    started = time.time()
    folder = resolve_dataset(spec.dataset)
    manifest = read_json(folder / MANIFEST_FILE) or {}
    raft = manifest.get("raft")
    if not raft:
        raise JobError(f"{folder} is not a RAFT dataset (its manifest.json has no `raft` section): build one with the RAFT builder")
    heldout_rows = [line for line in (folder / HELDOUT_FILE).read_text(encoding="utf-8").splitlines() if line.strip()] \
        if (folder / HELDOUT_FILE).is_file() else []
    if not heldout_rows:
        raise JobError(f"{folder.name} has no held-out questions: build it with heldout_fraction above 0")
    questions = [Question(**(row | {"gold_chunk_ids": tuple(row.get("gold_chunk_ids") or ())})) for row in map(json.loads, heldout_rows)]
    if spec.samples and spec.samples < len(questions):
        questions = random.Random(spec.seed).sample(questions, spec.samples)
    corpus = _corpus(raft["corpus"]["source"])
    notes = []
    if corpus.sha256 != raft["corpus"].get("sha256"):
        notes.append("the documents changed since the RAFT set was built: the held-out questions are matched to the current documents")
    index, _reused = _index(ctx, corpus, raft["index"]["chunk_tokens"], raft["index"]["overlap"], 0.05)
    rule = raft.get("distractors", "hard")
    items, skipped = eval_items(questions, index.chunks, int(raft["k"]), rule, spec.seed,
                                retriever(index, raft["index"].get("retrieval_mode", "hybrid")) if rule == "hard" else None)
    if not items:
        raise JobError("none of the held-out questions could be matched to a gold chunk of the documents")
    base = spec.base_source
    roles = {"base": base, "raft": model_from(spec.raft_model, base)}
    if str(spec.sft_model).strip():
        roles = {"base": base, "sft": model_from(spec.sft_model, base), "raft": roles["raft"]}
    total = len(roles) * len(CONDITIONS) * len(items)
    done = [0]
    replies: dict[str, dict[str, list[str]]] = {}
    base_probe = None
    for role, source in roles.items():
        ctx.progress(0.05 + 0.9 * done[0] / total, f"loading {ROLE_LABELS[role]}: {source.label}")
        loaded = _load(source)
        if role == "base":
            base_probe = scoring.probe_logits(loaded.model, loaded.tokenizer)
        else:
            _check_changes_model(base_probe, loaded, role, source)
        replies[role] = {}
        for condition in CONDITIONS:
            def advance(n: int, role=role, condition=condition) -> None:
                done[0] += n
                ctx.progress(0.05 + 0.9 * done[0] / total, f"{ROLE_LABELS[role]}, {CONDITION_LABELS[condition]}: {done[0]} / "
                                                           f"{total} replies")

            try:
                replies[role][condition] = greedy_replies(ctx, loaded, conversations(items, condition), max_new_tokens=spec.max_new_tokens,
                                                          batch_size=spec.batch_size, on_progress=advance)
            except Stopped:
                return {"stopped": True}
        del loaded
        gc.collect()
    ctx.progress(0.97, "bootstrap intervals and verdict")
    report = summarize(items, replies, resamples=spec.bootstrap_samples, seed=spec.seed)
    report |= {"spec": {"kind": RaftEvalSpec.kind, **asdict(spec)},
               "dataset": {"folder": str(folder), "name": folder.name, "rows": manifest.get("rows")},
               "settings": {"k": raft["k"], "distractors": rule, "distractor_only_fraction": raft.get("distractor_only_fraction"),
                            "chunk_tokens": raft["index"]["chunk_tokens"], "overlap": raft["index"]["overlap"]},
               "sources": {role: s.as_dict() for role, s in roles.items()}, "skipped": skipped, "notes": notes,
               "wall_seconds": round(time.time() - started, 2)}
    for model in report["models"]:
        ctx.metrics(model=model["label"], **{f"{c}_{m}": v["value"] for c, ms in model["metrics"].items() for m, v in ms.items()})
    ctx.write_result(report)
    ctx.log.info("%s", report["verdict"]["headline"])
    return {"verdict": report["verdict"]["verdict"], "n": report["n"], "wall_seconds": report["wall_seconds"]}
