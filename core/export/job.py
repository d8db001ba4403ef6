"""The export job: `python -m core.runs.worker runs/<id>` with an ExportSpec in spec.yaml.

Order: resolve the source, check the disk can hold everything planned, then per artifact write → load back →
compare. The merged weights are the input of every GGUF (written to a temporary folder when not asked for),
the F16 GGUF the input of llama.cpp's K-quants. export.json lists each artifact with its size, time, sha256
and checks; the job fails when any check fails, with the artifacts kept for inspection.
"""
from __future__ import annotations

import contextlib
import gc
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from core import hardware, llamacpp, models
from core.chat import system_prompt_prefill, training_format
from core.export import memory, recipes, validate
from core.export.disk import estimate_bytes, safetensors_parameters, space_problem
from core.export.gguf_convert import ConversionError, Vocabulary, convert, keep_sentencepiece_model, preflight, read_config, read_vocabulary
from core.export.gguf_header import read_header
from core.export.integrity import digest_problems, folder_digest
from core.export.ollama import TemplateNotMappable, modelfile, read_anatomy
from core.export.source import ExportSource, resolve, training_template
from core.export.spec import ExportSpec
from core.merge.config import validate_with_mergekit
from core.models import ModelLoadError, ModelSource, resolve_model_path, save_model
from core.runs.jobs import JobContext, JobError
from core.train.spec import TrainSpec
from core.workspace import atomic_write_dir, atomic_write_text, folder_bytes, safe_name

EXPORT_DIR = "export"
WORK_DIR = ".work"


def run(ctx: JobContext) -> dict:
    spec: ExportSpec = ctx.spec  # parsed (and validated) by the registry
    source = resolve(spec.source_run, spec.model)
    if spec.verify_only:
        return _verify(ctx, spec, source)
    exporter = Exporter(ctx, spec, source)
    return exporter.run()


