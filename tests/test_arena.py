"""The blind arena (issue 28 item 2): the vote store under concurrent voters and a restart, the files a vote lands in,
the manifest, the pairs read back as a DPO dataset, the standings, the logits check of which model answered, and the
Chat page's blind order, reveal and written vote."""
from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import ROOT
from core import arena
from core.arena import Round, read_votes, record_vote

MODELS = ("base-model", "tuned-model")


def _round(i: int, *, seed: int | None = None) -> Round:
    prompt = arena.round_messages(f"Question {i}: what is {i} + {i}?", "Answer briefly.")
    return Round(f"round-{i:04d}", i if seed is None else seed, MODELS, tuple(prompt))


def _answers(i: int) -> dict:
    return {"A": f"answer A to {i}", "B": f"answer B to {i}"}


def _vote_of(i: int) -> str:
    return arena.VOTES[i % 4]


def _voter(folder: str, ids: list[int]) -> None:
    for i in ids:
        record_vote(folder, _round(i), _answers(i), _vote_of(i))


def test_concurrent_voters_and_a_restart_lose_and_duplicate_nothing(tmp_path):
    folder = tmp_path / "arena-race"
    context = multiprocessing.get_context("fork")
    # two processes, 50 votes each, the last 10 of each also cast by the other (a double click from a second session)
    first, second = list(range(0, 50)), list(range(50, 100))
    workers = [context.Process(target=_voter, args=(str(folder), first + second[:10])),
               context.Process(target=_voter, args=(str(folder), second + first[-10:]))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    rows = read_votes(folder)
    assert sorted(r["vote_id"] for r in rows) == [f"round-{i:04d}" for i in range(100)], "every vote once"

    # a restart: a new process re-sends every vote (a page rerun after an app restart), and one writer died mid-line
    with open(folder / arena.PAIRS_FILE, "a", encoding="utf-8") as handle:
        handle.write('{"vote_id": "torn", "prompt": [{"role": "us')
    restarted = context.Process(target=_voter, args=(str(folder), list(range(100))))
    restarted.start()
    restarted.join(120)
    assert restarted.exitcode == 0
    again = read_votes(folder)
    assert sorted(r["vote_id"] for r in again) == [f"round-{i:04d}" for i in range(100)], "nothing duplicated, the torn line gone"
    assert (folder / arena.PAIRS_FILE).read_bytes().endswith(b"\n")

    # each vote in its own file: A / B pairs, ties and both-bad apart
    for name, votes in ((arena.PAIRS_FILE, {"A", "B"}), (arena.TIES_FILE, {"tie"}), (arena.BOTH_BAD_FILE, {"both_bad"})):
        in_file = [json.loads(line) for line in (folder / name).read_text().splitlines()]
        assert {r["vote"] for r in in_file} == votes and len(in_file) == 25 * len(votes), name
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["counts"] == {"pairs": 50, "ties": 25, "both_bad": 25} and manifest["votes"] == 100
    assert manifest["models"] == sorted(MODELS) and manifest["created"] <= manifest["updated"]
    assert not list(folder.glob(".manifest.json.*")), "no temp file left behind"


def test_a_vote_names_the_model_behind_each_answer_and_a_second_click_is_the_same_vote(tmp_path):
    rounds = [_round(i) for i in range(40)]
    assert {r.order for r in rounds} == {(0, 1), (1, 0)}, "the seed decides which variant shows as A"
    rnd = next(r for r in rounds if r.order == (1, 0))
    assert _round(int(rnd.round_id[-4:])).order == rnd.order == Round.from_dict(rnd.as_dict()).order, "the order is the seed's"
    answers = {"A": "the tuned answer", "B": "the base answer"}
    first = record_vote(tmp_path, rnd, answers, "A")
    assert not first.duplicate and first.row["chosen_model"] == "tuned-model" == rnd.model_of("A")
    assert first.row["rejected_model"] == "base-model" and first.row["chosen"][0]["content"] == "the tuned answer"
    again = record_vote(tmp_path, rnd, answers, "B")
    assert again.duplicate and again.row["vote"] == "A" and len(read_votes(tmp_path)) == 1
    odd = record_vote(tmp_path, _round(9), {"A": "line\u2028separator", "B": "next\x85line"}, "B")
    assert read_votes(tmp_path)[-1] == odd.row, "an answer with Unicode line separators stays one JSON line"
    tie = record_vote(tmp_path, _round(7), _answers(7), "tie")
    assert tie.file.name == arena.TIES_FILE and {tie.row["model_a"], tie.row["model_b"]} == set(MODELS) and "chosen" not in tie.row
    for same in ({"A": "same text", "B": " same text"}, {"A": "", "B": "text"}):  # DPO errors: refused where they are voted
        with pytest.raises(arena.ArenaError, match="vote Tie or Both bad"):
            record_vote(tmp_path, _round(10), same, "A")
    assert not record_vote(tmp_path, _round(10), {"A": "same", "B": "same"}, "tie").duplicate, "a tie of identical answers is fine"
    with pytest.raises(arena.ArenaError, match="vote must be one of"):
        record_vote(tmp_path, _round(8), _answers(8), "C")
    with pytest.raises(arena.ArenaError, match="prompt"):
        arena.round_messages("   ")


def test_the_pairs_load_back_as_a_dpo_dataset(workspace):
    from core.data.preference import check_preferences, load_any_dataset
    from core.train.spec import TrainSpec

    folder = arena.arena_folder("demo")
    for i in range(6):
        record_vote(folder, _round(i), _answers(i), ("A", "B", "tie")[i % 3])
    assert arena.list_arenas() == ["demo"]
    loaded = load_any_dataset(folder)
    assert loaded.detected_format == "preference" and loaded.report.n_valid == 4 and loaded.report.n_invalid == 0
    row = loaded.rows[0]
    assert row["prompt"][0] == {"role": "system", "content": "Answer briefly."} and row["chosen"][0]["role"] == "assistant"
    pairs = check_preferences(loaded.rows)
    assert pairs.n_pairs == 4 and not pairs.identical and not pairs.empty and not pairs.prompt_mismatch
    spec = TrainSpec(objective="dpo", dataset=str(folder), max_steps=1)  # the spec's own format check accepts it
    assert spec.dataset == str(folder)
    from core.train.live import dataset_choices

    assert dataset_choices()["Workspace: arena-demo"] == str(folder), "offered on the Train page"


def test_standings_order_win_rates_and_intervals():
    def votes(winner: str, loser: str, n: int) -> list[dict]:
        return [{"vote": "A", "chosen_model": winner, "rejected_model": loser}] * n

    rows = votes("x", "y", 8) + votes("y", "x", 2) + votes("y", "z", 8) + votes("z", "y", 2) + votes("x", "z", 9) + votes("z", "x", 1)
    rows += [{"vote": "tie", "model_a": "x", "model_b": "y"}, {"vote": "both_bad", "model_a": "z", "model_b": "x"}]
    rows += [{"vote": "A", "chosen_model": "x", "rejected_model": "x"}]  # a model against itself: left out
    table = arena.standings(rows, resamples=200)
    assert [r["model"] for r in table] == ["x", "y", "z"]
    x = table[0]
    assert (x["games"], x["wins"], x["losses"], x["ties"]) == (22, 17, 3, 2)
    assert x["win_rate"] == pytest.approx(18 / 22)
    for r in table:
        assert r["win_rate_low"] <= r["win_rate"] <= r["win_rate_high"] and r["win_rate_low"] < r["win_rate_high"]
    # two models: the Bradley-Terry probability is the (prior-smoothed) share of wins
    two = arena.bradley_terry([("p", "q", 1.0)] * 7 + [("q", "p", 1.0)] * 3)
    assert two["p"] / (two["p"] + two["q"]) == pytest.approx((7 + arena.BT_PRIOR) / (10 + 2 * arena.BT_PRIOR), rel=1e-6)


@pytest.fixture(scope="module")
def random_lora(tiny_llama_dir, tmp_path_factory) -> Path:
    """A LoRA on the tiny Llama whose B matrices are random (PEFT's default starts them at zero: no effect)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    path = tmp_path_factory.mktemp("random-lora")
    model.save_pretrained(path)
    return path


def test_the_logits_check_tells_an_adapter_that_is_on_from_one_that_does_nothing(tiny_llama_dir, random_lora, tmp_path):
    from core.models import ModelSource, load_model

    messages = arena.round_messages("Say hi.")
    base = load_model(ModelSource("local", str(tiny_llama_dir)), device="cpu")
    tuned = load_model(ModelSource("local", str(tiny_llama_dir)).with_adapter(random_lora), device="cpu")
    on = arena.prove_variant(tuned, messages)
    assert on["kind"] == "adapter" and on["ok"] and on["delta"] > 1e-3, on
    plain = arena.prove_variant(base, messages)
    assert plain["kind"] == "base" and plain["ok"] and "no adapter layers" in plain["checked"]
    proofs = arena.prove_round({"A": tuned, "B": base}, messages)
    assert proofs["columns"]["ok"] and proofs["columns"]["delta"] == pytest.approx(on["delta"], rel=1e-4), \
        "base vs adapter column: the same difference as the adapter on vs off"
    with tuned.model.disable_adapter():  # the adapter switched off: the check says so
        off = arena.next_token_logits(tuned.model, tuned.tokenizer, messages)
    assert float((off - arena.next_token_logits(base.model, base.tokenizer, messages)).abs().max()) <= arena.SAME_LOGITS
    zero = tmp_path / "zero-lora"
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(zero)
    idle = arena.prove_variant(load_model(ModelSource("local", str(tiny_llama_dir)).with_adapter(zero), device="cpu"), messages)
    assert not idle["ok"] and "answered exactly as its base model" in idle["checked"]


# ---------------------------------------------------------------- the Chat page's arena


def _finish(at: AppTest) -> AppTest:
    deadline = time.time() + 90
    while at.session_state["arena_streams"] and time.time() < deadline:
        time.sleep(0.2)
        at.run()
    assert not at.session_state["arena_streams"], "both answers finished"
    return at


def _shown_text(at: AppTest) -> str:
    return " ".join(e.value for kind in ("markdown", "caption", "subheader", "success", "info", "warning") for e in getattr(at, kind))


def test_the_arena_is_blind_until_the_vote_then_reveals_and_writes_it(workspace, tiny_llama_dir, random_lora):
    at = AppTest.from_file(str(ROOT / "app_pages" / "chat.py"), default_timeout=120)
    at.session_state["active_model"] = {"kind": "local", "ref": str(tiny_llama_dir)}
    at.session_state["chat_adapter"] = str(random_lora)
    at.run()
    at.radio(key="chat_mode").set_value("Arena (blind A / B)").run()
    assert not at.exception, [e.value for e in at.exception]
    at.number_input(key="chat_max_new").set_value(3).run()
    at.slider(key="chat_temperature").set_value(1.0).run()  # sampled: greedy, the random tiny model may answer only blank lines
    at.toggle(key="arena_judge_on").set_value(True).run()
    at.selectbox(key="arena_judge_choice").set_value("Active model").run()  # the tiny model judges (its verdict is noise)
    at.chat_input(key="arena_prompt").set_value("Say hi.").run()
    _finish(at)
    assert not at.exception, [e.value for e in at.exception]
    rnd = Round.from_dict(at.session_state["arena_round"]["round"])
    tiny, tuned = rnd.models
    assert random_lora.name in tuned and random_lora.name not in tiny
    shown = _shown_text(at)
    assert "Answer A" in shown and "Answer B" in shown
    assert tiny not in shown and tuned not in shown and random_lora.name not in shown, "nothing before the vote names a model"
    assert not arena.read_votes(arena.arena_folder("chat"))

    answer_b = at.session_state["arena_round"]["answers"]["B"]
    assert arena.pair_problem(at.session_state["arena_round"]["answers"]) is None, at.session_state["arena_round"]["answers"]
    at.button(key="arena_vote_B").click().run()
    assert not at.exception, [e.value for e in at.exception]
    shown = _shown_text(at)
    assert f"A was {rnd.model_of('A')}" in shown and f"B was {rnd.model_of('B')}" in shown, "the reveal after the vote"
    assert "next-token logits differ from the base's" in shown, "the adapter column's proof"
    rows = arena.read_votes(arena.arena_folder("chat"))
    assert len(rows) == 1 and rows[0]["vote"] == "B" and rows[0]["chosen_model"] == rnd.model_of("B")
    assert rows[0]["chosen"][0]["content"] == answer_b and rows[0]["proof_b"]
    assert at.button(key="arena_vote_A").disabled, "one vote per round"
    judged = rows[0]
    assert judged["judge_model"] == tiny and judged["judge_vote"] in ("A", "B", "tie", "unparsed"), "the judge's vote beside the person's"
    assert judged["judge_agrees"] == (judged["judge_vote"] == "B" if judged["judge_vote"] != "unparsed" else None)
    assert f"Judge {tiny}:" in shown
    standings = at.dataframe[0].value
    assert sorted(standings["model"]) == sorted(rnd.models) and list(standings["wins"]) == [1, 0], "the standings table"

    at.toggle(key="arena_judge_on").set_value(False).run()
    at.slider(key="chat_temperature").set_value(0.0).run()
    at.chat_input(key="arena_prompt").set_value("Say hi.").run()  # a new round: the buttons come back
    _finish(at)
    problem = arena.pair_problem(at.session_state["arena_round"]["answers"])
    assert [at.button(key=f"arena_vote_{v}").disabled for v in arena.VOTES] == [problem is not None] * 2 + [False, False], \
        "A / B greyed out exactly when the answers cannot be a pair"


def test_judge_agreement_reads_both_bad_as_a_tie_and_leaves_unparsed_out():
    rows = [{"vote": "A", "judge_vote": "A", "model_a": "x", "model_b": "y"},
            {"vote": "both_bad", "judge_vote": "tie", "model_a": "y", "model_b": "x"},
            {"vote": "B", "judge_vote": "A", "model_a": "x", "model_b": "y"},
            {"vote": "A", "judge_vote": "unparsed", "model_a": "x", "model_b": "y"},
            {"vote": "tie", "model_a": "x", "model_b": "y"}]
    agreement = arena.judge_agreement(rows)
    assert agreement["n_pairs"] == 3 and agreement["raw_agreement"] == pytest.approx(2 / 3)
    assert agreement["confusion"]["judge tie / human tie"] == 1 and agreement["confusion"]["judge A / human B"] == 1
    assert arena.judge_agreement(rows[3:]) is None
    line = arena.judge_line({"vote": "tie", "model": "j", "agrees": False, "first": "A", "second": "B", "consistent": False})
    assert "the orders disagree, so a tie" in line and "disagrees with you" in line
