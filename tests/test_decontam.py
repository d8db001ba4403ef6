"""Benchmark decontamination: the three published rules, spans, shipped benchmarks, user eval sets."""
from __future__ import annotations

import json
import random

import pytest

from core.data.decontam import (
    MODES,
    Benchmark,
    DecontamConfig,
    alnum_only,
    benchmark_from_rows,
    benchmarks_dir,
    decontaminate,
    load_benchmark_file,
    load_builtin_benchmark,
    sampled_substrings,
)
from core.data.text import row_text, words


def chat(prompt: str, answer: str = "Let me think step by step.") -> dict:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


@pytest.fixture(scope="module")
def gsm8k() -> Benchmark:
    return load_builtin_benchmark("GSM8K")


@pytest.fixture(scope="module")
def humaneval() -> Benchmark:
    return load_builtin_benchmark("HumanEval")


@pytest.fixture(scope="module")
def clean_rows(shared_data) -> list[dict]:
    records = json.loads((shared_data / "alpaca_5000.json").read_text(encoding="utf-8"))
    return [chat((r["instruction"] + "\n\n" + r["input"]).strip(), r["output"]) for r in records[:2000]]


def lightly_edited(question: str, rng: random.Random) -> str:
    """What a scraped copy looks like: a framing sentence, one word changed, punctuation/case noise."""
    tokens = question.split(" ")
    tokens[len(tokens) // 2] = "several"
    text = " ".join(tokens).replace(",", " ,").replace("?", " ??")
    return ("Here is a homework question: " if rng.random() < 0.5 else "Q: ") + (text.lower() if rng.random() < 0.5 else text)


def test_shipped_benchmarks_and_licences():
    folder = benchmarks_dir()
    for name in ("gsm8k_test.jsonl", "humaneval.jsonl.gz", "LICENSE.gsm8k", "LICENSE.humaneval"):
        assert (folder / name).is_file(), name
    assert "MIT" in (folder / "LICENSE.gsm8k").read_text()
    gsm8k, humaneval = load_builtin_benchmark("GSM8K"), load_builtin_benchmark("HumanEval")
    assert len(gsm8k.items) == 1319 and gsm8k.items[0].startswith("Janet")
    assert len(humaneval.items) == 164 and humaneval.item_ids[0] == "HumanEval/0"
    assert "def has_close_elements" in humaneval.items[0]


@pytest.mark.parametrize("mode", ["ngram13", "ngram8_half"])
def test_hidden_gsm8k_questions_are_flagged_and_clean_rows_are_not(mode, gsm8k, clean_rows):
    rng = random.Random(1)
    long_questions = [k for k, q in enumerate(gsm8k.items) if len(words(q)) >= 40][:40]
    rows = list(clean_rows)
    hidden = {}
    for k in long_questions:
        position = rng.randrange(len(rows))
        rows.insert(position, chat(lightly_edited(gsm8k.items[k], rng)))
        hidden = {p + (p >= position): item for p, item in hidden.items()}
        hidden[position] = k
    result = decontaminate(rows, [gsm8k], DecontamConfig(mode=mode))
    report = result.reports[0]
    assert set(report.contaminated_rows) == set(hidden)  # every hidden question, and nothing else
    assert report.rate == pytest.approx(len(hidden) / len(rows))
    for match in report.matches:
        assert match.item == hidden[match.row]
        assert match.item_id == f"GSM8K/{match.item}"
        assert match.spans
    if mode == "ngram8_half":
        assert all(0.5 < m.score <= 1.0 for m in report.matches)
    assert result.rows_to_drop == sorted(hidden)


def test_spans_point_at_the_benchmark_text(gsm8k):
    question = gsm8k.items[5]
    row = chat(f"Please solve:\n\n{question}\n\nThanks!", "42")
    text = row_text(row, "both")
    for mode in MODES:
        result = decontaminate([row], [gsm8k], DecontamConfig(mode=mode))
        spans = result.spans_for_row(0)
        assert spans, mode
        for start, end in spans:
            assert alnum_only(text[start:end]) in alnum_only(question), mode
        if mode != "substring50":  # the n-gram rules mark the whole question
            assert words(text[spans[0][0]:spans[-1][1]]) == words(question)
        assert "Thanks" not in "".join(text[a:b] for a, b in spans)


def test_tulu_rule_needs_more_than_half_of_the_item(gsm8k):
    question = next(q for q in gsm8k.items if len(words(q)) >= 60)
    tokens = question.split(" ")
    partial = " ".join(tokens[: int(len(tokens) * 0.35)])  # 35 % of the item, verbatim
    most = " ".join(tokens[: int(len(tokens) * 0.8)])
    rows = [chat(partial), chat(most)]
    assert decontaminate(rows, [gsm8k], DecontamConfig(mode="ngram13")).rows_to_drop == [0, 1]
    tulu = decontaminate(rows, [gsm8k], DecontamConfig(mode="ngram8_half"))
    assert tulu.rows_to_drop == [1]
    assert 0.7 < tulu.reports[0].matches[0].score < 0.9


def test_gpt4_substring_rule(gsm8k, humaneval, clean_rows):
    question = gsm8k.items[100]
    processed = alnum_only(question)
    samples = sampled_substrings(processed)
    assert len(samples) == 3 and all(len(s) == 50 for s in samples)
    assert samples == sampled_substrings(processed)  # deterministic
    assert sampled_substrings("short") == ["short"]
    assert len(sampled_substrings(processed, samples=0)) == len(processed) - 49

    spaced = " ".join(question.replace(",", " , ").split())  # whitespace and punctuation noise only
    rows = clean_rows[:300] + [chat(spaced), chat(question.upper()), chat(humaneval.items[7])]
    result = decontaminate(rows, [gsm8k, humaneval], DecontamConfig(mode="substring50"))
    # spaces and symbols do not matter; case does (the GPT-4 report keeps characters as they are)
    assert result.reports[0].contaminated_rows == [300]
    assert result.reports[1].contaminated_rows == [302]
    every_window = decontaminate(rows, [gsm8k], DecontamConfig(mode="substring50", substring_samples=0))
    assert every_window.rows_to_drop == [300]


def test_humaneval_prompt_inside_a_row_is_flagged(humaneval, clean_rows):
    row = chat("Finish this code:\n\n" + humaneval.items[12], "    return sorted(x)")
    rows = clean_rows[:200] + [row]
    for mode in MODES:
        result = decontaminate(rows, [humaneval], DecontamConfig(mode=mode))
        assert result.rows_to_drop == [200], mode
        assert result.reports[0].matches[0].item_id == "HumanEval/12"


def test_users_own_eval_file(tmp_path, clean_rows):
    eval_rows = [chat("Summarise the following support ticket about a broken laptop screen and propose the next step for the agent."),
                 chat("Classify the sentiment of this review of a small Italian restaurant near the station: the pasta was cold.")]
    path = tmp_path / "my_eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in eval_rows), encoding="utf-8")
    benchmark = load_benchmark_file(path)
    assert benchmark.name == "my_eval" and len(benchmark.items) == 2
    rows = clean_rows[:100] + [chat("Summarise the following support ticket about a broken laptop screen "
                                    "and propose the next step for the agent.", "Replace it.")]
    result = decontaminate(rows, [benchmark], DecontamConfig(mode="ngram13"))
    assert result.rows_to_drop == [100]
    assert result.reports[0].matches[0].item_id == "my_eval/0"
    assert benchmark_from_rows("x", eval_rows).items == [row_text(r, "prompt") for r in eval_rows]


def test_short_items_are_skipped_and_counted():
    benchmark = Benchmark("tiny", ["yes", "the cat sat on the mat today", "ok then"], ["a", "b", "c"])
    rows = [chat("I think the cat sat on the mat today, yes.")]
    result = decontaminate(rows, [benchmark], DecontamConfig(mode="ngram13"))
    assert result.reports[0].n_items_skipped == 2
    assert result.rows_to_drop == [0]  # a 7-word item shorter than 13 is matched whole


def test_bad_inputs():
    benchmark = Benchmark("b", ["some test item with enough words in it"], ["b/0"])
    with pytest.raises(ValueError, match="empty"):
        decontaminate([], [benchmark])
    with pytest.raises(ValueError, match="no benchmark"):
        decontaminate([chat("x")], [])
    with pytest.raises(ValueError, match="mode must be one of"):
        DecontamConfig(mode="13gram")
    with pytest.raises(ValueError, match="field"):
        DecontamConfig(field="question")
    with pytest.raises(ValueError, match="substring_samples"):
        DecontamConfig(substring_samples=-1)
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_builtin_benchmark("MMLU")
    with pytest.raises(ValueError, match="has no items"):
        Benchmark("empty", [], [])
    # rows without text cannot be contaminated; they are not an error here
    assert decontaminate([chat("   ", "")], [benchmark]).rows_to_drop == []
