"""core.distill: the loss against hand-computed values, tokenizer checks, the shallow student, the job lowers the KL."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch

from core.distill.loss import distillation_loss, kl_teacher_student, softened_probs
from core.distill.student import kept_layer_indices, shallow_student
from core.distill.tokenizers import check_tokenizers
from core.runs.jobs import JobContext


def test_temperature_two_softens_4_2_0_to_the_textbook_values():
    probs = softened_probs(torch.tensor([4.0, 2.0, 0.0]), 2.0)
    assert [round(p, 2) for p in probs.tolist()] == [0.67, 0.24, 0.09]
    assert softened_probs(torch.tensor([4.0, 2.0, 0.0]), 1.0)[0] > 0.86  # sharper at T = 1


def test_loss_matches_a_hand_computed_value():
    teacher = torch.tensor([[[4.0, 2.0, 0.0], [0.0, 0.0, 0.0]]])
    student = torch.tensor([[[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[0, -100]])  # one trained position (no shift in this check)
    out = distillation_loss(student, teacher, labels, temperature=2.0, alpha=0.5, shift=False)
    e = [math.exp(2.0), math.exp(1.0), 1.0]
    p_t = [x / sum(e) for x in e]
    kl = sum(p * math.log(p / (1 / 3)) for p in p_t)  # the student is uniform at every temperature
    ce = math.log(3)  # −log(1/3) for the gold token 0
    assert out.tokens == 1
    assert float(out.kl) == pytest.approx(kl, rel=1e-5)
    assert float(out.ce) == pytest.approx(ce, rel=1e-5)
    assert float(out.loss) == pytest.approx(0.5 * ce + 0.5 * 4 * kl, rel=1e-5)  # (1 − λ)·CE + λ·T²·KL
    assert float(out.loss) == pytest.approx(1.0818, abs=1e-3)


def test_loss_shifts_and_masks_like_causal_lm_training():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    labels = torch.full((2, 5), -100)
    labels[0, 3], labels[1, 4] = 2, 5
    out = distillation_loss(s, t, labels, temperature=1.0, alpha=1.0)
    expected = (kl_teacher_student(t[0, 2], s[0, 2], 1.0) + kl_teacher_student(t[1, 3], s[1, 3], 1.0)) / 2
    assert out.tokens == 2 and float(out.kl) == pytest.approx(float(expected), rel=1e-5)
    assert float(distillation_loss(t, t, labels, alpha=1.0).loss) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="vocabularies differ"):
        distillation_loss(torch.randn(1, 3, 5), torch.randn(1, 3, 6), torch.zeros(1, 3, dtype=torch.long))


def test_padded_output_layers_are_compared_over_the_tokenizers_ids():
    """Qwen2.5-7B -> 0.5B: one tokenizer, logit widths 152,064 and 151,936. Here: 140 and 136 logits, 130 tokens."""
    torch.manual_seed(1)
    teacher, student = torch.randn(2, 6, 140), torch.randn(2, 6, 136)
    labels = torch.randint(0, 130, (2, 6))
    labels[0, :2] = -100
    padded = distillation_loss(student, teacher, labels, temperature=2.0, alpha=0.5, vocab_size=130)
    sliced = distillation_loss(student[..., :130], teacher[..., :130], labels, temperature=2.0, alpha=0.5)
    for name in ("loss", "ce", "kl"):
        assert float(getattr(padded, name)) == pytest.approx(float(getattr(sliced, name)), rel=1e-6)
    assert padded.tokens == sliced.tokens == 9
    teacher[..., 130:] = 50.0  # padding rows are not compared: whatever they hold changes nothing
    assert float(distillation_loss(student, teacher, labels, vocab_size=130).loss) == pytest.approx(float(padded.loss), rel=1e-6)
    with pytest.raises(ValueError, match="narrower than the tokenizer"):
        distillation_loss(student, teacher, labels, vocab_size=138)


def test_tokenizer_check_accepts_one_tokenizer_on_output_layers_of_different_widths(embedded_tokenizer):
    n = len(embedded_tokenizer)
    padded = check_tokenizers(embedded_tokenizer, embedded_tokenizer, teacher_logits=n + 64, student_logits=n + 8)
    assert padded.compatible and padded.compare_width == n and padded.padded_logits and not padded.problems
    assert not check_tokenizers(embedded_tokenizer, embedded_tokenizer, teacher_logits=n, student_logits=n).padded_logits
    narrow = check_tokenizers(embedded_tokenizer, embedded_tokenizer, teacher_logits=n + 8, student_logits=n - 2)
    assert not narrow.compatible and narrow.compare_width is None and f"student outputs {n - 2} logits" in narrow.problems[0]
    from core.distill.job import refuse_other_tokenizers
    from core.runs.jobs import JobError

    refuse_other_tokenizers(padded, "logit")  # logit distillation slices to the tokenizer's ids
    with pytest.raises(JobError, match="Use logit distillation"):  # TRL's GKD compares the full layers
        refuse_other_tokenizers(padded, "on_policy")


def _word_tokenizer(words: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def test_tokenizer_check_requires_the_same_token_ids(embedded_tokenizer):
    same = check_tokenizers(embedded_tokenizer, embedded_tokenizer)
    assert same.compatible and same.identical_vocab and same.sample_mismatches == 0
    words = ["[UNK]", "the", "quick", "brown", "fox"]
    a, b = _word_tokenizer(words), _word_tokenizer([words[0], words[2], words[1], words[3], words[4]])
    swapped = check_tokenizers(a, b, sample="the quick fox")
    assert not swapped.compatible and "map to different ids" in swapped.problems[0]
    bigger = check_tokenizers(a, _word_tokenizer(words + ["jumps"]), sample="the fox")
    assert not bigger.compatible and "5 tokens" in bigger.problems[0] and "6" in bigger.problems[0]


def four_layer_teacher(folder: Path, tokenizer) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_shallow_student_keeps_every_other_layer_from_the_teacher(tmp_path, embedded_tokenizer):
    from core.models import ModelSource, load_model, save_model

    assert kept_layer_indices(30, 2) == list(range(0, 30, 2)) + [29]
    assert kept_layer_indices(4, 2) == [0, 2, 3]
    teacher = load_model(ModelSource("local", str(four_layer_teacher(tmp_path / "teacher", embedded_tokenizer)))).model
    student = shallow_student(teacher, 2)
    assert student.config.num_hidden_layers == 3 and len(teacher.model.layers) == 4
    for new, old in zip(student.model.layers, [0, 2, 3]):
        torch.testing.assert_close(new.mlp.up_proj.weight, teacher.model.layers[old].mlp.up_proj.weight)
        assert new.mlp.up_proj.weight.data_ptr() != teacher.model.layers[old].mlp.up_proj.weight.data_ptr()
    folder = save_model(student, embedded_tokenizer, tmp_path / "student")
    reloaded = load_model(ModelSource("local", str(folder)))
    assert reloaded.info.parameters < sum(p.numel() for p in teacher.parameters())
    ids = embedded_tokenizer("Hello there", return_tensors="pt")["input_ids"]
    out = reloaded.model.generate(ids, max_new_tokens=3, min_new_tokens=3, do_sample=False)  # KV cache per new layer index
    assert out.shape[1] == ids.shape[1] + 3


def test_temperature_table_spreads_the_mass(tiny_llama_dir):
    from core.distill.temperature import entropy_by_temperature, next_token_logits, temperature_table
    from core.models import ModelSource, load_model

    loaded = load_model(ModelSource("local", str(tiny_llama_dir)))
    logits = next_token_logits(loaded.model, loaded.tokenizer, "Name a colour.")
    rows = temperature_table(logits, loaded.tokenizer, (1, 2, 4), top_k=5)
    assert len(rows) == 6 and rows[-1]["token"] == "(all other tokens)"
    assert set(rows[0]) == {"token", "id", "T=1", "T=2", "T=4"}
    assert rows[0]["T=1"] >= rows[1]["T=1"]
    for t in ("T=1", "T=2", "T=4"):
        assert sum(r[t] for r in rows) == pytest.approx(1.0, abs=1e-3)
    entropy = entropy_by_temperature(logits)
    assert entropy["T=1"] < entropy["T=2"] < entropy["T=4"]


def test_short_distillation_lowers_the_held_out_kl(tmp_path, workspace, embedded_tokenizer, tiny_llama_dir):
    from core.distill.job import run
    from core.models import ModelSource, load_model

    teacher = four_layer_teacher(tmp_path / "teacher", embedded_tokenizer)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows = []
    ctx = JobContext.in_process(run_dir, log=logging.getLogger("test"),
                                spec={"kind": "distill", "teacher": {"kind": "local", "ref": str(teacher)}, "steps": 10, "batch_size": 2,
                           "student": "model", "student_model": {"kind": "local", "ref": str(tiny_llama_dir)}, "alpha": 0.9,
                           "max_length": 192, "max_rows": 24, "learning_rate": 5e-3, "warmup_steps": 1, "evaluate": False})
    ctx.metrics = lambda **row: rows.append(row)
    result = run(ctx)
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert {"loss", "ce", "kl", "lr", "tokens_per_s"} <= set(rows[0])
    assert result["held_out_kl_end"] < 0.7 * result["held_out_kl_start"], result  # a different random student learns the teacher
    assert result["student_parameters"] < result["teacher_parameters"]
    student = load_model(ModelSource("local", result["student_dir"]))
    assert student.model.config.num_hidden_layers == 2


def test_logit_distillation_into_a_student_with_a_padded_output_layer(tmp_path, workspace, embedded_tokenizer, tiny_llama_dir):
    from core.distill.job import run
    from core.models import ModelSource, load_model

    teacher = four_layer_teacher(tmp_path / "teacher", embedded_tokenizer)
    padded = load_model(ModelSource("local", str(tiny_llama_dir))).model
    padded.resize_token_embeddings(len(embedded_tokenizer) + 8)  # like Qwen2.5-0.5B: rows past the tokenizer
    padded.save_pretrained(tmp_path / "student")
    embedded_tokenizer.save_pretrained(tmp_path / "student")
    (tmp_path / "run").mkdir()
    rows = []
    ctx = JobContext.in_process(tmp_path / "run", log=logging.getLogger("test"),
                                spec={"kind": "distill", "teacher": {"kind": "local", "ref": str(teacher)}, "steps": 3, "batch_size": 2,
                                      "student": "model", "student_model": {"kind": "local", "ref": str(tmp_path / "student")},
                                      "max_length": 128, "max_rows": 6, "learning_rate": 5e-3, "warmup_steps": 0, "evaluate": False})
    ctx.metrics = lambda **row: rows.append(row)
    result = run(ctx)
    check = json.loads((tmp_path / "run" / "tokenizer_check.json").read_text())
    assert check["compatible"] and check["compare_width"] == len(embedded_tokenizer)
    assert check["student_logits"] == len(embedded_tokenizer) + 8 and check["teacher_logits"] == len(embedded_tokenizer)
    assert [r["step"] for r in rows] == [1, 2, 3] and all(math.isfinite(r["kl"]) for r in rows)
    assert result["steps_done"] == 3 and math.isfinite(result["held_out_kl_end"])
    saved = load_model(ModelSource("local", result["student_dir"])).model
    assert saved.config.vocab_size == len(embedded_tokenizer) + 8


def test_distill_runs_as_a_job_through_the_worker_and_is_scored(tmp_path, workspace, embedded_tokenizer):
    from core import runs

    teacher = four_layer_teacher(tmp_path / "teacher", embedded_tokenizer)
    run_dir = runs.create_run_from_dict({"kind": "distill", "teacher": {"kind": "local", "ref": str(teacher)}, "steps": 2,
                                         "batch_size": 1, "max_rows": 4, "max_length": 192, "eval_rows": 2}, name="probe")
    runs.launch(run_dir)
    status = runs.wait(run_dir, timeout=300)
    assert status.state == "succeeded", status.error + runs.log_tail(run_dir)
    assert status.result["student"] == "teacher layers [0, 2, 3] of 4"
    assert [r["step"] for r in runs.read_all_metrics(run_dir / runs.METRICS_FILE)] == [1, 2]
    assert (run_dir / "student" / "config.json").is_file() and (run_dir / "tokenizer_check.json").is_file()
    assert status.result["verdict"].startswith("student")  # the student scored against the teacher
    assert status.result["reference_general_score"] is not None and status.result["general_score"] is not None
    report = runs.read_result(run_dir / "eval", "evaluate")
    assert [m["label"] for m in report["models"]] == ["base", "student"]
    assert report["spec"]["base"] == {"kind": "local", "ref": str(teacher)}


def _hardware_with_bf16(monkeypatch, bf16: bool) -> None:
    import dataclasses

    import core.hardware

    actual = core.hardware.detect()
    monkeypatch.setattr(core.hardware, "detect", lambda: dataclasses.replace(actual, bf16=bf16))


@pytest.mark.parametrize(("precision", "native_bf16", "expected"), [("auto", True, torch.bfloat16), ("auto", False, torch.float32),
                                                                    ("fp32", True, torch.float32)])
def test_logit_steps_run_at_the_train_jobs_precision(monkeypatch, tmp_path, workspace, embedded_tokenizer, precision, native_bf16,
                                                     expected):
    """Like the Train job: bf16 autocast over fp32 weights where the hardware computes bf16 — a matched budget."""
    import core.distill.job as job
    from core.models import ModelSource, load_model

    _hardware_with_bf16(monkeypatch, native_bf16)
    seen: list[tuple] = []
    real_loss = job.distillation_loss

    def recording_loss(student_logits, teacher_logits, *args, **kwargs):
        seen.append((student_logits.dtype, teacher_logits.dtype))
        return real_loss(student_logits, teacher_logits, *args, **kwargs)

    monkeypatch.setattr(job, "distillation_loss", recording_loss)
    teacher = four_layer_teacher(tmp_path / "teacher", embedded_tokenizer)
    (tmp_path / "run").mkdir()
    ctx = JobContext.in_process(tmp_path / "run", log=logging.getLogger("test"),
                                spec={"kind": "distill", "teacher": {"kind": "local", "ref": str(teacher)}, "steps": 2, "batch_size": 1,
                                      "max_rows": 2, "max_length": 128, "precision": precision, "evaluate": False})
    ctx.metrics = lambda **row: None
    result = job.run(ctx)
    assert seen == [(expected, expected)] * 2
    assert result["precision"] == ("bf16 autocast" if expected == torch.bfloat16 else "fp32")
    saved = load_model(ModelSource("local", result["student_dir"])).model
    assert next(saved.parameters()).dtype == torch.float32  # the weights (and AdamW's updates) stay fp32


def test_on_policy_gets_the_same_precision_rule(monkeypatch, tmp_path, workspace, embedded_tokenizer):
    import core.train.gkd
    from core.distill.job import run

    _hardware_with_bf16(monkeypatch, True)
    settings_seen = []

    def fake_train_on_policy(student, teacher, tokenizer, features, settings, **kwargs):
        settings_seen.append(settings)
        return {"steps_done": settings.steps}

    monkeypatch.setattr(core.train.gkd, "train_on_policy", fake_train_on_policy)
    teacher = four_layer_teacher(tmp_path / "teacher", embedded_tokenizer)
    for precision in ("auto", "fp32"):
        (tmp_path / precision).mkdir()
        ctx = JobContext.in_process(tmp_path / precision, log=logging.getLogger("test"),
                                    spec={"kind": "distill", "method": "on_policy", "teacher": {"kind": "local", "ref": str(teacher)},
                                          "steps": 3, "max_rows": 2, "max_length": 128, "precision": precision, "evaluate": False})
        run(ctx)
    assert [s.bf16 for s in settings_seen] == [True, False]
    config = core.train.gkd.gkd_config(settings_seen[0], tmp_path / "out", "cpu")
    assert config.bf16 is True
    # TRL's SFTConfig defaults checkpointing on, which also makes GKD generate without a KV cache (10x slower)
    assert config.gradient_checkpointing is False


def test_distill_holds_rows_out_of_training_and_scores_the_student_on_them(tmp_path, workspace, embedded_tokenizer, tiny_llama_dir):
    from conftest import write_room_task
    from core.distill.job import HELD_OUT_FILE, run, split_data
    from core.distill.spec import DistillSpec
    from core.runs.jobs import read_result

    rooms = write_room_task(tmp_path / "rooms.jsonl", 20)
    prompt = lambda row: row["messages"][0]["content"]  # noqa: E731
    spec = DistillSpec(data="dataset", dataset_path=str(rooms), eval_fraction=0.2, seed=3)
    (tmp_path / "split").mkdir()
    train, held, task = split_data(spec, tmp_path / "split")
    assert len(held) == 4 and len(train) == 16 and task.origin == "held_out"
    assert not {prompt(r) for r in train} & {prompt(r) for r in held}, "held-out rows are never trained on"
    assert {prompt(r) for r in train} | {prompt(r) for r in held} == {f"Which room is meeting M{i:02d} in?" for i in range(20)}
    assert [prompt(json.loads(line)) for line in Path(task.path).read_text().splitlines()] == [prompt(r) for r in held]

    teacher = four_layer_teacher(tmp_path / "teacher", embedded_tokenizer)
    (tmp_path / "run").mkdir()
    ctx = JobContext.in_process(tmp_path / "run", log=logging.getLogger("test"),
                                spec={"kind": "distill", "teacher": {"kind": "local", "ref": str(teacher)}, "steps": 2, "batch_size": 2,
                                      "student": "model", "student_model": {"kind": "local", "ref": str(tiny_llama_dir)},
                                      "data": "dataset", "dataset_path": str(rooms), "eval_fraction": 0.2, "seed": 3,
                                      "max_length": 128, "eval_rows": 2})
    ctx.metrics = lambda **row: None
    run(ctx)
    result = read_result(tmp_path / "run", "distill")
    assert result["training_rows"] == 16 and result["task_dataset"]["path"] == str(tmp_path / "run" / HELD_OUT_FILE)
    assert result["evaluation"]["task_dataset"] == result["task_dataset"]
    report = read_result(tmp_path / "run" / "eval", "evaluate")
    assert report["task"]["source"] == result["task_dataset"]["path"] and report["task"]["n_rows"] == 4
    assert {e["prompt"] for e in report["examples"]} <= {prompt(r) for r in held}  # the verdict is on held-out rows only
