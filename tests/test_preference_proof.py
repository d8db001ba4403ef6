"""Preference tuning, the proof (issue 27 item 4): held-out pair accuracy in the forgetting report (core.evaluate.pairs,
core.evaluate.preference), and a DPO adapter continued from an SFT run through export (merged, GGUF, Modelfile, recipes),
the merge job and Chat."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from inprocess import run_in_process

from core import runs
from core.data.masking import IGNORE_INDEX
from core.data.preference import encode_pair, load_preference_file
from core.evaluate import preference
from core.evaluate.pairs import PairLogprobs, pair_accuracy, pair_logprobs, pair_outcomes, reward_margins
from core.models import ModelSource, load_model
from core.train.spec import TrainSpec

pytestmark = pytest.mark.slow

PAIRS = [("2+2?", "4", "5"), ("Capital of France?", "Paris", "Lyon"), ("Colour of the sky?", "Blue", "Green"),
         ("Opposite of hot?", "Cold", "Warm"), ("3*3?", "9", "6"), ("Ice is?", "Frozen water", "Hot steam"),
         ("Largest planet?", "Jupiter", "Mars"), ("Water boils at?", "100 C", "40 C")]
EVAL_SIZES = {"task_samples": 2, "general_samples": 2, "mc_samples": 4, "max_new_tokens": 4, "bootstrap_samples": 200, "batch_size": 4}


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _pair_rows(pairs=PAIRS) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}]} for q, c, r in pairs]


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    return _write(tmp_path / "pairs.jsonl", _pair_rows())


def _train(model_dir: Path, data: Path, **changes) -> Path:
    fields = dict(model={"kind": "local", "ref": str(model_dir)}, dataset=str(data), max_steps=2, batch_size=2, max_length=64,
                  eval_fraction=0.0, learning_rate=1e-2, warmup_ratio=0.0, lora_r=4, lora_alpha=8, save_steps=100,
                  eval_on_start=False, eval_steps=0, logging_steps=1)
    fields.update(changes)
    run_dir, status = run_in_process(TrainSpec(**fields))
    assert status.state == "succeeded", (status.error, (run_dir / "worker.log").read_text()[-3000:])
    return run_dir


def _sft_then_dpo(model_dir: Path, tmp_path: Path, pairs: Path, dpo_steps: int, **dpo) -> tuple[Path, Path]:
    sft_file = _write(tmp_path / "sft.jsonl", [{"messages": r["prompt"] + r["chosen"]} for r in _pair_rows()])
    sft_dir = _train(model_dir, sft_file)
    dpo_dir = _train(model_dir, pairs, objective="dpo", init_adapter=sft_dir.name, max_steps=dpo_steps, **dpo)
    return sft_dir, dpo_dir


# ---------------------------------------------------------------- core.evaluate.pairs on cases whose answer is known


def test_pair_logprobs_sum_the_answer_tokens_of_encode_pair_and_swapping_gives_one_minus(tiny_llama_dir, embedded_tokenizer):
    loaded = load_model(ModelSource("local", str(tiny_llama_dir)))
    rows = _pair_rows()
    scores = pair_logprobs(loaded.model, loaded.tokenizer, rows, batch_size=3)

    # The same number by hand for one pair: one unbatched forward, summed over the tokens encode_pair trains.
    encoded = encode_pair(rows[1], embedded_tokenizer, max_length=1024)
    for side, value, count in ((encoded.chosen, scores[1].chosen, scores[1].chosen_tokens),
                               (encoded.rejected, scores[1].rejected, scores[1].rejected_tokens)):
        ids = torch.tensor([side.input_ids])
        with torch.no_grad():
            logp = torch.log_softmax(loaded.model(input_ids=ids).logits[0].double(), -1)
        picked = [logp[j - 1, ids[0, j]].item() for j in range(1, len(side.labels)) if side.labels[j] != IGNORE_INDEX]
        assert count == len(picked) == side.n_trained and value == pytest.approx(sum(picked), abs=1e-3)
        assert encoded.prompt_tokens > 0 and all(label == IGNORE_INDEX for label in side.labels[: encoded.prompt_tokens])

    swapped = pair_logprobs(loaded.model, loaded.tokenizer, [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows])
    for length_normalised in (False, True):
        acc = pair_accuracy(scores, length_normalised=length_normalised)
        assert pair_accuracy(swapped, length_normalised=length_normalised) == pytest.approx(1 - acc)
    # A policy equal to its reference has no implicit reward: every pair ties, which counts half (chance), not 0.
    assert pair_accuracy(scores, reference=scores) == 0.5
    assert reward_margins(scores, scores, beta=0.1) == [0.0] * len(rows)


def test_length_normalised_and_implicit_reward_readings():
    # chosen: 10 tokens at -1 each; rejected: 3 tokens at -2 each. Summed the short rejected answer wins, per token chosen does.
    long_good = PairLogprobs(chosen=-10.0, rejected=-6.0, chosen_tokens=10, rejected_tokens=3)
    assert pair_outcomes([long_good]) == [0.0] and pair_outcomes([long_good], length_normalised=True) == [1.0]
    # The reference prefers rejected by 6 nats; the policy by only 4: the implicit reward says chosen rose relative to rejected.
    reference = PairLogprobs(chosen=-12.0, rejected=-6.0, chosen_tokens=10, rejected_tokens=3)
    assert pair_accuracy([long_good], reference=[reference]) == 1.0
    assert reward_margins([long_good], [reference], beta=0.5) == [pytest.approx(0.5 * ((-10 + 12) - (-6 + 6)))]
    with pytest.raises(ValueError, match="same pairs"):
        reward_margins([long_good], [])


def test_held_out_pairs_are_the_split_training_held_out(workspace, tiny_llama_dir, pairs_file, embedded_tokenizer):
    from core.evaluate.preference import TrainedRun, held_out_pairs
    from core.train.data import prepare_preference_data

    spec = TrainSpec(model={"kind": "local", "ref": str(tiny_llama_dir)}, dataset=str(pairs_file), objective="dpo", eval_fraction=0.25,
                     seed=3)
    prepared = prepare_preference_data(spec, embedded_tokenizer)
    run_dir = runs.create_run(spec)
    pairs, source = held_out_pairs(TrainedRun(run_dir, runs.read_spec_dict(run_dir), spec.model_source))
    assert [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs] == prepared.eval.features
    assert len(pairs) == 2 and run_dir.name in source
    no_split = runs.create_run(TrainSpec(model={"kind": "local", "ref": str(tiny_llama_dir)}, dataset=str(pairs_file), objective="dpo",
                                         eval_fraction=0.0))
    assert held_out_pairs(TrainedRun(no_split, runs.read_spec_dict(no_split), spec.model_source)) == \
        ([], f"run {no_split.name} held out no pairs (eval_fraction 0): give pairs_dataset to score held-out pairs")


# ---------------------------------------------------------------- the report's preference section


def test_forgetting_report_has_the_preference_section_of_an_sft_then_dpo_run(workspace, tiny_llama_dir, tmp_path, pairs_file):
    from streamlit.testing.v1 import AppTest

    from conftest import ROOT
    from core.evaluate.report import render_html, render_markdown

    # DPO trained 20 steps on the pairs, which are also its eval_dataset: the section's default pairs.
    sft_dir, dpo_dir = _sft_then_dpo(tiny_llama_dir, tmp_path, pairs_file, 20, eval_dataset=str(pairs_file), beta=0.5)
    base = {"kind": "local", "ref": str(tiny_llama_dir)}
    eval_dir, status = run_in_process({"kind": "evaluate", "name": "proof", "base": base, **EVAL_SIZES,
                                       "variants": [{"label": "dpo", "model": {**base, "adapter": str(dpo_dir / "adapter")}}]})
    assert status.state == "succeeded", (status.error, runs.log_tail(eval_dir))
    report = runs.read_result(eval_dir, "evaluate")
    section = report["preference"]
    assert section["n_pairs"] == len(PAIRS) and "eval_dataset of run " + dpo_dir.name in section["source"]
    rows = {m["label"]: m for m in section["models"]}
    start = f"start: {sft_dir.name}"
    assert list(rows) == ["base", start, "dpo"]
    dpo = rows["dpo"]
    assert dpo["reference"] == start and dpo["beta"] == 0.5 and dpo["objective"] == "dpo"
    # Trained to prefer chosen: above the base and the SFT start on the plain log-prob reading, and the implicit reward
    # (vs the SFT start it continued) prefers chosen on nearly every pair.
    assert dpo["logprob_acc"]["value"] > rows["base"]["logprob_acc"]["value"]
    assert dpo["logprob_acc"]["value"] > rows[start]["logprob_acc"]["value"]
    assert dpo["reward_acc"]["value"] >= 75 and dpo["reward_margin"]["value"] > 0
    assert dpo["logprob_acc"]["low"] <= dpo["logprob_acc"]["value"] <= dpo["logprob_acc"]["high"] and dpo["logprob_acc"]["n"] == len(PAIRS)
    # The section's numbers are pair_accuracy's on the stored per-pair scores (one computation).
    stored = [PairLogprobs(**s) for s in dpo["scores"]]
    assert dpo["logprob_acc"]["value"] == pytest.approx(100 * pair_accuracy(stored))
    assert dpo["reward_acc"]["value"] == pytest.approx(100 * pair_accuracy(stored,
                                                                           reference=[PairLogprobs(**s) for s in rows[start]["scores"]]))
    assert set(section["comparisons"]["dpo"]) == {"base", start}
    assert section["win_rate"]["note"] == preference.WIN_RATE_NOTE and "Judge: win rate over base" in preference.WIN_RATE_NOTE
    (verdict,) = report["verdicts"]
    assert verdict["preference"]["general_held"] == (verdict["verdict"] != "forgetting")
    assert (verdict["reasons"][1].startswith("preference pairs: the chosen answer is preferred")
            and "general ability" in verdict["reasons"][1])

    markdown, page = render_markdown(report), render_html(report)
    for text in (markdown, page):
        assert "Preference (held-out pairs)" in text and preference.WIN_RATE_NOTE in text and start in text
    assert f"| dpo | {dpo['logprob_acc']['value']:.1f}" in markdown

    at = AppTest.from_file(str(ROOT / "app_pages" / "evaluate.py"), default_timeout=120)
    at.session_state["active_model"] = base
    at.query_params["eval_run"] = eval_dir.name
    at.run()
    assert not at.exception, at.exception
    assert any(h.value == "Preference: held-out pairs" for h in at.subheader)
    assert any("implicit reward acc" in str(df.value.columns.tolist()) for df in at.dataframe)
    assert any("win rate: not measured" in m.value for m in at.markdown)


def test_a_pairs_file_adds_the_section_for_any_variant_and_bad_files_are_named(workspace, tiny_llama_dir, tmp_path, pairs_file):
    from test_evaluate import make_adapter

    from core.evaluate.spec import EvalSpec

    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter", random_weights=True)
    base = {"kind": "local", "ref": str(tiny_llama_dir)}
    spec = {"kind": "evaluate", "base": base, **EVAL_SIZES, "variants": [{"label": "lora", "model": {**base, "adapter": str(adapter)}}]}
    run_dir, status = run_in_process({**spec, "pairs_dataset": str(pairs_file), "pair_samples": 5})
    assert status.state == "succeeded", (status.error, runs.log_tail(run_dir))
    section = runs.read_result(run_dir, "evaluate")["preference"]
    assert section["n_pairs"] == 5 and [m["label"] for m in section["models"]] == ["base", "lora"]
    assert section["models"][1]["reference"] == "base" and "beta 0.1" in " ".join(section["notes"])
    # No preference run and no pairs file: no section.
    run_dir, status = run_in_process(spec)
    assert status.state == "succeeded" and "preference" not in runs.read_result(run_dir, "evaluate")
    # Unpaired (KTO) rows are not pairs; a missing file is named.
    unpaired = _write(tmp_path / "kto.jsonl", [{"prompt": q, "completion": c, "label": True} for q, c, _ in PAIRS])
    assert load_preference_file(unpaired).detected_format == "unpaired"
    run_dir, status = run_in_process({**spec, "pairs_dataset": str(unpaired)})
    assert status.state == "failed" and f"pairs_dataset {unpaired}: no prompt / chosen / rejected pairs" in status.error
    with pytest.raises(ValueError, match="pairs_dataset: file not found"):
        EvalSpec.from_dict({**spec, "pairs_dataset": str(tmp_path / "missing.jsonl")})


# ---------------------------------------------------------------- a DPO adapter through export and Chat


def test_dpo_adapter_continued_from_sft_exports_merged_onto_the_base_and_chats(workspace, tiny_llama_dir, tmp_path, pairs_file):
    import yaml
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from core.export.spec import ExportSpec
    from core.generation import GenerationSettings, generate_text, prompt_ids

    sft_dir, dpo_dir = _sft_then_dpo(tiny_llama_dir, tmp_path, pairs_file, 2)
    export_dir, status = run_in_process(ExportSpec(source_run=str(dpo_dir), formats=["merged", "gguf_q8_0", "modelfile", "recipes"],
                                                   merged_dtype="float32", min_agreement=0.0))
    result = json.loads((export_dir / "export.json").read_text())
    assert status.state == "succeeded", [c for a in result["artifacts"] for c in a["checks"] if not c["passed"]]
    assert [a["kind"] for a in result["artifacts"]] == ["merged", "gguf_q8_0", "modelfile", "recipes"]
    (merged,) = [a for a in result["artifacts"] if a["kind"] == "merged"]
    assert all(c["passed"] for c in merged["checks"]) and merged["checks"], merged["checks"]
    # The recipe is a DPO recipe continuing the SFT adapter, not an SFT recipe on a pairs file.
    axolotl = yaml.safe_load((export_dir / "export" / "recipes" / "axolotl.yaml").read_text())
    assert axolotl["rl"] == "dpo" and axolotl["rl_beta"] == 0.1 and axolotl["lora_model_dir"] == str(sft_dir / "adapter")
    assert axolotl["datasets"][0]["type"] == "chat_template.default" and "roles_to_train" not in axolotl["datasets"][0]

    # The merged model is the BASE plus the final DPO adapter only (it already holds the SFT weights training continued):
    # the same logits as base + DPO adapter, and not those of base + SFT adapter.
    ids = torch.tensor([prompt_ids([{"role": "user", "content": "Capital of France?"}],
                                   load_model(ModelSource("local", str(tiny_llama_dir))).tokenizer)])

    def logits(model) -> torch.Tensor:
        with torch.no_grad():
            return model.eval()(input_ids=ids).logits[0, -1].float()

    merged_logits = logits(AutoModelForCausalLM.from_pretrained(merged["path"], dtype=torch.float32))
    dpo_logits = logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), dpo_dir / "adapter"))
    sft_logits = logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), sft_dir / "adapter"))
    assert torch.allclose(merged_logits, dpo_logits, atol=1e-4), (merged_logits - dpo_logits).abs().max()
    assert (merged_logits - sft_logits).abs().max() > 1e-3, "DPO moved the model away from its SFT start"

    # The Merge page's job takes it too: the pre-flight finds its base, and task arithmetic at weight 1 is base + DPO adapter.
    base = {"kind": "local", "ref": str(tiny_llama_dir)}
    merge_dir, status = run_in_process({"kind": "merge", "method": "task_arithmetic", "base": base, "evaluate": False,
                                        "models": [{"source": {**base, "adapter": str(dpo_dir / "adapter")}, "weight": 1.0}]})
    assert status.state == "succeeded", (status.error, runs.log_tail(merge_dir))
    mergekit_logits = logits(AutoModelForCausalLM.from_pretrained(runs.read_result(merge_dir)["model_dir"], dtype=torch.float32))
    assert torch.allclose(mergekit_logits, dpo_logits, atol=1e-3), (mergekit_logits - dpo_logits).abs().max()

    # Chat: the page's source (active model + trained adapter) through core.models / core.generation.
    loaded = load_model(ModelSource("local", str(tiny_llama_dir), adapter=str(dpo_dir / "adapter")))
    answer = generate_text(loaded, [{"role": "user", "content": "Capital of France?"}],
                           GenerationSettings(temperature=0.0, max_new_tokens=6))
    assert isinstance(answer, str) and answer.strip()