class Exporter:
    def __init__(self, ctx: JobContext, spec: ExportSpec, source: ExportSource):
        self.ctx, self.spec, self.source = ctx, spec, source
        self.out = ctx.run_dir / EXPORT_DIR
        self.work = ctx.run_dir / WORK_DIR
        self.stem = safe_name(spec.name or source.run_spec.get("name") or source.label.split(" ")[0], max_len=60)
        self.template = training_template(source, spec.chat_template)
        # the system prompt the training rows used: the Modelfile's SYSTEM and the GGUF check's generic prompts carry it
        self.system, self.system_note = system_prompt_prefill(training_format(source.run_dir or source.adapter_dir or source.template_dir))
        self.artifacts: list[dict] = []
        self.notes: list[str] = []
        self.tokenizer: Any = None
        self.prompt_ids: list[list[int]] = []
        self.prompts: list[str] = []
        self.references: list[dict] = []  # torch greedy continuations (of the saved merged weights)
        self.merged_dir: Path | None = None  # the GGUF converter's input
        self.f16_path: Path | None = None  # llama.cpp's quantiser's input
        self.vocabulary: Vocabulary | None = None  # of merged_dir, read once for every GGUF type
        self.memory: memory.MemoryPlan | None = None  # dtype, device and RAM of the merge (set by _check_memory)
        self.merge_record: dict = {}  # how the merge ran: dtype, device, RAM figures
        self.parameters = 0  # of the base model, from its safetensors headers (set by _check_disk)

    # ---------------------------------------------------------------- plan
    def run(self) -> dict:
        started = time.time()
        if self.spec.needs_gguf:
            self._check_gguf_convertible()
        self._check_disk()
        if "merged" in self.spec.formats or self.spec.needs_gguf:
            self._check_memory()
        steps = self._steps()
        for index, (label, step) in enumerate(steps):
            if self.ctx.stop_requested:
                self.notes.append("stopped before " + label)
                break
            self.ctx.progress(index / len(steps), label)
            step()
            self._write_result(started, done=False)
        shutil.rmtree(self.work, ignore_errors=True)
        result = self._write_result(started, done=True)
        failed = [c for a in self.artifacts for c in a["checks"] if c["passed"] is False]
        if failed:
            first = failed[0]
            raise JobError(f"export written but a check failed — {first['name']}: {first['summary']}"
                           + (f" (and {len(failed) - 1} more, see export.json)" if len(failed) > 1 else ""))
        # the parameters converted: the size core.runs.eta fits an export's time on
        return {k: result[k] for k in ("artifacts_written", "total_bytes", "checks_passed", "checks_failed", "seconds")} | {
            "parameters": self.parameters}

    def _steps(self) -> list[tuple[str, Any]]:
        spec = self.spec
        steps: list[tuple[str, Any]] = []
        if "adapter" in spec.formats:
            steps.append(("copying the adapter", self._adapter))
        if "merged" in spec.formats or spec.needs_gguf:
            steps.append(("merging and saving 16-bit safetensors", self._merged))
        if "gguf_f16" in spec.formats or spec.quantize:
            steps.append(("writing GGUF F16", lambda: self._gguf("f16")))
        if "gguf_q8_0" in spec.formats:
            steps.append(("writing GGUF Q8_0", lambda: self._gguf("q8_0")))
        for qtype in spec.quantize:
            steps.append((f"quantising to {qtype} with llama.cpp", lambda q=qtype: self._kquant(q)))
        if "modelfile" in spec.formats:
            steps.append(("writing the Ollama Modelfile", self._modelfile))
        if "recipes" in spec.formats:
            steps.append(("writing recipes", self._recipes))
        return steps

    def _check_gguf_convertible(self) -> None:
        """An architecture (or rope scaling) our GGUF converter refuses is refused by name from config.json, before the merge."""
        try:
            preflight(read_config(Path(self._model_path(self.source.base))))
        except ConversionError as exc:
            raise JobError(f"GGUF export: {exc}") from None

    def _check_disk(self) -> None:
        spec, source = self.spec, self.source
        base_dir = Path(self._model_path(source.base))
        parameters = self.parameters = safetensors_parameters(base_dir)
        plan = estimate_bytes(parameters, spec.formats, spec.quantize, spec.merged_dtype, folder_bytes(source.adapter_dir),
                              needs_merged_copy=spec.needs_gguf and "merged" not in spec.formats,
                              needs_f16_copy=bool(spec.quantize) and "gguf_f16" not in spec.formats)
        self.ctx.write_json("disk_plan.json", {"parameters": parameters, "bytes": plan})
        self.ctx.log.info("disk plan for %d parameters: %s", parameters, plan)
        problem = space_problem(self.ctx.run_dir, sum(plan.values()))
        if problem:
            raise JobError(problem)

    def _check_memory(self) -> None:
        """Refuse before any load when RAM cannot hold what the merge loads (core.export.memory); pick dtype and device."""
        source = self.source
        base_dir = Path(self._model_path(source.base))
        wanted, why = (None, "")
        if source.run_kind == "train":
            wanted, why = memory.run_dtype(str(source.run_spec.get("precision", "auto")), memory.card_precision(source.run_dir))
        if not why:  # a merged / pruned / distilled folder or a model source: the dtype its weights are stored in
            wanted = memory.stored_dtype(base_dir)
            why = f"the weights are stored in {wanted}" if wanted else ""
        self.memory = memory.plan_memory(base_dir, source.adapter_dir, wanted, why, hardware.detect())
        self.ctx.write_json("memory_plan.json", self.memory.as_dict())
        self.ctx.log.info("memory plan: %s on %s (%s); needs %.2f GB RAM, %.2f GB available", self.memory.dtype, self.memory.device,
                          self.memory.dtype_reason, self.memory.ram_needed_bytes / 1e9, (self.memory.ram_available_bytes or 0) / 1e9)
        for note in self.memory.notes:
            self.notes.append(f"memory: {note}")
        problem = self.memory.problem()
        if problem:
            raise JobError(problem)

    @staticmethod
    def _model_path(model) -> str:
        try:
            return resolve_model_path(model)
        except ModelLoadError as exc:
            raise JobError(str(exc)) from None

    # ---------------------------------------------------------------- artifacts
    def _record(self, kind: str, path: Path, seconds: float, checks: list[dict], **extra) -> dict:
        size = folder_bytes(path) if path.is_dir() else path.stat().st_size
        artifact = {"kind": kind, "path": str(path), "size_bytes": size, "seconds": round(seconds, 2),
                    "sha256": folder_digest(path), "checks": checks, **extra}
        self.artifacts.append(artifact)
        self.ctx.metrics(artifact=kind, size_bytes=size, seconds=round(seconds, 2),
                         passed=all(c["passed"] is not False for c in checks))
        for c in checks:
            self.ctx.log.info("%s · %s: %s — %s", kind, c["name"], {True: "pass", False: "FAIL", None: "not checked"}[c["passed"]],
                              c["summary"])
        return artifact

    def _adapter(self) -> None:
        started = time.perf_counter()
        if self.source.adapter_dir is None:
            self.notes.append("adapter: the source is a full model, there is no adapter to export")
            return
        target = atomic_write_dir(self.out / "adapter", lambda tmp: shutil.copytree(self.source.adapter_dir, tmp, dirs_exist_ok=True))
        checks = [validate.integrity_check(target)] if self.spec.validate else []
        if self.spec.validate:
            same = not digest_problems(target, folder_digest(self.source.adapter_dir))
            checks.append(validate.check("copy = trained adapter", same, "every file is byte-identical to the run's adapter" if same
                                         else "the copy differs from the run's adapter"))
        self._record("adapter", target, time.perf_counter() - started, checks)

    def _merged(self) -> None:
        started = time.perf_counter()
        keep = "merged" in self.spec.formats
        target = (self.out / "merged") if keep else (self.work / "merged")
        plan = self.memory
        try:
            loaded = models.load_model(self.source.model, device=plan.device, dtype=plan.dtype, stream_to_device=True)
        except ModelLoadError as exc:
            raise JobError(str(exc)) from None
        self.tokenizer = loaded.tokenizer
        if self.template:
            self.tokenizer.chat_template = self.template
        else:
            self.template = getattr(self.tokenizer, "chat_template", None)
        self.prompts = validate.validation_prompts(self.tokenizer, self.template, self.source.dataset, self.spec.validation_prompts,
                                                   system=self.system)
        self.prompt_ids = [validate.encode(self.tokenizer, p) for p in self.prompts]
        has_adapter = self.source.adapter_dir is not None
        with _default_device(plan.device):
            references = validate.source_logits(loaded, self.prompt_ids, has_adapter) if self.spec.validate else []
        model = loaded.model.merge_and_unload() if has_adapter else loaded.model  # in place: still one copy
        merged_in = str(next(model.parameters()).dtype).removeprefix("torch.")  # what the merge actually computed in
        model = model.to(dtype=_torch_dtype(self.spec.merged_dtype))  # tensor by tensor: never two full copies
        model.config.torch_dtype = self.spec.merged_dtype
        _fits_dtype(model, self.spec.merged_dtype)
        save_model(model, self.tokenizer, target)
        keep_sentencepiece_model(target, self.source.adapter_dir, Path(self._model_path(self.source.base)))
        write_seconds = time.perf_counter() - started
        del loaded, model
        _free(plan.device)
        checks: list[dict] = []
        # loaded back at the saved dtype when the run was 16-bit (the reference's precision), else upcast to fp32
        reload_dtype = self.spec.merged_dtype if plan.dtype != "float32" else "float32"
        # the logits are compared at the coarser of the two precisions (the source's and the saved file's)
        check_dtype = "bfloat16" if "bfloat16" in (plan.dtype, self.spec.merged_dtype) else self.spec.merged_dtype
        if self.spec.validate:
            checks.append(validate.integrity_check(target))
            reloaded = models.load_model(ModelSource("local", str(target)), device=plan.device, dtype=reload_dtype, stream_to_device=True)
            with _default_device(plan.device):
                checks.append(validate.merged_check(references, reloaded.model, self.prompt_ids, check_dtype))
                if self.spec.needs_gguf:
                    self.references = validate.torch_references(reloaded.model, reloaded.tokenizer, self.prompts, self.spec.compare_tokens)
            del reloaded
            _free(plan.device)
        self.merge_record = {"dtype": merged_in, "device": plan.device, "why": plan.dtype_reason, "validated_in": reload_dtype,
                             "ram_needed_bytes": plan.ram_needed_bytes, "ram_available_bytes": plan.ram_available_bytes}
        self.merged_dir = target
        if keep:
            self._record("merged", target, write_seconds, checks, dtype=self.spec.merged_dtype, merged_in=self.merge_record)
        elif checks:
            self.notes.append("merged weights written to a temporary folder as the GGUF source: " + "; ".join(c["summary"] for c in checks))
            if any(c["passed"] is False for c in checks):
                self._record("merged (temporary)", target, write_seconds, checks)

    def _gguf_path(self, label: str) -> Path:
        return self.out / f"{self.stem}-{label}.gguf"

    def _gguf(self, outtype: str) -> None:
        started = time.perf_counter()
        requested = f"gguf_{outtype}" in self.spec.formats
        target = self._gguf_path(outtype.upper()) if requested else self.work / f"{self.stem}-F16.gguf"
        try:
            self.vocabulary = self.vocabulary or read_vocabulary(self.merged_dir)
            conversion = convert(self.merged_dir, target, outtype, chat_template=self.template, name=self.stem, vocabulary=self.vocabulary)
        except ConversionError as exc:
            raise JobError(f"GGUF {outtype.upper()}: {exc}") from None
        seconds = time.perf_counter() - started
        if outtype == "f16":
            self.f16_path = target
        if not requested:
            return
        checks = self._gguf_checks(target, quantized=outtype != "f16", min_agreement=self.spec.min_agreement)
        self._record(f"gguf_{outtype}", target, seconds, checks, conversion=conversion.as_dict())

    def _gguf_checks(self, path: Path, *, quantized: bool, min_agreement: float | None) -> list[dict]:
        if not self.spec.validate:
            return []
        checks = [validate.integrity_check(path)]
        if checks[0]["passed"]:
            checks += validate.gguf_checks(path, self.references, self.tokenizer, self.template,
                                           quantized=quantized, min_agreement=min_agreement)
        return checks

    def _kquant(self, qtype: str) -> None:
        if not llamacpp.available():
            self.notes.append(f"{qtype}: {llamacpp.missing_note()}")
            return
        target = self._gguf_path(qtype)
        try:
            seconds = llamacpp.quantize(self.f16_path, target, qtype)
        except (RuntimeError, ValueError) as exc:
            raise JobError(str(exc)) from None
        self._record(qtype, target, seconds, self._gguf_checks(target, quantized=True, min_agreement=None))

    def _modelfile(self) -> None:
        started = time.perf_counter()
        ggufs = [a for a in self.artifacts if a["kind"].startswith("gguf_") or a["kind"] in llamacpp.QUANT_TYPES]
        if not ggufs:
            self.notes.append("Modelfile: no GGUF was written to point it at (choose a GGUF format)")
            return
        preferred = next((a for kind in ("gguf_q8_0", "Q4_K_M", "gguf_f16") for a in ggufs if a["kind"] == kind), ggufs[0])
        tokenizer = self.tokenizer or models.tokenizer_from_folder(self.merged_dir)
        add_bos = _gguf_adds_bos(Path(preferred["path"]))
        anatomy, reason = None, ""
        try:
            anatomy = read_anatomy(tokenizer, self.template) if self.template else None
            reason = "" if anatomy else "the model has no chat template"
        except TemplateNotMappable as exc:
            reason = str(exc)
        text = modelfile(Path(preferred["path"]).name, anatomy, eos_token=tokenizer.eos_token, add_bos=add_bos,
                         source_note=self.source.label, unmapped_reason=reason, system=self.system, system_note=self.system_note)
        target = atomic_write_text(self.out / "Modelfile", text)
        checks = [validate.modelfile_check(text, tokenizer, self.template, add_bos)] if self.spec.validate and self.template else []
        self._record("modelfile", target, time.perf_counter() - started, checks, points_to=Path(preferred["path"]).name)

    def _recipes(self) -> None:
        started = time.perf_counter()
        folder = self.out / "recipes"
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        if self.source.run_spec:
            atomic_write_text(folder / "spec.yaml", recipes.spec_yaml(self.source.run_spec))
            written.append("spec.yaml")
        if self.source.run_kind == "train":
            text = recipes.axolotl_yaml(self.source.run_spec,
                                        base_model=ModelSource.from_dict(self.source.run_spec.get("model") or {}).hub_name,
                                        data_format=self.source.data_format, chat_template=self.template)
            atomic_write_text(folder / "axolotl.yaml", text)
            written.append("axolotl.yaml")
        if self.source.run_kind == "merge" and (self.source.run_dir / "merge.yaml").is_file():
            shutil.copyfile(self.source.run_dir / "merge.yaml", folder / "mergekit.yaml")
            written.append("mergekit.yaml")
        if not written:
            self.notes.append("recipes: a model source without a run has no recipe to write")
            return
        checks = [_recipes_check(folder)] if self.spec.validate else []
        self._record("recipes", folder, time.perf_counter() - started, checks, files=written)

    # ---------------------------------------------------------------- result
    def _write_result(self, started: float, *, done: bool) -> dict:
        checks = [c for a in self.artifacts for c in a["checks"]]
        result = {
            "source": self.source.label, "source_run": str(self.source.run_dir or ""), "base_model": self.source.base.as_dict(),
            "chat_template": self.template, "prompts": self.prompts, "artifacts": self.artifacts, "notes": self.notes,
            "merge": self.merge_record, "artifacts_written": len(self.artifacts),
            "total_bytes": sum(a["size_bytes"] for a in self.artifacts),
            "checks_passed": sum(1 for c in checks if c["passed"] is True),
            "checks_failed": sum(1 for c in checks if c["passed"] is False),
            "seconds": round(time.time() - started, 2), "done": done,
        }
        self.ctx.write_result(result)
        return result


