"""Our Hugging Face folder → GGUF converter, on the `gguf` package (writer, tensor name maps, quantisers).

It follows llama.cpp's `convert_hf_to_gguf.py` for the families we can check end to end (Llama, Mistral →
arch `llama`; Qwen2 → `qwen2`; Qwen3 → `qwen3` with its q/k norms; Phi-3 → `phi3` with its fused qkv / gate-up
projections and long-rope factors): the same tensor names, the Llama q/k row permutation (llama.cpp's rope
is the interleaved kind, HF's the half-split one), 1-D tensors kept in F32, tied embeddings written once
(llama.cpp reuses `token_embd` as the output), the same hyper-parameter keys, and the tokenizer as llama.cpp
reads it: SentencePiece from tokenizer.model, else a SentencePiece-style BPE (byte fallback) from tokenizer.json
(the layout transformers 5 re-saves a Llama-2 / Mistral folder in), else GPT-2 style BPE with its pre-tokenizer
named from the hash of a fixed probe text. tests/test_gguf_families.py compares the files with llama.cpp's own
converter, tensor for tensor and key for key, on every family here.

Tensors stream through one at a time (pass 1 writes the header from the safetensors headers, pass 2 the
data), so memory stays at about one tensor; bf16 goes through torch to float32 (numpy has no bfloat16).
The file is written under a temporary name and renamed, so a failed conversion leaves nothing behind.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any, Callable

from core.models import tokenizer_from_folder
from core.workspace import fault_point

# HF architecture name -> (gguf arch name, undo the q/k permutation?)
ARCHITECTURES: dict[str, tuple[str, bool]] = {
    "LlamaForCausalLM": ("llama", True),
    "MistralForCausalLM": ("llama", True),
    "Qwen2ForCausalLM": ("qwen2", False),
    "Qwen3ForCausalLM": ("qwen3", False),
    "Phi3ForCausalLM": ("phi3", False),
}
OUTTYPES = ("f16", "q8_0", "f32")

# llama.cpp names a BPE pre-tokenizer by the sha256 of the token ids of this probe text
# (convert_hf_to_gguf.py, get_vocab_base_pre); the table lists the families we export.
_PROBE = (
    '\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 '
    '3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на '
    'Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, \'RE you sure? \'M not sure I\'ll '
    'make it, \'D you like some tea? We\'Ve a\'lL'
)
PRE_TOKENIZERS: dict[str, str] = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3
    # Llama 3's tokenizer as transformers rebuilds it from a GGUF (and Smaug): llama.cpp names this split smaug-bpe
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM / SmolLM2
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5 / Qwen2 / Qwen2.5
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3 tokenizer
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # Mistral Nemo
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
}


class ConversionError(ValueError):
    """The folder cannot be converted; the message names the architecture / file / tensor and why."""


@dataclass
class ConversionResult:
    path: Path
    arch: str
    outtype: str
    tensors: int
    size_bytes: int
    tokenizer: str  # "gpt2/<pre>" or "llama (sentencepiece)"
    tied_embeddings: bool
    tensor_types: dict[str, int] = field(default_factory=dict)  # ggml type name -> tensor count
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"path": str(self.path), "arch": self.arch, "outtype": self.outtype, "tensors": self.tensors,
                "size_bytes": self.size_bytes, "tokenizer": self.tokenizer, "tied_embeddings": self.tied_embeddings,
                "tensor_types": self.tensor_types, "notes": self.notes}


def read_config(model_dir: Path) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ConversionError(f"{model_dir} has no config.json: GGUF export needs a full model folder (merge the adapter first)")
    return json.loads(path.read_text())


def gguf_architecture(config: dict) -> tuple[str, bool]:
    """(gguf arch, undo_permute) for a config, or a ConversionError naming what is supported."""
    names = config.get("architectures") or []
    for name in names:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    supported = ", ".join(sorted(ARCHITECTURES))
    raise ConversionError(f"GGUF export supports {supported}; this model is {', '.join(names) or 'of an unknown architecture'} "
                          "(export it as merged safetensors and convert it with llama.cpp's convert_hf_to_gguf.py)")


def preflight(config: dict) -> tuple[str, bool]:
    """Everything a conversion can refuse from config.json alone (architecture, rope scaling), so that an export
    refuses before it merges and validates anything. Returns gguf_architecture(config)."""
    found = gguf_architecture(config)
    kind = rope_scaling(config)["rope_type"]
    allowed = ("default", "llama3", "linear") + (("longrope", "su") if found[0] == "phi3" else ())
    if kind not in allowed:
        raise ConversionError(f"rope scaling {kind!r} of {', '.join(config.get('architectures') or ['this model'])} is not supported "
                              "by our GGUF export (convert the merged safetensors with llama.cpp's convert_hf_to_gguf.py)")
    return found


def rope_theta(config: dict) -> float | None:
    """transformers 5 keeps rope_theta inside rope_parameters; 4.x at the top level."""
    params = config.get("rope_parameters") or {}
    return params.get("rope_theta", config.get("rope_theta"))


def rope_scaling(config: dict) -> dict:
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    kind = (params.get("rope_type") or params.get("type") or "default").lower()
    return {**params, "rope_type": kind}


def permute_qk(weights: Any, n_head: int, n_head_kv: int | None = None) -> Any:
    """llama.cpp's LlamaModel.permute: HF's half-split rope rows -> llama.cpp's interleaved pairs."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def keep_sentencepiece_model(target: Path, *sources: Path | None) -> bool:
    """transformers 5 re-saves a SentencePiece tokenizer (Llama-2, Mistral, TinyLlama, Phi-3) without tokenizer.model,
    which llama.cpp reads its vocabulary from first: copy the source's into the saved folder (temp + rename)."""
    target = Path(target)
    if (target / "tokenizer.model").is_file():
        return False
    for source in sources:
        found = Path(source) / "tokenizer.model" if source else None
        if found is not None and found.is_file():
            partial = target / ".tokenizer.model.partial"
            shutil.copyfile(found, partial)
            os.replace(partial, target / "tokenizer.model")
            return True
    return False


