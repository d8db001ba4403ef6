"""Pre-flight for a merge: read configs and safetensors headers only — no tensor is loaded.

Refuses, with a sentence naming the model and the difference, when the inputs cannot be merged:
different architecture, tensor names or shapes, vocabulary, a task-vector method without a shared
base, or not enough RAM / disk for the merge.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from core import hardware, hub
from core.merge.spec import MergeSpec
from core.models import EMBEDDED_NAME, ModelLoadError, ModelSource, adapter_base, hub_weights_present, resolve_model_path
from core.train.methods import adapter_merge_refusal

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1}
NAME_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
MARGIN = 1.15  # headroom over the estimates below


@dataclass
class ModelFacts:
    label: str
    folder: str  # the Hugging Face folder with the weights (the base folder for an adapter)
    adapter: str
    architecture: str
    model_type: str
    vocab_size: int | None
    torch_dtype: str
    shapes: dict[str, tuple[int, ...]]
    weight_bytes: int
    parameters: int
    vocab_hash: str | None

    @property
    def largest_tensor_params(self) -> int:
        return max((_numel(s) for s in self.shapes.values()), default=0)


@dataclass
class PreflightReport:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    facts: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {"ok": self.ok, "problems": self.problems, "notes": self.notes, "facts": self.facts}


# --------------------------------------------------------------------------- reading headers


def safetensors_header(path: str | Path) -> dict:
    """The JSON header of one .safetensors file: tensor name -> {dtype, shape, data_offsets}."""
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path} is too short to be a safetensors file")
        (length,) = struct.unpack("<Q", raw)
        if length > 100_000_000:
            raise ValueError(f"{path} has an implausible header length ({length} bytes): corrupt file?")
        header = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    return header


def read_weight_shapes(folder: str | Path) -> tuple[dict[str, tuple[int, ...]], int]:
    """Tensor shapes and total bytes of every safetensors shard in a folder."""
    shapes: dict[str, tuple[int, ...]] = {}
    total = 0
    files = sorted(Path(folder).glob("*.safetensors"))
    for file in files:
        for name, info in safetensors_header(file).items():
            shapes[name] = tuple(info["shape"])
            total += _numel(info["shape"]) * DTYPE_BYTES.get(info["dtype"], 4)
    return shapes, total


def remote_weight_shapes(source: ModelSource) -> tuple[dict[str, tuple[int, ...]], int]:
    """Tensor shapes and bytes of a Hub model not downloaded yet, from its safetensors headers (HTTP range reads)."""
    try:
        return hub.remote_safetensors_shapes(source.ref, source.revision)
    except hub.HubError as exc:
        raise ModelLoadError(str(exc)) from exc


def vocabulary_fingerprint(folder: str | Path) -> str | None:
    """A hash of token -> id (tokenizer.json, else vocab.json, else tokenizer.model); None if no tokenizer."""
    tok = Path(folder) / "tokenizer.json"
    stamp = (tok.stat().st_mtime_ns, tok.stat().st_size) if tok.is_file() else None
    return _fingerprint(str(Path(folder).resolve()), stamp)


@lru_cache(maxsize=32)
def _fingerprint(folder_text: str, stamp: tuple | None) -> str | None:  # noqa: ARG001 - stamp keys the cache on the file
    folder = Path(folder_text)
    tok = folder / "tokenizer.json"
    if tok.is_file():
        raw = tok.read_bytes()
        return _vocab_hash(hashlib.sha256(raw).hexdigest(), raw)
    for name in ("vocab.json", "tokenizer.model"):
        if (folder / name).is_file():
            return hashlib.sha256((folder / name).read_bytes()).hexdigest()[:16]
    return None


_VOCAB_BY_FILE: dict[str, str] = {}


def _vocab_hash(file_hash: str, raw: bytes) -> str:
    """token -> id hash of a tokenizer.json; parsed once per distinct file content (copies of one tokenizer are common)."""
    if file_hash not in _VOCAB_BY_FILE:
        data = json.loads(raw)
        vocab = (data.get("model") or {}).get("vocab")
        if isinstance(vocab, list):  # unigram: [[piece, score], ...]
            vocab = {piece[0]: i for i, piece in enumerate(vocab)}
        added = {t["content"]: t["id"] for t in data.get("added_tokens", [])}
        items = sorted({**(vocab or {}), **added}.items())
        _VOCAB_BY_FILE[file_hash] = hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]
    return _VOCAB_BY_FILE[file_hash]


def inspect_model(source: ModelSource) -> ModelFacts:
    """Everything the pre-flight needs about one input, from files on disk (ModelLoadError if unreadable)."""
    if source.kind == "gguf":
        raise ModelLoadError(f"{source.label} is a GGUF file: merging needs safetensors weights — "
                             "load it once and save it as a folder, then merge that folder.")
    remote = source.kind == "hub" and not hub_weights_present(source)
    folder = resolve_model_path(source, weights=not remote)  # a Hub model not downloaded: its config files only
    if source.adapter and not (Path(source.adapter) / "adapter_config.json").is_file():
        raise ModelLoadError(f"{source.adapter} is not a PEFT adapter folder: it has no adapter_config.json.")
    config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    shapes, weight_bytes = remote_weight_shapes(source) if remote else read_weight_shapes(folder)
    if not shapes:
        raise ModelLoadError(f"{folder} has no .safetensors weights (pytorch .bin files cannot be checked or merged safely).")
    text_config = config.get("text_config") or {}
    return ModelFacts(
        label=source.label,
        folder=str(folder),
        adapter=source.adapter,
        architecture=(config.get("architectures") or ["?"])[0],
        model_type=config.get("model_type", "?"),
        vocab_size=config.get("vocab_size", text_config.get("vocab_size")),
        torch_dtype=str(config.get("dtype") or config.get("torch_dtype") or "float32"),
        shapes=shapes,
        weight_bytes=weight_bytes,
        parameters=sum(_numel(s) for s in shapes.values()),
        vocab_hash=vocabulary_fingerprint(folder),
    )


# --------------------------------------------------------------------------- the checks


def check_merge(spec: MergeSpec, work_dir: str | Path | None = None, *,
                free_ram_bytes: int | None = None, free_disk_bytes: int | None = None) -> PreflightReport:
    """Every refusal before any tensor is loaded. `work_dir` is where the merge will write."""
    report = PreflightReport()
    method = spec.method_info
    base_facts = _inspect(spec.base_source, "base", report) if spec.base_source else None
    model_facts = [_inspect(src, f"model {i + 1}", report) for i, src in enumerate(spec.model_sources())]
    if method.needs_base and spec.base_source is None:
        report.problems.append(f"{method.pretty_name} needs a base model: it merges task vectors (model − base), "
                               "so choose the model the fine-tunes started from.")
    if report.problems:
        return report
    reference = base_facts or model_facts[0]
    for facts in model_facts:
        if facts is not reference:
            _compare(reference, facts, report, "the base" if base_facts else "the first model")
    if method.needs_base or spec.sweep:
        _check_shared_base(spec, report)
    _check_resources(spec, reference, model_facts, report, work_dir, free_ram_bytes, free_disk_bytes)
    return report


def _inspect(source: ModelSource, role: str, report: PreflightReport) -> ModelFacts | None:
    try:
        return inspect_model(source)
    except ModelLoadError as exc:
        report.problems.append(f"{role} ({source.label}): {exc}")
    except (OSError, ValueError) as exc:
        report.problems.append(f"{role} ({source.label}): could not read its config or weights headers: {exc}")
    return None


def _compare(ref: ModelFacts, other: ModelFacts, report: PreflightReport, ref_name: str) -> None:
    if (ref.architecture, ref.model_type) != (other.architecture, other.model_type):
        report.problems.append(f"Different architecture: {other.label} is {other.architecture} ({other.model_type}) but "
                               f"{ref_name} {ref.label} is {ref.architecture} ({ref.model_type}); only models of one architecture "
                               "can be merged.")
        return
    if ref.vocab_size != other.vocab_size:
        report.problems.append(f"Different vocabulary: {other.label} has {other.vocab_size} tokens but {ref_name} {ref.label} "
                               f"has {ref.vocab_size}; merged embeddings would mix unrelated tokens.")
        return
    if ref.vocab_hash and other.vocab_hash and ref.vocab_hash != other.vocab_hash:
        report.problems.append(f"Different vocabulary: {other.label} and {ref_name} {ref.label} have the same number of tokens "
                               "but different token → id tables (different tokenizers); merged embeddings would mix unrelated tokens.")
        return
    missing = sorted(set(ref.shapes) - set(other.shapes))
    extra = sorted(set(other.shapes) - set(ref.shapes))
    if missing or extra:
        sample = (missing or extra)[:3]
        report.problems.append(f"Different tensors: {other.label} {'lacks' if missing else 'has extra'} "
                               f"{len(missing or extra)} tensor(s) compared with {ref_name} (e.g. {', '.join(sample)}).")
        return
    for name, shape in ref.shapes.items():
        if other.shapes[name] != shape:
            report.problems.append(f"Different shapes: {name} is {list(other.shapes[name])} in {other.label} "
                                   f"but {list(shape)} in {ref_name} {ref.label}.")
            return


def _same_root(a: ModelSource, b: ModelSource) -> bool:
    def key(s: ModelSource) -> tuple:
        ref = str(Path(s.ref).expanduser().resolve()) if s.kind == "local" else s.ref
        return (s.kind, ref)

    return key(a.with_adapter("")) == key(b.with_adapter(""))


def _names_match(recorded: str, base: ModelSource) -> bool:
    recorded_name = recorded.rstrip("/").split("/")[-1]
    base_name = EMBEDDED_NAME if base.kind == "embedded" else base.ref.rstrip("/").split("/")[-1]
    return recorded_name == base_name or recorded_name.lower().startswith(base_name.lower())


def _check_shared_base(spec: MergeSpec, report: PreflightReport) -> None:
    base = spec.base_source
    for i, source in enumerate(spec.model_sources()):
        if source.adapter:
            refusal = adapter_merge_refusal(source.adapter)
            if refusal:
                report.problems.append(f"Model {i + 1}: {refusal}")
                continue
            if not _same_root(source, base):
                report.problems.append(f"No shared base: model {i + 1} applies its adapter on top of {source.with_adapter('').label}, "
                                       f"but the merge base is {base.label}; task vectors are only meaningful against the model they were "
                                       "trained from.")
                continue
            recorded = adapter_base(source.adapter)
            if recorded and not _names_match(recorded, base) and not _same_root(ModelSource.parse(recorded), base):
                report.problems.append(f"No shared base: the adapter {Path(source.adapter).name} was trained on {recorded}, "
                                       f"not on the merge base {base.label}.")
        elif _same_root(source, base):
            report.problems.append(f"Model {i + 1} ({source.label}) is the base itself: its task vector is zero, so merging it "
                                   "changes nothing.")
        else:
            report.notes.append(f"Model {i + 1} ({source.label}) is a full model: that it was fine-tuned from {base.label} "
                                "is checked by architecture and shapes only.")


def _check_resources(spec: MergeSpec, ref: ModelFacts, inputs: list[ModelFacts], report: PreflightReport,
                     work_dir, free_ram_bytes, free_disk_bytes) -> None:
    out_dtype = ref.torch_dtype if spec.dtype == "auto" else spec.dtype
    out_bytes = ref.parameters * NAME_BYTES.get(out_dtype, 4)
    adapters = [f for f in inputs if f.adapter]
    n_inputs = len(inputs) + (1 if spec.base_source else 0)
    points = max(1, len(spec.sweep)) if spec.keep_sweep_models else 1
    # mergekit streams tensor by tensor: all inputs of the largest tensor in float32, plus the output shard
    # in memory; merging an adapter first, and scoring the result, each hold a whole model.
    merge_ram = out_bytes + (n_inputs + 2) * ref.largest_tensor_params * 4
    model_ram = int(ref.weight_bytes * 1.3) if (adapters or spec.evaluate) else 0
    ram_needed = int(max(merge_ram, model_ram) * MARGIN)
    disk_needed = int((out_bytes * points + ref.weight_bytes * len(adapters)) * MARGIN)
    if free_ram_bytes is None:
        free_ram_bytes = int((hardware._system_ram_gb()[1] or 0) * 1e9) or None
    if free_disk_bytes is None:
        target = Path(work_dir) if work_dir else Path.home()
        while not target.exists():
            target = target.parent
        free_disk_bytes = shutil.disk_usage(target).free
    report.facts.update(parameters=ref.parameters, output_dtype=out_dtype, output_bytes=out_bytes, inputs=n_inputs,
                        adapters_to_merge=len(adapters), ram_needed_bytes=ram_needed, disk_needed_bytes=disk_needed,
                        free_ram_bytes=free_ram_bytes, free_disk_bytes=free_disk_bytes)
    if free_ram_bytes is not None and ram_needed > free_ram_bytes:
        report.problems.append(f"Not enough RAM: this merge needs about {_gb(ram_needed)} but only {_gb(free_ram_bytes)} is free; "
                               "close other programs or merge fewer / smaller models.")
    if disk_needed > free_disk_bytes:
        report.problems.append(f"Not enough disk space: the result needs about {_gb(disk_needed)} but only {_gb(free_disk_bytes)} "
                               f"is free where it is written{' (turn off keep_sweep_models to keep one point)' if points > 1 else ''}.")


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"
