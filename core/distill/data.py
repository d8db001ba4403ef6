"""Training rows for distillation: conversations encoded by core.data.masking (the trainer's own masks)."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Iterator

import torch

from core.data.formats import load_dataset_file
from core.data.masking import IGNORE_INDEX, encode_row

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_TRAIN = REPO_ROOT / "assets" / "demo" / "train.jsonl"
DEMO_EVAL = REPO_ROOT / "assets" / "demo" / "eval.jsonl"


def load_rows(path: str | Path, max_rows: int | None = None) -> list[dict]:
    if not Path(path).exists():
        raise FileNotFoundError(f"training data not found: {path}")
    return load_dataset_file(path, limit=max_rows).rows


def encode_rows(rows: list[dict], tokenizer: Any, *, max_length: int, policy: str = "all_assistant") -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per row; rows with no trained token after truncation are dropped."""
    encoded = []
    for row in rows:
        enc = encode_row(row, tokenizer, policy=policy, max_length=max_length)
        if enc.n_trained:
            encoded.append((enc.input_ids, enc.labels))
    if not encoded:
        raise ValueError("no row has a trained token after masking and truncation: raise max_length or check the data")
    return encoded


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row_ids, row_labels) in enumerate(rows):
        ids[i, : len(row_ids)] = torch.tensor(row_ids)
        labels[i, : len(row_labels)] = torch.tensor(row_labels)
        mask[i, : len(row_ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batches(rows: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int, seed: int = 0,
            skip: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Endless shuffled batches (a new permutation each epoch); `skip` batches are passed over when resuming."""
    rng = random.Random(seed)
    produced = 0
    while True:
        order = list(range(len(rows)))
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            chunk = [rows[i] for i in order[start : start + batch_size]]
            produced += 1
            if produced > skip:
                yield collate(chunk, pad_id)
