"""The distill job: teacher → student logit distillation (our loop) or on-policy distillation (TRL's GKD, in
core.train.gkd), with live metrics and general rows mixed in when replay is on; then the student is scored
against the teacher. Stop saves the student; relaunching continues from it (a fresh optimizer state)."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from core import hardware
from core.data.replay import prepare_answers
from core.distill.data import DEMO_EVAL, DEMO_TRAIN, batches, collate, encode_features, encode_rows, load_rows
from core.distill.loss import distillation_loss, kl_teacher_student, shared_vocabulary
from core.distill.spec import DistillSpec
from core.distill.student import kept_layer_indices, shallow_student
from core.distill.tokenizers import check_tokenizers
from core.models import ModelSource, load_model, merge_adapter_weights, model_file_size, save_model
from core.runs.jobs import JobContext, JobError
from core.train import gkd
from core.train.backends import cpu_bf16_autocast
from core.train.data import held_out
from core.transform_eval import TaskData, resolve_dataset, score_against
from core.workspace import atomic_write_text

STUDENT_DIR = "student"
STATE_FILE = "distill_state.json"
HELD_OUT_ROWS = 8  # rows of the held-out divergence batch
HELD_OUT_FILE = "heldout.jsonl"  # the rows split off the dataset: never trained on; the verdict's task rows


def lr_at(step: int, spec: DistillSpec) -> float:
    """Linear warm-up, then cosine decay to 10 % of the peak."""
    if spec.warmup_steps and step < spec.warmup_steps:
        return spec.learning_rate * (step + 1) / spec.warmup_steps
    span = max(1, spec.steps - spec.warmup_steps)
    progress = min(1.0, (step - spec.warmup_steps) / span)
    return spec.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def bf16_autocast(spec: DistillSpec) -> bool:
    """fp32 weights, forward passes under bf16 autocast where the hardware computes bf16 natively. On a CPU this is the
    Train job's rule (core.train.backends.choose_precision), so every variant of a comparison gets the same compute;
    on a GPU the Train job's full fine-tune keeps bf16 weights, where this keeps fp32 ones for AdamW's updates."""
    return cpu_bf16_autocast(spec.precision, bool(hardware.detect().bf16))


@torch.no_grad()
def held_out_kl(teacher: Any, student: Any, batch: dict, temperature: float, vocab_size: int | None = None) -> float:
    """Mean KL(teacher^T ‖ student^T) over the trained tokens of a fixed held-out batch (over the first vocab_size ids)."""
    mask = batch["labels"][:, 1:] != -100
    t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][mask]
    s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][mask]
    t, s = shared_vocabulary(t, s, vocab_size)
    return float(kl_teacher_student(t, s, temperature).mean())


def _device_batch(batch: dict, device: Any) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def build_student(spec: DistillSpec, teacher_model: Any, run_dir: Path, log) -> tuple[Any, Any, str]:
    """(student model, its tokenizer, description). A saved student in the run folder is resumed from."""
    saved = run_dir / STUDENT_DIR
    if (saved / ".complete").is_file():
        loaded = load_model(ModelSource("local", str(saved)), for_training=True)
        return loaded.model, loaded.tokenizer, f"resumed from {saved}"
    if spec.student == "model":
        loaded = load_model(spec.student_source, for_training=True)
        return loaded.model, loaded.tokenizer, spec.student_source.label
    n_layers = teacher_model.config.num_hidden_layers
    kept = kept_layer_indices(n_layers, spec.layer_stride)
    log.info("student: teacher layers %s of %d", kept, n_layers)
    return shallow_student(teacher_model, spec.layer_stride), None, f"teacher layers {kept} of {n_layers}"


def load_teacher(spec: DistillSpec) -> Any:
    """The teacher in eval mode with frozen weights; a fine-tuned teacher is distilled with its adapter merged."""
    teacher = load_model(spec.teacher_source)
    model = teacher.model
    if hasattr(model, "merge_and_unload") and spec.teacher_source.adapter:
        model = merge_adapter_weights(model, spec.teacher_source.adapter)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return teacher.tokenizer, model


def refuse_other_tokenizers(check, method: str) -> None:
    if check.compatible and check.padded_logits and method == "on_policy":
        raise JobError(f"On-policy distillation (GKD) compares the full output layers, and the teacher's has {check.teacher_logits} "
                       f"logits where the student's has {check.student_logits} (the same {check.compare_width}-token tokenizer, "
                       "padded differently). Use logit distillation, which compares them over the tokenizer's ids, or "
                       "sequence-level distillation.")
    if not check.compatible:
        name = "On-policy distillation (GKD)" if method == "on_policy" else "Logit distillation"
        raise JobError(f"{name} compares the teacher's and the student's next-token distributions token by token, so they "
                       "need the same tokenizer: " + " ".join(check.problems) + " Use sequence-level distillation instead "
                       "(the teacher writes the answers, the student trains on the text with its own tokenizer).")


def split_data(spec: DistillSpec, run_dir: Path) -> tuple[list[dict], list[dict], TaskData]:
    """(training rows, held-out rows, where the held-out rows are). The held-out rows are never trained on: the chosen
    eval_dataset; the demo's held-out split; or `eval_fraction` of the dataset's rows, split off (seeded) before training
    and written to <run>/heldout.jsonl for the verdict."""
    rows = load_rows(DEMO_TRAIN if spec.data == "demo" else resolve_dataset(spec.dataset_path), spec.max_rows)
    if spec.eval_dataset.strip():
        path = resolve_dataset(spec.eval_dataset)
        return rows, load_rows(path), TaskData(str(path), "chosen", f"your held-out dataset {spec.eval_dataset}")
    if spec.data == "demo":
        return rows, load_rows(DEMO_EVAL), TaskData(str(DEMO_EVAL), "held_out", "the demo ticket task's held-out rows")
    train, held = held_out(rows, spec.eval_fraction, spec.seed)
    if not held:
        raise ValueError(f"{spec.dataset_path} has {len(rows)} row(s), too few to hold any out of training: give eval_dataset or more rows")
    path = atomic_write_text(run_dir / HELD_OUT_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in held))
    return train, held, TaskData(str(path), "held_out", f"{len(held)} of the {len(rows)} rows of {spec.dataset_path}, held out of training")


def training_data(spec: DistillSpec, tokenizer: Any, device: Any, run_dir: Path) -> tuple[list[dict], dict | None, dict, TaskData]:
    """(training features with replay mixed in, the replay record, a fixed batch of held-out rows on the device, the
    held-out task data)."""
    try:
        train_rows, held_rows, task = split_data(spec, run_dir)
        features, replay = encode_features(train_rows, tokenizer, max_length=spec.max_length,
                                           policy=spec.policy, with_prompt=spec.method == "on_policy",
                                           replay_fraction=spec.replay_fraction, replay_dataset=spec.replay_dataset, seed=spec.seed,
                                           replay_model=spec.teacher_source)
        held_out_rows = encode_rows(held_rows[:HELD_OUT_ROWS], tokenizer, max_length=spec.max_length, policy=spec.policy)
    except (FileNotFoundError, ValueError) as exc:
        raise JobError(f"Could not prepare the distillation data: {exc}") from None
    held_out = _device_batch(collate(held_out_rows, tokenizer.pad_token_id or 0), device)
    return features, replay, held_out, task


@torch.no_grad()
def held_out_divergence(spec: DistillSpec, teacher: Any, student: Any, batch: dict, vocab_size: int | None = None) -> float:
    """The loss the method minimises, on a fixed held-out batch: KL at T (logit) or the generalised JSD at β (on-policy)."""
    was_training = student.training
    student.eval()
    if spec.method == "logit":
        value = held_out_kl(teacher, student, batch, spec.temperature, vocab_size)
    else:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        value = float(gkd.generalized_jsd(student(**inputs).logits[:, :-1], teacher(**inputs).logits[:, :-1], batch["labels"][:, 1:],
                                          spec.gkd_beta))
    student.train(was_training)
    return value


def train_logit(ctx: JobContext, spec: DistillSpec, teacher: Any, student: Any, features: list[dict], pad_id: int,
                device: Any, start_step: int, vocab_size: int | None = None) -> int:
    """The logit-distillation loop (logits compared over the first vocab_size ids); returns the step reached."""
    rows = [(f["input_ids"], f["labels"]) for f in features]
    if spec.gradient_checkpointing:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=spec.learning_rate, weight_decay=0.0)
    stream = batches(rows, spec.batch_size, pad_id, seed=spec.seed, skip=start_step)
    step = start_step
    autocast = bf16_autocast(spec)
    while step < spec.steps and not ctx.stop_requested:
        batch = _device_batch(next(stream), device)
        lr = lr_at(step, spec)
        for group in optimizer.param_groups:
            group["lr"] = lr
        tick = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            with torch.no_grad():
                teacher_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            student_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        out = distillation_loss(student_logits, teacher_logits, batch["labels"], spec.temperature, spec.alpha,  # fp32 inside
                                vocab_size=vocab_size)
        out.loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        seconds = time.perf_counter() - tick
        tokens = int(batch["attention_mask"].sum())
        ctx.metrics(step=step, loss=float(out.loss.detach()), ce=float(out.ce), kl=float(out.kl), lr=lr, grad_norm=grad_norm,
                    tokens_per_s=tokens / seconds, trained_tokens=out.tokens)
        ctx.progress(0.05 + 0.75 * step / spec.steps, f"step {step}/{spec.steps} · loss {float(out.loss.detach()):.3f} · KL "
                                                      f"{float(out.kl):.4f}")
    return step


def train_gkd(ctx: JobContext, spec: DistillSpec, teacher: Any, student: Any, tokenizer: Any, features: list[dict],
              device: Any, start_step: int) -> tuple[int, dict]:
    """On-policy distillation through TRL's GKD trainer (core.train.gkd) for the steps still to do."""
    remaining = spec.steps - start_step
    if remaining <= 0:
        return start_step, {}
    settings = gkd.GKDSettings(steps=remaining, batch_size=spec.batch_size, learning_rate=spec.learning_rate,
                               warmup_steps=spec.warmup_steps if start_step == 0 else 0, lmbda=spec.gkd_lambda, beta=spec.gkd_beta,
                               temperature=spec.gkd_temperature, max_new_tokens=spec.max_new_tokens, max_length=spec.max_length,
                               seed=spec.seed + start_step, bf16=bf16_autocast(spec),
                               gradient_checkpointing=spec.gradient_checkpointing)

    def on_step(row: dict) -> None:
        step = start_step + row["step"]
        ctx.metrics(**{**row, "step": step})
        ctx.progress(0.05 + 0.75 * step / spec.steps, f"step {step}/{spec.steps} · JSD {row['loss']:.4f}"
                     + (" · on-policy" if row["on_policy"] else ""))

    totals = gkd.train_on_policy(student, teacher, tokenizer, features, settings, run_dir=ctx.run_dir, device=str(device.type),
                                 on_step=on_step, should_stop=lambda: ctx.stop_requested)
    return start_step + totals.pop("steps_done"), totals


