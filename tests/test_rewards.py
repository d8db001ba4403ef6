"""Named rewards (core.rewards, issue 28 item 1): each reward on constructed answers and its edge cases, the regex
guards, the python reward's sandbox (opt-in, time limit, per-row errors, a separate process), combine() weights,
the spec round trip, and the Rewards page. No models: the cost is a few child-process start-ups."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import rewards, scorers
from core.evaluate.task import TaskExample, describe_task, score_answer
from core.rewards import REWARDS, RewardError, RewardSpec, combine, make_scorer

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "rewards.py")
TICKET = {"summary": "Printer offline on floor 3", "next_step": "Restart the spooler", "urgency": "high"}
ROW = {"reference": TICKET}
GOOD = '{"summary": "Printer offline on floor 3", "next_step": "Restart the spooler", "urgency": "high"}'


def values(scorer, completions, rows):
    return [r.value for r in scorer.score_batch(completions, rows)]


def test_the_registry_names_and_describes_every_reward():
    assert list(REWARDS) == ["json_valid", "field_match", "field_accuracy", "exact_match", "contains_answer", "rouge_l",
                             "length_penalty", "regex", "python"]
    for reward in REWARDS.values():
        assert reward.title and reward.explanation and reward.check_params(None) == reward.defaults()
    assert [row["name"] for row in rewards.reward_table()] == list(REWARDS)


def test_json_valid_is_the_strict_rule_of_scorers():
    scorer = make_scorer("json_valid")
    answers = [GOOD, f"```json\n{GOOD}\n```", f"Here you go: {GOOD}", "", "[1, 2]", '{"ünïcode": "✓ 日本"}', '{"a": 1']
    assert values(scorer, answers, [ROW] * len(answers)) == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert values(scorer, answers, [ROW] * len(answers)) == [scorers.json_validity(a) for a in answers]


def test_field_match_per_field_reads_fenced_and_embedded_json():
    urgency = make_scorer("field_match", {"field": "urgency"})
    answers = [GOOD, f"```json\n{GOOD}\n```", f"Sure! {GOOD} Anything else?", '{"urgency": "HIGH."}', '{"urgency": "low"}',
               '{"summary": "x"}', "", "no json at all"]
    assert values(urgency, answers, [ROW] * len(answers)) == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    # the reference may be a JSON string, or the last assistant message of a chat row
    chat = {"messages": [{"role": "user", "content": "ticket"}, {"role": "assistant", "content": GOOD}]}
    assert urgency.score(GOOD, {"reference": GOOD}) == urgency.score(GOOD, chat) == 1.0
    assert make_scorer("field_match", {"field": "summary"}).score('{"summary": "Drucker défekt ✓"}',
                                                                  {"reference": {"summary": "Drucker défekt ✓"}}) == 1.0
    free = make_scorer("field_match", {"field": "summary", "free_text": True})
    assert free.score('{"summary": "Printer offline"}', ROW) == pytest.approx(scorers.rouge_l_f1("Printer offline", TICKET["summary"]))


def test_field_match_errors_name_the_missing_field_per_row():
    scorer = make_scorer("field_match", {"field": "owner"})
    results = scorer.score_batch([GOOD, GOOD, GOOD], [ROW, {"reference": "plain text"}, {"prompt": "only a prompt"}])
    assert all(r.value is None for r in results)
    assert "no field 'owner'" in results[0].error and "urgency" in results[0].error
    assert "not a JSON object" in results[1].error
    assert "no reference answer" in results[2].error and "prompt" in results[2].error
    with pytest.raises(ValueError, match="name the JSON field"):
        make_scorer("field_match")


def test_field_accuracy_is_the_forgetting_reports_field_accuracy():
    scorer = make_scorer("field_accuracy", {"free_text_fields": "summary"})
    answers = [GOOD, '{"urgency": "high", "summary": "printer offline"}', "Sorry, I can't.", ""]
    got = values(scorer, answers, [ROW] * 4)
    assert got == [scorers.json_field_accuracy(a, TICKET, ["summary"]) for a in answers]
    assert got[0] == 1.0 and 0 < got[1] < 1 and got[2] == got[3] == 0.0
    assert "empty JSON object" in scorer.score_batch([GOOD], [{"reference": {}}])[0].error


def test_the_forgetting_reports_task_numbers_are_these_rewards():
    """One vocabulary: core.evaluate's per-answer numbers equal the rewards of the same name (field:<f> is field_match)."""
    reference = '{"summary": "Printer offline on floor 3 since the morning", "next_step": "Restart the spooler", "urgency": "high"}'
    setup = describe_task([TaskExample(0, [], [], reference)])
    assert setup.is_json and setup.free_text_fields == ["summary"]
    row = {"reference": reference}
    named = {"json_valid": make_scorer("json_valid"), "exact_match": make_scorer("exact_match"), "rouge_l": make_scorer("rouge_l"),
             "field_accuracy": make_scorer("field_accuracy", {"free_text_fields": "summary"})}
    named |= {f"field:{f}": make_scorer("field_match", {"field": f, "free_text": f == "summary"}) for f in setup.fields}
    for answer in [reference, f"```json\n{reference}\n```", f"Sure: {reference}", '{"urgency": "high", "summary": "printer offline"}',
                   "", "no json"]:
        report = score_answer(answer, reference, setup)
        assert {name: scorer.score(answer, row) for name, scorer in named.items()} == {name: report[name] for name in named}


