"""Response audit: each rule fires on the rows built to break it, and on no clean row."""
from __future__ import annotations

import json
import random

import pytest

from core.data.audit import RULES, AuditConfig, AuditResult, audit_rows


def chat(prompt: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


TOPICS = ["rivers", "volcanoes", "bread", "bicycles", "owls", "glaciers", "tea", "comets", "bridges", "honey bees",
          "lighthouses", "coral reefs", "windmills", "pianos", "deserts", "maple trees", "submarines", "kites", "salt", "clocks",
          "penguins", "canals", "printing presses", "telescopes"]


def clean_rows() -> list[dict]:
    """Varied, well-formed English answers of ordinary length."""
    rng = random.Random(3)
    rows = []
    for topic in TOPICS:
        n = rng.randint(1, 6)
        sentences = [f"Fact {i + 1} about {topic} is worth knowing, and it explains a lot about how {topic} behave." for i in range(n)]
        rows.append(chat(f"Tell me something interesting about {topic}.", " ".join(sentences)))
    rows.append(chat("Write a Python function that doubles a number.",
                     "Here is a small function:\n```python\ndef double(x):\n    \"\"\"Return twice x.\"\"\"\n"
                     "    return 2 * x\n```\nCall it as double(21) to get 42."))
    rows.append(chat("List three colours.", "- red, the colour of fire and ripe tomatoes\n- green, the colour of grass in spring\n"
                     "- blue, the colour of a clear sky"))
    rows.append(chat("Translate 'good morning' into French.", "Bonjour, j'espère que vous passez une excellente matinée aujourd'hui."))
    return rows


BROKEN = {
    "empty_answer": chat("Explain how tides work in a few sentences.", "."),
    "truncated": chat("Describe the water cycle.",
                      "Water evaporates from the oceans, rises into the atmosphere, cools into clouds, and then"),
    "refusal": chat("Summarise the plot of Hamlet.", "As an AI language model, I cannot summarise copyrighted works for you."),
    "repeats_prompt": chat("Rewrite this sentence: the quick brown fox jumps over the lazy dog near the river.",
                           "The quick brown fox jumps over the lazy dog near the river."),
    "language_mismatch": chat("What is the capital city of Germany and what is it famous for?",
                              "Die Hauptstadt von Deutschland ist Berlin, bekannt für ihre Geschichte, Museen und das Brandenburger Tor."),
    "length_outlier": chat("Tell me about sand.", " ".join(["Sand is made of tiny grains of rock and minerals worn down over time."] * 60)),
}


@pytest.mark.parametrize("rule", sorted(BROKEN))
def test_each_rule_fires_on_its_row_and_on_no_clean_row(rule):
    rows = clean_rows() + [BROKEN[rule]]
    result = audit_rows(rows)
    broken = len(rows) - 1
    assert rule in {f.rule for f in result.flags.get(broken, [])}, result.flags
    assert result.flagged_rows == [broken], {k: v for k, v in result.flags.items() if k != broken}
    assert result.counts == {rule: 1} | ({"length_outlier": 1} if rule == "empty_answer" else {}) or result.counts[rule] == 1


def test_truncation_reasons():
    rows = clean_rows()
    rows += [chat("Show me a loop.", "Here it is:\n```python\nfor i in range(3):\n    print(i)"),
             chat("Give a tuple.", "The pair is (1, 2 and that is the end of it for now"),
             chat("Describe autumn in one sentence.",
                  "Autumn is the season when the leaves turn red and gold and fall from the trees, the")]
    result = audit_rows(rows)
    details = {row: [f.detail for f in flags if f.rule == "truncated"] for row, flags in result.flags.items()}
    n = len(clean_rows())
    assert details[n] == ["a code fence is left open"]
    assert details[n + 1] == ["1 unclosed '('"]
    assert details[n + 2] == ["ends on 'the'"]


def test_invalid_json_only_in_a_json_shaped_set():
    answers = [json.dumps({"summary": f"ticket {i}", "urgency": "low"}) for i in range(12)]
    rows = [chat(f"Ticket {i}: my order is late.", a) for i, a in enumerate(answers)]
    rows.append(chat("Ticket 12: refund please.", '{"summary": "refund", "urgency": '))
    rows.append(chat("Ticket 13: fenced.", '```json\n{"summary": "fenced", "urgency": "high"}\n```'))
    result = audit_rows(rows)
    assert result.json_shaped
    assert result.rows_flagged_by("invalid_json") == [12]
    assert "invalid_json" not in audit_rows(clean_rows() + [chat("Say a brace.", "{ is a brace")]).counts


def test_high_loss_outliers_come_from_the_answer_loss():
    rows = clean_rows()
    losses = [1.0 + 0.05 * (k % 5) for k in range(len(rows))]
    losses[4] = 9.5
    losses[7] = None  # a row the job could not score
    result = audit_rows(rows, losses=losses)
    assert result.rows_flagged_by("high_loss") == [4]
    assert "loss 9.50 vs median" in result.flags[4][0].detail
    with pytest.raises(ValueError, match="answer losses for"):
        audit_rows(rows, losses=losses[:-1])


def test_result_round_trips_and_config_is_checked():
    result = audit_rows(clean_rows() + list(BROKEN.values()))
    again = AuditResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.flags == result.flags and again.counts == result.counts
    assert set(result.counts) <= set(RULES)
    with pytest.raises(ValueError, match="repeat_containment"):
        AuditConfig(repeat_containment=0)
    with pytest.raises(ValueError, match="empty"):
        audit_rows([])


def test_tool_call_answers_are_audited_as_their_call_text():
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    row = {"messages": [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": "", "tool_calls": [call]},
                        {"role": "tool", "content": "21"},
                        {"role": "assistant", "content": "It is 21 °C in Paris today, sunny and calm."}]}
    result = audit_rows(clean_rows() + [row])
    assert len(clean_rows()) not in result.flags


def test_real_alpaca_rows_are_mostly_clean(shared_data):
    """On the 5,000 real Alpaca rows the rules flag few rows (the empty answers, single digits, rewrites that
    repeat their input, a few cut-off lines): a review list, not half the set."""
    records = json.loads((shared_data / "alpaca_5000.json").read_text(encoding="utf-8"))
    rows = [chat((r["instruction"] + "\n\n" + r["input"]).strip(), r["output"]) for r in records]
    result = audit_rows(rows)
    assert len(result.flagged_rows) < 0.03 * len(rows), result.counts
    empty = [k for k, r in enumerate(records) if not r["output"].strip()]
    assert set(empty) <= set(result.rows_flagged_by("empty_answer"))
    assert "language_mismatch" not in result.counts and "refusal" not in result.counts
