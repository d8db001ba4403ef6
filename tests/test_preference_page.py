"""Preference runs on the Train page (issue 27, "Live, and explained"): the objective's charts beside the loss, the
reading guide and the case it names for this run, eval accuracy over the whole eval set (not a mean of batch means),
and "Continue from run …" with the link back to the parent run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.train.live import (
    ADAPTER_PATH_LABEL,
    FRESH_ADAPTER_LABEL,
    READING_GUIDE,
    continue_preset,
    is_preference_run,
    parent_run,
    preference_figures,
    reading_guide,
    small_figures,
)

PAIRS = [("2+2?", "4", "5"), ("Capital of France?", "Paris", "Lyon"), ("Colour of the sky?", "Blue", "Green"),
         ("Opposite of hot?", "Cold", "Warm"), ("3*3?", "9", "6"), ("Ice is?", "Frozen water", "Hot steam")]
EVAL_PAIRS = [("1+1?", "2", "3"), ("Largest planet?", "Jupiter", "Mars"), ("Grass is?", "Green", "Purple"),
              ("Opposite of up?", "Down", "Left"), ("Water boils at?", "100 C", "10 C")]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _pairs(path: Path, pairs) -> Path:
    return _write(path, [{"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": c}],
                          "rejected": [{"role": "assistant", "content": r}]} for q, c, r in pairs])


def _dpo_rows(chosen, rejected, logps_chosen, accuracies=None, total_steps=None) -> list[dict]:
    """Train rows as the job writes them (TRL's names), margins = chosen - rejected."""
    rows = [{"event": "start", "step": 0, "total_steps": total_steps or len(chosen)}]
    for step, (c, r, lc) in enumerate(zip(chosen, rejected, logps_chosen), start=1):
        rows.append({"step": step, "loss": 0.69, "learning_rate": 1e-4, "rewards/chosen": c, "rewards/rejected": r,
                     "rewards/margins": c - r, "rewards/accuracies": (accuracies or [0.5] * len(chosen))[step - 1],
                     "logps/chosen": lc, "logps/rejected": lc - 5.0})
    return rows


def _applies(lines) -> set[str]:
    return {line.case for line in lines if line.applies}


# ---------------------------------------------------------------- figures


def _traces(fig) -> dict[str, tuple]:
    return {t.name: (tuple(t.x), tuple(t.y), t.line.dash) for t in fig.data}


def test_preference_figures_draw_train_and_eval_and_sft_gets_none():
    rows = _dpo_rows([0.0, -0.1, -0.2], [0.0, -0.3, -0.6], [-40.0, -41.0, -42.0])
    rows.append({"step": 3, "eval_loss": 0.6, "eval_rewards/chosen": -0.25, "eval_rewards/rejected": -0.7, "eval_rewards/margins": 0.45,
                 "eval_rewards/accuracies": 0.6667, "eval_pair_accuracy": 0.8, "eval_logps/chosen": -43.0, "eval_logps/rejected": -49.0})
    figures = preference_figures(rows)
    titles = [f.layout.title.text for f in figures]
    assert len(titles) == 4 and not any("KL" in t for t in titles), "a DPO run logs no kl: no empty KL chart"
    rewards = _traces(figures[0])
    assert rewards["chosen"] == ((1, 2, 3), (0.0, -0.1, -0.2), "solid")
    assert rewards["rejected · eval"] == ((3,), (-0.7,), "dash"), "eval drawn distinctly (dashed, markers)"
    accuracy = _traces(next(f for f in figures if f.layout.title.text.startswith("Pair accuracy")))
    assert accuracy["accuracy · eval (whole set)"][1] == (0.8,), "the whole-set figure, not TRL's mean of batch means"
    margins = _traces(next(f for f in figures if f.layout.title.text.startswith("Reward margin")))
    assert margins["margin"][1] == pytest.approx((0.0, 0.2, 0.4))

    kto = [{"step": 1, "loss": 0.5, "rewards/chosen": 0.1, "rewards/rejected": -0.1, "rewards/margins": 0.2, "kl": 0.03}]
    assert any("KL" in f.layout.title.text for f in preference_figures(kto))

    sft = [{"event": "start", "step": 0, "total_steps": 2}, {"step": 1, "loss": 2.0, "learning_rate": 1e-4, "grad_norm": 1.0},
           {"step": 2, "eval_loss": 1.9}]
    assert preference_figures(sft) == [] and not is_preference_run(sft) and is_preference_run(rows)
    assert len(small_figures(sft)) == 4, "an SFT run's charts are as before"


# ---------------------------------------------------------------- reading guide


def test_guide_names_the_cases_a_run_is_in():
    assert set(READING_GUIDE) == {"rewards_falling", "chosen_drift", "accuracy_saturated", "flat_margins"}
    # Both rewards fall, rejected faster (margin grows), and the chosen log-probs fall: expected, and the SFT mix's drift.
    drifting = _dpo_rows([0.0, -0.2, -0.4, -0.6, -0.8, -1.0], [0.0, -0.5, -1.0, -1.5, -2.0, -2.5], [-40, -42, -44, -46, -48, -50])
    lines = reading_guide(drifting, {"sft_weight": 0.0, "batch_size": 8, "gradient_accumulation": 4})
    assert _applies(lines) == {"rewards_falling", "chosen_drift"}
    drift = next(line for line in lines if line.case == "chosen_drift")
    assert "sft_weight" in drift.text and "set sft_weight" in drift.detail and "-40 → -50" in drift.detail
    assert "raise sft_weight above 0.5" in next(x for x in reading_guide(drifting, {"sft_weight": 0.5}) if x.case == "chosen_drift").detail

    # Margin grows with the chosen reward and log-prob rising: healthy, nothing flagged.
    healthy = _dpo_rows([0.0, 0.1, 0.2, 0.3, 0.4, 0.5], [0.0, -0.2, -0.4, -0.6, -0.8, -1.0], [-40, -39, -38, -37, -36, -35])
    assert _applies(reading_guide(healthy, {"batch_size": 8, "gradient_accumulation": 4})) == set()

    # Accuracies of 0 / 1 only with 2 pairs a step: read the eval accuracy (the whole-set figure, quoted).
    coarse = _dpo_rows([0.0, 0.1, 0.2, 0.3], [0.0, -0.2, -0.4, -0.6], [-40, -39, -38, -37], accuracies=[0.0, 1.0, 1.0, 1.0])
    coarse.append({"step": 4, "eval_loss": 0.6, "eval_rewards/accuracies": 0.75, "eval_pair_accuracy": 0.8})
    line = next(x for x in reading_guide(coarse, {"batch_size": 2, "gradient_accumulation": 1}) if x.case == "accuracy_saturated")
    assert line.applies and "0.800" in line.detail and "2 pairs per step" in line.detail
    assert not next(x for x in reading_guide(coarse, {"batch_size": 16, "gradient_accumulation": 2})
                    if x.case == "accuracy_saturated").applies, "32 pairs a step: 1.0 is a real figure"
    no_eval = next(x for x in reading_guide(coarse[:-1], {"batch_size": 1}) if x.case == "accuracy_saturated")
    assert "no eval set" in no_eval.detail

    # Margins flat near 0 late in the run: beta too small or pairs too alike.
    flat = _dpo_rows([0.0, 0.001, -0.002, 0.001, 0.0, 0.002], [0.0, 0.0, -0.001, 0.0, 0.001, 0.0], [-40] * 6)
    line = next(x for x in reading_guide(flat, {"beta": 0.01, "batch_size": 8, "gradient_accumulation": 4}) if x.case == "flat_margins")
    assert line.applies and "beta 0.01" in line.detail
    early = _dpo_rows([0.0, 0.001, 0.0], [0.0, 0.0, 0.0], [-40] * 3, total_steps=100)
    assert "flat_margins" not in _applies(reading_guide(early)), "3 steps of 100: too early to call the margin flat"
    assert _applies(reading_guide([{"step": 1, "loss": 2.0}])) == set(), "an SFT run is in no case"


def test_continue_preset_and_parent_link(workspace):
    run_dir = workspace / "runs" / "sft-1"
    (run_dir / "adapter").mkdir(parents=True)
    choices = {"sft-1 · sft · lora · qa.jsonl": "sft-1"}
    assert continue_preset("", choices) == FRESH_ADAPTER_LABEL
    assert continue_preset("sft-1", choices) == continue_preset(str(run_dir / "adapter"), choices) == "sft-1 · sft · lora · qa.jsonl"
    assert continue_preset("/elsewhere/adapter", choices) == ADAPTER_PATH_LABEL
    assert parent_run({"init_adapter": str(run_dir / "adapter")}) == "sft-1" and parent_run({"init_adapter": ""}) is None


# ---------------------------------------------------------------- eval accuracy over the whole eval set


@pytest.mark.slow
def test_eval_pair_accuracy_is_over_the_whole_eval_set(workspace, tiny_llama_dir, tmp_path):
    """5 eval pairs at batch size 2 (batches of 2, 2, 1): TRL 1.16 logs eval_rewards/accuracies as the mean of the three batch
    means; eval_pair_accuracy is the share of the 5 pairs. The per-pair verdicts come from TRL itself, one pair per batch."""
    import torch

    from core.hardware import detect
    from core.train.backends import HFBackend
    from core.train.data import prepare_data
    from core.train.spec import TrainSpec
    from core.train.trainer import build_preference_trainer

    spec = TrainSpec(model={"kind": "local", "ref": str(tiny_llama_dir)}, dataset=str(_pairs(tmp_path / "pairs.jsonl", PAIRS)),
                     eval_dataset=str(_pairs(tmp_path / "eval.jsonl", EVAL_PAIRS)), objective="dpo", batch_size=2, max_length=64,
                     max_steps=1, lora_r=4, lora_alpha=8, eval_on_start=False)
    model, tokenizer = HFBackend().load(spec, detect())
    data = prepare_data(spec, tokenizer)
    assert len(data.eval.features) == 5
    trainer = build_preference_trainer(spec, tmp_path / "run", model, tokenizer, data, device="cpu", bf16=False, fp16=False, callbacks=[])

    def per_pair() -> list[float]:
        """TRL's own verdict (chosen reward > rejected) for each eval pair, in eval order, one pair per batch."""
        trainer.args.per_device_eval_batch_size = 1
        trainer.model.eval()
        for batch in trainer.get_eval_dataloader():
            trainer.prediction_step(trainer.model, batch, prediction_loss_only=True)
        verdicts = list(trainer._metrics["eval"]["rewards/accuracies"])
        trainer._metrics["eval"].clear()
        trainer.eval_pair_tally.reset()
        trainer.args.per_device_eval_batch_size = 2
        return verdicts

    generator = torch.Generator().manual_seed(0)
    for _attempt in range(20):  # move the policy off its reference until the 5 verdicts make the two figures differ
        with torch.no_grad():
            for name, param in trainer.model.named_parameters():
                if param.requires_grad and "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
        verdicts = per_pair()
        batch_means = [sum(verdicts[0:2]) / 2, sum(verdicts[2:4]) / 2, verdicts[4]]
        if sum(batch_means) / 3 != pytest.approx(sum(verdicts) / 5):
            break
    assert len(verdicts) == 5 and set(verdicts) <= {0.0, 1.0}
    assert sum(batch_means) / 3 != pytest.approx(sum(verdicts) / 5), "no weights found where the two figures differ"

    metrics = trainer.evaluate()
    assert metrics["eval_rewards/accuracies"] == pytest.approx(sum(batch_means) / 3), "TRL: the mean of the per-batch means"
    assert metrics["eval_pair_accuracy"] == pytest.approx(sum(verdicts) / 5), "ours: correct pairs / all 5 eval pairs"
    assert metrics["eval_pair_accuracy"] == pytest.approx(trainer.evaluate()["eval_pair_accuracy"]), "each eval starts its own count"


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["orpo", "simpo"])
def test_eval_pair_accuracy_of_the_reference_free_objectives_does_not_depend_on_the_batch_size(workspace, tiny_llama_dir, tmp_path,
                                                                                              objective):
    """ORPO / CPO (SimPO) keep their eval metrics elsewhere in TRL (_stored_metrics): the whole-set figure at batch size 2
    (batches of 2, 2, 1) equals TRL's own accuracy at batch size 1, where a mean of batch means is the mean over pairs."""
    from core.hardware import detect
    from core.train.backends import HFBackend
    from core.train.data import prepare_data
    from core.train.spec import TrainSpec
    from core.train.trainer import build_preference_trainer

    spec = TrainSpec(model={"kind": "local", "ref": str(tiny_llama_dir)}, dataset=str(_pairs(tmp_path / "pairs.jsonl", PAIRS)),
                     eval_dataset=str(_pairs(tmp_path / "eval.jsonl", EVAL_PAIRS)), objective=objective, batch_size=2, max_length=64,
                     max_steps=1, lora_r=4, lora_alpha=8, eval_on_start=False)
    model, tokenizer = HFBackend().load(spec, detect())
    trainer = build_preference_trainer(spec, tmp_path / "run", model, tokenizer, prepare_data(spec, tokenizer), device="cpu",
                                       bf16=False, fp16=False, callbacks=[])
    whole = trainer.evaluate()["eval_pair_accuracy"]
    trainer.args.per_device_eval_batch_size = 1
    one_by_one = trainer.evaluate()
    assert whole == pytest.approx(one_by_one["eval_rewards/accuracies"]) == pytest.approx(one_by_one["eval_pair_accuracy"])
    assert whole * 5 == pytest.approx(round(whole * 5)), "a share of the 5 eval pairs"