def test_exact_match_contains_answer_and_rouge_delegate_to_scorers():
    exact, contains, rouge = make_scorer("exact_match"), make_scorer("contains_answer"), make_scorer("rouge_l")
    rows = [{"answer": "Paris"}, {"answer": "the fifth floor"}, {"solution": "Zürich"}, {"answer": "Paris"}]
    answers = ['  "paris." ', "It is on the fifth floor, by the lift.", "Zürich", ""]
    assert values(exact, answers, rows) == [1.0, 0.0, 1.0, 0.0]
    assert values(contains, answers, rows) == [1.0, 1.0, 1.0, 0.0]
    assert values(rouge, answers, rows) == [scorers.rouge_l_f1(a, next(iter(r.values()))) for a, r in zip(answers, rows)]
    named = make_scorer("exact_match", {"reference_field": "label"})
    assert named.score("spam", {"answer": "ham", "label": "spam"}) == 1.0
    assert "no field 'label'" in named.score_batch(["spam"], [{"answer": "spam"}])[0].error
    # TRL's conversational completions: the last message's content is scored
    assert exact.score([{"role": "assistant", "content": "Paris"}], {"answer": "paris"}) == 1.0


def test_length_penalty_is_one_up_to_the_target_then_falls_linearly():
    chars = make_scorer("length_penalty", {"target": 10, "slope": 1.0})
    assert values(chars, ["", "x" * 10, "x" * 15, "x" * 20, "x" * 50], [{}] * 5) == [1.0, 1.0, 0.5, 0.0, 0.0]
    steep = make_scorer("length_penalty", {"target": 10, "slope": 2.0})
    assert steep.score("x" * 12, {}) == pytest.approx(0.6)
    words = make_scorer("length_penalty", {"target": 2, "unit": "words"})
    assert words.score("ünï cödé", {}) == 1.0 and words.score("one two three", {}) == pytest.approx(0.5)
    tokens = make_scorer("length_penalty", {"target": 4, "unit": "tokens"}, count_tokens=lambda text: len(text.split()) * 2)
    assert tokens.score("a b c", {}) == pytest.approx(0.5)  # 6 "tokens" for a target of 4
    with pytest.raises(ValueError, match="tokens need a tokenizer"):
        make_scorer("length_penalty", {"unit": "tokens"})
    with pytest.raises(ValueError, match=r"params.target.*between 1 and 100000"):
        make_scorer("length_penalty", {"target": 0})


def test_regex_matches_and_refuses_a_bad_pattern_naming_it():
    answer = make_scorer("regex", {"pattern": r"Answer: \d+$"})
    assert values(answer, ["Thinking… Answer: 42", "Answer: forty-two", ""], [{}] * 3) == [1.0, 0.0, 0.0]
    whole = make_scorer("regex", {"pattern": r"Answer: \d+", "whole_reply": True, "ignore_case": True})
    assert values(whole, ["answer: 42", "So, Answer: 42"], [{}] * 2) == [1.0, 0.0]
    with pytest.raises(ValueError, match=r"'\(unclosed' is not a valid regular expression"):
        make_scorer("regex", {"pattern": "(unclosed"})
    with pytest.raises(ValueError, match="pattern is empty"):
        make_scorer("regex")


