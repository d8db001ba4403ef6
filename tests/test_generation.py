"""core.generation: the one generation path (prompt rule, lock, batched greedy, streaming) and the one
JSON-validity rule that the Decide baseline and the forgetting report share."""
from __future__ import annotations

import copy
import re
import threading
import time

import pytest

from conftest import ROOT
from core import decide, generation, scorers
from core.data.masking import inference_prompt_ids
from core.evaluate.task import describe_task, load_task, score_answer
from core.generation import GENERATION_LOCK, GenerationSettings, greedy_answers, plain_prompt, prompt_ids

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Ticket: the printer is on fire"}]


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    from core.models import ModelSource, load_model

    return load_model(ModelSource("local", str(tiny_llama_dir)))


def test_prompt_ids_use_the_chat_template_the_trainer_renders(embedded_tokenizer):
    assert prompt_ids(MESSAGES, embedded_tokenizer) == inference_prompt_ids(MESSAGES, embedded_tokenizer)


def test_a_tokenizer_without_a_template_gets_the_one_plain_fallback(embedded_tokenizer):
    bare = copy.copy(embedded_tokenizer)
    bare.chat_template = None
    assert plain_prompt(MESSAGES) == "system: Be brief.\nuser: Ticket: the printer is on fire\nassistant:"
    assert prompt_ids(MESSAGES, bare) == bare(plain_prompt(MESSAGES))["input_ids"]


@pytest.mark.slow
def test_chat_greedy_and_batched_greedy_give_the_same_answer(embedded_dir):
    """The real embedded model (a random tiny one only says newlines): Chat at temperature 0 and the Evaluate /
    Decide batch path read the same prompt ids, so they give the same words."""
    from core.models import ModelSource, load_model

    loaded = load_model(ModelSource("local", str(embedded_dir)))
    history = [{"role": "user", "content": "Name three colours."}]
    chat = generation.generate_text(loaded, history, GenerationSettings(temperature=0.0, max_new_tokens=12))
    (batched,) = greedy_answers(loaded.model, loaded.tokenizer, [prompt_ids(history, loaded.tokenizer)], max_new_tokens=12)
    assert chat.strip() == batched and len(batched.split()) >= 2


def test_batched_greedy_waits_for_the_one_lock(tiny):
    prompts = [prompt_ids([{"role": "user", "content": "Hi"}], tiny.tokenizer)]
    answers: list = []
    with GENERATION_LOCK:  # e.g. a chat reply being streamed in this process
        thread = threading.Thread(target=lambda: answers.extend(greedy_answers(tiny.model, tiny.tokenizer, prompts, max_new_tokens=2)))
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive() and not answers
    thread.join(60)
    assert len(answers) == 1


def test_a_stop_request_between_batches_raises_stopped(tiny):
    prompts = [prompt_ids([{"role": "user", "content": "Hi"}], tiny.tokenizer)] * 3
    done = []
    with pytest.raises(generation.Stopped):
        greedy_answers(tiny.model, tiny.tokenizer, prompts, max_new_tokens=2, batch_size=1,
                       should_stop=lambda: len(done) >= 1, on_progress=done.append)
    assert done == [1]


def test_decide_baseline_and_the_forgetting_report_share_one_json_validity_rule(monkeypatch, tiny):
    """The wizard's measured baseline and the report must not disagree on one answer."""
    chatty = 'Sure! Here is the JSON: {"urgency": "high"}'
    monkeypatch.setattr(decide, "greedy_chat_answers", lambda loaded, conversations, **kw: [chatty] * len(conversations))
    rows = [{"messages": [{"role": "user", "content": f"Ticket {i}"}, {"role": "assistant", "content": '{"urgency": "high"}'}]}
            for i in range(3)]
    baseline = decide.prompt_baseline(tiny, rows, n=3, shots=(0,))
    setup = describe_task(load_task(ROOT / "assets" / "demo" / "eval.jsonl", 2, 0).examples)
    report_row = score_answer(chatty, '{"urgency": "high"}', setup)
    assert baseline.json_validity == {"0-shot": 0.0} and report_row["json_valid"] == 0.0 == scorers.json_validity(chatty)
    assert baseline.scores["0-shot"] == 1.0 and scorers.holds_json_object(chatty) == 1.0  # the named lenient variant


def test_only_the_generation_module_calls_generate():
    """One generation path: model.generate appears in core.generation (and the pruning latency timer only)."""
    callers = set()
    for path in (ROOT / "core").rglob("*.py"):
        if re.search(r"(?<!compiled)\.generate\(", path.read_text(encoding="utf-8")):  # not Jinja's template.generate
            callers.add(path.relative_to(ROOT).as_posix())
    assert callers == {"core/generation.py", "core/prune/measure.py"}, callers
    for path in (ROOT / "core").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if path.name != "generation.py":
            assert "assistant:\"" not in text and "\\nassistant:" not in text, f"{path}: a second plain-prompt fallback"
