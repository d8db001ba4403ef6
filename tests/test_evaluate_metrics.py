"""Evaluation metrics on known examples: string metrics, likelihood scoring vs a manual computation,
bootstrap intervals, and the verdict rule."""
from __future__ import annotations

import math

import numpy as np
import pytest

from core import generation, scorers
from core.evaluate import scoring, stats
from core.evaluate.stats import Interval
from core.evaluate.task import TaskExample, describe_task, score_answer
from core.evaluate.verdict import decide

# ---------------------------------------------------------------- string metrics


def test_rouge_l_hand_computed():
    # pred: the cat sat on the mat (6 words), ref: the cat lay on the red mat (7 words)
    # LCS = the cat on the mat = 5 → P = 5/6, R = 5/7, F1 = 2PR/(P+R) = 10/13
    assert scorers.rouge_l_f1("The cat sat on the mat", "the cat lay on the red mat") == pytest.approx(10 / 13)
    assert scorers.rouge_l_f1("a b c", "a b c") == 1.0
    assert scorers.rouge_l_f1("x y", "a b") == 0.0
    # order matters for ROUGE-L (a subsequence), unlike a bag of words: LCS of "b a" vs "a b" is 1
    assert scorers.rouge_l_f1("b a", "a b") == pytest.approx(0.5)


def test_exact_match_normalisation():
    assert scorers.exact_match("  Paris. ", "paris") == 1.0
    assert scorers.exact_match("PARIS", "Paris!") == 1.0
    assert scorers.exact_match("New   York", "new york") == 1.0
    assert scorers.exact_match("Paris", "London") == 0.0


def test_json_validity_strict_vs_lenient():
    answer = 'Sure! Here it is: {"urgency": "high"}'
    assert scorers.holds_json_object(answer) == 1.0  # an object can be found in it (field scores use it)
    assert scorers.json_validity(answer) == 0.0  # but json.loads on the reply fails: not valid JSON, anywhere
    assert scorers.json_validity('```json\n{"urgency": "high"}\n```') == 1.0
    assert scorers.json_validity('  {"a": 1}\n') == 1.0
    assert scorers.json_validity("[1, 2]") == 0.0


def test_json_field_accuracy_demo_task():
    reference = '{"summary": "Charged twice for Quill Notes.", "next_step": "issue_refund", "urgency": "low"}'
    answer = '{"summary": "Charged twice for Quill Notes this month.", "next_step": "Issue_Refund", "urgency": "high"}'
    scores = scorers.json_field_scores(answer, reference, free_text_fields=["summary"])
    # summary: ROUGE-L over words — pred 7 words, ref 5 words, LCS 5 → P 5/7, R 1, F1 = 10/12
    assert scores["summary"] == pytest.approx(10 / 12)
    assert scores["next_step"] == 1.0  # exact after normalising case
    assert scores["urgency"] == 0.0
    assert scorers.json_field_accuracy(answer, reference, ["summary"]) == pytest.approx((10 / 12 + 1) / 3)
    assert scorers.json_field_accuracy("no json here", reference, ["summary"]) == 0.0


def test_free_text_field_detection_on_demo_references():
    refs = [{"summary": "Cannot log in to Harbor VPN today.", "next_step": "reset_password", "urgency": "medium"},
            {"summary": "Charged twice for Quill Notes this month.", "next_step": "issue_refund", "urgency": "low"}]
    assert scorers.detect_free_text_fields(refs) == ["summary"]


def test_task_scoring_uses_strict_validity_and_field_scores():
    ex = TaskExample(0, [], [{"role": "user", "content": "q"}], '{"summary": "Printer jams on every page now.", "urgency": "high"}')
    setup = describe_task([ex])
    assert setup.is_json and setup.free_text_fields == ["summary"]
    row = score_answer('Here: {"summary": "Printer jams on every page now.", "urgency": "high"}', ex.reference, setup)
    assert row["json_valid"] == 0.0 and row["task_score"] == 1.0
    assert row["field:summary"] == 1.0 and row["field:urgency"] == 1.0
    plain = describe_task([TaskExample(0, [], [], "the answer is four")])
    assert not plain.is_json
    assert score_answer("the answer is four", "the answer is four", plain)["task_score"] == 1.0


def test_perplexity_is_exp_mean_nll():
    assert scorers.perplexity(6.0, 3) == pytest.approx(math.e ** 2)
    with pytest.raises(ValueError):
        scorers.perplexity(1.0, 0)


def test_choice_accuracy_acc_and_acc_norm():
    # summed log-likelihood prefers the short choice; per character the long one wins
    acc, acc_norm = scorers.choice_accuracy([-2.0, -3.0], [" no", " yes indeed"], gold=1)
    assert (acc, acc_norm) == (0.0, 1.0)


# ---------------------------------------------------------------- likelihoods on a tiny model


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    from core.models import ModelSource, load_model

    return load_model(ModelSource("local", str(tiny_llama_dir)))


