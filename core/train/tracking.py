"""`report_to`: the trackers a training run also logs to, through transformers' own integrations.

Whatever is installed is used, offline and inside the run folder (TensorBoard event files under
tensorboard/, MLflow's file store under mlruns/, W&B in offline mode under wandb/, Trackio's local store under
trackio/); a tracker that is not installed is a note in the log and on the run card, never a failure.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

TRACKERS: tuple[str, ...] = ("tensorboard", "trackio", "mlflow", "wandb")
_MODULE = {"tensorboard": "tensorboard", "trackio": "trackio", "mlflow": "mlflow", "wandb": "wandb"}
TENSORBOARD_DIR = "tensorboard"
PROJECT = "post-training-workbench"  # the project / experiment every tracker files runs under


def installed(name: str) -> bool:
    return importlib.util.find_spec(_MODULE[name]) is not None


def resolve(report_to: list[str], run_dir: Path, run_name: str) -> tuple[list[str], dict[str, str], list[str]]:
    """(trackers to pass to TrainingArguments.report_to, environment to set, notes for the missing ones)."""
    use: list[str] = []
    notes: list[str] = []
    env: dict[str, str] = {}
    run_dir = Path(run_dir)
    for name in report_to:
        if not installed(name):
            notes.append(f"report_to {name}: the `{_MODULE[name]}` package is not installed, so this run is not logged there "
                         f"(pip install {_MODULE[name]})")
            continue
        use.append(name)
        if name == "tensorboard":
            env["TENSORBOARD_LOGGING_DIR"] = str(run_dir / TENSORBOARD_DIR)
        elif name == "mlflow":
            env["MLFLOW_TRACKING_URI"] = (run_dir / "mlruns").resolve().as_uri()
            env["MLFLOW_EXPERIMENT_NAME"] = PROJECT
        elif name == "wandb":
            env.update(WANDB_MODE="offline", WANDB_DIR=str(run_dir), WANDB_PROJECT=PROJECT, WANDB_NAME=run_name)
        elif name == "trackio":
            # transformers' TrackioCallback reads the project from TrainingArguments.project (training_arguments sets it),
            # not from the environment: TRACKIO_PROJECT stays for trackio's own CLI / dashboard
            env.update(TRACKIO_DIR=str(run_dir / "trackio"), TRACKIO_PROJECT=PROJECT)
    return use, env, notes


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the run's TensorBoard event files: tag -> [(step, value)] (read with TensorBoard's own reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, list[tuple[int, float]]] = {}
    for events in sorted((Path(run_dir) / TENSORBOARD_DIR).rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events.parent))
        accumulator.Reload()
        for tag in accumulator.Tags().get("scalars", []):
            found.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return found
