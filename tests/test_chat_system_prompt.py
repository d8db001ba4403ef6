"""Format like inference (issue 29 item 1): a run records the system prompt its training rows used, Chat pre-fills it
for the variants made from that run and keeps the user's edit, and the Ollama Modelfile's SYSTEM carries it."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from inprocess import run_in_process
from streamlit.testing.v1 import AppTest

from conftest import ROOT
from core import runs
from core.chat import training_format, variant_training_format
from core.data.summary import system_prompt_use
from core.generation import prompt_ids
from core.llamacpp import LlamaCppChoice
from core.llamacpp import available as llamacpp_available
from core.models import ModelSource, load_tokenizer

SYSTEM = "Turn the support ticket into JSON with the keys summary, next_step and urgency."
WORDS = ("red", "blue", "green", "yellow", "black", "white", "pink", "grey")


def _conversation(system: str | None, i: int) -> dict:
    turns = [{"role": "user", "content": f"Ticket {i}: my {WORDS[i % len(WORDS)]} printer jams."},
             {"role": "assistant", "content": json.dumps({"summary": "jam", "next_step": "rollers", "urgency": "low"})}]
    return {"messages": ([{"role": "system", "content": system}] if system else []) + turns}


def test_system_prompt_use_common_varies_none():
    common = system_prompt_use([_conversation(SYSTEM, i) for i in range(19)] + [_conversation(None, 19)])
    assert (common["kind"], common["prompt"], common["share"], common["with_system"]) == ("common", SYSTEM, 0.95, 19)

    below = system_prompt_use([_conversation(SYSTEM, i) for i in range(8)] + [_conversation(None, i) for i in range(2)])
    assert below["kind"] == "varies" and below["prompt"] is None, "80 % is not 'the' system prompt: nothing to pre-fill"

    varies = system_prompt_use([_conversation(f"You are helper number {i % 3}.", i) for i in range(12)])
    assert (varies["kind"], varies["prompt"], varies["distinct"]) == ("varies", None, 3)

    none = system_prompt_use([_conversation(None, i) for i in range(10)] + [{"text": "plain text row"}])
    assert (none["kind"], none["prompt"], none["conversations"]) == ("none", None, 10)

    pairs = [{"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Ticket {i}"}],
              "chosen": [{"role": "assistant", "content": "{}"}], "rejected": [{"role": "assistant", "content": "no"}]} for i in range(4)]
    assert system_prompt_use(pairs)["prompt"] == SYSTEM, "preference rows: the prompt's system message counts"


def _tiny_run(tiny_llama_dir: Path, tmp_path: Path, **changes) -> Path:
    from core.train.spec import TrainSpec

    data = tmp_path / "tickets.jsonl"
    data.write_text("".join(json.dumps(_conversation(SYSTEM, i)) + "\n" for i in range(8)))
    fields = dict(model={"kind": "local", "ref": str(tiny_llama_dir)}, dataset=str(data), max_steps=2, batch_size=4, max_length=96,
                  eval_fraction=0.0, learning_rate=1e-2, warmup_ratio=0.0, lora_r=4, lora_alpha=8, save_steps=100,
                  eval_on_start=False, name="tickets")
    run_dir, status = run_in_process(TrainSpec(**{**fields, **changes}))
    assert status.state == "succeeded", status.error
    return run_dir


def _finish_streams(at: AppTest) -> AppTest:
    deadline = time.time() + 90
    while at.session_state["chat_streams"] and time.time() < deadline:
        time.sleep(0.2)
        at.run()
    assert not at.session_state["chat_streams"], "the answers finished"
    return at


def _captions(at: AppTest) -> str:
    return " ".join(c.value for c in at.caption)


def test_a_run_records_its_system_prompt_and_chat_prefills_it_per_column(workspace, tiny_llama_dir, tmp_path):
    run_dir = _tiny_run(tiny_llama_dir, tmp_path, merge_after=True)
    card = runs.read_result(run_dir)
    assert card["inference"]["system_prompt"]["kind"] == "common" and card["inference"]["system_prompt"]["prompt"] == SYSTEM
    assert card["inference"]["chat_template"]["source"] == "tokenizer" and card["inference"]["reasoning"] == "train"
    adapter = run_dir / "adapter"
    for artifact in (adapter, run_dir / "merged", run_dir):  # the adapter, the merged model, the run folder: one run behind them
        assert training_format(artifact)["system_prompt"]["prompt"] == SYSTEM, artifact
    assert variant_training_format(ModelSource("local", str(tiny_llama_dir)).with_adapter(adapter))["run_id"] == run_dir.name
    assert variant_training_format(ModelSource("local", str(tiny_llama_dir))) is None, "a model outside the runs has no record"

    at = AppTest.from_file(str(ROOT / "app_pages" / "chat.py"), default_timeout=120)
    at.session_state["active_model"] = {"kind": "local", "ref": str(tiny_llama_dir)}
    at.session_state["chat_adapter"] = str(adapter)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.text_area(key="chat_system_1").value == SYSTEM
    assert f"System prompt from run {run_dir.name}'s training rows" in _captions(at)
    assert at.text_area(key="chat_system_0").value == "", "the bare base model gets no training prompt"

    edited = SYSTEM + " Answer with JSON only."
    at.text_area(key="chat_system_1").set_value(edited).run()
    # leaving the page and coming back: Streamlit drops the widgets' state and keeps the page's own keys
    back = AppTest.from_file(str(ROOT / "app_pages" / "chat.py"), default_timeout=120)
    for key in ("active_model", "chat_adapter", "chat_columns", "chat_histories", "chat_streams"):
        back.session_state[key] = at.session_state[key]
    at = back.run()
    assert at.text_area(key="chat_system_1").value == edited, "the user's edit survives a page change"

    at.number_input(key="chat_max_new").set_value(4).run()
    at.chat_input(key="chat_prompt").set_value("My printer jams.").run()
    _finish_streams(at)
    histories = at.session_state["chat_histories"]
    assert sorted(histories) == [0, 1]
    tokenizer = load_tokenizer(ModelSource("local", str(tiny_llama_dir)).with_adapter(adapter))
    asked = [{"role": "system", "content": edited}, {"role": "user", "content": "My printer jams."}]
    assert histories[1][1]["stats"]["prompt_tokens"] == len(prompt_ids(asked, tokenizer)), "column 2 was asked with its system prompt"

    at.selectbox(key="chat_1_choice").set_value("Embedded default").run()
    assert not at.exception, [e.value for e in at.exception]
    assert 1 not in at.session_state["chat_histories"], "a new variant starts with an empty conversation"
    assert [t["role"] for t in at.session_state["chat_histories"][0]] == ["user", "assistant"], "the other column keeps its own"
    assert at.text_area(key="chat_system_1").value == "" and run_dir.name not in _captions(at)


@pytest.mark.skipif(not llamacpp_available(), reason="llama-cpp-python is not installed: no GGUF to export and load back")
def test_modelfile_and_gguf_chat_carry_the_training_system_prompt(workspace, tiny_llama_dir, tmp_path):
    from core.export import ollama
    from core.export.spec import ExportSpec

    train_dir = _tiny_run(tiny_llama_dir, tmp_path, chat_template="chatml")
    run_dir, status = run_in_process(ExportSpec(source_run=str(train_dir), formats=["gguf_f16", "modelfile"], min_agreement=0.0))
    result = json.loads((run_dir / "export.json").read_text())
    assert status.state == "succeeded", [c for a in result["artifacts"] for c in a["checks"] if not c["passed"]]
    text = (run_dir / "export" / "Modelfile").read_text()
    assert ollama.parse_modelfile(text)["system"] == SYSTEM, "SYSTEM is the training rows' prompt, not the template's default"
    modelfile_checks = next(a for a in result["artifacts"] if a["kind"] == "modelfile")["checks"]
    assert modelfile_checks and all(c["passed"] for c in modelfile_checks), modelfile_checks
    gguf = next(a["path"] for a in result["artifacts"] if a["kind"] == "gguf_f16")
    assert variant_training_format(LlamaCppChoice(gguf))["run_id"] == train_dir.name, "a GGUF exported from the run leads back to it"


def test_the_transcript_records_each_columns_own_system_prompt():
    from core.chat import transcript_jsonl
    from core.generation import GenerationSettings

    turns = [{"role": "user", "content": "q"}]
    text = transcript_jsonl([{"label": "column 1", "model": "base", "history": turns, "system": ""},
                             {"label": "column 2", "model": "tuned", "history": turns, "system": SYSTEM}], GenerationSettings())
    rows = [json.loads(line) for line in text.splitlines()]
    assert [r["settings"]["system_prompt"] for r in rows] == ["", SYSTEM]