# --------------------------------------------------------------------------- tensors


def _safetensor_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("model*.safetensors"))
    if not files:
        raise ConversionError(f"{model_dir} has no model*.safetensors weights (pickled .bin weights are not read, for safety)")
    return files


def _tensor_headers(files: list[Path]) -> dict[str, tuple[Path, list[int], str]]:
    """name -> (file, shape, dtype) from the safetensors headers alone (no data read)."""
    from safetensors import safe_open

    found: dict[str, tuple[Path, list[int], str]] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():
                    sl = handle.get_slice(name)
                    found[name] = (path, list(sl.get_shape()), str(sl.get_dtype()))
        except Exception as exc:  # noqa: BLE001 - a broken header is one sentence
            raise ConversionError(f"{path.name} is not a readable safetensors file: {exc}") from exc
    return found


@dataclass
class _Planned:
    gguf_name: str
    hf_name: str
    shape: list[int]
    qtype: Any  # gguf.GGMLQuantizationType
    transform: Callable[[Any], Any] | None = None


def _plan_tensors(config: dict, headers: dict, arch: str, undo_permute: bool, outtype: str) -> tuple[list[_Planned], bool, list[str]]:
    import gguf

    n_blocks = int(config["num_hidden_layers"])
    name_map = gguf.get_tensor_name_map(_arch_enum(arch), n_blocks)
    n_head = int(config["num_attention_heads"])
    n_head_kv = int(config.get("num_key_value_heads") or n_head)
    notes: list[str] = []
    planned: list[_Planned] = []
    tied = "lm_head.weight" not in headers
    for hf_name in headers:
        if hf_name.endswith(("rotary_emb.inv_freq", ".attention.masked_bias", ".attention.bias")):
            continue
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ConversionError(f"tensor {hf_name!r} has no GGUF name for arch {arch} (an unsupported variant of this family?)")
        shape = headers[hf_name][1]
        transform = None
        if undo_permute and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            transform = lambda t: permute_qk(t, n_head, n_head)  # noqa: E731
        elif undo_permute and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            transform = lambda t: permute_qk(t, n_head, n_head_kv)  # noqa: E731
        planned.append(_Planned(gguf_name, hf_name, shape, _choose_qtype(gguf_name, shape, outtype, notes), transform))
    if not tied and config.get("tie_word_embeddings"):
        notes.append("lm_head.weight is stored although tie_word_embeddings is set: written as output.weight")
    planned.extend(_rope_freqs(config, notes))
    planned.extend(_longrope_factors(config, arch, notes))
    return planned, tied, notes


