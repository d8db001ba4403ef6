"""Preference data (issue 27, data slice): loading every shape with its row errors, the checks before any model loads,
the pair mask through the one masking function, curation on pairs, and the Data / Template pages."""
from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
from inprocess import work_here
from streamlit.testing.v1 import AppTest

from core.data.dedup import ExactDedupConfig, find_exact_duplicates
from core.data.formats import DatasetLoadError
from core.data.masking import IGNORE_INDEX
from core.data.preference import (
    as_conversation,
    check_preferences,
    encode_pair,
    load_any_dataset,
    load_preference_file,
    normalise_preference_row,
)
from core.data.render import token_chips_html, token_table
from core.data.templates import load_template
from core.data.text import row_text

ROOT = Path(__file__).resolve().parents[1]
DATA_PAGE = str(ROOT / "app_pages" / "data.py")
TEMPLATE_PAGE = str(ROOT / "app_pages" / "template.py")


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def errors(loaded) -> dict[int, tuple[str, str, str]]:
    return {e.row: (e.kind, e.field, e.message) for e in loaded.report.first_errors()}


# ---------------------------------------------------------------- formats


def test_prompt_chosen_rejected_strings_and_row_errors(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [
        {"id": "a", "prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
        {"id": "b", "prompt": "2+2?", "chosen": "   ", "rejected": "5"},
        {"id": "c", "prompt": "2+3?", "chosen": "5"},
        {"id": "d", "prompt": "", "chosen": "x", "rejected": "y"},
        {"id": "e", "prompt": "2+4?", "chosen": 6, "rejected": "7"},
    ])
    loaded = load_preference_file(path)
    assert loaded.detected_format == "preference"
    assert loaded.rows == [{"prompt": [user("Capital of France?")], "chosen": [assistant("Paris.")], "rejected": [assistant("Lyon.")],
                            "id": "a"}]
    assert loaded.columns == ["id"] and loaded.id_column == "id"
    errs = errors(loaded)
    assert errs[1] == ("empty_content", "chosen", "`chosen` is empty")
    assert errs[2][:2] == ("missing_field", "rejected")
    assert errs[3] == ("empty_content", "prompt", "`prompt` is empty")
    assert errs[4][:2] == ("not_a_string", "`chosen`") and "int" in errs[4][2]
    assert loaded.report.n_read == 5 and loaded.report.n_valid == 1


def test_trl_conversational_and_full_conversation_sides(tmp_path):
    prompt = [{"role": "system", "content": "Be terse."}, user("Hi?")]
    path = write_jsonl(tmp_path / "conv.jsonl", [
        {"prompt": prompt, "chosen": [assistant("Hello.")], "rejected": [assistant("Go away.")]},
        {"chosen": [user("Q1"), assistant("good")], "rejected": [user("Q1"), assistant("bad")]},  # UltraFeedback: sides carry the prompt
        {"prompt": "Q2", "chosen": [user("Q2"), assistant("good")], "rejected": [user("Q2 but other"), assistant("bad")]},
        {"prompt": prompt, "chosen": [assistant("a"), assistant("b")], "rejected": [assistant("c")]},
        {"prompt": [user("Q"), assistant("early answer")], "chosen": [assistant("a")], "rejected": [assistant("b")]},
        {"prompt": prompt, "chosen": [{"role": "wizard", "content": "x"}], "rejected": [assistant("c")]},
    ])
    loaded = load_preference_file(path)
    rows = loaded.rows
    assert rows[0] == {"prompt": prompt, "chosen": [assistant("Hello.")], "rejected": [assistant("Go away.")]}
    assert rows[1] == {"prompt": [user("Q1")], "chosen": [assistant("good")], "rejected": [assistant("bad")]}
    assert rows[2]["prompt"] == [user("Q2")] and rows[2]["rejected_prompt"] == [user("Q2 but other")]
    errs = errors(loaded)
    assert errs[3][:2] == ("bad_messages", "chosen") and "2 assistant messages" in errs[3][2]
    assert errs[4][:2] == ("turn_order", "prompt")
    assert errs[5][:2] == ("unknown_role", "chosen[0].role") and "wizard" in errs[5][2]


def test_messages_plus_rejected_response(tmp_path):
    path = write_jsonl(tmp_path / "mr.jsonl", [
        {"messages": [user("Name a colour"), assistant("Blue")], "rejected_response": "Seven", "source": "x"},
        {"messages": [user("Name a colour")], "rejected_response": "Seven"},
        {"messages": [user("Name a fruit"), assistant("Apple")], "rejected_response": ""},
    ])
    loaded = load_preference_file(path)
    assert loaded.rows == [{"prompt": [user("Name a colour")], "chosen": [assistant("Blue")], "rejected": [assistant("Seven")],
                            "source": "x"}]
    errs = errors(loaded)
    assert errs[1][:2] == ("turn_order", "messages")
    assert errs[2] == ("empty_content", "rejected_response", "`rejected_response` is empty")


def test_anthropic_hh_transcripts(tmp_path):
    shared = "\n\nHuman: Hi\n\nAssistant: Hello, how can I help?\n\nHuman: Tell me a joke"
    path = write_jsonl(tmp_path / "hh.jsonl", [
        {"chosen": shared + "\n\nAssistant: Why did the chicken cross the road?", "rejected": shared + "\n\nAssistant: No."},
        {"chosen": "\n\nHuman: A\n\nAssistant: yes", "rejected": "\n\nHuman: B\n\nAssistant: no"},
        {"chosen": "no assistant here", "rejected": "\n\nHuman: A\n\nAssistant: no"},
        {"chosen": "\n\nHuman: A\n\nAssistant:  ", "rejected": "\n\nHuman: A\n\nAssistant: no"},
    ])
    loaded = load_preference_file(path)
    first = loaded.rows[0]
    assert first["prompt"] == [user("Hi"), assistant("Hello, how can I help?"), user("Tell me a joke")]
    assert first["chosen"] == [assistant("Why did the chicken cross the road?")] and first["rejected"] == [assistant("No.")]
    assert "rejected_prompt" not in first
    assert loaded.rows[1]["rejected_prompt"] == [user("B")]  # prefixes differ: kept for the check
    errs = errors(loaded)
    assert errs[2][:2] == ("bad_messages", "chosen") and "Assistant:" in errs[2][2]
    assert errs[3][:2] == ("empty_content", "chosen")


def test_unpaired_kto_rows_jsonl_and_csv(tmp_path):
    path = write_jsonl(tmp_path / "kto.jsonl", [
        {"prompt": "Q", "completion": "good", "label": True},
        {"prompt": [user("Q")], "completion": [assistant("bad")], "label": False},
        {"prompt": "Q", "completion": "meh", "label": "maybe"},
        {"prompt": "Q", "completion": "", "label": True},
    ])
    loaded = load_preference_file(path, fmt="unpaired")
    assert loaded.detected_format == "unpaired"
    assert loaded.rows == [{"prompt": [user("Q")], "completion": [assistant("good")], "label": True},
                           {"prompt": [user("Q")], "completion": [assistant("bad")], "label": False}]
    errs = errors(loaded)
    assert errs[2][:2] == ("bad_label", "label") and "'maybe'" in errs[2][2]
    assert errs[3] == ("empty_content", "completion", "`completion` is empty")

    assert as_conversation(loaded.rows[1]) == {"messages": [user("Q"), assistant("bad")], "label": False}  # what the Template page draws
    assert as_conversation(loaded.rows[1]) is not loaded.rows[1] and as_conversation({"text": "t"}) == {"text": "t"}

    csv_path = tmp_path / "kto.csv"
    csv_path.write_text("prompt,completion,label\nQ,yes,true\nQ,no,false\n", encoding="utf-8")
    assert [r["label"] for r in load_any_dataset(csv_path).rows] == [True, False]  # detected from the CSV's text labels


def test_load_any_keeps_ordinary_datasets_and_refuses_non_preference(tmp_path):
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "Q", "completion": "A"}])
    loaded = load_any_dataset(sft)
    assert loaded.detected_format == "prompt_completion" and "messages" in loaded.rows[0]
    with pytest.raises(DatasetLoadError, match="not a preference dataset"):
        load_preference_file(sft)
    with pytest.raises(ValueError, match="unknown preference format"):
        normalise_preference_row({}, "pairs")


