"""The pairwise judge (issue 28 item 3): strict verdict parsing, the both-orders rule and position bias on constructed
verdicts, Cohen's kappa and Kendall's tau against hand-computed values, human votes matched to judged pairs, the judge
job through the worker on the tiny model (twice: the second run with votes on its pairs), the forgetting report's win
rate over base, and the Evaluate page's Judge section."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from inprocess import run_in_process
from jobs_inline import jobs_inline_fixture  # noqa: F401 - a fixture
from streamlit.testing.v1 import AppTest

from conftest import ROOT
from core import runs
from core.evaluate import judge as judging
from core.evaluate.judge import PairVerdict, agreement, cohen_kappa, combine_orders, kendall_tau, parse_verdict, summarise
from core.evaluate.judge_job import JudgeSpec


def test_parse_verdict_is_strict():
    for reply, verdict in (("A", "A"), ("b", "B"), ("Tie", "tie"), (" [[A]] ", "A"), ("**B**.", "B"), ("Verdict: tie", "tie"),
                           ("Answer: [[B]]\nbecause it is shorter", "B"), ('"A"', "A"), ("\n\nA\n", "A")):
        assert parse_verdict(reply) == verdict, reply
    for reply in ("", "A is better", "Both", "A or B", "AB", "The answer is A", "Neither", "tie?", "C", "You are a strict judge"):
        assert parse_verdict(reply) is None, reply


def test_both_orders_rule_and_position_bias_on_constructed_verdicts():
    # (what the judge said with answer_a first, what it said with answer_b first), in the slots it was shown
    orders = [("A", "B")] * 3 + [("B", "A")] + [("A", "A")] * 2 + [("B", "B")] + [("tie", "tie")] + [(None, "A")] + [("A", "tie")]
    verdicts = [combine_orders(first, second) for first, second in orders]
    assert [v.verdict for v in verdicts] == ["A"] * 3 + ["B"] + ["tie"] * 4 + [None] + ["tie"]
    assert [v.follows_position for v in verdicts] == [False] * 4 + [True] * 3 + [False, None, False]
    s = summarise(verdicts, resamples=200)
    assert (s.n_pairs, s.wins, s.losses, s.ties, s.unparsed, s.unparsed_replies) == (10, 3, 1, 5, 1, 1)
    assert s.inconsistent == 4  # A/A twice, B/B, A/tie: the orders disagreed; tie/tie is a consistent tie
    assert s.win_rate["value"] == pytest.approx((3 + 5 / 2) / 9) and s.win_rate["n"] == 9
    assert s.win_rate["low"] <= s.win_rate["value"] <= s.win_rate["high"]
    assert s.both_parsed == 9 and s.position_bias == pytest.approx(3 / 9)
    assert s.first_slot_rate == pytest.approx(10 / 16)  # 10 of the 16 A / B replies named the answer shown first
    assert any("not exactly A, B or tie" in note for note in s.notes)
    assert summarise([combine_orders("A", "A")] * 2, resamples=0).position_bias == 1.0


def test_judge_pairs_shows_each_pair_in_both_orders(monkeypatch):
    """judge_pairs asks every pair A-first then B-first and maps the second verdict back: a judge that reads the answers
    is consistent, one that always says "A" is all position (ties, bias 1)."""
    asked = []

    def reads_answers(judge_model, conversations, **kwargs):
        asked.extend(conversations)
        out = []
        for messages in conversations:
            text = messages[0]["content"]
            out.append("A" if text.index("good") < text.index("bad") else "B")
        return out

    monkeypatch.setattr(judging, "ask", reads_answers)
    pairs = [("q1", "good {answer_b}", "bad"), ("q2", "bad", "good"), ("q3", "good", "bad")]
    verdicts = judging.judge_pairs(None, pairs)
    assert [v.verdict for v in verdicts] == ["A", "B", "A"] and all(v.consistent for v in verdicts)
    assert len(asked) == 6 and "Answer A:\nbad" in asked[3][0]["content"]  # pair 1 again, its answer_b shown first
    assert "good {answer_b}" in asked[0][0]["content"]  # a slot inside an answer stays text
    assert summarise(verdicts, resamples=0).position_bias == 0.0

    monkeypatch.setattr(judging, "ask", lambda judge_model, conversations, **kwargs: ["A"] * len(conversations))
    first_always = judging.judge_pairs(None, pairs)
    assert [v.verdict for v in first_always] == ["tie"] * 3
    assert summarise(first_always, resamples=0).position_bias == 1.0
    assert judging.judge_pair(None, "q", "x", "y").verdict == "tie"


def test_rubric_needs_its_slots():
    with pytest.raises(ValueError, match=r"missing \{answer_b\}"):
        judging.judge_messages("q", "a", "b", "Request {prompt}, first {answer_a}. Say A or B.")
    assert all(slot in judging.DEFAULT_RUBRIC for slot in judging.RUBRIC_SLOTS)
    with pytest.raises(ValueError, match="rubric"):
        JudgeSpec(rubric="no slots here")


def test_cohen_kappa_and_kendall_tau_against_hand_computed_values():
    judge, human = ["A", "A", "B", "tie", "A", "B"], ["A", "B", "B", "tie", "A", "A"]
    # p_o = 4/6; p_e = (3*3 + 2*2 + 1*1) / 36 = 14/36; kappa = (24 - 14) / (36 - 14) = 10/22
    assert cohen_kappa(judge, human) == pytest.approx(5 / 11)
    assert cohen_kappa(["A"] * 3, ["A"] * 3) is None  # chance agreement 1: undefined
    assert cohen_kappa(["A", "B"], ["B", "A"]) == pytest.approx(-1.0)
    # one discordant pair (2, 3) of six: (5 - 1) / 6
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(2 / 3)
    assert kendall_tau([1, 2], [1, 1]) is None

    rows = [  # p > q, p > r, q > r for the judge; q > p, p > r, q > r for the people
        {"model_a": "p", "model_b": "q", "judge": "A", "human": "B"},
        {"model_a": "p", "model_b": "r", "judge": "A", "human": "A"},
        {"model_a": "q", "model_b": "r", "judge": "A", "human": "A"},
        {"model_a": "q", "model_b": "r", "judge": None, "human": "A"},  # unparsed: left out
    ]
    result = agreement(rows)
    assert result["n_pairs"] == 3 and result["raw_agreement"] == pytest.approx(2 / 3)
    assert result["kappa"] == pytest.approx(0.0)  # p_o = 2/3, p_e = 1 * 2/3
    assert result["judge_strengths"] == {"p": 1.0, "q": 0.5, "r": 0.0} and result["human_strengths"] == {"p": 0.5, "q": 1.0, "r": 0.0}
    assert result["kendall_tau"] == pytest.approx(1 / 3)  # (p, q) discordant, (p, r) and (q, r) concordant
    assert result["confusion"]["judge A / human B"] == 1


def test_arena_votes_match_judged_pairs_in_either_order(tmp_path):
    folder = tmp_path / "arena-votes"
    folder.mkdir()
    (folder / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in (
        {"prompt": "Say hi", "chosen": "hi", "rejected": "hello there", "chosen_model": "base", "rejected_model": "tuned"},
        {"prompt": [{"role": "user", "content": "Add  1+1"}], "chosen": [{"role": "assistant", "content": "2"}],
         "rejected": [{"role": "assistant", "content": "3"}], "chosen_model": "tuned", "rejected_model": "base"},
    )) + "\n")
    (folder / "ties.jsonl").write_text(json.dumps({"prompt": "Name a colour", "answer_a": "red", "answer_b": "blue", "vote": "both_bad",
                                                   "model_a": "base", "model_b": "tuned"}) + "\n")
    (folder / "manifest.json").write_text("{}")
    votes = judging.read_votes(folder)
    assert len(votes) == 3 and {v["human"] for v in votes} == {"A", "tie"}
    rows = [{"prompt_key": judging.prompt_key("Say hi"), "answer_a": "hello there", "answer_b": "hi", "model_a": "tuned", "model_b": "base",
             "judge": "B"},
            {"prompt_key": judging.prompt_key([{"role": "system", "content": "s"}, {"role": "user", "content": "Add 1+1"}]),
             "answer_a": "2", "answer_b": "3", "model_a": "tuned", "model_b": "base", "judge": "tie"},
            {"prompt_key": "Name a colour", "answer_a": "red", "answer_b": "green", "model_a": "tuned", "model_b": "base", "judge": "A"}]
    matched = judging.match_votes(rows, votes)
    assert [(m["prompt_key"], m["human"]) for m in matched] == [("Say hi", "B"), ("Add 1+1", "A")]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl line 2"):
        judging.read_votes(tmp_path / "bad.jsonl")


def test_votes_written_by_the_arena_are_read_and_matched(workspace):
    """The Chat arena's own vote folder (core.arena.record_vote: data.jsonl pairs, ties.jsonl, both_bad.jsonl)."""
    from core import arena

    folder = arena.arena_folder("judge-test")
    prompt = arena.round_messages("Name a fruit.", "Be brief.")
    for seed, answers, vote in ((1, {"A": "Apple.", "B": "Carrot."}, "A"), (2, {"A": "Pear", "B": "Plum"}, "tie"),
                                (3, {"A": "x", "B": "y"}, "both_bad")):
        arena.record_vote(folder, arena.new_round(prompt, ["tuned", "base"], seed=seed), answers, vote)
    votes = judging.read_votes(folder)
    assert sorted(v["human"] for v in votes) == ["A", "tie", "tie"] and {v["prompt_key"] for v in votes} == {"Name a fruit."}
    rows = [{"prompt_key": "Name a fruit.", "answer_a": "Carrot.", "answer_b": "Apple.", "model_a": "m", "model_b": "n", "judge": "A"},
            {"prompt_key": "Name a fruit.", "answer_a": "Plum", "answer_b": "Pear", "model_a": "m", "model_b": "n", "judge": "tie"}]
    assert [m["human"] for m in judging.match_votes(rows, votes)] == ["B", "tie"]