def _recipes_check(folder: Path) -> dict:
    """Each recipe parses back; the spec.yaml is a valid spec of its kind; a mergekit YAML passes mergekit's schema."""
    problems = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            problems.append(f"{path.name}: {exc}")
            continue
        if path.name == "spec.yaml" and data.get("kind") == "train":
            try:
                TrainSpec.from_dict(data)
            except (TypeError, ValueError) as exc:
                problems.append(f"spec.yaml: {exc}")
        if path.name == "mergekit.yaml":
            try:
                validate_with_mergekit(data)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"mergekit.yaml: {exc}")
    return validate.check("recipes parse back", not problems,
                          problems[0] if problems else "every YAML parses; spec.yaml is a valid run spec",
                          problems=problems)


def _gguf_adds_bos(path: Path) -> bool:
    return bool(read_header(path, arrays=False).metadata.get("tokenizer.ggml.add_bos_token", False))


def _default_device(device: str):
    """Tensors the validation builds (prompt ids) are made on the model's device."""
    import torch

    return torch.device(device) if device != "cpu" else contextlib.nullcontext()


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def _fits_dtype(model: Any, dtype: str) -> None:
    """float16 tops out at 65504: a weight beyond it would be saved as inf."""
    import torch

    if dtype != "float16":
        return
    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            raise JobError(f"merged weight {name} overflows float16 (|w| > 65504): export with merged_dtype bfloat16")