# ---------------------------------------------------------------- checks


def pair(prompt: str, chosen: str, rejected: str, **extra) -> dict:
    return {"prompt": [user(prompt)], "chosen": [assistant(chosen)], "rejected": [assistant(rejected)], **extra}


def test_checks_identical_empty_and_prompt_mismatch():
    rows = [
        pair("a", "same answer", "same answer "),  # equal but for trailing space
        {"prompt": [user("b")], "chosen": [assistant(" ")], "rejected": [assistant("x")]},
        pair("c", "yes", "no", rejected_prompt=[user("c, but different")]),
        pair("d", "fine", "bad"),
    ]
    report = check_preferences(rows)
    assert report.n_pairs == 4
    assert report.identical == [0]
    assert [(i.row, i.message) for i in report.empty] == [(1, "`chosen` is empty")]
    assert report.prompt_mismatch == [2]
    levels = [level for level, _ in report.findings()]
    assert levels.count("error") == 3
    assert check_preferences([pair("d", "fine", "bad")]).findings() == []  # one pair: too few to speak of a length bias


def test_check_shared_prefix_names_character_and_word():
    start = "The answer, worked out step by step, is"
    rows = [pair("q", start + " forty-two.", start + " seventeen."), pair("q2", "Short yes.", "Short no.")]
    report = check_preferences(rows)
    assert [i.row for i in report.shared_prefix] == [0]
    assert report.shared_prefix[0].message == f"the sides differ from character {len(start) + 1} (word 9) on"
    mid_word = check_preferences([pair("q", start + " fortytwo", start + " fortyone")]).shared_prefix[0].message
    assert "(word 9)" in mid_word  # the differing word is "forty…", the 9th