@pytest.mark.parametrize("sandbox", [False, True], ids=["regex-module", "sandbox"])
def test_regex_guards_catastrophic_backtracking_and_long_text(sandbox):
    if not sandbox and not rewards.regex_available():
        pytest.skip("the third-party regex module is not installed")
    scorer = make_scorer("regex", {"pattern": r"(a|aa)+$", "timeout_s": 0.05, "max_chars": 100}, force_sandbox=sandbox)
    start = time.monotonic()
    results = scorer.score_batch(["aaaa", "a" * 60 + "b", "a" * 101], [{}] * 3)
    elapsed = time.monotonic() - start
    assert results[0].value == 1.0
    assert results[1].value is None and ("took over 0.05 s" in results[1].error or "timed out" in results[1].error)
    assert results[2].value is None and "101 characters, over the regex reward's cap of 100" in results[2].error
    # the module's own limit, or the sandbox's start-up allowance plus the per-row limits, with a margin for a busy machine
    assert elapsed < (3.0 if not sandbox else rewards.SANDBOX_STARTUP_S + 0.1 + 5.0), elapsed


def python_scorer(source: str, **params):
    return make_scorer("python", {"source": source, **params}, allow_user_code=True)


def test_python_reward_is_refused_without_the_opt_in():
    with pytest.raises(PermissionError, match="this code may run on my machine"):
        make_scorer("python", {"source": "def reward(completion, row):\n    return 1.0\n"})
    with pytest.raises(ValueError, match="line 1"):
        python_scorer("def reward(completion, row) return 1")
    with pytest.raises(ValueError, match="define a top-level function"):
        python_scorer("def score(completion, row):\n    return 1.0\n")


def test_python_reward_runs_a_batch_in_one_separate_process(monkeypatch):
    monkeypatch.setenv("WB_PARENT_SECRET", "do-not-leak")
    source = ("import os, sys\nSEEN = []\n"
              "def reward(completion, row):\n"
              "    SEEN.append(1)\n"
              "    if completion == 'pid': return float(os.getpid())\n"
              "    if completion == 'env': return float('WB_PARENT_SECRET' in os.environ or 'core' in sys.modules)\n"
              "    if completion == 'count': return float(len(SEEN))\n"
              "    return len(completion) / 10 + row['bonus']\n")
    scorer = python_scorer(source)
    results = scorer.score_batch(["pid", "env", "abc", "count", "ünï"], [{}, {}, {"bonus": 1}, {}, {"bonus": 0}])
    assert [r.error for r in results] == [None] * 5
    child_pid = results[0].value
    assert child_pid != os.getpid()  # a separate process...
    assert results[1].value == 0.0  # ...that sees neither the parent's environment nor its modules
    assert results[2].value == pytest.approx(1.3) and results[4].value == pytest.approx(0.3)
    assert results[3].value == 4.0  # one process for the whole batch: the module state carried over four rows
    assert scorer.score("pid", {}) != child_pid  # a fresh process per batch


def test_python_reward_time_limit_kills_an_infinite_loop():
    scorer = python_scorer("def reward(completion, row):\n    while completion == 'loop':\n        pass\n    return 0.5\n",
                           timeout_s=2.0)
    start = time.monotonic()
    results = scorer.score_batch(["fine", "loop", "after"], [{}] * 3)
    elapsed = time.monotonic() - start
    assert results[0].value == 0.5  # scored before the loop started: kept
    assert results[1].value is None and "timed out" in results[1].error and "2 s limit" in results[1].error
    assert results[2].value is None and "not scored" in results[2].error
    assert elapsed < 2.0 + 3.0, elapsed


