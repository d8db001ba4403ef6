"""The forgetting report's preference section (issue 27, "Proof"): which held-out pairs, which models, and the section.

The section appears when a variant comes from a training run with a preference objective (dpo / kto / orpo / simpo),
or when the spec names `pairs_dataset`. Its pairs: that file, else the pairs the run held out (its `eval_dataset`, or
the same seeded `eval_fraction` split core.train.data made), else none (the section then says why).

Models scored: the base, the adapter the run started from (its `init_adapter`, e.g. the SFT run DPO continued) and
every variant. Per model the plain log-prob pair accuracy (summed and per answer token); per variant also DPO's
implicit reward accuracy against its reference = the run's starting point (the start adapter, or the base), all with
bootstrap intervals (core.evaluate.stats). Scoring itself is core.evaluate.pairs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from core.data.formats import DatasetLoadError
from core.data.preference import is_pair, load_preference_file
from core.evaluate import stats
from core.evaluate.pairs import DEFAULT_BETA, PairLogprobs, load_pairs, pair_outcomes, reward_margins, sample_pairs
from core.evaluate.variants import Variant, adapter_chat_template, trained_base, training_run_of
from core.models import ModelSource
from core.runs.card import source_run_of
from core.runs.jobs import read_spec_dict
from core.train.data import data_file, held_out
from core.train.methods import OBJECTIVES
from core.train.spec import TrainSpec

WIN_RATE_NOTE = "win rate: not measured (tick “Judge: win rate over base” on the Evaluate form, or set judge in the spec)"
PREFERENCE_OBJECTIVES = tuple(name for name, objective in OBJECTIVES.items() if objective.data.startswith("pairs"))


@dataclass(frozen=True)
class TrainedRun:
    """What the section needs to know about the training run behind a variant."""

    run_dir: Path
    spec: dict
    base: ModelSource

    @property
    def objective(self) -> str:
        return str(self.spec.get("objective") or "sft")

    @property
    def init_adapter(self) -> str:
        return str(self.spec.get("init_adapter") or "").strip()

    @property
    def beta(self) -> float:
        return float(self.spec.get("beta", DEFAULT_BETA))


def trained_run(source: ModelSource, default_base: ModelSource) -> TrainedRun | None:
    run_dir = training_run_of(source)
    if run_dir is None:
        return None
    return TrainedRun(run_dir, read_spec_dict(run_dir), trained_base(run_dir, default_base))


def _train_default(name: str):
    found = next(f for f in dataclasses.fields(TrainSpec) if f.name == name)
    return found.default


def held_out_pairs(run: TrainedRun) -> tuple[list[dict], str]:
    """(the pairs this run held out from training, where they come from). Reproduces core.train.data's split: the
    run's eval_dataset, else held_out(rows, eval_fraction, seed) of its dataset. No pairs: ([], why)."""
    name, spec = run.run_dir.name, run.spec
    eval_dataset = str(spec.get("eval_dataset") or "").strip()
    if eval_dataset:
        return load_pairs(data_file(eval_dataset)), f"{eval_dataset} (the eval_dataset of run {name})"
    fraction = float(spec.get("eval_fraction", _train_default("eval_fraction")))
    if fraction <= 0:
        return [], f"run {name} held out no pairs (eval_fraction 0): give pairs_dataset to score held-out pairs"
    dataset = str(spec.get("dataset") or _train_default("dataset"))
    try:
        rows = load_preference_file(data_file(dataset)).rows
    except (DatasetLoadError, ValueError, OSError) as exc:
        raise ValueError(f"the held-out pairs of run {name}: {exc}") from None
    _, held = held_out(rows, fraction, int(spec.get("seed", _train_default("seed"))))
    pairs = [row for row in held if is_pair(row)]
    if not pairs:
        return [], f"run {name} held out no chosen / rejected pairs (its rows are unpaired): give pairs_dataset"
    return pairs, (f"{dataset}: the {len(pairs)} pairs run {name} held out "
                   f"(eval_fraction {fraction:g}, seed {spec.get('seed', _train_default('seed'))})")


@dataclass
class PreferencePlan:
    pairs: list[dict]
    source: str  # where the pairs come from, in words
    chat_template: str | None  # rendered with the template the preference run trained with, for every model (same token spans)
    starts: list[Variant] = field(default_factory=list)  # the adapters preference runs started from
    references: dict[str, str] = field(default_factory=dict)  # variant label -> label of its reference (a start, or "base")
    betas: dict[str, float] = field(default_factory=dict)
    objectives: dict[str, str] = field(default_factory=dict)  # variant label -> its run's objective ("" when not a run)
    notes: list[str] = field(default_factory=list)

    def labels(self, variants: Sequence[Variant]) -> list[str]:
        return ["base"] + [s.label for s in self.starts] + [v.label for v in variants]