def test_check_length_bias_warns_above_seventy_percent():
    biased = ([pair(f"q{i}", "a long and detailed answer", "short") for i in range(8)]
              + [pair("x", "s", "a longer one"), pair("y", "t", "a longer two")])
    report = check_preferences(biased)
    assert report.chosen_longer_share == pytest.approx(0.8)
    assert any("80%" in w and "length" in w for w in report.warnings)
    balanced = biased[:6] + [pair(f"z{i}", "s", "a longer answer") for i in range(4)]
    assert check_preferences(balanced).chosen_longer_share == pytest.approx(0.6)
    assert not check_preferences(balanced).warnings


def test_check_unpaired_balance():
    def row(label: bool) -> dict:
        return {"prompt": [user("q")], "completion": [assistant("a")], "label": label}

    only_good = check_preferences([row(True)] * 3)
    assert (only_good.n_desirable, only_good.n_undesirable) == (3, 0)
    assert any("undesirable" in w and "KTO" in w for w in only_good.warnings)
    mixed = check_preferences([row(True)] * 3 + [row(False)] * 2)
    assert mixed.desirable_share == pytest.approx(0.6) and not mixed.warnings
    skewed = check_preferences([row(True)] * 19 + [row(False)])
    assert any("95%" in w for w in skewed.warnings)


# ---------------------------------------------------------------- the pair mask

EOT = {"chatml": "<|im_end|>", "llama-3-instruct": "<|eot_id|>", "qwen2.5-instruct": "<|im_end|>"}


@pytest.mark.parametrize("template", sorted(EOT))
def test_pair_mask_prompt_never_trained_and_sides_exact(template, embedded_tokenizer):
    row = {"prompt": [{"role": "system", "content": "Be brief."}, user("Hi"), assistant("Hello there!"), user("What is 2+2?")],
           "chosen": [assistant("2+2 equals 4.")], "rejected": [assistant("2+2 equals 5, I think.")]}
    encoded = encode_pair(row, embedded_tokenizer, chat_template=load_template(template))
    assert encoded.chosen.trained_texts(embedded_tokenizer) == ["2+2 equals 4." + EOT[template]]
    assert encoded.rejected.trained_texts(embedded_tokenizer) == ["2+2 equals 5, I think." + EOT[template]]
    for side in (encoded.chosen, encoded.rejected):
        first = next(i for i, label in enumerate(side.labels) if label != IGNORE_INDEX)
        assert first == encoded.prompt_tokens
        assert all(label == IGNORE_INDEX for label in side.labels[:first])  # the earlier assistant turn included
        assert "Hello there!" in embedded_tokenizer.decode(side.input_ids[:first])
    d = encoded.diverge
    assert encoded.chosen.input_ids[:d] == encoded.rejected.input_ids[:d]
    assert encoded.chosen.input_ids[d] != encoded.rejected.input_ids[d]
    assert d > encoded.prompt_tokens  # "2+2 equals " is shared


def test_pair_chips_colour_each_side_and_mark_divergence(embedded_tokenizer):
    encoded = encode_pair(pair("Say hi", "Hi there, friend.", "Hi there, enemy."), embedded_tokenizer,
                          chat_template=load_template("chatml"))
    body = token_chips_html(encoded.chosen, embedded_tokenizer, side="chosen", mark=encoded.diverge)
    classes = [c.split() for c in re.findall(r'<span class="(tpl-chip [^"]*)"', body)]
    assert len(classes) == encoded.chosen.n_tokens
    assert sum("chosen" in c for c in classes) == sum("trained" in c for c in classes) == encoded.chosen.n_trained > 0
    assert (sum("diverge" in c for c in classes) == 1
            and "friend" in html.unescape(re.search(r'class="[^"]* diverge"[^>]*>([^<]*)<', body).group(1)))
    kinds = {r["kind"] for r in token_table(encoded.rejected, embedded_tokenizer, side="rejected")}
    assert kinds == {"masked", "rejected"}


# ---------------------------------------------------------------- curation on pairs