def run(ctx: JobContext) -> dict:
    spec: DistillSpec = ctx.spec
    torch.manual_seed(spec.seed)
    state = ctx.read_json(STATE_FILE) or {}
    if spec.replay_fraction > 0:  # 'general' replays the teacher's own general answers: cached, else written first
        prepare_answers(ctx, spec.replay_dataset, spec.teacher_source, max_new_tokens=spec.replay_max_new_tokens,
                        prompts=spec.replay_prompts,
                        keep_unfinished=spec.replay_keep_unfinished, span=(0.0, 0.01))
    ctx.progress(0.01, "loading the teacher")
    tokenizer, teacher_model = load_teacher(spec)
    student, student_tok, described = build_student(spec, teacher_model, ctx.run_dir, ctx.log)
    check = check_tokenizers(tokenizer, student_tok or tokenizer, teacher_logits=teacher_model.config.vocab_size,
                             student_logits=student.config.vocab_size)
    ctx.write_json("tokenizer_check.json", check.as_dict())
    refuse_other_tokenizers(check, spec.method)
    device = next(teacher_model.parameters()).device
    student.to(device=device, dtype=torch.float32).train()  # AdamW updates vanish in half precision

    ctx.progress(0.03, "encoding the data")
    features, replay, held_out, task = training_data(spec, tokenizer, device, ctx.run_dir)
    width = check.compare_width  # the tokenizer's length: padding rows past it are not compared
    start_value = state.get("held_out_start", held_out_divergence(spec, teacher_model, student, held_out, width))
    start_step = int(state.get("step", 0))
    teacher_params = sum(p.numel() for p in teacher_model.parameters())
    student_params = sum(p.numel() for p in student.parameters())
    ctx.log.info("%s distillation: teacher %d params, student %d params (%s); %d rows%s; held-out divergence %.4f", spec.method,
                 teacher_params, student_params, described, len(features),
                 f" ({replay['replay_rows']} replay)" if replay else "", start_value)

    started = time.time()
    extra: dict = {}
    if spec.method == "logit":
        step = train_logit(ctx, spec, teacher_model, student, features, tokenizer.pad_token_id or 0, device, start_step, width)
    else:
        step, extra = train_gkd(ctx, spec, teacher_model, student, tokenizer, features, device, start_step)
    train_seconds = time.time() - started
    end_value = held_out_divergence(spec, teacher_model, student, held_out, width)
    ctx.progress(0.82, "saving the student")
    student.eval()
    student_dir = save_model(student, tokenizer, ctx.run_dir / STUDENT_DIR)
    ctx.write_json(STATE_FILE, {"step": step, "held_out_start": start_value})
    divergence = "kl" if spec.method == "logit" else "jsd"
    result = {
        "method": spec.method,
        "student_dir": str(student_dir),
        "student": described,
        "steps_done": step,
        "teacher_parameters": teacher_params,
        "student_parameters": student_params,
        "student_bytes": model_file_size(student_dir),
        "train_seconds": round(train_seconds, 2),
        "held_out_divergence": divergence,
        f"held_out_{divergence}_start": round(start_value, 5),
        f"held_out_{divergence}_end": round(end_value, 5),
        "precision": "bf16 autocast" if bf16_autocast(spec) else "fp32",
        "training_rows": len(features),
        "task_dataset": task.as_dict(),  # the held-out rows: the divergence above and the verdict below
        "replay": replay,
        **method_settings(spec),
        **extra,
    }
    del teacher_model, student
    if spec.evaluate and not ctx.stop_requested:
        ctx.progress(0.85, "scoring the student against the teacher")
        result["evaluation"] = score_against(spec.teacher_source, ModelSource("local", str(student_dir)), ctx, task=task,
                                             rows=spec.eval_rows, progress_span=(0.85, 1.0), label="student")
    ctx.write_result(result)
    return {k: v for k, v in result.items() if k not in ("evaluation", "replay")} | _headline(result.get("evaluation"))


def method_settings(spec: DistillSpec) -> dict:
    if spec.method == "logit":
        return {"temperature": spec.temperature, "alpha": spec.alpha}
    return {"gkd_lambda": spec.gkd_lambda, "gkd_beta": spec.gkd_beta, "gkd_temperature": spec.gkd_temperature,
            "max_new_tokens": spec.max_new_tokens}


def _headline(evaluation: dict | None) -> dict:
    if not evaluation:
        return {}
    return {k: evaluation[k] for k in ("verdict", "task_score", "general_score", "reference_task_score",
                                        "reference_general_score") if k in evaluation}
