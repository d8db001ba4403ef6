"""The demo data's planted flaws (issue 29 item 8): each curation tool, at the Data page's default settings, finds exactly
the rows assets/make_demo_dataset.py planted in train.jsonl, and nothing else (the clean rows stay clean). The generator's
`planted()` is the truth: it says where each flaw is and which earlier row a copy repeats."""
from __future__ import annotations

import importlib.util

import pytest

from core.data.audit import audit_rows
from core.data.decontam import builtin_benchmark_names, decontaminate, load_builtin_benchmark
from core.data.dedup import NearDedupConfig, find_exact_duplicates, find_near_duplicates
from core.data.formats import demo_dataset_path, load_dataset_file

BAD_ANSWER_RULES = {"refusal": "refusal", "truncated_json": "truncated", "prose_answer": "invalid_json", "echo_answer": "repeats_prompt"}


@pytest.fixture(scope="module")
def demo():
    path = demo_dataset_path("train").parents[1] / "make_demo_dataset.py"
    spec = importlib.util.spec_from_file_location("make_demo_dataset", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    loaded = load_dataset_file(demo_dataset_path("train"))
    assert loaded.report.ok and len(loaded.rows) == 300, "the planted rows replace clean ones: still 300 valid rows"
    return loaded.rows, script.planted()


def of_kind(planted: dict, *prefixes: str) -> dict[int, int | None]:
    return {row: source for row, (kind, source) in planted.items() if kind.startswith(prefixes)}


def test_every_tab_has_something_planted_for_it(demo):
    _, planted = demo
    kinds = {kind for kind, _ in planted.values()}
    assert {"exact_copy", "exact_recased", "near_forwarded", "near_greeting", "leak_gsm8k", "leak_humaneval"} <= kinds
    assert set(BAD_ANSWER_RULES) <= kinds and len(planted) <= 12, "a few planted rows, so the demo still trains"


def test_exact_dedup_finds_the_copies_and_keeps_the_originals(demo):
    rows, planted = demo
    result = find_exact_duplicates(rows)
    assert sorted((c.representative, c.dropped) for c in result.clusters) == \
        sorted((source, [row]) for row, source in of_kind(planted, "exact_").items())


def test_near_dedup_finds_the_near_copies_too(demo):
    rows, planted = demo
    result = find_near_duplicates(rows, NearDedupConfig(workers=1))
    copies = of_kind(planted, "exact_", "near_")  # an exact pair is also a near pair
    assert sorted((c.representative, c.dropped) for c in result.clusters) == sorted((source, [row]) for row, source in copies.items())
    near_only = of_kind(planted, "near_")
    assert all(0.8 <= c.similarity[c.dropped[0]] < 1 for c in result.clusters if c.dropped[0] in near_only)


def test_decontamination_finds_the_benchmark_leaks(demo):
    rows, planted = demo
    result = decontaminate(rows, [load_builtin_benchmark(name) for name in builtin_benchmark_names()])
    assert result.rows_to_drop == sorted(of_kind(planted, "leak_"))
    by_benchmark = {r.benchmark: r.contaminated_rows for r in result.reports}
    assert by_benchmark["HumanEval"] == sorted(of_kind(planted, "leak_humaneval"))
    assert by_benchmark["GSM8K"] == sorted(of_kind(planted, "leak_gsm8k"))


def test_the_audit_flags_the_bad_answers_by_their_rule(demo):
    rows, planted = demo
    result = audit_rows(rows)
    bad = {row: kind for row, (kind, _) in planted.items() if kind in BAD_ANSWER_RULES}
    assert sorted(result.flags) == sorted(bad), {row: [f.rule for f in flags] for row, flags in result.flags.items()}
    for row, kind in bad.items():
        assert BAD_ANSWER_RULES[kind] in {f.rule for f in result.flags[row]}, (kind, result.flags[row])


def test_the_planted_rows_fit_the_cpu_demo_run(demo, embedded_tokenizer):
    """A quoted benchmark item makes a ticket long: none may pass the CPU demo's max_length (its answer would be cut and the
    row left out, with lint warnings in the one-click run)."""
    from types import SimpleNamespace

    from core.data.masking import encode_conversation
    from core.train.spec import hardware_defaults

    rows, planted = demo
    max_length = hardware_defaults(SimpleNamespace(device="cpu")).max_length
    lengths = {row: len(encode_conversation(rows[row]["messages"], embedded_tokenizer).input_ids) for row in planted}
    assert max(lengths.values()) <= max_length - 16, lengths
