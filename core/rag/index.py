"""The retrieval index: dense (all-MiniLM-L6-v2) + lexical (BM25, the `bm25s` library), alone or fused.

An index is a workspace folder `rag/indexes/<key>/`, where the key hashes the documents' content
(`Corpus.sha256`) with the chunking and retriever settings. `build_index` returns the folder that is
already there when nothing changed, and builds a new one (atomically) when the documents or settings did:

    index.json   settings, corpus summary, chunk count, build seconds
    chunks.jsonl one Chunk per line (ids, titles, exact text slices, token / character spans)
    dense.npy    unit-length float32 embeddings of "title\\ntext", one row per chunk
    bm25/        the bm25s index (its own save format: sparse matrices + vocabulary, no pickles)

Search modes: `dense` (cosine), `bm25`, and `hybrid` — reciprocal rank fusion (Cormack et al., 2009) of
the two rankings, score = sum over retrievers of 1 / (RRF_K + rank), RRF_K = 60.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from core.embeddings import EMBEDDING_MODEL_NAME, embed_texts
from core.rag.chunking import DEFAULT_CHUNK_TOKENS, DEFAULT_OVERLAP, Chunk, check_chunking, chunk_documents
from core.rag.corpus import Corpus
from core.workspace import atomic_write_dir, atomic_write_json, read_json, subdir

INDEX_VERSION = 1
MODES = ("hybrid", "dense", "bm25")
MODE_LABELS = {"hybrid": "Hybrid (dense + BM25, rank fusion)", "dense": "Dense (all-MiniLM-L6-v2)", "bm25": "BM25 (lexical)"}
RRF_K = 60
FUSION_DEPTH = 50  # each retriever's top-N that enters the fusion
BM25_STOPWORDS = "en"
INDEX_FILE, CHUNKS_FILE, DENSE_FILE, BM25_DIR = "index.json", "chunks.jsonl", "dense.npy", "bm25"


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    score: float
    rank: int  # 1 = best

    def as_dict(self) -> dict:
        return {"chunk_id": self.chunk.id, "doc_id": self.chunk.doc_id, "title": self.chunk.title, "score": round(self.score, 6),
                "rank": self.rank, "text": self.chunk.text}


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"retrieval mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def indexes_dir() -> Path:
    return subdir("rag") / "indexes"


def index_key(corpus_sha256: str, chunk_tokens: int, overlap: int) -> str:
    settings = json.dumps({"corpus": corpus_sha256, "chunk_tokens": chunk_tokens, "overlap": overlap, "embedding": EMBEDDING_MODEL_NAME,
                           "bm25": {"stopwords": BM25_STOPWORDS, "stemmer": "snowball-english"}, "version": INDEX_VERSION}, sort_keys=True)
    return hashlib.sha256(settings.encode()).hexdigest()[:16]


@lru_cache(maxsize=1)
def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


def _bm25_tokens(texts: Sequence[str], ids: bool):
    import bm25s

    return bm25s.tokenize(list(texts), stopwords=BM25_STOPWORDS, stemmer=_stemmer(), return_ids=ids, show_progress=False)


def _indexed_text(chunk: Chunk) -> str:
    return f"{chunk.title}\n{chunk.text}"


@dataclass
class BuildResult:
    folder: Path
    rebuilt: bool
    seconds: float


def build_index(corpus: Corpus, chunk_tokens: int = DEFAULT_CHUNK_TOKENS, overlap: int = DEFAULT_OVERLAP,
                progress=None) -> BuildResult:
    """The index folder for these documents and settings: reused when it exists, built (atomically) when not."""
    check_chunking(chunk_tokens, overlap)
    folder = indexes_dir() / index_key(corpus.sha256, chunk_tokens, overlap)
    if (folder / INDEX_FILE).is_file():
        return BuildResult(folder, False, 0.0)
    started = time.perf_counter()
    say = progress or (lambda fraction, message: None)
    say(0.05, f"chunking {len(corpus.documents)} documents")
    chunks = chunk_documents(corpus.documents, chunk_tokens, overlap)
    chunked = time.perf_counter()
    say(0.2, f"embedding {len(chunks)} chunks")

    dense = embed_texts([_indexed_text(c) for c in chunks], progress=lambda f, m: say(0.2 + 0.7 * f, m))
    embedded = time.perf_counter()
    say(0.9, "building the BM25 index")
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(_bm25_tokens([_indexed_text(c) for c in chunks], ids=True), show_progress=False)
    finished = time.perf_counter()
    manifest = {
        "version": INDEX_VERSION, "key": folder.name, "corpus": corpus.summary(), "chunk_tokens": chunk_tokens, "overlap": overlap,
        "embedding_model": EMBEDDING_MODEL_NAME, "chunks": len(chunks), "created": time.time(),
        "seconds": {"chunk": round(chunked - started, 3), "embed": round(embedded - chunked, 3), "bm25": round(finished - embedded, 3),
                    "total": round(finished - started, 3)},
        "notes": corpus.notes,
    }

    def write(tmp: Path) -> None:
        (tmp / CHUNKS_FILE).write_text("".join(json.dumps(c.as_dict(), ensure_ascii=False) + "\n" for c in chunks), encoding="utf-8")
        np.save(tmp / DENSE_FILE, dense)
        retriever.save(str(tmp / BM25_DIR), show_progress=False)
        atomic_write_json(tmp / INDEX_FILE, manifest)

    atomic_write_dir(folder, write)
    say(1.0, f"indexed {len(chunks)} chunks")
    return BuildResult(folder, True, round(finished - started, 3))


class RagIndex:
    """A built index, loaded for search."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.manifest = read_json(self.folder / INDEX_FILE)
        if not self.manifest:
            raise FileNotFoundError(f"{self.folder} is not a built index (no {INDEX_FILE})")
        lines = (self.folder / CHUNKS_FILE).read_text(encoding="utf-8").splitlines()
        self.chunks = [Chunk.from_dict(json.loads(line)) for line in lines if line.strip()]
        self.dense = np.load(self.folder / DENSE_FILE)
        import bm25s

        self.bm25 = bm25s.BM25.load(str(self.folder / BM25_DIR), show_progress=False)
        self._by_id = {c.id: n for n, c in enumerate(self.chunks)}

    def __len__(self) -> int:
        return len(self.chunks)

    def chunk(self, chunk_id: str) -> Chunk:
        return self.chunks[self._by_id[chunk_id]]

    def has(self, chunk_id: str) -> bool:
        return chunk_id in self._by_id

    def doc_chunks(self, doc_id: str) -> list[Chunk]:
        return [c for c in self.chunks if c.doc_id == doc_id]

    # ------------------------------------------------------------ rankings: (chunk positions, scores), best first

    def dense_rankings(self, queries: Sequence[str], depth: int) -> list[tuple[np.ndarray, np.ndarray]]:
        scores = embed_texts(list(queries)) @ self.dense.T
        depth = min(depth, len(self.chunks))
        out = []
        for row in scores:
            order = np.argsort(-row, kind="stable")[:depth]
            out.append((order, row[order]))
        return out

    def bm25_rankings(self, queries: Sequence[str], depth: int) -> list[tuple[np.ndarray, np.ndarray]]:
        depth = min(depth, len(self.chunks))
        tokens = _bm25_tokens(queries, ids=False)
        docs, scores = self.bm25.retrieve(tokens, k=depth, show_progress=False, n_threads=1)
        return [(docs[i], scores[i]) for i in range(len(queries))]

    def search_many(self, queries: Sequence[str], k: int = 5, mode: str = "hybrid") -> list[list[Hit]]:
        check_mode(mode)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if not queries:
            return []
        k = min(k, len(self.chunks))
        if mode == "dense":
            rankings = self.dense_rankings(queries, k)
        elif mode == "bm25":
            rankings = self.bm25_rankings(queries, k)
        else:
            depth = max(k, FUSION_DEPTH)
            rankings = [fuse([d, b], k) for d, b in zip(self.dense_rankings(queries, depth), self.bm25_rankings(queries, depth))]
        return [[Hit(self.chunks[int(p)], float(s), r) for r, (p, s) in enumerate(zip(order, scores), 1)] for order, scores in rankings]

    def search(self, query: str, k: int = 5, mode: str = "hybrid") -> list[Hit]:
        return self.search_many([query], k, mode)[0]


def fuse(rankings: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal rank fusion of several (positions, scores) rankings: the top k positions and their fused scores."""
    fused: dict[int, float] = {}
    for order, _ in rankings:
        for rank, position in enumerate(order, 1):
            fused[int(position)] = fused.get(int(position), 0.0) + 1.0 / (RRF_K + rank)
    best = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:k]
    return np.array([p for p, _ in best], dtype=int), np.array([s for _, s in best], dtype=float)


def open_index(corpus: Corpus, chunk_tokens: int = DEFAULT_CHUNK_TOKENS, overlap: int = DEFAULT_OVERLAP,
               progress=None) -> tuple[RagIndex, BuildResult]:
    """Build the index if needed and load it."""
    built = build_index(corpus, chunk_tokens, overlap, progress)
    return RagIndex(built.folder), built


def list_indexes() -> list[dict]:
    """Manifests of the indexes in this workspace, newest first."""
    root = indexes_dir()
    found = [m | {"folder": str(p)} for p in root.iterdir() if p.is_dir() and (m := read_json(p / INDEX_FILE))] if root.is_dir() else []
    return sorted(found, key=lambda m: -m.get("created", 0))
