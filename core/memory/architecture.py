"""Model architecture for the memory estimator: the config values memory depends on, from a transformers
config, a config.json dict, a shipped preset (assets/model_presets.json) or a `core.models.ModelSource`."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from core.models import ModelSource, load_config


@dataclass(frozen=True)
class LinearShape:
    name: str
    in_features: int
    out_features: int
    bias: bool = False

    @property
    def params(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)


@dataclass(frozen=True)
class ModelArch:
    """The config values memory depends on (decoder-only transformer with RMSNorm and a gated MLP)."""

    name: str
    model_type: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    norms_per_layer: int = 2  # Gemma-2/3 add a post-norm after attention and after the MLP
    qk_norm: bool = False  # Qwen3 / Gemma-3 normalise q and k per head
    fused_qkv: bool = False  # Phi-3: one qkv_proj and one gate_up_proj
    max_position_embeddings: int | None = None
    final_logit_softcapping: float | None = None
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "vocab_size"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"model config {self.name!r}: {name} must be a positive integer, got {getattr(self, name)!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"model config {self.name!r}: num_attention_heads ({self.num_heads}) "
                             f"must be a multiple of num_key_value_heads ({self.num_kv_heads})")

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def layer_linears(self) -> tuple[LinearShape, ...]:
        h, i = self.hidden_size, self.intermediate_size
        if self.fused_qkv:
            return (
                LinearShape("qkv_proj", h, self.q_dim + 2 * self.kv_dim, self.qkv_bias),
                LinearShape("o_proj", self.q_dim, h, self.o_bias),
                LinearShape("gate_up_proj", h, 2 * i, self.mlp_bias),
                LinearShape("down_proj", i, h, self.mlp_bias),
            )
        return (
            LinearShape("q_proj", h, self.q_dim, self.qkv_bias),
            LinearShape("k_proj", h, self.kv_dim, self.qkv_bias),
            LinearShape("v_proj", h, self.kv_dim, self.qkv_bias),
            LinearShape("o_proj", self.q_dim, h, self.o_bias),
            LinearShape("gate_proj", h, i, self.mlp_bias),
            LinearShape("up_proj", h, i, self.mlp_bias),
            LinearShape("down_proj", i, h, self.mlp_bias),
        )

    @property
    def linear_names(self) -> tuple[str, ...]:
        return tuple(linear.name for linear in self.layer_linears())

    def param_counts(self) -> dict[str, int]:
        """Exact parameter counts: embedding, attention (GQA), gated MLP, norms, lm_head (0 when tied), total."""
        linears = {linear.name: linear.params for linear in self.layer_linears()}
        attention = sum(v for k, v in linears.items() if k in ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj"))
        mlp = sum(v for k, v in linears.items() if k in ("gate_proj", "up_proj", "gate_up_proj", "down_proj"))
        per_layer_norms = self.norms_per_layer * self.hidden_size + (2 * self.head_dim if self.qk_norm else 0)
        counts = {
            "embedding": self.vocab_size * self.hidden_size,
            "attention": attention * self.num_layers,
            "mlp": mlp * self.num_layers,
            "norms": per_layer_norms * self.num_layers + self.hidden_size,
            "lm_head": 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size,
        }
        counts["total"] = sum(counts.values())
        return counts

    @property
    def total_params(self) -> int:
        return self.param_counts()["total"]

    def as_dict(self) -> dict:
        data = asdict(self)
        data["notes"] = list(self.notes)
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> "ModelArch":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["notes"] = tuple(values.get("notes") or ())
        return cls(**values)


_FUSED_TYPES = {"phi3"}
_QKV_BIAS_TYPES = {"qwen2"}  # q/k/v have biases, o_proj does not
_FOUR_NORM_TYPES = {"gemma2", "gemma3", "gemma3_text"}
_QK_NORM_TYPES = {"qwen3", "gemma3", "gemma3_text"}
_KNOWN_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text", "phi3", "smollm3", "granite", "olmo2"}
_MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")


def _get(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def arch_from_config(config: Any, name: str = "") -> ModelArch:
    """A `ModelArch` from a transformers config object or a config.json dict; errors name the missing field."""
    if not isinstance(config, Mapping) and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    elif isinstance(config, Mapping) and isinstance(config.get("text_config"), Mapping):
        config = config["text_config"]
    model_type = str(_get(config, "model_type", "") or "")
    label = name or str(_get(config, "_name_or_path", "") or _get(config, "name_or_path", "") or model_type or "model")
    if any(_get(config, key) for key in _MOE_KEYS):
        raise ValueError(f"{label}: mixture-of-experts models ({model_type}) are not modelled by the memory estimator yet")
    missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
               if _get(config, k) in (None, "")]
    if missing:
        raise ValueError(f"{label}: the model config lacks {', '.join(missing)}, so its memory cannot be estimated")
    hidden, heads = int(_get(config, "hidden_size")), int(_get(config, "num_attention_heads"))
    head_dim = _get(config, "head_dim") or hidden // heads
    attention_bias = bool(_get(config, "attention_bias", False))
    notes = []
    if model_type not in _KNOWN_TYPES:
        notes.append(f"Architecture {model_type or 'unknown'!r} is treated as Llama-like (RMSNorm, gated MLP, separate q/k/v projections).")
    return ModelArch(
        name=label,
        model_type=model_type or "llama",
        hidden_size=hidden,
        intermediate_size=int(_get(config, "intermediate_size")),
        num_layers=int(_get(config, "num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=int(_get(config, "num_key_value_heads") or heads),
        head_dim=int(head_dim),
        vocab_size=int(_get(config, "vocab_size")),
        tie_word_embeddings=bool(_get(config, "tie_word_embeddings", False)),
        qkv_bias=attention_bias or model_type in _QKV_BIAS_TYPES,
        o_bias=attention_bias,
        mlp_bias=bool(_get(config, "mlp_bias", False)),
        norms_per_layer=4 if model_type in _FOUR_NORM_TYPES else 2,
        qk_norm=model_type in _QK_NORM_TYPES,
        fused_qkv=model_type in _FUSED_TYPES,
        max_position_embeddings=_get(config, "max_position_embeddings"),
        final_logit_softcapping=_get(config, "final_logit_softcapping"),
        notes=tuple(notes),
    )



# --------------------------------------------------------------------------- presets


def presets_path() -> Path:
    return Path(__file__).resolve().parents[2] / "assets" / "model_presets.json"


@lru_cache(maxsize=1)
def _preset_table() -> tuple[dict, ...]:
    data = json.loads(presets_path().read_text(encoding="utf-8"))
    return tuple(data["presets"])


def list_presets() -> list[dict]:
    """[{id, name, published_params, config}] for the common architectures the app ships."""
    return [dict(p) for p in _preset_table()]


def preset_arch(key: str) -> ModelArch:
    """A preset by Hub id ("Qwen/Qwen2.5-7B"), name ("Qwen2.5 7B") or the id's last part; case-insensitive."""
    wanted = key.strip().lower()
    for preset in _preset_table():
        if wanted in (preset["id"].lower(), preset["name"].lower(), preset["id"].split("/")[-1].lower()):
            return arch_from_config(preset["config"], name=preset["name"])
    names = ", ".join(p["name"] for p in _preset_table())
    raise KeyError(f"no model preset called {key!r}; presets: {names}")


def arch_from_source(source: Any) -> ModelArch:
    """Config of a `core.models.ModelSource` (local folder, embedded model, cached / reachable Hub id)."""
    return arch_from_config(load_config(source), name=getattr(source, "label", ""))


def resolve_arch(model: Any) -> ModelArch:
    if isinstance(model, ModelArch):
        return model
    if isinstance(model, str):
        try:
            return preset_arch(model)
        except KeyError:
            return arch_from_source(ModelSource.parse(model))
    if type(model).__name__ == "ModelSource":
        return arch_from_source(model)
    return arch_from_config(model)
