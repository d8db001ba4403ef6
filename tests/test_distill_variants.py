"""Sequence-level and on-policy distillation, and replay: the teacher's dataset (rows, manifest, determinism),
acceptance of a student with another tokenizer, refusal of that student by logit and GKD distillation, GKD
lowering its loss, and replay mixing exact proportions into the Train job and the distill job."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from inprocess import run_succeeded
from test_distill import four_layer_teacher

from core.runs.jobs import JobContext, JobError

DEMO_ROWS = 300


def context(run_dir: Path, spec: dict, rows: list | None = None) -> JobContext:
    ctx = JobContext.in_process(run_dir, spec, log=logging.getLogger("test"))
    if rows is not None:
        ctx.metrics = lambda **row: rows.append(row)
    return ctx


# ---------------------------------------------------------------- replay


def test_replay_adds_exactly_the_share_asked_for():
    from core.data.replay import ReplayError, pick_rows, rows_needed

    assert rows_needed(300, 0.25) == 100 and rows_needed(300, 0.10) == 33 and rows_needed(300, 0.0) == 0
    assert 100 / (300 + 100) == 0.25 and abs(33 / 333 - 0.10) < 1 / 333
    picked, passes = pick_rows(50, 20, seed=1, trains=lambda i: i % 5 != 0)  # every 5th row trains nothing
    assert len(picked) == 20 == len(set(picked)) and passes == 0 and all(i % 5 for i in picked)
    assert pick_rows(50, 20, seed=1, trains=lambda i: i % 5 != 0) == (picked, 0)  # seeded
    cycled, passes = pick_rows(4, 10, seed=0, trains=lambda i: i != 2)  # 3 usable rows cycled to 10
    assert len(cycled) == 10 and set(cycled) == {0, 1, 3} and passes == 3
    with pytest.raises(ReplayError, match="trained token"):
        pick_rows(4, 2, seed=0, trains=lambda i: False)
    with pytest.raises(ReplayError, match="outside"):
        rows_needed(10, 0.95)


def test_the_shipped_replay_set_is_general_chat_and_not_the_evaluation_sets():
    from core.data.formats import load_dataset_file
    from core.data.replay import SHIPPED_FILE
    from core.evaluate.general import load_general_sets

    rows = load_dataset_file(SHIPPED_FILE).rows
    assert len(rows) >= 100
    assert all(r["messages"][-1]["role"] == "assistant" and r["messages"][-1]["content"].strip() for r in rows)
    general = load_general_sets(0, 0, seed=0)
    evaluation = " ".join([t["text"] for t in general.texts] + [i["context"] for i in general.mc_items]).lower().split()
    grams = {tuple(evaluation[i:i + 8]) for i in range(len(evaluation) - 7)}
    for row in rows:
        words = " ".join(m["content"] for m in row["messages"] if m["role"] == "user").lower().split()
        assert not any(tuple(words[i:i + 8]) in grams for i in range(len(words) - 7)), row  # no 8-word overlap with the eval


def test_train_data_mixes_replay_exactly_and_records_it(embedded_tokenizer, tmp_path):
    from core.train.data import prepare_data
    from core.train.spec import TrainSpec

    plain = prepare_data(TrainSpec(eval_fraction=0.1, max_length=256), embedded_tokenizer)
    task_rows = plain.train.n_kept
    mixed = prepare_data(TrainSpec(eval_fraction=0.1, max_length=256, replay_fraction=0.25), embedded_tokenizer)
    record = mixed.manifest()["replay"]
    assert record["task_rows"] == task_rows and record["replay_rows"] == round(0.25 * task_rows / 0.75)
    assert len(mixed.train.features) == task_rows + record["replay_rows"] == mixed.manifest()["train_rows"]
    assert abs(record["fraction"] - 0.25) <= 1 / len(mixed.train.features)
    assert record["source"] == "general" and len(record["sha256"]) == 64
    assert mixed.eval.n_kept == plain.eval.n_kept  # the held-out task rows stay task rows
    assert mixed.train.features[:task_rows] == plain.train.features
    assert prepare_data(TrainSpec(eval_fraction=0.1, max_length=256, replay_fraction=0.25),
                        embedded_tokenizer).manifest()["replay"] == record
    own = tmp_path / "own.jsonl"
    own.write_text("".join(json.dumps({"instruction": f"Say the number {i}.", "output": str(i)}) + "\n" for i in range(5)))
    small = prepare_data(TrainSpec(eval_fraction=0.0, max_length=256, replay_fraction=0.1, replay_dataset=str(own)), embedded_tokenizer)
    assert small.replay["replay_rows"] == round(0.1 * DEMO_ROWS / 0.9) == 33 and small.replay["distinct_replay_rows"] == 5
    assert small.replay["extra_passes"] == 6 and small.replay["path"] == str(own)
    with pytest.raises(ValueError, match="replay_fraction"):
        TrainSpec(replay_fraction=0.95)


@pytest.mark.slow
def test_the_train_job_records_replay_in_its_run_card(workspace, tiny_llama_dir):
    from core.data.replay import SHIPPED_FILE
    from core.train.spec import TrainSpec

    # the shipped file named explicitly: 'general' on this non-embedded base would replay its own answers (test_replay_base.py)
    spec = TrainSpec(model={"kind": "local", "ref": str(tiny_llama_dir)}, max_steps=2, batch_size=2, max_length=192,
                     eval_fraction=0.0, replay_fraction=0.1, replay_dataset=str(SHIPPED_FILE), save_steps=2)
    run_dir = run_succeeded(spec)  # the worker's code in this process: the worker process is not what this tests
    card = json.loads((run_dir / "training.json").read_text())
    assert card["spec"]["replay_fraction"] == 0.1
    assert card["data"]["replay"]["replay_rows"] == 33 and card["data"]["train_rows"] == DEMO_ROWS + 33
    assert card["data"]["replay"]["answered_by"] == "SmolLM2-135M-Instruct"  # the card says whose answers were replayed
    assert any("replay: 33 general rows" in note for note in card["data_notes"])


# ---------------------------------------------------------------- sequence-level


def other_tokenizer_student(folder: Path, chat_template: str) -> Path:
    """A tiny Llama whose tokenizer is a byte-level BPE of its own (512 tokens), with the ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from core.distill.data import DEMO_TRAIN, load_rows

    texts = [m["content"] for row in load_rows(DEMO_TRAIN) for m in row["messages"]]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=512, special_tokens=["<|im_start|>", "<|im_end|>", "<pad>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<pad>")
    tokenizer.chat_template = chat_template
    torch.manual_seed(5)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def answering_teacher(folder: Path, tokenizer) -> Path:
    """A random 4-layer Llama with an untied output layer: its greedy answers are words (a tied random model only
    repeats a newline, which the curation rightly drops as empty)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_curation_drops_empty_unfinished_and_non_json_answers():
    from core.distill.sequence import curation_operations
    from core.distill.spec import TeacherAnswersSpec
    from core.generation import Answer

    answers = [Answer('{"a": 1}', 5, True), Answer("", 1, True), Answer('{"a": 1', 8, False), Answer("not json", 3, True)]
    references = ['{"a": 2}'] * 4
    operations, json_only = curation_operations(TeacherAnswersSpec(), answers, references)
    assert json_only and {op.name: op.drop for op in operations} == {
        "drop_empty_answers": [1], "drop_unfinished_answers": [2], "drop_non_json_answers": [1, 2, 3]}
    operations, json_only = curation_operations(TeacherAnswersSpec(keep_unfinished=True), answers, ["plain text"] * 4)
    assert not json_only and {op.name: op.drop for op in operations} == {"drop_empty_answers": [1]}


def teacher_answers(run_dir: Path, teacher: Path, **spec) -> dict:
    from core.distill.sequence import run

    return run(context(run_dir, {"kind": "teacher_answers", "teacher": {"kind": "local", "ref": str(teacher)}, "max_rows": 6,
                                 "max_new_tokens": 8, "batch_size": 4, "keep_unfinished": True, "json_only": "no", **spec}))


def test_teacher_answers_become_a_curated_dataset_with_a_manifest(workspace, tmp_path, embedded_tokenizer):
    from core.data.formats import load_dataset_file

    teacher = answering_teacher(tmp_path / "teacher", embedded_tokenizer)
    first = teacher_answers(tmp_path / "run-a", teacher, student_stride=2)
    folder = Path(first["dataset_dir"])
    manifest = json.loads((folder / "manifest.json").read_text())
    rows = load_dataset_file(folder / "data.jsonl").rows
    assert first["prompts"] == 6 and first["rows"] == len(rows) == manifest["rows"] == 6  # random teacher: nothing is JSON
    assert first["dropped"] == {"drop_empty_answers": 0}
    generation = manifest["operations"][0]
    assert generation["name"] == "teacher_answers"
    assert generation["params"]["teacher"]["source"] == {"kind": "local", "ref": str(teacher)}
    assert generation["params"]["settings"] == {"decoding": "greedy", "max_new_tokens": 8, "batch_size": 4}
    assert manifest["source"]["path"].endswith("assets/demo/train.jsonl") and len(manifest["data"]["sha256"]) == 64
    demo = load_dataset_file(manifest["source"]["path"], limit=6).rows
    for row, original in zip(rows, demo):
        assert row["messages"][:-1] == original["messages"][:-1]  # the prompt is kept, the answer is the teacher's
        assert row["messages"][-1]["role"] == "assistant"
    again = teacher_answers(tmp_path / "run-b", teacher)
    assert json.loads((Path(again["dataset_dir"]) / "manifest.json").read_text())["data"]["sha256"] == manifest["data"]["sha256"]
    student = Path(first["student_dir"])
    assert json.loads((student / "config.json").read_text())["num_hidden_layers"] == 3


def test_json_curation_and_sampling_settings_are_recorded(workspace, tmp_path, embedded_tokenizer):
    teacher = answering_teacher(tmp_path / "teacher", embedded_tokenizer)
    sampled = {"decoding": "sampled", "temperature": 1.0, "top_p": 0.9, "seed": 3}
    a = teacher_answers(tmp_path / "a", teacher, **sampled)
    b = teacher_answers(tmp_path / "b", teacher, **sampled)
    c = teacher_answers(tmp_path / "c", teacher, **{**sampled, "seed": 4})
    data = lambda r: (Path(r["dataset_dir"]) / "data.jsonl").read_text()  # noqa: E731
    assert data(a) == data(b) != data(c)  # the same seed gives the same answers
    assert a["settings"] == {"decoding": "sampled", "max_new_tokens": 8, "batch_size": 4, "temperature": 1.0, "top_p": 0.9, "seed": 3}
    with pytest.raises(JobError, match="every row was dropped"):
        teacher_answers(tmp_path / "d", teacher, json_only="auto")  # the demo's answers are JSON; a random teacher's are not



@pytest.mark.slow
def test_sequence_level_accepts_a_student_with_another_tokenizer(workspace, tmp_path, embedded_tokenizer):
    from core.distill.tokenizers import check_tokenizers
    from core.models import ModelSource, load_tokenizer
    from core.train.spec import TrainSpec

    teacher = answering_teacher(tmp_path / "teacher", embedded_tokenizer)
    student = other_tokenizer_student(tmp_path / "student", embedded_tokenizer.chat_template)
    assert not check_tokenizers(embedded_tokenizer, load_tokenizer(ModelSource("local", str(student)))).compatible
    dataset = teacher_answers(tmp_path / "answers", teacher, max_rows=8)["dataset_dir"]
    run_dir = run_succeeded(TrainSpec(model={"kind": "local", "ref": str(student)}, dataset=dataset, method="full", max_steps=2,
                                      batch_size=2, max_length=256, eval_fraction=0.0, save_steps=2))  # in this process
    card = json.loads((run_dir / "training.json").read_text())
    assert card["data"]["train_rows"] == 8 and card["data"]["manifest_sha256"]  # trained on the teacher's curated dataset


# ---------------------------------------------------------------- logit / on-policy


@pytest.mark.parametrize("method", ["logit", "on_policy"])
def test_logit_and_on_policy_refuse_a_student_with_another_tokenizer(workspace, tmp_path, embedded_tokenizer, method):
    from core.distill.job import run

    teacher = four_layer_teacher(tmp_path / "teacher", embedded_tokenizer)
    student = other_tokenizer_student(tmp_path / "student", embedded_tokenizer.chat_template)
    ctx = context(tmp_path / "run", {"kind": "distill", "method": method, "teacher": {"kind": "local", "ref": str(teacher)},
                                     "student": "model", "student_model": {"kind": "local", "ref": str(student)}, "steps": 1,
                                     "evaluate": False})
    with pytest.raises(JobError, match="same tokenizer.*sequence-level"):
        run(ctx)
    assert not json.loads((tmp_path / "run" / "tokenizer_check.json").read_text())["compatible"]


def test_generalized_jsd_is_trls_over_the_labelled_positions_alone():
    """The held-out JSD hands TRL only the labelled positions: the same mean as TRL's own masking, blind to the rest."""
    from core.train.gkd import _gkd, generalized_jsd

    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 1, 2, -100, -100]])
    for beta in (0.0, 0.5, 1.0):
        expected = _gkd().GKDTrainer.generalized_jsd_loss(student, teacher, labels=labels, beta=beta)
        assert float(generalized_jsd(student, teacher, labels, beta)) == pytest.approx(float(expected), rel=1e-5)
        assert float(expected) > 0
    noisy = student.clone()
    noisy[labels == -100] = 50 * torch.randn(6, 11)  # what sits at unlabelled positions changes nothing
    assert float(generalized_jsd(noisy, teacher, labels, 0.5)) == pytest.approx(float(generalized_jsd(student, teacher, labels, 0.5)))
    assert float(generalized_jsd(student, teacher, torch.full((2, 5), -100), 0.5)) == 0.0  # nothing labelled: 0, as TRL
    # the training loss (GKD's compute_loss passes num_items_in_batch): the same value and the same gradient
    grads = []
    for loss_of in (lambda x: _gkd().GKDTrainer.generalized_jsd_loss(x, teacher, labels=labels, beta=0.5, num_items_in_batch=7),
                    lambda x: generalized_jsd(x, teacher, labels, 0.5, num_items_in_batch=7)):
        x = student.clone().requires_grad_(True)
        loss = loss_of(x)
        loss.backward()
        grads.append((float(loss), x.grad))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5) and torch.allclose(grads[0][1], grads[1][1], atol=1e-6)