# ---------------------------------------------------------------- the Train page


@pytest.mark.slow
def test_train_page_dpo_continuing_an_sft_run_shows_its_charts_guide_and_parent(workspace, tiny_llama_dir, tmp_path):
    import yaml
    from inprocess import run_in_process
    from streamlit.testing.v1 import AppTest

    from conftest import ROOT
    from core import runs

    sft_file = _write(tmp_path / "sft.jsonl", [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": c}]}
                                               for q, c, _ in PAIRS])
    tiny = dict(max_steps=2, batch_size=2, max_length=64, learning_rate=1e-2, warmup_ratio=0.0, lora_r=4, lora_alpha=8,
                save_steps=100, eval_on_start=False, logging_steps=1)
    sft_dir, status = run_in_process({"kind": "train", "model": {"kind": "local", "ref": str(tiny_llama_dir)},
                                      "dataset": str(sft_file), "eval_fraction": 0.0, **tiny})
    assert status.state == "succeeded", status.error
    sft_id = sft_dir.name

    at = AppTest.from_file(str(ROOT / "app_pages" / "train.py"), default_timeout=180)
    at.session_state["active_model"] = {"kind": "local", "ref": str(tiny_llama_dir)}
    at.run()
    start = at.selectbox(key="train_form_init_adapter")
    assert start.label == "Continue from run …" and start.value == FRESH_ADAPTER_LABEL
    assert start.options == [FRESH_ADAPTER_LABEL, f"{sft_id} · sft · lora · sft.jsonl", ADAPTER_PATH_LABEL]
    at.selectbox(key="train_dataset_choice").set_value(at.selectbox(key="train_dataset_choice").options[-1]).run()
    at.text_input(key="train_dataset_path").set_value(str(_pairs(tmp_path / "pairs.jsonl", PAIRS))).run()
    at.selectbox(key="train_form_objective").set_value("dpo").run()
    at.selectbox(key="train_form_init_adapter").set_value(start.options[1])
    at.text_input(key="train_form_eval_dataset").set_value(str(_pairs(tmp_path / "eval.jsonl", EVAL_PAIRS)))
    for key, value in {"max_steps": 3, "batch_size": 2, "max_length": 64, "lora_r": 4, "save_steps": 100, "eval_steps": 0}.items():
        at.number_input(key=f"train_form_{key}").set_value(value)
    at.run()
    assert not at.exception and not [e.value for e in at.error]
    spec = yaml.safe_load(next(c.value for c in at.code if "kind: train" in c.value))
    assert spec["objective"] == "dpo" and spec["init_adapter"] == str((sft_dir / "adapter").resolve())

    # The page's spec, run in this process (the worker's own code path) instead of a second interpreter.
    dpo_dir, status = run_in_process(spec)
    assert status.state == "succeeded", status.error
    rows = runs.read_all_metrics(dpo_dir / runs.METRICS_FILE)
    evals = [r for r in rows if "eval_loss" in r]
    assert evals and all(0.0 <= r["eval_pair_accuracy"] <= 1.0 and r["eval_pair_accuracy"] * 5 == round(r["eval_pair_accuracy"] * 5)
                         for r in evals), "eval rows carry the whole-set accuracy of the 5 eval pairs"

    page = AppTest.from_file(str(ROOT / "app_pages" / "train.py"), default_timeout=180)
    page.session_state["active_model"] = {"kind": "local", "ref": str(tiny_llama_dir)}
    page.query_params["run"] = dpo_dir.name
    page.run()
    assert not page.exception
    assert any(f"continues run [{sft_id}](?run={sft_id})" in c.value for c in page.caption), [c.value for c in page.caption]
    titles = [json.loads(chart.proto.spec)["layout"]["title"]["text"] for chart in page.get("plotly_chart")]
    assert {"Implicit rewards", "Reward margin (chosen − rejected)", "Pair accuracy (chosen reward > rejected)",
            "Log-probs of the answers"} <= set(titles), titles
    assert any("**Reading guide**" in m.value for m in page.markdown)
    shown = " ".join(x.value for x in [*page.caption, *page.warning])
    assert all(text in shown for text in READING_GUIDE.values()), "every guide line is shown (those that apply as warnings)"
