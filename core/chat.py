"""Chat generation for the side-by-side Chat page (and anything else that needs an answer).

Generation runs in a background thread that only fills a buffer; the page polls the buffer, so the
rest of the UI stays responsive. One generation at a time: seeded sampling then reproduces exactly,
and on a few CPU cores two parallel generations would only slow each other down.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from core.models import LoadedModel

_GENERATION_LOCK = threading.Lock()


@dataclass(frozen=True)
class GenerationSettings:
    system_prompt: str = ""
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= 5.0:
            raise ValueError(f"temperature must be between 0 and 5, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 1 <= self.max_new_tokens <= 8192:
            raise ValueError(f"max_new_tokens must be between 1 and 8192, got {self.max_new_tokens}")


def build_messages(history: list[dict], settings: GenerationSettings) -> list[dict]:
    system = [{"role": "system", "content": settings.system_prompt}] if settings.system_prompt.strip() else []
    return system + [m for m in history if m["role"] != "system"]


def _prompt_inputs(loaded: LoadedModel, messages: list[dict]) -> dict:
    tokenizer = loaded.tokenizer
    if getattr(tokenizer, "chat_template", None):
        enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    else:  # a base model without a template: plain concatenation
        text = "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
        enc = tokenizer(text, return_tensors="pt")
    device = next(loaded.model.parameters()).device
    return {k: v.to(device) for k, v in enc.items()}


def _generate_kwargs(loaded: LoadedModel, settings: GenerationSettings) -> dict:
    tokenizer = loaded.tokenizer
    kwargs: dict[str, Any] = {
        "max_new_tokens": settings.max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    }
    if settings.temperature > 0:
        kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kwargs


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    time_to_first_token_s: float | None = None
    latency_s: float | None = None

    @property
    def tokens_per_s(self) -> float | None:
        if not self.latency_s or self.time_to_first_token_s is None or self.new_tokens < 2:
            return None
        decode_time = self.latency_s - self.time_to_first_token_s
        return (self.new_tokens - 1) / decode_time if decode_time > 0 else None

    def as_dict(self) -> dict:
        return {**asdict(self), "tokens_per_s": self.tokens_per_s}


@dataclass
class ChatStream:
    """One answer being generated: `text` grows while `done` is False. Safe to read from any thread."""

    text: str = ""
    done: bool = False
    error: str = ""
    stats: GenerationStats = field(default_factory=GenerationStats)
    _cancel: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self._cancel.set()


def _run_generation(loaded: LoadedModel, messages: list[dict], settings: GenerationSettings, stream: ChatStream) -> None:
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    class _Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):  # noqa: ARG002
            return stream._cancel.is_set()

    try:
        with _GENERATION_LOCK:
            inputs = _prompt_inputs(loaded, messages)
            stream.stats.prompt_tokens = int(inputs["input_ids"].shape[1])
            streamer = TextIteratorStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)
            torch.manual_seed(settings.seed)
            start = time.perf_counter()
            result: dict[str, Any] = {}

            def target() -> None:
                try:
                    with torch.inference_mode():
                        result["ids"] = loaded.model.generate(
                            **inputs, streamer=streamer, stopping_criteria=StoppingCriteriaList([_Cancelled()]),
                            **_generate_kwargs(loaded, settings),
                        )
                except BaseException as exc:  # noqa: BLE001 - reported through the stream
                    result["error"] = exc
                    streamer.end()

            worker = threading.Thread(target=target, name="generate", daemon=True)
            worker.start()
            for piece in streamer:
                if stream.stats.time_to_first_token_s is None:
                    stream.stats.time_to_first_token_s = time.perf_counter() - start
                stream.text += piece
            worker.join()
            stream.stats.latency_s = time.perf_counter() - start
            if "error" in result:
                raise result["error"]
            stream.stats.new_tokens = int(result["ids"].shape[1]) - stream.stats.prompt_tokens
    except Exception as exc:  # noqa: BLE001
        stream.error = f"{type(exc).__name__}: {exc}"
    finally:
        stream.done = True


def start_generation(loaded: LoadedModel, history: list[dict], settings: GenerationSettings) -> ChatStream:
    """Start generating the next assistant turn in a background thread; returns the live buffer."""
    stream = ChatStream()
    thread = threading.Thread(
        target=_run_generation, args=(loaded, build_messages(history, settings), settings, stream), name="chat", daemon=True
    )
    thread.start()
    return stream


def generate_blocking(loaded: LoadedModel, history: list[dict], settings: GenerationSettings | None = None) -> ChatStream:
    """Generate in the calling thread; the finished buffer carries the text and timing stats."""
    settings = settings or GenerationSettings()
    stream = ChatStream()
    _run_generation(loaded, build_messages(history, settings), settings, stream)
    if stream.error:
        raise RuntimeError(stream.error)
    return stream


def generate_text(loaded: LoadedModel, history: list[dict], settings: GenerationSettings | None = None) -> str:
    """Blocking convenience: the whole answer as a string (raises on failure)."""
    return generate_blocking(loaded, history, settings).text


def transcript_jsonl(columns: Iterable[dict], settings: GenerationSettings) -> str:
    """One JSON line per turn per column: variant, model, role, content and the answer's timing."""
    lines = []
    for column in columns:
        for turn in column["history"]:
            lines.append(
                json.dumps(
                    {
                        "variant": column["label"],
                        "model": column["model"],
                        "role": turn["role"],
                        "content": turn["content"],
                        **({"stats": turn["stats"]} if turn.get("stats") else {}),
                        "settings": asdict(settings),
                    },
                    ensure_ascii=False,
                )
            )
    return "\n".join(lines) + ("\n" if lines else "")