def _start_label(adapter: str) -> str:
    path = Path(adapter)
    return f"start: {source_run_of(path) or (path.parent.name if path.name == 'adapter' else path.name)}"


def plan_preference(pairs_dataset: str, samples: int, seed: int, variants: Sequence[Variant], base: ModelSource) -> PreferencePlan | None:
    """What the preference section scores, or None when no variant is a preference run and no pairs file is given.
    ValueError names the file when the pairs cannot be read."""
    trained = {v.label: trained_run(v.source, base) for v in variants}
    preference = [(label, run) for label, run in trained.items() if run is not None and run.objective in PREFERENCE_OBJECTIVES]
    if not pairs_dataset.strip() and not preference:
        return None
    notes: list[str] = []
    if pairs_dataset.strip():
        pairs, source = load_pairs(pairs_dataset.strip()), pairs_dataset.strip()
    else:
        pairs, source = held_out_pairs(preference[0][1])
    pairs = sample_pairs(pairs, samples, seed)
    template_from = next((v.source.adapter for v in variants if v.source.adapter and v.label in dict(preference)), None)
    plan = PreferencePlan(pairs=pairs, source=source, chat_template=adapter_chat_template(template_from) if template_from else None,
                          notes=notes)
    for variant in variants:
        run = trained[variant.label]
        plan.objectives[variant.label] = run.objective if run else ""
        plan.betas[variant.label] = run.beta if run else DEFAULT_BETA
        plan.references[variant.label] = "base"
        if run is not None and run.init_adapter:
            label = _start_label(run.init_adapter)
            if all(s.label != label for s in plan.starts):
                plan.starts.append(Variant(label, run.base.with_adapter(run.init_adapter)))
            plan.references[variant.label] = label
    if any(run is None for run in trained.values()):
        notes.append(f"variants not from a training run of this workspace use beta {DEFAULT_BETA:g} and the base as reference")
    return plan


def _summary(values: list[float], resamples: int, seed: int, scale: float = 1.0) -> dict:
    return stats.mean_interval(values, resamples=resamples, seed=seed).scaled(scale).as_dict()


def build_section(plan: PreferencePlan, scores: dict[str, list[PairLogprobs]], variants: Sequence[Variant], *,
                  resamples: int, seed: int) -> dict:
    """The report's `preference` entry from every model's pair scores (labels as plan.labels)."""
    section = {"source": plan.source, "n_pairs": len(plan.pairs), "win_rate": {"status": "not measured", "note": WIN_RATE_NOTE},
               "notes": list(plan.notes), "models": [], "comparisons": {}}
    if not plan.pairs:
        section["notes"].insert(0, plan.source)
        return section
    roles = {"base": "base", **{s.label: "start" for s in plan.starts}, **{v.label: "variant" for v in variants}}
    outcomes = {}
    for label in plan.labels(variants):
        if label not in scores:
            continue
        policy = scores[label]
        outcomes[label] = pair_outcomes(policy)
        row = {"label": label, "role": roles[label],
               "logprob_acc": _summary(outcomes[label], resamples, seed, 100.0),
               "logprob_acc_norm": _summary(pair_outcomes(policy, length_normalised=True), resamples, seed, 100.0),
               "logprob_margin": _summary([p.margin() for p in policy], resamples, seed),
               "scores": [p.as_dict() for p in policy]}
        reference = plan.references.get(label)
        if roles[label] == "variant" and reference in scores:
            beta = plan.betas[label]
            row.update(reference=reference, beta=beta, objective=plan.objectives.get(label, ""),
                       reward_acc=_summary(pair_outcomes(policy, scores[reference]), resamples, seed, 100.0),
                       reward_margin=_summary(reward_margins(policy, scores[reference], beta), resamples, seed))
        section["models"].append(row)
    for variant in variants:
        if variant.label not in outcomes:
            continue
        deltas = {}
        for other in dict.fromkeys(["base", plan.references.get(variant.label, "base")]):
            if other in outcomes:
                deltas[other] = stats.paired_delta_interval(outcomes[other], outcomes[variant.label], resamples=resamples,
                                                            seed=seed).scaled(100.0).as_dict()
        section["comparisons"][variant.label] = deltas
    return section

