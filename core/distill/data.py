"""Training rows for distillation: conversations encoded by core.data.masking (the trainer's own masks), with
general rows mixed in when replay is on (core.data.replay, the same rule the Train job uses)."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Iterator

import torch

from core.data.formats import load_dataset_file
from core.data.masking import IGNORE_INDEX, MaskingError, encode_row, inference_prompt_ids
from core.data.replay import mix
from core.workspace import REPO_ROOT

DEMO_TRAIN = REPO_ROOT / "assets" / "demo" / "train.jsonl"
DEMO_EVAL = REPO_ROOT / "assets" / "demo" / "eval.jsonl"


def load_rows(path: str | Path, max_rows: int | None = None) -> list[dict]:
    if not Path(path).exists():
        raise FileNotFoundError(f"training data not found: {path}")
    return load_dataset_file(path, limit=max_rows).rows


def prompt_messages(messages: list[dict]) -> list[dict] | None:
    """The messages a model answers: everything before the last assistant turn (None: no user turn to answer)."""
    last = len(messages)
    if messages and messages[-1].get("role") == "assistant":
        last -= 1
    prompt = list(messages[:last])
    return prompt if prompt and prompt[-1].get("role") == "user" else None


def encode_feature(row: dict, tokenizer: Any, *, max_length: int, policy: str, with_prompt: bool = False) -> dict | None:
    """{"input_ids", "labels"} (+ "prompt_ids": what the student continues on an on-policy step), or None when the
    row trains nothing (or has no prompt to continue when one is needed)."""
    try:
        enc = encode_row(row, tokenizer, policy=policy, max_length=max_length)
    except MaskingError:
        return None
    if not enc.n_trained:
        return None
    feature = {"input_ids": list(enc.input_ids), "labels": list(enc.labels)}
    if with_prompt:
        prompt = prompt_messages(row.get("messages") or [])
        if prompt is None:
            return None
        feature["prompt_ids"] = inference_prompt_ids(prompt, tokenizer)[-max_length:]
    return feature


def encode_features(rows: list[dict], tokenizer: Any, *, max_length: int, policy: str = "all_assistant", with_prompt: bool = False,
                    replay_fraction: float = 0.0, replay_dataset: str = "general", seed: int = 0,
                    replay_model: Any = None) -> tuple[list[dict], dict | None]:
    """The task rows as features, plus `replay_fraction` general rows (exact, see core.data.replay) and their record.
    replay_model: whose general answers 'general' replays (the teacher; None = the embedded model's shipped set)."""
    encode = lambda row: encode_feature(row, tokenizer, max_length=max_length, policy=policy, with_prompt=with_prompt)  # noqa: E731
    features = [f for f in map(encode, rows) if f is not None]
    if not features:
        raise ValueError("no row has a trained token after masking and truncation" + (" and a user turn to answer" if with_prompt else "")
                         + ": raise max_length or check the data")
    if replay_fraction <= 0:
        return features, None
    replay, record = mix(len(features), replay_fraction, replay_dataset, seed, encode, model=replay_model)
    return features + replay, record


def encode_rows(rows: list[dict], tokenizer: Any, *, max_length: int, policy: str = "all_assistant") -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per row; rows with no trained token after truncation are dropped."""
    features, _ = encode_features(rows, tokenizer, max_length=max_length, policy=policy)
    return [(f["input_ids"], f["labels"]) for f in features]


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
