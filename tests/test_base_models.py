"""Base models (a tokenizer without a chat template): a proposed shipped template on the Train and Template pages,
recorded in the run card, and a pre-flight that turns every data / template error into a refusal."""
from __future__ import annotations

import json
import shutil

import pytest
from jobs_inline import jobs_inline_fixture  # noqa: F401 - a fixture
from streamlit.testing.v1 import AppTest

from conftest import ROOT
from core import runs
from core.data.templates import propose_template
from core.train.preflight import run_preflight
from core.train.spec import TrainSpec


@pytest.fixture(scope="session")
def base_model_dir(tiny_llama_dir, tmp_path_factory):
    """The tiny Llama with its chat template removed, as a base model's folder is."""
    folder = tmp_path_factory.mktemp("base-llama")
    shutil.copytree(tiny_llama_dir, folder, dirs_exist_ok=True)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def qa_file(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Say {w}"}, {"role": "assistant", "content": w}]}) + "\n"
                            for w in ("yes", "no", "maybe", "never")))
    return path


def _plain_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "</s>", "hello", "world", "###", "Instruction:", "Response:"])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", eos_token="</s>")


def test_the_proposal_follows_the_special_tokens(embedded_tokenizer):
    chatml = propose_template(embedded_tokenizer)
    assert chatml.name == "chatml" and "<|im_start|>" in chatml.reason
    plain = propose_template(_plain_tokenizer())
    assert plain.name == "alpaca" and "</s>" in plain.reason


def test_template_page_proposes_a_template_for_a_base_model(workspace, base_model_dir):
    at = AppTest.from_file(str(ROOT / "app_pages" / "template.py"), default_timeout=120)
    at.session_state["active_model"] = {"kind": "local", "ref": str(base_model_dir)}
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("Proposed: **chatml**" in i.value for i in at.info)
    assert at.selectbox(key="tpl_template").value == "chatml"
    assert int(next(m.value for m in at.metric if m.label == "Trained tokens")) > 0


@pytest.mark.slow
def test_train_page_proposes_a_template_and_the_run_trains_with_it(workspace, base_model_dir, qa_file, jobs_inline):
    at = AppTest.from_file(str(ROOT / "app_pages" / "train.py"), default_timeout=180)
    at.session_state["active_model"] = {"kind": "local", "ref": str(base_model_dir)}
    at.run()
    assert not at.exception
    assert any("has no chat template" in i.value and "Proposed: **chatml**" in i.value for i in at.info)
    assert at.text_input(key="train_form_chat_template").value == "chatml"
    at.selectbox(key="train_dataset_choice").set_value("File or folder path…").run()
    at.text_input(key="train_dataset_path").set_value(str(qa_file)).run()
    for key, value in {"max_steps": 1, "batch_size": 2, "max_length": 64, "lora_r": 4, "save_steps": 100}.items():
        at.number_input(key=f"train_form_{key}").set_value(value)
    at.number_input(key="train_form_eval_fraction").set_value(0.0)
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("chat template: chatml" in c.value for c in at.caption)
    at.button(key="train_start").click().run()
    run_dir = workspace / "runs" / at.session_state["train_run_id"]
    assert runs.wait(run_dir, timeout=240).state == "succeeded", runs.log_tail(run_dir)
    card = json.loads((run_dir / "training.json").read_text())
    assert card["chat_template"]["name"] == "chatml" and card["chat_template"]["source"] == "proposed"
    assert "<|im_start|>" in card["chat_template"]["reason"]
    assert (run_dir / "adapter" / "chat_template.jinja").is_file(), "chat / evaluate render prompts as training did"


def test_a_headless_run_on_a_base_model_gets_the_proposal_too(base_model_dir, qa_file):
    from core.hardware import detect

    check = run_preflight(TrainSpec(model={"kind": "local", "ref": str(base_model_dir)}, dataset=str(qa_file), eval_fraction=0.0), detect())
    assert check.refusal is None and check.template["source"] == "proposed" and check.trained_tokens > 0


@pytest.mark.parametrize("template, expected", [
    ("{% for message in messages %}{{ message['content'] ", "does not compile"),
    ("{{ raise_exception('no system role, please') }}", "Refusing to train"),
    ("{% for m in messages if m['role'] == 'user' %}{{ m['content'] }}{% endfor %}", "Refusing to train"),
])
def test_preflight_turns_template_errors_into_refusals(base_model_dir, qa_file, tmp_path, template, expected):
    from core.hardware import detect

    path = tmp_path / "broken.jinja"
    path.write_text(template)
    check = run_preflight(TrainSpec(model={"kind": "local", "ref": str(base_model_dir)}, dataset=str(qa_file),
                                    chat_template=str(path), eval_fraction=0.0), detect())
    assert check.refusal and expected in check.refusal, check.refusal


def test_preflight_refuses_an_unknown_template_name_and_a_missing_file(base_model_dir, qa_file, tmp_path):
    from core.hardware import detect

    check = run_preflight(TrainSpec(model={"kind": "local", "ref": str(base_model_dir)}, dataset=str(qa_file),
                                    chat_template="no-such-template"), detect())
    assert "neither a shipped template" in check.refusal
    check = run_preflight(TrainSpec(model={"kind": "local", "ref": str(base_model_dir)}, dataset=str(tmp_path / "missing.jsonl")), detect())
    assert check.refusal and "missing.jsonl" in check.refusal
