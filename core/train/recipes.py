"""One-click recipes that are more than one run: SFT -> DPO on the demo ticket task (issue 27, item 5).

Both runs are created and launched at once through the ordinary run protocol (core.runs): the DPO run's
init_adapter names the SFT run while it has not finished, and its worker waits `queued` ("waiting for run <id>"),
without the exclusive lock, until that run succeeds (core.runs.worker, TrainSpec.waits_for). So the chain survives
a closed browser or an app restart (each run is its own worker), Stop works on either while it waits, and a
parent that fails or is stopped fails the DPO run with the reason.
"""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from core.runs import create_run, launch
from core.runs.spec import spec_to_dict
from core.train.spec import TrainSpec, hardware_defaults

DEMO_PAIRS_DATASET = "assets/demo/pairs_train.jsonl"  # assets/make_demo_preferences.py: 200 pairs of the demo rows
DEMO_PAIRS_EVAL = "assets/demo/pairs_eval.jsonl"  # 60 held-out pairs (no ticket shared with the training pairs)

# The DPO half of the demo recipe (bench/preference_demo.py measures it): 8 steps of 4 pairs, a few minutes on 2 idle cores.
# sft_weight: the SFT loss on the chosen answers mixed into DPO's (TRL loss_type [sigmoid, sft]); see DEMO_SFT_WEIGHT_WHY.
# Measured (bench/preference_demo.py workspace, embedded model, the same 4 DPO steps from one SFT adapter, identical batches):
# at step 4 sft_weight 0.2 vs 0: logps/chosen -12.9 vs -13.4, rewards/chosen +0.10 vs +0.04, margin 0.98 vs 1.04, i.e. the
# chosen answers keep ~0.5 nats of likelihood for ~5 % less margin. Higher weights trade more margin; 0.2 is the small end
# of the 0.1-1 range the field's help gives.
DEMO_SFT_WEIGHT = 0.2
DEMO_SFT_WEIGHT_WHY = ("a little SFT loss on the chosen answers keeps their log-probability from falling while DPO pushes the "
                       "rejected ones down (the 'both rewards falling' drift)")
DEMO_DPO: dict[str, Any] = {
    "objective": "dpo",
    "dataset": DEMO_PAIRS_DATASET,
    "beta": 0.1,
    "sft_weight": DEMO_SFT_WEIGHT,
    "learning_rate": 5e-4,
    "batch_size": 4,
    "max_steps": 8,
    "warmup_ratio": 0.0,
}


def demo_sft_dpo_specs(model: dict, hardware: Any, *, sft_changes: dict | None = None,
                       dpo_changes: dict | None = None) -> tuple[TrainSpec, dict]:
    """The SFT spec (the Train page's hardware defaults on the demo rows) and the DPO spec's fields without its
    init_adapter (the SFT run's id, known once that run folder exists)."""
    base = replace(hardware_defaults(hardware), model=dict(model))
    sft = replace(base, name="demo-sft", **(sft_changes or {}))
    dpo = {**spec_to_dict(base), **DEMO_DPO, "name": "demo-dpo", **(dpo_changes or {})}  # sft_changes stay with the SFT run
    dpo.pop("kind", None)
    return sft, dpo


def create_sft_dpo(sft: TrainSpec, dpo_fields: dict) -> tuple[Path, Path]:
    """Both run folders (state `created`): the DPO run continues from the SFT run by its id. A DPO spec the rules
    refuse leaves no half chain behind: the SFT folder is removed again."""
    sft_dir = create_run(sft)
    try:
        dpo_dir = create_run(TrainSpec.from_dict({**dpo_fields, "init_adapter": sft_dir.name}))
    except Exception:
        shutil.rmtree(sft_dir, ignore_errors=True)
        raise
    return sft_dir, dpo_dir


def launch_sft_dpo(sft: TrainSpec, dpo_fields: dict) -> tuple[Path, Path]:
    """Create both runs and start both workers; the DPO worker waits for the SFT run (see the module doc)."""
    sft_dir, dpo_dir = create_sft_dpo(sft, dpo_fields)
    launch(sft_dir)
    launch(dpo_dir)
    return sft_dir, dpo_dir
