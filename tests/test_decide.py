"""core.decide (the wizard, the recipe, the prompt-only baseline) and core.scorers (its scorers)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from inprocess import run_in_process

from core import decide, scorers
from core.decide import Questionnaire, recommend
from core.hardware import HardwareInfo
from core.memory import preset_arch

ROOT = Path(__file__).resolve().parents[1]
GPU_24 = HardwareInfo("cuda", "RTX 4090", 1, 24.0, 23.0, True, 16, 64.0, True, False)
GPU_16 = HardwareInfo("cuda", "T4", 1, 16.0, 15.0, False, 8, 32.0, True, False)
GPU_80 = HardwareInfo("cuda", "H100", 1, 80.0, 79.0, True, 32, 256.0, True, False)
CPU = HardwareInfo("cpu", "CPU (2 cores)", 0, 16.0, 12.0, False, 2, 16.0, False, False)


# --------------------------------------------------------------------------- the scenario table

SCENARIOS = [
    ("new product facts every month", dict(gaps=("knowledge",), knowledge_changes="monthly", labelled_rows=300), "rag"),
    ("facts change daily, latency matters", dict(gaps=("knowledge",), knowledge_changes="daily", latency_sensitive=True,
                                                 labelled_rows=5000), "rag"),
    ("fixed JSON format that prompting holds most of the time", dict(gaps=("behaviour",), prompt_success=0.8, labelled_rows=1000),
     "fine-tune"),
    ("house style, prompts hold it half the time, cost matters", dict(gaps=("behaviour",), prompt_success=0.55, labelled_rows=600,
                                                                      cost_sensitive=True), "fine-tune"),
    ("a rare edge case", dict(gaps=("steering",), failure_share=0.01, labelled_rows=20, prompt_success=0.9), "prompt"),
    ("format already held by prompting", dict(gaps=("behaviour",), prompt_success=0.97, labelled_rows=2000), "prompt"),
    ("small static facts that fit in the prompt", dict(gaps=("knowledge",), knowledge_fits_in_prompt=True, labelled_rows=10), "prompt"),
    ("weekly facts and a fixed format", dict(gaps=("knowledge", "behaviour"), knowledge_changes="weekly", prompt_success=0.7,
                                             labelled_rows=2000), "rag + fine-tune"),
]


@pytest.mark.parametrize("name, answers, expected", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_wizard_scenarios(name, answers, expected):
    result = recommend(Questionnaire(**answers))
    assert result.choice == expected, [(o.option, o.score, o.reasons) for o in result.options]
    assert all(0 <= o.score <= 100 and o.reasons for o in result.options)
    assert [o.score for o in result.options] == sorted((o.score for o in result.options), reverse=True)


def test_json_format_scenario_recommends_lora_with_reasons_and_recipe():
    result = recommend(Questionnaire(gaps=("behaviour",), prompt_success=0.8, labelled_rows=1000,
                                     model=preset_arch("Llama-3.2 1B"), hardware=GPU_24))
    assert result.choice == "fine-tune" and result.fine_tune_method == "lora"
    tune = next(o for o in result.options if o.option == "fine-tune")
    assert any("80%" in r and "LoRA" in r for r in tune.reasons)
    recipe = result.recipe
    assert recipe["method"] == "lora" and recipe["learning_rate"] == pytest.approx(2e-4) and recipe["target_modules"] == ["all-linear"]
    assert recipe["lora_alpha"] == 2 * recipe["lora_r"] and recipe["num_epochs"] == 2
    assert set(recipe) == {"method", "lora_r", "lora_alpha", "learning_rate", "target_modules", "num_epochs", "max_steps", "batch_size",
                           "max_length", "gradient_checkpointing"}
    assert recipe["max_steps"] == 0, "0 = the epochs run (a step cap left in the Train form would cut them short)"


def test_recipe_learning_rate_is_ten_times_for_adapters():
    assert (decide.starting_recipe("lora", 1000)["learning_rate"]
            == pytest.approx(10 * decide.starting_recipe("full", 1000)["learning_rate"]))
    assert decide.starting_recipe("qlora", 100)["num_epochs"] == 3 and decide.starting_recipe("lora", 50_000)["num_epochs"] == 1


def test_method_follows_the_memory_estimate():
    big = Questionnaire(gaps=("behaviour",), prompt_success=0.7, labelled_rows=2000, model=preset_arch("Llama-3.1 8B"),
                        hardware=GPU_16, max_length=1024)
    result = recommend(big)
    fits = {f.method: f for f in result.method_fits}
    assert fits["full"].fits is False and fits["lora"].fits is False and fits["qlora"].fits is True
    assert result.fine_tune_method == "qlora" and result.recipe["method"] == "qlora"
    assert any("QLoRA" in n and "GB" in n for n in result.notes)
    lots = recommend(Questionnaire(gaps=("behaviour",), prompt_success=0.7, labelled_rows=50_000,
                                   model=preset_arch("SmolLM2 360M"), hardware=GPU_80))
    assert lots.fine_tune_method == "full" and lots.recipe["learning_rate"] == pytest.approx(2e-5)


def test_nothing_fits_lowers_fine_tuning():
    huge = Questionnaire(gaps=("behaviour",), prompt_success=0.7, labelled_rows=2000, model=preset_arch("Llama-3.1 70B"), hardware=GPU_16)
    result = recommend(huge)
    tune = next(o for o in result.options if o.option == "fine-tune")
    assert result.fine_tune_method is None and any("no fine-tuning method fits" in r for r in tune.reasons)


def test_cpu_recipe_is_small_and_uses_fp32_memory_check():
    result = recommend(Questionnaire(gaps=("behaviour",), prompt_success=0.6, labelled_rows=300,
                                     model=preset_arch("SmolLM2 135M"), hardware=CPU))
    assert result.fine_tune_method == "lora" and result.recipe["max_length"] <= 512
    assert {f.method for f in result.method_fits} == {"full", "lora"}  # no 4-bit on this CPU


def test_questionnaire_validation():
    with pytest.raises(ValueError, match="gaps"):
        Questionnaire(gaps=("vibes",))
    with pytest.raises(ValueError, match="prompt_success"):
        Questionnaire(prompt_success=1.5)
    with pytest.raises(ValueError, match="knowledge_changes"):
        Questionnaire(knowledge_changes="hourly")


# --------------------------------------------------------------------------- metrics


def test_exact_match_normalises():
    assert scorers.exact_match("  The Answer is 42. ", "the answer is 42") == 1.0
    assert scorers.exact_match('"Paris"', "paris") == 1.0
    assert scorers.exact_match("Paris, France", "Paris") == 0.0


def test_json_scores():
    reference = '{"summary": "Charged twice for Quill Notes.", "next_step": "issue_refund", "urgency": "low"}'
    good = 'Here you go:\n```json\n{"summary": "charged twice for quill notes", "next_step": "issue_refund", "urgency": "Low"}\n```'
    assert scorers.json_field_accuracy(good, reference) == 1.0  # fields are read from the object inside the prose
    assert scorers.json_validity(good) == 0.0 and scorers.holds_json_object(good) == 1.0  # but json.loads on the reply fails
    assert scorers.json_validity(good[good.index("```"):]) == 1.0  # one ```json fence alone is valid
    partial = '{"summary": "Charged twice", "next_step": "escalate_to_engineering", "urgency": "low"} trailing words'
    assert scorers.json_field_accuracy(partial, reference) == pytest.approx(1 / 3)
    scores = scorers.json_field_scores(partial, reference, free_text_fields=["summary"])
    assert 0 < scores["summary"] < 1 and scores["urgency"] == 1.0 and scores["next_step"] == 0.0
    assert scorers.json_validity('{"summary": "unterminated') == 0.0 and scorers.json_field_accuracy("no json here", reference) == 0.0
    assert scorers.parse_json_object('{"a": "}{"} and more') == {"a": "}{"}
    with pytest.raises(ValueError, match="JSON object"):
        scorers.json_field_accuracy("{}", "not json")


def test_rouge_and_free_text_detection_and_scorer_choice():
    assert scorers.rouge_l_f1("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert scorers.rouge_l_f1("a b c d", "a c") == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert scorers.rouge_l_f1("", "x") == 0.0
    objects = [{"summary": "Printer jams on every single page", "urgency": "high"},
               {"summary": "Cannot log in since this morning", "urgency": "low"}]
    assert scorers.detect_free_text_fields(objects) == ["summary"]
    assert scorers.choose_scorer(['{"a": 1}', '{"a": 2}'])[0] == "json_field_accuracy"
    assert scorers.choose_scorer(['{"a": 1}', "plain"])[0] == "exact_match"


# --------------------------------------------------------------------------- measure before you decide


def test_split_row_formats():
    chat = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    assert decide.split_row(chat) == ([{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}], "A")
    assert decide.split_row({"prompt": "Q", "completion": "A"}) == ([{"role": "user", "content": "Q"}], "A")
    assert decide.split_row({"instruction": "Do", "input": "this", "output": "done"})[0][0]["content"] == "Do\n\nthis"
    assert decide.split_row({"question": "Q", "answer": {"k": 1}})[1] == '{"k": 1}'
    with pytest.raises(ValueError, match="keys"):
        decide.split_row({"text": "hello"})
    with pytest.raises(ValueError, match="assistant"):
        decide.split_row({"messages": [{"role": "user", "content": "Q"}]})


def test_eval_files_load_through_the_dataset_reader(tmp_path):
    rows = decide.load_eval_rows(ROOT / "assets" / "demo" / "eval.jsonl") if (ROOT / "assets" / "demo" / "eval.jsonl").is_file() else None
    if rows is not None:
        assert rows and all("messages" in r for r in rows)
    data = "\n".join(json.dumps({"prompt": f"2+{i}?", "completion": str(2 + i)}) for i in range(3)).encode()
    uploaded = decide.load_eval_upload("../../sums.jsonl", data)
    assert len(uploaded) == 3 and decide.split_row(uploaded[1])[1] == "3"


@pytest.fixture(scope="module")
def tiny_model(tiny_llama_dir):
    from core.models import ModelSource, load_model

    return load_model(ModelSource("local", str(tiny_llama_dir)), device="cpu", dtype="float32")


def _json_rows(count: int) -> list[dict]:
    system = {"role": "system", "content": "Reply with JSON {\"urgency\": ...}."}
    return [{"messages": [system, {"role": "user", "content": f"Ticket {i}: printer broken"},
                          {"role": "assistant", "content": json.dumps({"urgency": "high" if i % 2 else "low"})}]} for i in range(count)]


def test_prompt_baseline_runs_on_a_tiny_model(tiny_model):
    progress = []
    result = decide.prompt_baseline(tiny_model, _json_rows(6), n=2, shots=(0, 3), max_new_tokens=8, batch_size=1,
                                    on_progress=lambda done, total: progress.append((done, total)))
    assert result.scorer == "json_field_accuracy" and result.n == 2
    assert set(result.scores) == {"0-shot", "3-shot"} and all(0.0 <= v <= 1.0 for v in result.scores.values())
    assert set(result.json_validity) == {"0-shot", "3-shot"} and result.labels["0-shot"] == "zero-shot prompting"
    assert len(result.examples) == 4 and all(isinstance(e["prediction"], str) for e in result.examples)
    scored_prompts = {e["prompt"] for e in result.examples}
    assert scored_prompts == {"Ticket 3: printer broken", "Ticket 4: printer broken"}  # rows 0-2 are the shots
    assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_prompt_baseline_exact_match_and_custom_scorer(tiny_model):
    rows = [{"prompt": f"Say {w}", "completion": w} for w in ("yes", "no", "maybe")]
    result = decide.prompt_baseline(tiny_model, rows, n=8, shots=(0,), max_new_tokens=4)
    assert result.scorer == "exact_match" and result.n == 3 and 0.0 <= result.scores["0-shot"] <= 1.0 and result.json_validity is None
    always = decide.prompt_baseline(tiny_model, rows, n=1, shots=(0, 1), scorer=lambda p, r: 1.0, max_new_tokens=2)
    assert always.scores == {"0-shot": 1.0, "1-shot": 1.0}
    with pytest.raises(ValueError, match="eval row 2"):
        decide.prompt_baseline(tiny_model, [rows[0], {"text": "?"}], n=1)
    with pytest.raises(ValueError, match="unknown scorer"):
        decide.prompt_baseline(tiny_model, rows, n=1, shots=(0,), scorer="bleu")


def test_rag_condition_puts_retrieved_documents_before_the_same_rows(tiny_model, monkeypatch):
    from core import generation
    from core.rag.corpus import Document
    from core.rag.prompt import RAG_INSTRUCTIONS

    seen_prompts = []
    real_generate = generation.greedy_answers

    def spy(model, tokenizer, prompts, **kwargs):  # the real generation, recording what the model was given
        seen_prompts.extend(tokenizer.decode(p) for p in prompts)
        return real_generate(model, tokenizer, prompts, **kwargs)

    monkeypatch.setattr(generation, "greedy_answers", spy)

    rows = [{"question": f"What is code {i}?", "answer": f"C-{i}"} for i in range(5)]
    asked = []

    def retrieve(questions):
        asked.extend(questions)
        return [[Document("d", "Codes", f"The code is C-{q.split()[-1].rstrip('?')}.")] for q in questions]

    parsed = [{"messages": [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}]} for r in rows]
    result = decide.prompt_baseline(tiny_model, parsed, n=3, shots=(0, 2), scorer="contains_answer", max_new_tokens=4,
                                    rag=decide.RagContext(retrieve, "RAG (test)"))
    assert set(result.scores) == {"0-shot", "2-shot", "rag"} and result.labels["rag"] == "RAG (test)"
    assert asked == ["What is code 2?", "What is code 3?", "What is code 4?"]  # the scored rows, not the shots
    for condition in ("0-shot", "2-shot", "rag"):
        assert [e["prompt"] for e in result.examples if e["condition"] == condition] == asked
    assert result.best_prompting()[0] in ("0-shot", "2-shot")
    with_documents = [p for p in seen_prompts if "Documents:" in p]
    assert len(seen_prompts) == 9 and len(with_documents) == 3
    assert all(RAG_INSTRUCTIONS in p and "[1] Codes\nThe code is C-" in p for p in with_documents)


def test_question_answer_files_load_as_eval_rows():
    rows = decide.load_eval_rows(ROOT / "assets" / "handbook" / "questions.jsonl")
    assert (len(rows) == 150
            and decide.split_row(rows[0])[1] == json.loads((ROOT / "assets" / "handbook" / "questions.jsonl").open().readline())["answer"])


def test_measured_baseline_feeds_the_recommendation():
    helped = recommend(Questionnaire(gaps=("knowledge",), labelled_rows=100, measured={"0-shot": 0.05, "3-shot": 0.1, "rag": 0.7}))
    rag = next(o for o in helped.options if o.option == "rag")
    assert helped.choice == "rag" and any("measured" in r and "70%" in r and "10%" in r for r in rag.reasons)
    assert helped.notes[0] == "Measured on your eval rows: 0-shot 5%, 3-shot 10%, rag 70%."
    flat = recommend(Questionnaire(gaps=("knowledge",), labelled_rows=100, measured={"0-shot": 0.3, "rag": 0.3}))
    assert next(o for o in flat.options if o.option == "rag").score < rag.score
    with pytest.raises(ValueError, match="measured"):
        Questionnaire(measured={"rag": 2.0})


@pytest.mark.slow
def test_baseline_job_measures_three_conditions_on_the_handbook(workspace, tiny_llama_dir):
    from core.runs.jobs import read_result

    spec = decide.BaselineSpec(model={"kind": "local", "ref": str(tiny_llama_dir)}, eval_dataset="assets/handbook/questions.jsonl", n=2,
                               shots=[0, 2], scorer="contains_answer", max_new_tokens=6, documents="assets/handbook/docs", rag_k=2)
    run_dir, status = run_in_process(spec)  # the worker's code in this process: the worker process is not what this tests
    assert status.state == "succeeded", status.error
    result = read_result(run_dir)
    assert set(result["scores"]) == {"0-shot", "2-shot", "rag"} and result["n"] == 2 and result["scorer"] == "contains_answer"
    assert "hybrid top-2, 79 chunks" in result["labels"]["rag"]
    rag_rows = [e for e in result["examples"] if e["condition"] == "rag"]
    assert len(rag_rows) == 2 and status.result["scores"] == result["scores"]
    _, bad = run_in_process(decide.BaselineSpec(model={"kind": "local", "ref": str(tiny_llama_dir)}, eval_dataset="missing.jsonl"))
    assert bad.state == "failed"