def test_python_reward_errors_are_per_row_and_never_raise():
    source = ("import math\n"
              "def reward(completion, row):\n"
              "    if completion == 'nan': return math.nan\n"
              "    if completion == 'inf': return math.inf\n"
              "    if completion == 'text': return 'great'\n"
              "    if completion == 'none': return None\n"
              "    if completion == 'boom': raise KeyError('missing')\n"
              "    if completion == 'memory': return len(bytearray(4 << 30))\n"
              "    return 1\n")
    scorer = python_scorer(source, memory_mb=512)
    results = scorer.score_batch(["nan", "inf", "text", "none", "boom", "memory", "ok"], [{}] * 7)
    errors = [r.error for r in results]
    assert "nan, not a finite number" in errors[0] and "inf, not a finite number" in errors[1]
    assert "str 'great', not a number" in errors[2] and "NoneType" in errors[3]
    assert "KeyError" in errors[4] and "line 7" in errors[4]
    assert "MemoryError" in errors[5]
    assert results[6].value == 1.0 and errors[6] is None
    broken = python_scorer("raise RuntimeError('at import')\ndef reward(completion, row):\n    return 1\n")
    assert all("failed to load: RuntimeError: at import (line 1)" in r.error for r in broken.score_batch(["a", "b"], [{}, {}]))
    with pytest.raises(RewardError, match="not a finite number"):
        scorer.score("nan", {})


def test_combine_weights_and_reports_each_part():
    combined = combine([("json_valid", None, 0.5), ("field_match", {"field": "urgency"}, 2.0),
                        ("field_match", {"field": "summary"}, 1.0), ("length_penalty", {"target": 10_000}, -1.0)])
    assert combined.labels == ["json_valid", "field_match:urgency", "field_match:summary", "length_penalty"]
    good, prose, wrong = combined.score_batch([GOOD, f"Here: {GOOD}", '{"urgency": "low"}'], [ROW] * 3)
    assert good.total == pytest.approx(0.5 + 2.0 + 1.0 - 1.0) and not good.errors
    assert prose.parts == {"json_valid": 0.0, "field_match:urgency": 1.0, "field_match:summary": 1.0, "length_penalty": 1.0}
    assert prose.total == pytest.approx(2.0 + 1.0 - 1.0)
    assert wrong.total == pytest.approx(0.5 - 1.0)
    failed = combined.score(GOOD, {"prompt": "no reference"})
    assert failed.total is None and failed.parts["json_valid"] == 1.0 and "no reference answer" in failed.errors["field_match:urgency"]
    twice = combine([("exact_match", {}, 1.0), ("exact_match", {}, 1.0)])
    assert twice.labels == ["exact_match", "exact_match#2"] and twice.score("a", {"answer": "a"}).total == 2.0
    with pytest.raises(ValueError, match="item 0 .*finite number"):
        combine([("exact_match", {}, math.nan)])
    with pytest.raises(ValueError, match="unknown reward 'bleu'"):
        combine([("bleu", {}, 1.0)])


def test_spec_round_trip_and_errors_name_the_field():
    data = {"rewards": [{"name": "json_valid", "weight": 1}, {"name": "field_match", "params": {"field": "urgency"}, "weight": 2.5},
                        {"name": "regex", "params": {"pattern": "^{"}}], "allow_user_code": False}
    spec = RewardSpec.from_dict(data)
    again = RewardSpec.from_dict(spec.to_dict())
    assert again == spec and spec.to_dict()["rewards"][1] == {"name": "field_match", "weight": 2.5,
                                                              "params": {"field": "urgency", "free_text": False, "reference_field": ""}}
    assert RewardSpec.from_dict(data["rewards"]) == spec  # a bare list is accepted too
    assert spec.build().score(GOOD, ROW).total == pytest.approx(1 + 2.5 + 1)
    bad = [({"rewards": []}, "non-empty list"),
           ({"rewards": [{"name": "bleu"}]}, r"rewards\[0\].name: unknown reward 'bleu'"),
           ({"rewards": [{"name": "json_valid", "weight": "high"}]}, r"rewards\[0\].weight: expected a finite number"),
           ({"rewards": [{"name": "regex", "params": {"patern": "x"}}]}, r"rewards\[0\].params: reward 'regex' has no parameter 'patern'"),
           ({"rewards": [{"name": "length_penalty", "params": {"slope": -1}}]}, r"rewards\[0\].params.slope .*between 0 and 100"),
           ({"rewards": [{"name": "json_valid", "wieght": 1}]}, r"rewards\[0\]: unknown key 'wieght'"),
           ({"rewards": [{"name": "json_valid"}], "allow_user_code": "yes"}, "allow_user_code must be true or false"),
           ({"rewards": [{"name": "json_valid"}], "extra": 1}, "unknown key 'extra'")]
    for payload, message in bad:
        with pytest.raises(ValueError, match=message):
            RewardSpec.from_dict(payload)
    code = RewardSpec.from_dict({"rewards": [{"name": "python", "params": {"source": "def reward(c, r):\n    return 1\n"}}]})
    with pytest.raises(PermissionError):
        code.build()  # the spec carries the opt-in; without it the user's code is refused at build time