@pytest.mark.slow
def test_on_policy_distillation_runs_through_gkd_and_lowers_its_loss(workspace, tmp_path, embedded_tokenizer, tiny_llama_dir):
    from core.data.replay import SHIPPED_FILE
    from core.distill.job import run
    from core.models import ModelSource, load_model

    teacher = four_layer_teacher(tmp_path / "teacher", embedded_tokenizer)
    rows: list[dict] = []
    result = run(context(tmp_path / "run", {
        "kind": "distill", "method": "on_policy", "teacher": {"kind": "local", "ref": str(teacher)}, "student": "model",
        "student_model": {"kind": "local", "ref": str(tiny_llama_dir)}, "steps": 8, "batch_size": 2, "max_rows": 16,
        "max_length": 192, "learning_rate": 5e-3, "warmup_steps": 1, "gkd_lambda": 0.5, "max_new_tokens": 8,
        # the random teacher cannot answer the general prompts itself, so the replay rows are named: the shipped set
        "replay_fraction": 0.2, "replay_dataset": str(SHIPPED_FILE), "evaluate": False}, rows))
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert any(r["on_policy"] for r in rows) and not all(r["on_policy"] for r in rows)  # λ = 0.5: both kinds of step
    assert result["on_policy_steps"] == sum(r["on_policy"] for r in rows) and result["generated_tokens"] > 0
    assert result["held_out_divergence"] == "jsd"
    assert result["held_out_jsd_end"] < 0.8 * result["held_out_jsd_start"], result
    recorded = json.loads((tmp_path / "run" / "result.json").read_text())
    assert recorded["replay"]["replay_rows"] == 4 and recorded["training_rows"] == 20  # 16 task rows + 4 general (20 %)
    assert recorded["gkd_lambda"] == 0.5 and recorded["gkd_beta"] == 0.5
    assert load_model(ModelSource("local", result["student_dir"])).model.config.num_hidden_layers == 2


