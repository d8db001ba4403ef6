"""Build `replay.jsonl`, the shipped replay set: the general instructions in `replay_prompts.txt` (written for
this project) answered greedily by the embedded model through the sequence-level job (`teacher_answers`), so
replaying them rehearses the base model's own general behaviour. Answers cut at the token limit are dropped.

    .venv/bin/python assets/general/make_replay_set.py

Refuses a prompt that shares 8 consecutive words with the general evaluation sets (general_text / general_mc):
replay must not train on what the forgetting report scores.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

PROMPTS = HERE / "replay_prompts.txt"
TARGET = HERE / "replay.jsonl"
OVERLAP_WORDS = 8


def evaluation_ngrams() -> set[tuple[str, ...]]:
    from core.evaluate.general import load_general_sets

    sets = load_general_sets(0, 0, seed=0)
    words = " ".join([t["text"] for t in sets.texts] + [i["context"] + " " + " ".join(i["choices"]) for i in sets.mc_items]).lower().split()
    return {tuple(words[i:i + OVERLAP_WORDS]) for i in range(len(words) - OVERLAP_WORDS + 1)}


def main() -> None:
    from core.distill.sequence import run
    from core.runs.jobs import JobContext

    prompts = [line.strip() for line in PROMPTS.read_text(encoding="utf-8").splitlines() if line.strip()]
    grams = evaluation_ngrams()
    for prompt in prompts:
        words = prompt.lower().split()
        if any(tuple(words[i:i + OVERLAP_WORDS]) in grams for i in range(len(words) - OVERLAP_WORDS + 1)):
            sys.exit(f"prompt overlaps the general evaluation sets: {prompt!r}")
    from core.workspace import models_dir

    cache = models_dir()  # the converted embedded model, reused
    home = Path(tempfile.mkdtemp(prefix="replay-set-"))
    (home / "models").symlink_to(cache, target_is_directory=True)
    os.environ["WORKBENCH_HOME"] = str(home)
    source = home / "prompts.jsonl"
    source.write_text("".join(json.dumps({"messages": [{"role": "user", "content": p}]}) + "\n" for p in prompts), encoding="utf-8")
    spec = {"kind": "teacher_answers", "teacher": {"kind": "embedded"}, "data": "dataset", "dataset_path": str(source),
            "decoding": "greedy", "max_new_tokens": 256, "batch_size": 12, "json_only": "no", "output_name": "replay"}
    ctx = JobContext.in_process(home / "run", spec, log=logging.getLogger("replay"),
                                set_progress=lambda fraction, message: print(f"{fraction:5.0%} {message}", flush=True))
    result = run(ctx)
    rows = [json.loads(line) for line in (Path(result["dataset_dir"]) / "data.jsonl").read_text(encoding="utf-8").splitlines()]
    TARGET.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    shutil.rmtree(home, ignore_errors=True)
    print(json.dumps({"prompts": len(prompts), "rows": len(rows), "dropped": result["dropped"],
                      "generation_seconds": result["generation_seconds"]}))


if __name__ == "__main__":
    main()