def _eval_prompts(path: Path) -> Path:
    rows = [[{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "Apple."}],
            [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]]
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows))
    return path


def _judge_spec(tiny_llama_dir: Path, eval_file: Path, **changes) -> dict:
    tiny = {"kind": "local", "ref": str(tiny_llama_dir)}
    return {"kind": "judge", "model": tiny, "baseline": tiny, "baseline_temperature": 1.0, "judge": tiny, "eval_dataset": str(eval_file),
            "samples": 0, "max_new_tokens": 3, "verdict_tokens": 2, "bootstrap_samples": 50, **changes}


def test_judge_job_through_the_worker_writes_its_result_and_agreement(workspace, tiny_llama_dir, tmp_path):
    spec = _judge_spec(tiny_llama_dir, _eval_prompts(tmp_path / "prompts.jsonl"))
    run_dir, status = run_in_process(spec)
    assert status.state == "succeeded", (status.error, runs.log_tail(run_dir))
    result = runs.read_result(run_dir, "judge")
    assert result["n_pairs"] == 2 and result["wins"] + result["losses"] + result["ties"] + result["unparsed"] == 2
    assert result["rubric"] == judging.DEFAULT_RUBRIC and result["rubric_is_default"]
    assert result["model"].endswith("(T=0)") and result["baseline"].endswith("(T=1)")
    assert [p["prompt"] for p in result["pairs"]] == ["Name a fruit.", "What is 2 + 2?"]
    for pair in result["pairs"]:
        assert pair["verdict"] == judging.combine_orders(parse_verdict(pair["first_reply"]), parse_verdict(pair["second_reply"])).verdict
    assert result["agreement"] is None and status.result["pairs"] == 2

    # a person voted on the same two pairs (the arena's pair file): the second run matches them
    votes = tmp_path / "votes.jsonl"
    votes.write_text("".join(json.dumps({"prompt": p["prompt"], "chosen": p["answer_b"], "rejected": p["answer_a"], "chosen_model": "y",
                                         "rejected_model": "x"}) + "\n" for p in result["pairs"]))
    run_dir, status = run_in_process({**spec, "human_votes": str(votes), "rubric": "Q: {prompt}\n1: {answer_a}\n2: {answer_b}\nA or B?"})
    assert status.state == "succeeded", (status.error, runs.log_tail(run_dir))
    again = runs.read_result(run_dir, "judge")
    assert again["human_votes"] == {"file": str(votes), "votes": 2, "matched_pairs": 2}
    assert [p["answer_a"] for p in again["pairs"]] == [p["answer_a"] for p in result["pairs"]]  # seeded: the same answers
    assert again["agreement"]["n_pairs"] == sum(p["verdict"] is not None for p in again["pairs"])
    assert not again["rubric_is_default"] and again["rubric"].startswith("Q: {prompt}")