# ---------------------------------------------------------------- the comparison


@pytest.mark.slow
def test_the_comparison_trains_every_variant_at_a_matched_budget_and_scores_it(workspace, tmp_path, embedded_tokenizer):
    from core.distill.compare import comparison_figure, run, table_csv, table_markdown
    from core.runs.jobs import read_spec_dict

    teacher = answering_teacher(tmp_path / "teacher", embedded_tokenizer)
    spec = {"kind": "distill_compare", "teacher": {"kind": "local", "ref": str(teacher)}, "steps": 2, "batch_size": 2, "max_rows": 6,
            "max_length": 192, "answer_tokens": 6, "keep_all_answers": True, "max_new_tokens": 6, "eval_rows": 2,
            "replay_fractions": [0.0, 0.25], "replay_variants": ["logit"]}
    summary = run(context(tmp_path / "cmp", spec))
    result = json.loads((tmp_path / "cmp" / "result.json").read_text())
    table = {r["student"]: r for r in result["table"]}
    assert list(table) == ["teacher", "student before distillation", "sequence-level", "logit", "logit + 25% replay", "on-policy (GKD)"]
    assert summary["students"] == 4
    for name in list(table)[2:]:
        row = table[name]
        assert row["steps"] == 2 and row["rows_seen"] == 4 and row["wall_s"] > 0, row
        assert row["task_score"] is not None and row["general_score"] is not None and row["general_perplexity"] > 0
        assert 0 <= row["agreement"] <= 100 and 0 <= row["agreement_rouge_l"] <= 100 and row["task_gain"] is not None
    for row in table.values():  # points, as on every other page (a fraction scaled twice read 7750 "points")
        assert 0 <= row["task_score"] <= 100 and 0 <= row["general_score"] <= 100, row
    assert table["teacher"]["agreement"] == 100 and table["teacher"]["general_vs_teacher"] == 0
    assert table["sequence-level"]["teacher_s"] > 0 and table["logit"]["teacher_s"] == 0
    assert [r["student"] for r in result["replay"]] == ["logit + 25% replay"]
    # every student is a run of its own kind, with the same budget
    students = tmp_path / "cmp" / "students"
    assert read_spec_dict(students / "sequence-replay00")["kind"] == "train"
    assert read_spec_dict(students / "sequence-replay00")["max_steps"] == 2
    assert read_spec_dict(students / "on_policy-replay00")["method"] == "on_policy"
    replayed = json.loads((students / "logit-replay25" / "result.json").read_text())
    assert replayed["replay"]["replay_rows"] == 2 and replayed["training_rows"] == 8  # round(0.25 · 6 / 0.75)
    assert replayed["replay"]["answered_by"] == "teacher"  # the teacher's own general answers, not the embedded model's
    assert table_csv(result["table"]).splitlines()[0].startswith("student,variant,replay,task_score")
    assert "## Replay" in table_markdown(result) and len(comparison_figure(result["table"]).data) == 3
    # started again, it reuses what is made instead of training again
    timings = json.loads((tmp_path / "cmp" / "timings.json").read_text())
    run(context(tmp_path / "cmp", spec))
    again = json.loads((tmp_path / "cmp" / "timings.json").read_text())
    assert again["logit"] - timings["logit"] < 1.0 and again["sequence-level"] - timings["sequence-level"] < 1.0
    assert again["evaluation"] - timings["evaluation"] < 1.0  # nor scoring the same students again