def _choose_qtype(gguf_name: str, shape: list[int], outtype: str, notes: list[str]) -> Any:
    """llama.cpp's rule: 1-D tensors and norms stay F32; 2-D weights take the output type when the row fits its blocks."""
    from gguf import GGMLQuantizationType as Q
    from gguf.constants import GGML_QUANT_SIZES

    if len(shape) <= 1 or gguf_name.endswith("_norm.weight") or outtype == "f32":
        return Q.F32
    if outtype == "q8_0":
        block = GGML_QUANT_SIZES[Q.Q8_0][0]
        if shape[-1] % block == 0:
            return Q.Q8_0
        notes.append(f"{gguf_name}: rows of {shape[-1]} are not a multiple of {block}: kept in F16")
    return Q.F16


def _rope_freqs(config: dict, notes: list[str]) -> list[_Planned]:
    """Llama 3.1-style rope scaling is a tensor of per-frequency factors in GGUF (as llama.cpp writes it)."""
    from gguf import GGMLQuantizationType as Q

    scaling = rope_scaling(config)
    if scaling["rope_type"] != "llama3":
        return []
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    notes.append("llama3 rope scaling written as rope_freqs.weight")
    return [_Planned("rope_freqs.weight", "", [dim // 2], Q.F32)]


def _phi3_rope(config: dict) -> tuple[int, int, int]:
    """(context, original context, rope dims) as llama.cpp's Phi3MiniModel reads them."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    context = int(config.get("max_position_embeddings") or config.get("n_positions"))
    original = int(params.get("original_max_position_embeddings") or config.get("original_max_position_embeddings") or context)
    dims = (int(float(params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))) * config["hidden_size"])
            // config["num_attention_heads"])
    return context, original, dims


def _longrope_factors(config: dict, arch: str, notes: list[str]) -> list[_Planned]:
    """Phi-3 long-context (128k) models: rope_factors_long / _short tensors (llama.cpp's Phi3MiniModel)."""
    from gguf import GGMLQuantizationType as Q

    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if arch != "phi3" or not params.get("long_factor"):
        return []
    long, short = params.get("long_factor"), params.get("short_factor")
    dims = _phi3_rope(config)[2]
    if not short or len(long) != len(short) or len(long) != dims // 2:
        raise ConversionError(f"rope scaling: long_factor and short_factor must both have {dims // 2} entries (rope dims / 2); "
                              f"config.json has {len(long)} and {len(short or [])}")
    notes.append("long-rope factors written as rope_factors_long / rope_factors_short")
    return [_Planned("rope_factors_long.weight", "", [len(long)], Q.F32), _Planned("rope_factors_short.weight", "", [len(short)], Q.F32)]


def _llama3_rope_factors(config: dict) -> Any:
    """In torch float32 step for step as llama.cpp computes them (numpy's pow rounds one factor differently)."""
    import torch

    scaling = rope_scaling(config)
    base = rope_theta(config) or 10000.0
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor = scaling.get("factor", 8.0)
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_context = scaling.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_context / low, old_context / high
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(factors, dtype=torch.float32).numpy()


def _arch_enum(arch: str) -> Any:
    import gguf

    return next(key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == arch)


def _nbytes(shape: list[int], qtype: Any) -> int:
    from gguf.constants import GGML_QUANT_SIZES

    block, type_size = GGML_QUANT_SIZES[qtype]
    numel = math.prod(shape) if shape else 1
    return numel // block * type_size


def _load_tensor(plan: _Planned, headers: dict, config: dict, handles: dict) -> Any:
    """float32 numpy array of one tensor (bf16 / f16 widened through torch), permuted when planned."""
    import torch
    from safetensors import safe_open

    if plan.gguf_name == "rope_freqs.weight":
        return _llama3_rope_factors(config)
    if plan.gguf_name.startswith("rope_factors_"):
        import numpy as np

        params = config.get("rope_parameters") or config.get("rope_scaling") or {}
        return np.asarray(params["long_factor" if plan.gguf_name.startswith("rope_factors_long") else "short_factor"], dtype=np.float32)
    path = headers[plan.hf_name][0]
    if path not in handles:
        handles[path] = safe_open(str(path), framework="pt").__enter__()
    tensor = handles[path].get_tensor(plan.hf_name).to(torch.float32)
    if plan.transform is not None:
        tensor = plan.transform(tensor)
    return tensor.contiguous().numpy()


def _encode(data: Any, qtype: Any) -> Any:
    import numpy as np
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    if qtype == Q.F32:
        return data.astype(np.float32, copy=False)
    if qtype == Q.F16:
        return data.astype(np.float16)
    return quantize(data, qtype)


# --------------------------------------------------------------------------- vocabulary


def _add_vocab(writer: Any, model_dir: Path, config: dict, arch: str) -> str:
    """llama.cpp's set_vocab of the arch: SentencePiece from tokenizer.model; for `llama` / `phi3` without it, the
    SentencePiece-style BPE of tokenizer.json (LlamaHfVocab: byte fallback, as transformers 5 re-saves a Llama-2 /
    Mistral folder); else GPT-2 style BPE (Llama 3, Qwen, SmolLM, Phi-4)."""
    import gguf

    tokenizer_config = _read_json(model_dir / "tokenizer_config.json")
    gpt2_class = arch == "phi3" and tokenizer_config.get("tokenizer_class") == "GPT2Tokenizer"  # Phi-4
    if arch == "llama" and tokenizer_config.get("add_prefix_space") is not None:
        writer.add_add_space_prefix(bool(tokenizer_config["add_prefix_space"]))
    if (model_dir / "tokenizer.model").is_file() and not gpt2_class:
        tokens, scores, types = sentencepiece_vocab(model_dir, config, tokenizer_config, phi3=arch == "phi3")
        _add_llama_vocab(writer, model_dir, tokens, scores, types)
        return "llama (sentencepiece)"
    if not (model_dir / "tokenizer.json").is_file():
        raise ConversionError(f"{model_dir} has neither tokenizer.json nor tokenizer.model: the GGUF would have no vocabulary")
    if arch in ("llama", "phi3") and not gpt2_class:
        try:
            hf_vocab = gguf.vocab.LlamaHfVocab(model_dir)
        except (FileNotFoundError, TypeError):  # not SentencePiece-style (Llama 3 and other GPT-2 BPE): below
            hf_vocab = None
        if hf_vocab is not None:
            tokens, scores, types = [], [], []
            for text, score, toktype in hf_vocab.all_tokens():
                tokens.append(text)
                scores.append(score)
                types.append(toktype)
            _pad_vocab(tokens, scores, types, int(config.get("vocab_size") or len(tokens)))
            _add_llama_vocab(writer, model_dir, tokens, scores, types)
            return "llama (tokenizer.json, byte fallback)"
    tokens, types, pre = bpe_vocab(model_dir, config)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(model_dir, load_merges=True).add_to_gguf(writer, quiet=True)
    return f"gpt2/{pre}"


def _add_llama_vocab(writer: Any, model_dir: Path, tokens: list, scores: list, types: list) -> None:
    import gguf

    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    gguf.SpecialVocab(model_dir, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)


def _pad_vocab(tokens: list, scores: list, types: list, vocab_size: int) -> None:
    """Embedding rows beyond the tokenizer's ids get [PAD<id>] tokens (llama.cpp needs one token per row)."""
    import gguf

    if len(tokens) > vocab_size:
        raise ConversionError(f"the tokenizer has {len(tokens)} tokens but the model's vocab_size is {vocab_size}")
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)


def sentencepiece_vocab(model_dir: Path, config: dict, tokenizer_config: dict, *, phi3: bool = False) -> tuple[list, list, list]:
    """llama.cpp's _create_vocab_sentencepiece (Phi3MiniModel.set_vocab with `phi3`): the model's pieces, then the
    added tokens of added_tokens.json / tokenizer_config.json (/ tokenizer.json for Phi-3) over them."""
    import gguf
    from sentencepiece import SentencePieceProcessor

    processor = SentencePieceProcessor()
    processor.LoadFromFile(str(model_dir / "tokenizer.model"))
    vocab_size = int(config.get("vocab_size") or processor.vocab_size())
    tokens: list[bytes] = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores: list[float] = [-10000.0] * vocab_size
    types: list[int] = [gguf.TokenType.UNUSED] * vocab_size
    for i in range(min(vocab_size, processor.vocab_size())):
        kind = gguf.TokenType.NORMAL
        if processor.IsUnknown(i):
            kind = gguf.TokenType.UNKNOWN
        elif processor.IsControl(i):
            kind = gguf.TokenType.CONTROL
        elif processor.IsUnused(i):
            kind = gguf.TokenType.UNUSED
        elif processor.IsByte(i):
            kind = gguf.TokenType.BYTE
        tokens[i], scores[i], types[i] = processor.IdToPiece(i).encode(), processor.GetScore(i), kind
    for text, i in _read_json(model_dir / "added_tokens.json").items():
        if i < vocab_size:
            tokens[i], scores[i], types[i] = text.encode(), -1000.0, gguf.TokenType.USER_DEFINED
    added = [(int(i), data) for i, data in (tokenizer_config.get("added_tokens_decoder") or {}).items()]
    if phi3:
        added += [(int(data["id"]), data) for data in _read_json(model_dir / "tokenizer.json").get("added_tokens", [])]
    for i, data in added:
        if i >= vocab_size:
            continue
        text = data["content"]
        if data.get("special") or (not phi3 and _looks_special(text)):
            types[i] = gguf.TokenType.CONTROL
        else:
            text = text if phi3 else text.replace("\u2581", " ")  # pre-normalised user-defined spaces, as llama.cpp does
            types[i] = gguf.TokenType.USER_DEFINED
        tokens[i], scores[i] = text.encode(), -1000.0
    return tokens, scores, types


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as exc:
        raise ConversionError(f"{path.name} is not valid JSON: {exc}") from None


def pre_tokenizer_name(tokenizer: Any) -> str:
    digest = sha256(str(tokenizer.encode(_PROBE)).encode()).hexdigest()
    try:
        return PRE_TOKENIZERS[digest]
    except KeyError:
        raise ConversionError(
            f"the tokenizer's BPE pre-tokenizer is not one llama.cpp knows for our families (probe hash {digest[:12]}…): "
            "llama.cpp would split text differently than training did"
        ) from None


def bpe_vocab(model_dir: Path, config: dict) -> tuple[list[str], list[int], str]:
    """llama.cpp's get_vocab_base: every id's token text and type (normal / control / user-defined / unused)."""
    import gguf

    tokenizer = tokenizer_from_folder(model_dir)
    vocab = tokenizer.get_vocab()
    vocab_size = int(config.get("vocab_size") or len(vocab))
    if max(vocab.values()) >= vocab_size:
        raise ConversionError(f"the tokenizer has ids up to {max(vocab.values())} but the model's vocab_size is {vocab_size}")
    pre = pre_tokenizer_name(tokenizer)
    reverse = {i: token for token, i in vocab.items()}
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        token = reverse[i]
        if token in added:
            if not decoder[i].normalized:  # llama.cpp expects added tokens pre-normalised
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            if decoder[i].special or _looks_special(token):
                types.append(gguf.TokenType.CONTROL)
            else:
                token = token.replace("\u2581", " ")  # pre-normalise user-defined spaces, as llama.cpp does
                types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    return tokens, types, pre


def _looks_special(token: str) -> bool:
    """llama.cpp's does_token_look_special: added tokens some models forget to mark special."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<\uff5c") and token.endswith("\uff5c>")) or (token.startswith("<unused") and token.endswith(">")))


# --------------------------------------------------------------------------- metadata


def _add_hparams(writer: Any, config: dict, arch: str, ftype: int, name: str) -> None:
    import gguf

    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    if arch == "phi3":
        _add_phi3_hparams(writer, config, ftype)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        return
    writer.add_block_count(int(config["num_hidden_layers"]))
    if config.get("max_position_embeddings"):
        writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or config["num_attention_heads"]))
    if (theta := rope_theta(config)) is not None:
        writer.add_rope_freq_base(float(theta))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    if config.get("head_dim"):
        writer.add_key_length(int(config["head_dim"]))
        writer.add_value_length(int(config["head_dim"]))
    writer.add_file_type(ftype)
    if arch == "llama":
        writer.add_vocab_size(int(config["vocab_size"]))
        writer.add_rope_dimension_count(int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]))
    scaling = rope_scaling(config)
    if scaling["rope_type"] == "linear" and scaling.get("factor"):
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    elif scaling["rope_type"] not in ("default", "llama3", "linear"):
        raise ConversionError(f"rope scaling {scaling['rope_type']!r} is not supported by our GGUF export")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_phi3_hparams(writer: Any, config: dict, ftype: int) -> None:
    """llama.cpp's Phi3MiniModel.set_gguf_parameters (its own key set, not the generic one) and long-rope attention factor."""
    context, original, dims = _phi3_rope(config)
    writer.add_context_length(context)
    writer.add_rope_scaling_orig_ctx_len(original)
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or config["num_attention_heads"]))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_rope_dimension_count(dims)
    writer.add_rope_freq_base(float(rope_theta(config) or 10000.0))
    writer.add_file_type(ftype)
    writer.add_sliding_window(int(config.get("sliding_window") or 0))  # 0 tells Phi-3 from Phi-4 in llama.cpp
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if params.get("long_factor"):
        scale = context / original
        attn_factor = math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1.0 else 1.0
        writer.add_rope_scaling_attn_factors(attn_factor)


def _ftype(outtype: str) -> int:
    import gguf

    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]