def test_judge_spec_refuses_what_it_cannot_run(tmp_path):
    with pytest.raises(ValueError, match="eval_dataset: file not found"):
        JudgeSpec(eval_dataset=str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="llama.cpp runs a GGUF"):
        JudgeSpec(judge={"kind": "local", "ref": "/some/folder"}, judge_runtime="llama.cpp")
    with pytest.raises(ValueError, match="judge_runtime"):
        JudgeSpec(judge_runtime="onnx")
    with pytest.raises(ValueError, match="human_votes: not found"):
        JudgeSpec(human_votes=str(tmp_path / "nope"))


def test_forgetting_report_adds_win_rate_over_base(workspace, tiny_llama_dir, tmp_path):
    from test_evaluate import make_adapter, tiny_spec

    from core.evaluate.report import render_markdown

    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter", random_weights=True)
    spec = tiny_spec(tiny_llama_dir, adapter, task_samples=2, general_samples=2, mc_samples=2, max_new_tokens=3, bootstrap_samples=50,
                     judge={"kind": "local", "ref": str(tiny_llama_dir)})
    run_dir, status = run_in_process(spec)
    assert status.state == "succeeded", (status.error, runs.log_tail(run_dir))
    report = runs.read_result(run_dir, "evaluate")
    judged = report["judge"]["variants"]["fine-tuned"]
    assert judged["n_pairs"] == 2 and len(judged["verdicts"]) == 2
    assert judged["wins"] + judged["losses"] + judged["ties"] + judged["unparsed"] == 2
    assert any(note.startswith("win rate of fine-tuned over base") for note in report["notes"])
    assert "win rate of fine-tuned over base" in render_markdown(report)