def test_replay_verdict_needs_a_task_gain_to_call_it_kept():
    from core.distill.compare import replay_summary, table_markdown

    def row(student, variant, replay, task_gain, general_vs_teacher):
        return {"student": student, "variant": variant, "replay": replay, "task_gain": task_gain, "general_vs_teacher": general_vs_teacher}

    table = [row("teacher", "teacher", 0.0, 40.0, 0.0), row("sequence-level", "sequence", 0.0, 20.0, -30.0),
             row("sequence-level + 10% replay", "sequence", 0.1, 18.0, -2.5),
             row("sequence-level + 25% replay", "sequence", 0.25, 17.9, -3.5),
             row("logit", "logit", 0.0, 0.0, -40.0), row("logit + 25% replay", "logit", 0.25, 0.0, -1.0)]
    verdicts = {r["student"]: (r["general_within_3_points"], r["keeps_task_gain"]) for r in replay_summary(table)}
    assert verdicts == {"sequence-level + 10% replay": (True, True),  # 18 >= 90 % of 20
                        "sequence-level + 25% replay": (False, False),  # 17.9 < 18, and 3.5 points below the teacher
                        "logit + 25% replay": (True, None)}  # no task gain without replay: nothing to keep
    text = table_markdown({"table": [], "replay": replay_summary(table)})
    assert "logit + 25% replay: general -1.0 points vs the teacher (within 3), task gain 0.0 (no gain to keep" in text