# --------------------------------------------------------------------------- entry point


@dataclass
class Vocabulary:
    """The tokenizer keys `_add_vocab` writes for one folder, read once and packed once, for every GGUF type of it
    (F16, Q8_0, ...): Llama 3's 128k tokens + 280k merges cost seconds to read and seconds more to serialise."""
    model_dir: Path
    arch: str
    kind: str  # ConversionResult.tokenizer
    entries: dict  # key -> gguf GGUFValue, in the order _add_vocab sets them
    packed: dict[str, bytes]  # key -> its bytes in the file (name + typed value), as GGUFWriter packs them


def read_vocabulary(model_dir: str | Path) -> Vocabulary:
    """The folder's vocabulary as `convert` writes it (into a writer with no file; its keys then packed once)."""
    import gguf

    model_dir = Path(model_dir)
    config = read_config(model_dir)
    arch, _ = preflight(config)
    scratch = gguf.GGUFWriter(None, arch)
    before = set(scratch.kv_data[0])  # general.architecture, set by the writer itself
    kind = _add_vocab(scratch, model_dir, config, arch)
    entries = {key: value for key, value in scratch.kv_data[0].items() if key not in before}
    packed = {key: scratch._pack_val(key, gguf.GGUFValueType.STRING, add_vtype=False)
              + scratch._pack_val(value.value, value.type, add_vtype=True, sub_type=value.sub_type) for key, value in entries.items()}
    return Vocabulary(model_dir.resolve(), arch, kind, entries, packed)