def test_trl_reward_functions_score_grpo_batches_from_the_dataset_columns():
    """Called the way TRL's GRPOTrainer calls a reward function: keyword lists, conversational completions, context."""
    spec = RewardSpec.from_dict([{"name": "json_valid", "weight": 0.5}, {"name": "field_match", "params": {"field": "urgency"}}])
    funcs, weights = rewards.trl_reward_functions(spec)
    assert [f.__name__ for f in funcs] == ["json_valid", "field_match:urgency"] and weights == [0.5, 1.0]
    extra, metrics = {}, {}
    completions = [[{"role": "assistant", "content": GOOD}], [{"role": "assistant", "content": 'Sure: {"urgency": "high"}'}],
                   [{"role": "assistant", "content": GOOD}]]
    kwargs = {"prompts": [[{"role": "user", "content": "ticket"}]] * 3, "completions": completions, "completion_ids": [[1]] * 3,
              "reference": [TICKET, TICKET, {"summary": "no urgency here"}], "trainer_state": object(),
              "log_extra": extra.__setitem__, "log_metric": metrics.__setitem__}
    assert funcs[0](**kwargs) == [1.0, 0.0, 1.0]
    assert funcs[1](**kwargs) == [1.0, 1.0, None]  # TRL reads None as NaN: left out of the weighted sum
    assert "no field 'urgency'" in extra["field_match:urgency error"][2] and extra["field_match:urgency error"][0] == ""
    assert metrics == {"reward_errors/json_valid": 0.0, "reward_errors/field_match:urgency": pytest.approx(1 / 3)}


def page() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def test_rewards_page_scores_and_blocks_user_code_until_ticked():
    at = page()
    assert at.title[0].value == "🎯 Rewards"
    assert at.selectbox(key="rw_name").options[0].startswith("JSON valid (strict)")
    assert [m.value for m in at.metric] == ["1.000"]  # the example reply is one JSON object
    at.text_area(key="rw_completion").set_value('Here it is: {"urgency": "low"}').run()
    assert [m.value for m in at.metric] == ["0.000"]
    at.selectbox(key="rw_name").set_value("field_match").run()
    assert at.text_input(key="rw_field_match_field").value == "urgency"
    assert [m.value for m in at.metric] == ["0.000"]  # low vs high
    at.text_input(key="rw_field_match_field").set_value("owner").run()
    assert not at.metric and any("no field 'owner'" in e.value for e in at.error)
    at.text_area(key="rw_row").set_value("{not json").run()
    assert any("not valid JSON: line 1 column 2" in e.value for e in at.error)
    at.selectbox(key="rw_name").set_value("regex").run()
    at.text_input(key="rw_regex_pattern").set_value("(oops").run()
    assert any("is not a valid regular expression" in e.value for e in at.error)

    at.text_area(key="rw_row").set_value('{"reference": {"urgency": "low"}}')
    at.selectbox(key="rw_name").set_value("python").run()
    assert not at.exception, at.exception
    assert not at.metric and not [b for b in at.button if b.key == "rw_run"]  # nothing can run before the tick
    assert any("only after you tick" in i.value for i in at.info)
    at.checkbox(key="rw_allow").check().run()
    assert not at.metric  # ticked, but it runs on the button
    at.button(key="rw_run").click().run()
    assert not at.exception, at.exception
    assert [m.value for m in at.metric] == ["1.000"]  # the template: the reply mentions the reference's urgency