PAGE = str(ROOT / "app_pages" / "evaluate.py")


def test_evaluate_page_judge_section_starts_a_run_and_shows_its_result(workspace, tiny_llama_dir, tmp_path, jobs_inline):
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["active_model"] = {"kind": "local", "ref": str(tiny_llama_dir)}
    at.run()
    assert not at.exception, at.exception
    assert any(s.value.startswith("⚖ Judge") for s in at.subheader)
    assert at.text_area(key="judge_rubric").value == judging.DEFAULT_RUBRIC
    at.text_input(key="judge_eval_dataset").set_value(str(_eval_prompts(tmp_path / "prompts.jsonl")))
    for name, value in (("samples", 2), ("max_new_tokens", 3), ("verdict_tokens", 2), ("baseline_temperature", 1.0)):
        at.number_input(key=f"judge_{name}").set_value(value)
    at.text_area(key="judge_rubric").set_value("Q {prompt}\nFirst {answer_a}\nSecond {answer_b}\nA, B or tie?")
    assert any("First judge job" in c.value for c in at.caption)  # no measurement yet: the estimate says so
    at.button(key="judge_launch").click()
    at.run(timeout=300)  # the judge job runs in this click (jobs_inline)
    assert not at.exception, at.exception
    (run,) = runs.list_runs("judge")
    assert run.spec["judge"] == {"kind": "local", "ref": str(tiny_llama_dir)} and run.spec["rubric"].startswith("Q {prompt}")
    status = runs.wait(run.path, timeout=300)
    assert status.state == "succeeded", (status.error, runs.log_tail(run.path))

    fresh = AppTest.from_file(PAGE, default_timeout=120)
    fresh.session_state["active_model"] = {"kind": "local", "ref": str(tiny_llama_dir)}
    fresh.session_state["judge_run"] = str(run.path)
    fresh.run()
    assert not fresh.exception, fresh.exception
    labels = [m.label for m in fresh.metric]
    assert any(label.startswith("Win rate of") for label in labels) and "Position bias" in labels and "Unparsed" in labels
    assert any("X shown first" in str(df.value.columns.tolist()) for df in fresh.dataframe)
    assert any("from 1 finished judge run" in c.value for c in fresh.caption)  # the finished run is the next one's estimate


def test_pair_verdict_as_dict_round_trips_its_properties():
    verdict = PairVerdict("tie", "A", "A", "A", "A")
    assert verdict.as_dict() == {"verdict": "tie", "first": "A", "second": "A", "first_reply": "A", "second_reply": "A",
                                 "consistent": False, "follows_position": True}
