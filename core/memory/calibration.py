"""Calibration from past runs: each finished training run's card records its predicted and measured peak;
the bounded median ratio corrects estimates on this machine."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from core.memory.estimator import MemoryEstimate
from core.runs.jobs import read_result

CORRECTION_BOUNDS = (0.5, 2.0)

# --------------------------------------------------------------------------- calibration from past runs


@dataclass(frozen=True)
class CalibrationPoint:
    run_id: str
    device: str
    predicted_bytes: int
    measured_bytes: int
    spec: dict = field(default_factory=dict, compare=False)

    @property
    def ratio(self) -> float:
        return self.measured_bytes / self.predicted_bytes


def past_run_calibration(runs_dir: str | Path) -> list[CalibrationPoint]:
    """Every finished train run whose result file (`training.json`) records both its predicted and measured peak memory.

    Run cards without those fields (a run that failed early, another kind of job) or with unusable values
    are skipped; the result is sorted by run id.
    """
    points = []
    root = Path(runs_dir)
    if not root.is_dir():
        return points
    for run_dir in sorted(path for path in root.iterdir() if path.is_dir()):
        card = read_result(run_dir, "train")
        if not isinstance(card, dict):
            continue
        point = _point_from_card(run_dir.name, card)
        if point is not None:
            points.append(point)
    return points


def _point_from_card(run_id: str, card: Any) -> CalibrationPoint | None:
    if not isinstance(card, dict):
        return None
    measured, predicted = card.get("peak_memory_bytes"), card.get("predicted_memory_bytes")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in (measured, predicted)):
        return None
    device = str(card.get("device") or "cpu")
    spec = card.get("spec") if isinstance(card.get("spec"), dict) else {}
    return CalibrationPoint(run_id, device, int(predicted), int(measured), spec)


def correction_factor(points: Iterable[CalibrationPoint], device: str, bounds: tuple[float, float] = CORRECTION_BOUNDS) -> float:
    """Median measured / predicted of this device's past runs, clamped to `bounds`; 1.0 without runs."""
    ratios = [p.ratio for p in points if p.device == device]
    if not ratios:
        return 1.0
    low, high = bounds
    return min(high, max(low, statistics.median(ratios)))


def corrected_total(estimate_: MemoryEstimate, factor: float) -> int:
    return int(round(estimate_.total_bytes * factor))
