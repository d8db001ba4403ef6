"""Feature extraction, the transfer-learning baseline: a frozen encoder plus a logistic-regression head.

For a task whose target is a label from a small set (the demo's `urgency`), the cheapest tool may not be a
fine-tune at all: embed the input with a frozen model and fit a linear classifier on top. The encoder is the
active model (mean-pooled last hidden states over the user's text) or all-MiniLM-L6-v2 through
sentence-transformers (`core.embeddings`). The score is the share of test rows whose label is exactly right,
with the same normalisation as the fine-tunes' JSON field accuracy (`core.scorers`), so the two are comparable.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from core import scorers
from core.data.formats import DatasetLoadError, load_dataset_file
from core.embeddings import embed_texts

ENCODERS = ("model", "minilm")
MAX_LABELS = 50  # more distinct values than this is not a label-like target


class FeatureError(ValueError):
    """The data cannot be used for the baseline; the message names the file, row or field."""


@dataclass
class LabelledTexts:
    texts: list[str]
    labels: list[str]
    source: str
    skipped: int = 0  # rows without the label


@dataclass
class FeatureResult:
    encoder: str
    label_field: str
    labels: list[str]
    train_rows: int
    test_rows: int
    accuracy: float  # share of test rows labelled exactly right, 0-1
    majority_accuracy: float  # always answering the most common training label
    feature_dim: int
    head_params: int  # the only trained parameters: (dim + 1) per class
    encode_seconds: float
    fit_seconds: float
    confusion: dict = field(default_factory=dict)  # true label -> predicted label -> count
    notes: list[str] = field(default_factory=list)
    head: dict = field(default_factory=dict, repr=False)  # the fitted head as plain numbers (saved as JSON, never a pickle)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "head"}


def label_of(row: dict, label_field: str) -> str | None:
    """The row's label: its own column of that name, else that field of the JSON object in its last assistant turn."""
    if row.get(label_field) not in (None, ""):
        return scorers.normalize_text(row[label_field])
    messages = row.get("messages") or []
    answers = [m for m in messages if m.get("role") == "assistant"]
    parsed = scorers.parse_json_object(answers[-1]["content"]) if answers else None
    if not parsed or parsed.get(label_field) in (None, ""):
        return None
    return scorers.normalize_text(parsed[label_field])


def input_text(row: dict) -> str:
    """What the classifier reads: the user turns (the shared system prompt carries no signal), or a text / prompt column."""
    messages = row.get("messages") or []
    users = [m["content"] for m in messages if m.get("role") == "user"]
    if users:
        return "\n".join(users)
    return str(row.get("prompt") or row.get("text") or "")


def load_labelled(path: str | Path, label_field: str) -> LabelledTexts:
    try:
        loaded = load_dataset_file(path)
    except DatasetLoadError as exc:
        raise FeatureError(f"{path}: {exc}") from exc
    texts, labels, skipped = [], [], 0
    for row in loaded.rows:
        label = label_of(row, label_field)
        if label is None or not input_text(row).strip():
            skipped += 1
            continue
        texts.append(input_text(row))
        labels.append(label)
    if not texts:
        raise FeatureError(f"{path}: no row has a {label_field!r} label (neither a column nor a field of the assistant's JSON answer)")
    return LabelledTexts(texts, labels, str(path), skipped)


def check_label_like(data: LabelledTexts, label_field: str) -> list[str]:
    classes = sorted(set(data.labels))
    if len(classes) < 2:
        raise FeatureError(f"{data.source}: every row has the same {label_field!r} ({classes[0]!r}); a classifier needs at "
                           "least two labels")
    if len(classes) > MAX_LABELS:
        raise FeatureError(f"{data.source}: {label_field!r} has {len(classes)} distinct values; feature extraction is for labels "
                           f"from a small set (at most {MAX_LABELS}), not free text")
    return classes


# ---------------------------------------------------------------- encoders


def encode_with_model(loaded: Any, texts: Sequence[str], *, batch_size: int = 8, max_length: int = 256,
                      should_stop: Callable[[], bool] | None = None) -> np.ndarray:
    """Mean of the last hidden states over each text's tokens, from the frozen decoder (no LM head)."""
    import torch

    model, tokenizer = loaded.model, loaded.tokenizer
    backbone = model.get_decoder() if hasattr(model, "get_decoder") else model
    device = next(model.parameters()).device
    rows = []
    for start in range(0, len(texts), batch_size):
        if should_stop and should_stop():
            raise InterruptedError("stopped")
        batch = tokenizer(list(texts[start:start + batch_size]), return_tensors="pt", padding=True, truncation=True, max_length=max_length)
        batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        with torch.no_grad():
            hidden = backbone(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).float()
        rows.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy())
    return np.concatenate(rows).astype(np.float32)


def encode_with_minilm(texts: Sequence[str]) -> np.ndarray:
    return embed_texts(list(texts))


# ---------------------------------------------------------------- the head


def fit_and_score(train_x: np.ndarray, train_y: Sequence[str], test_x: np.ndarray, test_y: Sequence[str], *, seed: int = 0) -> dict:
    """Standardise the features, fit a multinomial logistic regression, and score it on the test rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    started = time.time()
    head = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0, random_state=seed))
    head.fit(train_x, list(train_y))
    predicted = list(head.predict(test_x))
    correct = sum(p == t for p, t in zip(predicted, test_y))
    classes = list(head.classes_)
    confusion: dict[str, dict[str, int]] = {}
    for truth, guess in zip(test_y, predicted):
        confusion.setdefault(truth, {}).setdefault(guess, 0)
        confusion[truth][guess] += 1
    majority = max(set(train_y), key=list(train_y).count)
    return {
        "accuracy": correct / max(1, len(test_y)),
        "majority_accuracy": sum(t == majority for t in test_y) / max(1, len(test_y)),
        "head_params": (train_x.shape[1] + 1) * (len(classes) if len(classes) > 2 else 1),
        "fit_seconds": round(time.time() - started, 3),
        "confusion": confusion,
        "predicted": predicted,
        "head": {"classes": classes, "mean": head[0].mean_.tolist(), "scale": head[0].scale_.tolist(),
                 "coef": head[1].coef_.tolist(), "intercept": head[1].intercept_.tolist()},
    }


def feature_baseline(train: LabelledTexts, test: LabelledTexts, label_field: str, encode: Callable[[Sequence[str]], np.ndarray],
                     encoder_name: str, *, seed: int = 0) -> FeatureResult:
    """Encode train + test with the frozen encoder, fit the head on train, score on test."""
    classes = check_label_like(train, label_field)
    unseen = sorted(set(test.labels) - set(classes))
    started = time.time()
    features = encode(train.texts + test.texts)
    encode_seconds = time.time() - started
    train_x, test_x = features[: len(train.texts)], features[len(train.texts):]
    scored = fit_and_score(train_x, train.labels, test_x, test.labels, seed=seed)
    notes = []
    if unseen:
        notes.append(f"test labels never seen in training (always wrong): {', '.join(unseen)}")
    if train.skipped or test.skipped:
        notes.append(f"rows without a {label_field!r} label skipped: {train.skipped} train, {test.skipped} test")
    return FeatureResult(
        encoder=encoder_name, label_field=label_field, labels=classes, train_rows=len(train.texts), test_rows=len(test.texts),
        accuracy=scored["accuracy"], majority_accuracy=scored["majority_accuracy"], feature_dim=int(features.shape[1]),
        head_params=int(scored["head_params"]), encode_seconds=round(encode_seconds, 2), fit_seconds=scored["fit_seconds"],
        confusion=scored["confusion"], notes=notes, head=scored["head"],
    )