def test_dedup_finds_identical_pairs_and_sees_rejected():
    rows = [pair("q", "yes", "no"), pair("other", "a", "b"), pair("q", "yes", "no"), pair("q", "yes", "something else")]
    assert row_text(rows[0]) == "q\n\nyes\n\nno" and row_text(rows[0], "answer") == "yes\n\nno"
    result = find_exact_duplicates(rows, ExactDedupConfig())
    assert [c.members for c in result.clusters] == [[0, 2]]  # row 3 differs only in its rejected answer: not a duplicate


def test_curate_job_reads_pairs_as_pairs(workspace, tmp_path):
    """The Data page's dedup / decontamination / audit run as jobs: the worker must read the file as pairs too."""

    from core import runs
    from core.data.curate_job import CurateSpec, load_results
    from core.runs.status import read_status

    rows = [{"prompt": "q", "chosen": "yes", "rejected": "no"}, {"prompt": "other", "chosen": "a", "rejected": "b"},
            {"prompt": "q", "chosen": "yes", "rejected": "no"}, {"prompt": "q", "chosen": "yes", "rejected": "something else"}]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    loaded = load_any_dataset(path)
    run_dir = runs.create_run(CurateSpec(dataset=str(path), dataset_sha256=loaded.source_hash, exact={}))
    work_here(run_dir)
    assert read_status(run_dir).state == "succeeded", read_status(run_dir).error
    assert load_results(run_dir)["exact"].rows_to_drop == [2]


# ---------------------------------------------------------------- pages


def test_data_page_loads_a_preference_file(workspace, tmp_path):
    rows = [{"prompt": f"question {i}", "chosen": f"a long, careful answer number {i}", "rejected": f"no {i}"} for i in range(10)]
    rows.append({"prompt": "q", "chosen": "", "rejected": "x"})
    path = write_jsonl(tmp_path / "prefs.jsonl", rows)
    at = AppTest.from_file(DATA_PAGE, default_timeout=120)
    at.run()
    at.radio(key="data_source").set_value("Path or Hub id").run()
    at.text_input(key="data_path").set_value(str(path)).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("format `preference`" in c.value for c in at.caption)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Valid rows"] == "10" and metrics["Rejected rows"] == "1" and metrics["Pairs"] == "10"
    assert metrics["Chosen is longer"] == "100%"
    assert any("DPO is known to learn length" in w.value for w in at.warning)
    errors_table = next(d.value for d in at.dataframe if "kind" in d.value.columns)
    assert errors_table.to_dict("records")[0] == {"row": 10, "kind": "empty_content", "field": "chosen", "message": "`chosen` is empty"}


def test_template_page_draws_a_pair(workspace, embedded_dir):
    # the Template page reads curated workspace datasets (a preference set exported by the Data page)
    folder = workspace / "datasets" / "prefs"
    folder.mkdir(parents=True)
    write_jsonl(folder / "data.jsonl", [{"prompt": "What is 2+2?", "chosen": "2+2 equals 4.", "rejected": "2+2 equals 5."}])
    at = AppTest.from_file(TEMPLATE_PAGE, default_timeout=120)
    at.session_state["active_model"] = {"kind": "local", "ref": str(embedded_dir)}
    at.run()
    at.radio(key="tpl_source").set_value("Workspace dataset").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Sides differ from token"]) > int(metrics["Prompt tokens"]) > 0
    bodies = [h.proto.body for h in at.html if '<div class="tpl-chips">' in h.proto.body]
    assert len(bodies) == 2 and "tpl-chip trained content chosen" in bodies[0] and "tpl-chip trained content rejected" in bodies[1]
    assert all(b.count(" diverge") == 1 for b in bodies)
    chosen_text = html.unescape(re.sub(r"<[^>]+>", "",
                                       "".join(re.findall(r'<span class="tpl-chip trained [^"]*"[^>]*>[^<]*</span>', bodies[0]))))
    assert chosen_text == "2+2 equals 4.<|im_end|>"


def test_template_page_draws_an_unpaired_row_as_its_conversation(workspace, embedded_dir):
    folder = workspace / "datasets" / "kto"
    folder.mkdir(parents=True)
    write_jsonl(folder / "data.jsonl", [{"prompt": "Say yes", "completion": "Yes.", "label": True},
                                        {"prompt": "Say no", "completion": "Maybe", "label": False}])
    at = AppTest.from_file(TEMPLATE_PAGE, default_timeout=120)
    at.session_state["active_model"] = {"kind": "local", "ref": str(embedded_dir)}
    at.run()
    at.radio(key="tpl_source").set_value("Workspace dataset").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("format `unpaired`" in c.value for c in at.caption)
    assert any("<|im_start|>assistant\nYes.<|im_end|>" in c.value for c in at.code)
    assert int(next(m.value for m in at.metric if m.label == "Trained tokens")) > 0
