"""The distill job: teacher → student logit distillation with live metrics, then the student is scored
against the teacher. Stop saves the student; relaunching continues from it (a fresh optimizer state)."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from core.distill.data import DEMO_EVAL, DEMO_TRAIN, batches, collate, encode_rows, load_rows
from core.distill.loss import distillation_loss, kl_teacher_student
from core.distill.spec import DistillSpec
from core.distill.student import kept_layer_indices, shallow_student
from core.distill.tokenizers import check_tokenizers
from core.models import ModelSource, load_model, merge_adapter_weights, model_file_size, save_model
from core.runs.jobs import JobContext, JobError

STUDENT_DIR = "student"
STATE_FILE = "distill_state.json"
HELD_OUT_ROWS = 8


def lr_at(step: int, spec: DistillSpec) -> float:
    """Linear warm-up, then cosine decay to 10 % of the peak."""
    if spec.warmup_steps and step < spec.warmup_steps:
        return spec.learning_rate * (step + 1) / spec.warmup_steps
    span = max(1, spec.steps - spec.warmup_steps)
    progress = min(1.0, (step - spec.warmup_steps) / span)
    return spec.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def held_out_kl(teacher: Any, student: Any, batch: dict, temperature: float) -> float:
    """Mean KL(teacher^T ‖ student^T) over the trained tokens of a fixed held-out batch."""
    mask = batch["labels"][:, 1:] != -100
    t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][mask]
    s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][mask]
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


def run(ctx: JobContext) -> dict:
    spec: DistillSpec = ctx.spec
    torch.manual_seed(spec.seed)
    state = ctx.read_json(STATE_FILE) or {}
    ctx.progress(0.01, "loading the teacher")
    teacher = load_model(spec.teacher_source)
    teacher_model = teacher.model
    if hasattr(teacher_model, "merge_and_unload") and spec.teacher_source.adapter:
        teacher_model = merge_adapter_weights(teacher_model, spec.teacher_source.adapter)  # distil the adapted model
    teacher_model.eval()
    for p in teacher_model.parameters():
        p.requires_grad_(False)
    student, student_tok, described = build_student(spec, teacher_model, ctx.run_dir, ctx.log)
    tokenizer = teacher.tokenizer
    check = check_tokenizers(tokenizer, student_tok or tokenizer, teacher_logits=teacher_model.config.vocab_size,
                             student_logits=student.config.vocab_size)
    ctx.write_json("tokenizer_check.json", check.as_dict())
    if not check.compatible:
        raise JobError("Teacher and student tokenizers are incompatible: " + " ".join(check.problems))
    device = next(teacher_model.parameters()).device
    student.to(device=device, dtype=torch.float32).train()  # AdamW updates vanish in half precision

    ctx.progress(0.03, "encoding the data")
    data_path = DEMO_TRAIN if spec.data == "demo" else spec.dataset_path
    try:
        rows = encode_rows(load_rows(data_path, spec.max_rows), tokenizer, max_length=spec.max_length, policy=spec.policy)
    except (FileNotFoundError, ValueError) as exc:
        raise JobError(f"Could not prepare the distillation data: {exc}") from None
    held_out_path = DEMO_EVAL if spec.data == "demo" else data_path
    held_out = collate(encode_rows(load_rows(held_out_path, HELD_OUT_ROWS), tokenizer, max_length=spec.max_length,
                                   policy=spec.policy)[:HELD_OUT_ROWS], tokenizer.pad_token_id or 0)
    held_out = _device_batch(held_out, device)
    student.eval()
    kl_start = state.get("held_out_kl_start", held_out_kl(teacher_model, student, held_out, spec.temperature))
    student.train()
    start_step = int(state.get("step", 0))
    teacher_params = sum(p.numel() for p in teacher_model.parameters())
    student_params = sum(p.numel() for p in student.parameters())
    ctx.log.info("teacher %d params, student %d params (%s); %d rows; held-out KL %.4f", teacher_params, student_params,
                 described, len(rows), kl_start)

    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=spec.learning_rate, weight_decay=0.0)
    stream = batches(rows, spec.batch_size, tokenizer.pad_token_id or 0, seed=spec.seed, skip=start_step)
    started = time.time()
    step = start_step
    while step < spec.steps and not ctx.stop_requested:
        batch = _device_batch(next(stream), device)
        lr = lr_at(step, spec)
        for group in optimizer.param_groups:
            group["lr"] = lr
        tick = time.perf_counter()
        with torch.no_grad():
            teacher_logits = teacher_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        student_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        out = distillation_loss(student_logits, teacher_logits, batch["labels"], spec.temperature, spec.alpha)
        out.loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        seconds = time.perf_counter() - tick
        tokens = int(batch["attention_mask"].sum())
        ctx.metrics(step=step, loss=float(out.loss.detach()), ce=float(out.ce), kl=float(out.kl), lr=lr, grad_norm=grad_norm,
                    tokens_per_s=tokens / seconds, trained_tokens=out.tokens)
        ctx.progress(0.05 + 0.75 * step / spec.steps, f"step {step}/{spec.steps} · loss {float(out.loss.detach()):.3f} · KL {float(out.kl):.4f}")

    student.eval()
    kl_end = held_out_kl(teacher_model, student, held_out, spec.temperature)
    ctx.progress(0.82, "saving the student")
    student_dir = save_model(student, tokenizer, ctx.run_dir / STUDENT_DIR)
    ctx.write_json(STATE_FILE, {"step": step, "held_out_kl_start": kl_start})
    result = {
        "student_dir": str(student_dir),
        "student": described,
        "steps_done": step,
        "teacher_parameters": teacher_params,
        "student_parameters": student_params,
        "student_bytes": model_file_size(student_dir),
        "train_seconds": round(time.time() - started, 2),
        "held_out_kl_start": round(kl_start, 5),
        "held_out_kl_end": round(kl_end, 5),
        "temperature": spec.temperature,
        "alpha": spec.alpha,
    }
    del teacher, teacher_model, student
    if spec.evaluate and not ctx.stop_requested:
        from core.transform_eval import score_against

        ctx.progress(0.85, "scoring the student against the teacher")
        result["evaluation"] = score_against(spec.teacher_source, ModelSource("local", str(student_dir)), ctx,
                                             rows=spec.eval_rows, progress_span=(0.85, 1.0), label="student")
    ctx.write_result(result)
    return {k: v for k, v in result.items() if k != "evaluation"} | _headline(result.get("evaluation"))


def _headline(evaluation: dict | None) -> dict:
    if not evaluation:
        return {}
    return {k: evaluation[k] for k in ("verdict", "task_score", "general_score", "reference_task_score",
                                        "reference_general_score") if k in evaluation}
