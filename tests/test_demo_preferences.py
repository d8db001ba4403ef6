"""The shipped demo preference pairs (issue 27, item 5): the script is their source (byte-identical rebuild), every pair
passes core.data.preference's checks, the eval pairs are held out, and the rejected kinds are mixed as the script says."""
from __future__ import annotations

import importlib.util
import json
from collections import Counter

import pytest

from core.data.formats import demo_dataset_path, load_dataset_file
from core.data.preference import check_preferences, load_preference_file


def _script():
    path = demo_dataset_path("train").parents[1] / "make_demo_preferences.py"
    spec = importlib.util.spec_from_file_location("make_demo_preferences", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_rebuilds_the_shipped_pairs_byte_for_byte(tmp_path):
    _script().main(tmp_path)
    for split in ("pairs_train", "pairs_eval"):
        assert (tmp_path / f"{split}.jsonl").read_bytes() == demo_dataset_path(split).read_bytes(), \
            f"{split}.jsonl differs from what assets/make_demo_preferences.py writes: rerun the script, never edit the file"


@pytest.mark.parametrize(("split", "source", "n"), [("pairs_train", "train", 200), ("pairs_eval", "eval", 60)])
def test_every_pair_is_a_clean_pair_of_a_demo_row(split, source, n):
    data = load_preference_file(demo_dataset_path(split))
    assert data.detected_format == "preference" and data.report.n_invalid == 0 and len(data.rows) == n
    report = check_preferences(data.rows)
    assert report.n_pairs == n and not report.identical and not report.empty and not report.prompt_mismatch
    assert [level for level, _ in report.findings()] == ["warning"], report.findings()  # only the near misses' shared start
    assert report.chosen_longer_share < 0.6, "the chosen side must not simply be the longer one (DPO would learn length)"
    demo = {json.dumps(r["messages"][:2]): r["messages"][2]["content"] for r in load_dataset_file(demo_dataset_path(source)).rows}
    for row in data.rows:
        assert [m["role"] for m in row["prompt"]] == ["system", "user"]
        assert demo[json.dumps(row["prompt"])] == row["chosen"][0]["content"], "chosen is the demo row's reference answer"
        assert row["rejected"][0]["content"] != row["chosen"][0]["content"]


def _fields(text: str) -> dict | None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def test_the_eval_pairs_share_no_ticket_with_the_training_pairs_or_rows():
    tickets = lambda rows: {r["prompt"][-1]["content"] for r in rows}  # noqa: E731
    train, evaluation = (tickets(load_preference_file(demo_dataset_path(s)).rows) for s in ("pairs_train", "pairs_eval"))
    sft_rows = {r["messages"][1]["content"] for r in load_dataset_file(demo_dataset_path("train")).rows}
    assert len(evaluation) == 60 and not evaluation & train and not evaluation & sft_rows


def test_each_rejected_kind_is_what_its_name_says_and_the_kinds_are_balanced():
    script = _script()
    for split in ("pairs_train", "pairs_eval"):
        rows = load_preference_file(demo_dataset_path(split)).rows
        counts = Counter(r["rejected_kind"] for r in rows)
        assert set(counts) == set(script.REJECTED_KINDS) and max(counts.values()) - min(counts.values()) <= 1, counts
        for row in rows:
            chosen, rejected, kind = _fields(row["chosen"][0]["content"]), row["rejected"][0]["content"], row["rejected_kind"]
            parsed = _fields(rejected)
            if kind in ("prose", "boilerplate", "invalid_json"):
                assert parsed is None, (kind, rejected)
                if kind == "boilerplate":
                    assert json.dumps(chosen) in rejected
            elif kind == "missing_field":
                assert parsed and set(parsed) < set(chosen) and len(parsed) == 2
            else:
                field = kind.removeprefix("wrong_")
                assert parsed and parsed[field] != chosen[field] and {k: v for k, v in parsed.items() if k != field} == \
                    {k: v for k, v in chosen.items() if k != field}
                allowed = script.URGENCIES if field == "urgency" else script.NEXT_STEPS
                assert parsed[field] in allowed


def test_the_pair_splits_are_demo_splits():
    assert demo_dataset_path("pairs_train").name == "pairs_train.jsonl" and demo_dataset_path("pairs_eval").is_file()
    with pytest.raises(ValueError, match="demo split must be one of"):
        demo_dataset_path("pairs")