def _write_kv_data(writer: Any, vocabulary: Vocabulary) -> None:
    """GGUFWriter.write_kv_data_to_file, taking the vocabulary's keys from their packed bytes (the same bytes)."""
    import gguf
    from gguf.gguf_writer import WriterState

    if writer.state is not WriterState.HEADER:
        raise ValueError(f"Expected output file to contain the header, got {writer.state}")
    for fout, kv_data in zip(writer.fout, writer.kv_data):
        kv_bytes = bytearray()
        for key, value in kv_data.items():
            if vocabulary.entries.get(key) is value:
                kv_bytes += vocabulary.packed[key]
                continue
            kv_bytes += writer._pack_val(key, gguf.GGUFValueType.STRING, add_vtype=False)
            kv_bytes += writer._pack_val(value.value, value.type, add_vtype=True, sub_type=value.sub_type)
        fout.write(kv_bytes)
    writer.flush()
    writer.state = WriterState.KV_DATA


def convert(model_dir: str | Path, out_path: str | Path, outtype: str = "f16", *, chat_template: str | None = None,
            name: str = "", progress: Callable[[float, str], None] | None = None,
            vocabulary: Vocabulary | None = None) -> ConversionResult:
    """Write `out_path` (.gguf) from a HF model folder; `chat_template` overrides the tokenizer's own. `vocabulary`
    (read_vocabulary of this folder) is shared by several types of one model: the files are byte for byte the same."""
    import gguf

    if outtype not in OUTTYPES:
        raise ConversionError(f"outtype must be one of {', '.join(OUTTYPES)}, got {outtype!r}")
    model_dir, out_path = Path(model_dir), Path(out_path)
    config = read_config(model_dir)
    arch, undo_permute = preflight(config)
    headers = _tensor_headers(_safetensor_files(model_dir))
    planned, tied, notes = _plan_tensors(config, headers, arch, undo_permute, outtype)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.partial")
    writer = gguf.GGUFWriter(tmp, arch)
    _add_hparams(writer, config, arch, int(_ftype(outtype)), name or model_dir.name)
    if vocabulary is not None and (vocabulary.model_dir, vocabulary.arch) != (model_dir.resolve(), arch):
        raise ConversionError(f"the vocabulary given was read from {vocabulary.model_dir} ({vocabulary.arch}), not {model_dir} ({arch})")
    if vocabulary is None:
        tokenizer_kind = _add_vocab(writer, model_dir, config, arch)
    else:
        tokenizer_kind = vocabulary.kind
        for key, value in vocabulary.entries.items():  # what _add_vocab's add_* calls set, in their order
            writer.kv_data[0][key] = value
    if chat_template:
        writer.add_chat_template(chat_template)  # a later key of the same name would be refused: set it once, here
    for plan in planned:
        writer.add_tensor_info(plan.gguf_name, plan.shape, _np_dtype(plan.qtype), _nbytes(plan.shape, plan.qtype), raw_dtype=plan.qtype)
    handles: dict = {}
    try:
        writer.write_header_to_file(path=tmp)
        if vocabulary is None:
            writer.write_kv_data_to_file()
        else:
            _write_kv_data(writer, vocabulary)
        writer.write_ti_data_to_file()
        for index, plan in enumerate(planned):
            data = _encode(_load_tensor(plan, headers, config, handles), plan.qtype)
            writer.write_tensor_data(data)
            if progress:
                progress((index + 1) / len(planned), plan.gguf_name)
        writer.close()
        fault_point(f"write:{out_path.name}")  # test hook: a kill here leaves only the hidden .partial file
        os.replace(tmp, out_path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    finally:
        for handle in handles.values():
            handle.__exit__(None, None, None)
    counts: dict[str, int] = {}
    for plan in planned:
        counts[plan.qtype.name] = counts.get(plan.qtype.name, 0) + 1
    return ConversionResult(out_path, arch, outtype, len(planned), out_path.stat().st_size, tokenizer_kind, tied, counts, notes)


def _np_dtype(qtype: Any) -> Any:
    import numpy as np
    from gguf import GGMLQuantizationType as Q

    return {Q.F32: np.float32, Q.F16: np.float16}.get(qtype, np.float32)
