"""The general-ability sets the forgetting report scores, shipped in `assets/general/` (see its README).

- general text (`general_text.jsonl`, 175 human-written Self-Instruct seed tasks, Apache-2.0): perplexity;
- multiple choice (`general_mc.jsonl`, 400 "which question belongs to this story?" items built from
  the GSM8K test set, MIT): accuracy by log-likelihood, as lm-evaluation-harness scores multiple choice.

Built by `assets/general/make_general_sets.py`; the app never reads ../shared.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GENERAL_DIR = Path(__file__).resolve().parents[2] / "assets" / "general"
TEXT_FILE = "general_text.jsonl"
MC_FILE = "general_mc.jsonl"

TEXT_SET_NAME = "Self-Instruct seed tasks (175 texts, Apache-2.0)"
MC_SET_NAME = "GSM8K story → question, 4 choices (400 items, MIT)"


class GeneralSetError(RuntimeError):
    pass


@dataclass(frozen=True)
class GeneralSets:
    texts: list[dict]  # {"id", "text"}
    mc_items: list[dict]  # {"id", "context", "choices", "gold"}


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise GeneralSetError(f"{path} is missing: rebuild it with `python assets/general/make_general_sets.py`")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise GeneralSetError(f"{path}, line {n}: not valid JSON ({exc.msg})") from None
    return rows


def sample_indices(total: int, wanted: int, seed: int) -> list[int]:
    """A seeded sample of `wanted` of `total` positions, in their original order (0 = all)."""
    if wanted <= 0 or wanted >= total:
        return list(range(total))
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(total, size=wanted, replace=False))


def load_general_sets(text_samples: int, mc_samples: int, seed: int, folder: Path = GENERAL_DIR) -> GeneralSets:
    texts = _read_jsonl(folder / TEXT_FILE)
    items = _read_jsonl(folder / MC_FILE)
    for n, item in enumerate(items):
        if not item.get("choices") or not 0 <= int(item.get("gold", -1)) < len(item["choices"]):
            raise GeneralSetError(f"{folder / MC_FILE}, item {n}: needs choices and a gold index among them")
    return GeneralSets(
        texts=[texts[i] for i in sample_indices(len(texts), text_samples, seed)],
        mc_items=[items[i] for i in sample_indices(len(items), mc_samples, seed + 1)],
    )