def _manual_logprobs(model, ids):
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return [float(logp[j - 1, ids[j]]) for j in range(1, len(ids))]


def test_multiple_choice_loglik_matches_manual_computation(tiny):
    tok = tiny.tokenizer
    items = [
        {"context": "The capital of France is", "choices": [" Paris", " a large city in Europe", " 42"], "gold": 0},
        {"context": "Two plus two equals ", "choices": ["four", "five"], "gold": 0},  # trailing space moves to the choice
    ]
    shared = scoring._shared_context_logliks(tiny.model, tok, [[scoring.encode_choice(tok, i["context"], c) for c in i["choices"]]
                                                               for i in items], 2, None, None)
    got = scoring.choice_logliks(tiny.model, tok, items, batch_size=3, share_context=False)
    assert np.allclose(np.concatenate(shared), np.concatenate(got), atol=1e-3)  # the cached-context path agrees
    for item, values in zip(items, got):
        context = item["context"].rstrip()
        moved = item["context"][len(context):]
        context_ids = tok(context)["input_ids"]
        for choice, value in zip(item["choices"], values):
            whole = tok(context + moved + choice)["input_ids"]
            manual = _manual_logprobs(tiny.model, context_ids + whole[len(context_ids):])
            assert value == pytest.approx(sum(manual[len(context_ids) - 1:]), abs=1e-3)
    acc, acc_norm = scorers.choice_accuracy(got[0], items[0]["choices"], 0)
    assert int(np.argmax(got[0]) == 0) == acc


def test_text_perplexity_equals_exp_mean_nll(tiny):
    texts = ["Hello world, this is a short text.", "A second, somewhat longer text about cats and dogs and birds."]
    rows = scoring.text_nll(tiny.model, tiny.tokenizer, texts, max_length=64, batch_size=2)
    manual = []
    for text in texts:
        manual += _manual_logprobs(tiny.model, tiny.tokenizer(text)["input_ids"])
    assert sum(r.tokens for r in rows) == len(manual)
    ppl = scorers.perplexity(sum(r.nll for r in rows), sum(r.tokens for r in rows))
    assert ppl == pytest.approx(math.exp(-sum(manual) / len(manual)), rel=1e-4)


def test_answer_loss_scores_exactly_the_trained_tokens(tiny):
    from core.data.masking import encode_conversation

    messages = [{"role": "user", "content": "Ticket: my invoice is wrong"}, {"role": "assistant", "content": '{"urgency": "low"}'}]
    (row,) = scoring.conversation_nll(tiny.model, tiny.tokenizer, [messages], max_length=256)
    encoded = encode_conversation(messages, tiny.tokenizer)
    assert row.tokens == sum(1 for j, label in enumerate(encoded.labels) if label != -100 and j > 0) > 0
    manual = _manual_logprobs(tiny.model, encoded.input_ids)
    expected = -sum(manual[j - 1] for j, label in enumerate(encoded.labels) if label != -100 and j > 0)
    assert row.nll == pytest.approx(expected, rel=1e-4)