# --------------------------------------------------------------------------- verify an earlier export


def _verify(ctx: JobContext, spec: ExportSpec, source: ExportSource) -> dict:
    """Hashes, headers and a llama.cpp load-back of every artifact an earlier attempt of this run recorded."""
    result = ctx.read_result()
    if not result:
        raise JobError("verify_only: this run has no export.json to check (run the export first)")
    template = result.get("chat_template")
    references, tokenizer = [], None
    merged = next((a for a in result["artifacts"] if a["kind"] == "merged"), None)
    ggufs = [a for a in result["artifacts"] if a["path"].endswith(".gguf")]
    if ggufs:
        reference_source = ModelSource("local", merged["path"]) if merged and Path(merged["path"]).is_dir() else source.model
        # the same RAM check as the export, at the dtype the export validated in (fp32 for exports made before it was recorded)
        validated_in = (result.get("merge") or {}).get("validated_in") or "float32"
        plan = memory.plan_memory(Exporter._model_path(reference_source.with_adapter(None)), reference_source.adapter or None,
                                  validated_in, "the dtype the export validated in", hardware.detect())
        ctx.write_json("memory_plan.json", plan.as_dict())
        if plan.problem():
            raise JobError(plan.problem())
        loaded = models.load_model(reference_source, device=plan.device, dtype=plan.dtype, stream_to_device=True)
        tokenizer = loaded.tokenizer
        if template:
            tokenizer.chat_template = template
        with _default_device(plan.device):
            references = validate.torch_references(loaded.model, tokenizer, result.get("prompts") or [], spec.compare_tokens)
        del loaded
        _free(plan.device)
    failures = []
    for index, artifact in enumerate(result["artifacts"]):
        ctx.progress(index / max(1, len(result["artifacts"])), f"checking {artifact['kind']}")
        path = Path(artifact["path"])
        checks = [validate.integrity_check(path)]
        changed = digest_problems(path, artifact.get("sha256") or {})
        checks.append(validate.check("unchanged since export", not changed,
                                     changed[0] if changed else "every file's sha256 matches export.json",
                                     problems=changed))
        if path.suffix == ".gguf" and checks[0]["passed"] and references:
            checks += validate.gguf_checks(path, references, tokenizer, template, quantized=artifact["kind"] != "gguf_f16",
                                           min_agreement=spec.min_agreement if artifact["kind"] == "gguf_q8_0" else None)
        artifact["verified"] = {"at": time.time(), "checks": checks}
        failures += [f"{artifact['kind']} · {c['name']}: {c['summary']}" for c in checks if c["passed"] is False]
    result["verified_at"] = time.time()
    ctx.write_result(result)
    if failures:
        raise JobError(f"verification failed — {failures[0]}" + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""))
    return {"verified": len(result["artifacts"]), "checks_failed": 0}