def test_batched_generation_equals_one_by_one(tiny):
    prompts = [generation.prompt_ids([{"role": "user", "content": text}], tiny.tokenizer)
               for text in ("Hi", "A much longer prompt here, with more words")]
    batched = generation.greedy_answers(tiny.model, tiny.tokenizer, prompts, max_new_tokens=6, batch_size=2)
    single = [generation.greedy_answers(tiny.model, tiny.tokenizer, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == single


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_interval_contains_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small = rng.binomial(1, 0.6, size=30).astype(float)
    large = rng.binomial(1, 0.6, size=3000).astype(float)
    a, b = stats.mean_interval(small, seed=0), stats.mean_interval(large, seed=0)
    assert a.low <= small.mean() <= a.high and b.low <= large.mean() <= b.high
    assert (b.high - b.low) < (a.high - a.low) / 5
    assert stats.mean_interval(small, seed=0) == a  # seeded: the same interval every time


def test_paired_bootstrap_sees_a_consistent_gain_that_unpaired_noise_hides():
    rng = np.random.default_rng(2)
    base = rng.normal(0.5, 0.3, size=40)
    tuned = base + 0.05  # the same examples, each a little better
    delta = stats.paired_delta_interval(base, tuned)
    assert delta.value == pytest.approx(0.05) and delta.low > 0
    assert delta.high - delta.low < 1e-9  # every resample sees the same +0.05


def test_perplexity_change_interval():
    nll, tokens = [10.0, 12.0, 8.0], [5, 6, 4]
    same = stats.perplexity_change_interval(nll, tokens, nll, tokens)
    assert same.value == pytest.approx(0.0) and same.low == pytest.approx(0.0)
    worse = stats.perplexity_change_interval(nll, tokens, [n + t * math.log(1.1) for n, t in zip(nll, tokens)], tokens)
    assert worse.value == pytest.approx(10.0)
    assert stats.perplexity_interval(nll, tokens).value == pytest.approx(math.exp(30 / 15))


# ---------------------------------------------------------------- verdict


def _iv(value, low=None, high=None):
    return Interval(value, value if low is None else low, value if high is None else high, 50)


def test_verdict_improved():
    v = decide("ft", _iv(20, 10, 30), _iv(-1, -4, 2), _iv(3, 1, 5))
    assert v.verdict == "improved" and "improved" in v.headline


def test_verdict_no_effect_when_task_interval_includes_zero():
    v = decide("ft", _iv(4, -2, 10), _iv(0.5, -2, 3), _iv(1, 0, 2))
    assert v.verdict == "no effect"
    assert any("Template page" in a for a in v.advice)


def test_verdict_forgetting_by_general_score_threshold():
    v = decide("ft", _iv(20, 10, 30), _iv(-3.5, -6, -1), _iv(2, 0, 4), forgetting_threshold=3)
    assert v.verdict == "forgetting"
    advice = " ".join(v.advice).lower()
    for hint in ("learning rate", "rank", "epochs", "replay", "checkpoint"):
        assert hint in advice
    # exactly at the limit is not forgetting; a looser threshold accepts the same drop
    assert decide("ft", _iv(20, 10, 30), _iv(-3.0), None, forgetting_threshold=3).verdict == "improved"
    assert decide("ft", _iv(20, 10, 30), _iv(-3.5), None, forgetting_threshold=5).verdict == "improved"


def test_verdict_forgetting_by_perplexity_and_best_checkpoint_advice():
    v = decide("final", _iv(20, 10, 30), _iv(0), _iv(25, 15, 35), perplexity_threshold=10, best_checkpoint="step 20")
    assert v.verdict == "forgetting" and "step 20" in v.advice[0]


# ---------------------------------------------------------------- report from per-example results


def _result(label, role, task_scores, acc_norm, nll_scale=1.0, step=None):
    from core.evaluate.report import ModelResult

    rows = [{"task_score": s, "json_valid": s, "exact_match": 0.0, "rouge_l": s} for s in task_scores]
    return ModelResult(label=label, role=role, source={"kind": "embedded"},
                       answers=[f"<script>alert({i})</script>" for i in range(len(rows))],
                       task_rows=rows, task_nll=[(10.0 * nll_scale, 5)] * len(rows),
                       text_nll=[(20.0 * nll_scale, 10), (30.0 * nll_scale, 10)],
                       mc=[{"logliks": [0, 0], "acc": a, "acc_norm": a} for a in acc_norm], step=step)


def test_report_verdicts_checkpoints_and_safe_exports():
    from core.evaluate.report import build_report, metric_defs, render_html, render_markdown, top_changes

    n = 20
    base = _result("base", "base", [0.0] * n, [1.0] * n)
    early = _result("step 10", "variant", [1.0] * 10 + [0.0] * 10, [1.0] * n, step=10)
    shifted = _result("step 15", "variant", [1.0] * 19 + [0.0], [1.0] * n, nll_scale=1.2, step=15)  # perplexity +65%
    late = _result("step 20", "variant", [1.0] * 18 + [0.0] * 2, [1.0] * 18 + [0.0] * 2, nll_scale=1.05, step=20)
    examples = [{"position": i, "row": i, "prompt": "<b>ticket</b>", "reference": "{}"} for i in range(n)]
    report = build_report(spec={"name": "t", "bootstrap_samples": 200, "seed": 0, "forgetting_threshold": 3.0},
                          task={"source": "x.jsonl", "n": n, "n_rows": n, "is_json": True, "fields": {}},
                          general={"text_set": "t", "mc_set": "m", "n_texts": 2, "n_mc": n},
                          results=[base, early, shifted, late], examples=examples, defs=metric_defs([], True), wall_seconds=1.0)
    verdicts = {v["label"]: v for v in report["verdicts"]}
    assert verdicts["step 10"]["verdict"] == "improved"
    assert verdicts["step 20"]["verdict"] == "forgetting"  # general score −10 points
    assert verdicts["step 15"]["verdict"] == "forgetting" and "perplexity" in " ".join(verdicts["step 15"]["reasons"])
    # the best checkpoint without forgetting: step 15 scores higher on the task, but it forgot
    assert "step 10" in verdicts["step 20"]["advice"][0] and "step 10" in verdicts["step 15"]["advice"][0]
    assert report["comparisons"]["step 20"]["general_perplexity"]["value"] == pytest.approx(100 * (math.exp(0.05 * 2.5) - 1))
    assert [p["step"] for p in report["checkpoints"]] == [0, 10, 15, 20]
    regressions, wins = top_changes(report, "step 20")
    assert not regressions and len(wins) == 5 and wins[0]["delta"] == 1.0
    html_text = render_html(report)
    assert "<script>" not in html_text and "&lt;script&gt;" in html_text and "<b>ticket</b>" not in html_text
    markdown = render_markdown(report)
    assert "forgetting" in markdown and "| Task score |" in markdown
