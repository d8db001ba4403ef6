"""The one generation path: every answer the workbench generates goes through here.

- `prompt_ids(messages, tokenizer)`: the ids a model sees before it answers: its chat template with the
  generation prompt (`core.data.masking`, the same rendering training uses), or — for a tokenizer without a
  template — the one plain fallback, `plain_prompt`.
- `greedy_answers(...)`: batched greedy decoding (left padding, prompts of similar length batched together),
  for the Evaluate job, the Decide baseline and anything else that scores answers; `batch_answers(...)` is the
  same loop, optionally sampled (seeded per batch), with whether each answer finished — a teacher's answers for
  sequence-level distillation.
- `start_generation(...)` / `generate_blocking(...)`: one streamed answer with the Chat page's sampling
  settings; the text fills a buffer from a background thread, so the page polls it and stays responsive.

One lock (`GENERATION_LOCK`) serialises generation within a process: seeded sampling then reproduces
exactly, and on a few CPU cores two parallel generations would only slow each other down. Greedy batches
take it one batch at a time, so a chat reply can slip in between two batches.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from core.data.masking import inference_prompt_ids
from core.llamacpp import LlamaCppModel, stream_chat

GENERATION_LOCK = threading.Lock()

StopCheck = Callable[[], bool]
Progress = Callable[[int], None]  # called with the number of prompts just answered


class Stopped(Exception):
    """The caller asked to stop between two batches."""


# ---------------------------------------------------------------- prompts


def plain_prompt(messages: Sequence[dict]) -> str:
    """The prompt for a tokenizer without a chat template: one `role: content` line per turn, then `assistant:`."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def prompt_ids(messages: Sequence[dict], tokenizer: Any, *, chat_template: str | None = None, reasoning: str | None = None) -> list[int]:
    """Token ids the model reads before answering `messages`. `reasoning` (train / mask / strip) renders the template
    the way training rendered the rows; None: the setting the tokenizer was trained with (saved by the Train job)."""
    if chat_template or getattr(tokenizer, "chat_template", None):
        return inference_prompt_ids(list(messages), tokenizer, chat_template=chat_template, reasoning=reasoning)
    return list(tokenizer(plain_prompt(messages))["input_ids"])


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _device(model: Any) -> Any:
    return next(model.parameters()).device


def pad_token_id(tokenizer: Any) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if value is not None:
            return int(value)
    return 0


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends an answer: the tokenizer's EOS and the model's generation-config EOS (e.g. <|im_end|>)."""
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, configured):
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is not None and int(v) not in ids:
                ids.append(int(v))
    return ids


# ---------------------------------------------------------------- batched greedy


@dataclass(frozen=True)
class Answer:
    text: str
    new_tokens: int  # generated tokens up to and including the end-of-sequence token
    finished: bool  # ended with an end-of-sequence token (False: cut at max_new_tokens)


def batch_answers(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    batch_size: int = 8,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    should_stop: StopCheck | None = None,
    on_progress: Progress | None = None,
) -> list[Answer]:
    """Answers for tokenised prompts (see `prompt_ids`), batched with left padding, prompts of similar length together.

    temperature 0 is greedy; above 0 samples (nucleus `top_p`), the generator re-seeded from `seed` before each batch,
    so the same prompts, settings and batch size give the same answers (e.g. a teacher's sampled dataset)."""
    import torch

    device, pad = _device(model), pad_token_id(tokenizer)
    eos = eos_token_ids(model, tokenizer)
    decoding = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": None} if temperature > 0 else \
        {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[Answer] = [Answer("", 0, False)] * len(prompts)
    for start in range(0, len(order), batch_size):
        if should_stop is not None and should_stop():
            raise Stopped()
        chunk = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            ids[row, width - len(prompts[i]):] = torch.tensor(list(prompts[i]))
            mask[row, width - len(prompts[i]):] = 1
        with GENERATION_LOCK, torch.inference_mode():
            if temperature > 0:
                torch.manual_seed(seed + start)
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                                 pad_token_id=pad, eos_token_id=eos, **decoding)
        for row, i in enumerate(chunk):
            new = out[row, width:].tolist()
            end = next((n for n, token in enumerate(new) if token in eos), None)
            answers[i] = Answer(tokenizer.decode(new, skip_special_tokens=True).strip(), len(new) if end is None else end + 1,
                                end is not None)
        if on_progress:
            on_progress(len(chunk))
    return answers


def greedy_answers(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    batch_size: int = 8,
    should_stop: StopCheck | None = None,
    on_progress: Progress | None = None,
) -> list[str]:
    """Greedy answers for tokenised prompts (see `prompt_ids`), batched with left padding."""
    return [a.text for a in batch_answers(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                          should_stop=should_stop, on_progress=on_progress)]


def greedy_chat_answers(loaded: Any, conversations: Sequence[Sequence[dict]], *, max_new_tokens: int, batch_size: int = 8,
                        should_stop: StopCheck | None = None, on_progress: Progress | None = None) -> list[str]:
    """`greedy_answers` for conversations (each ends with the user turn to answer), on a `core.models.LoadedModel`."""
    prompts = [prompt_ids(messages, loaded.tokenizer) for messages in conversations]
    return greedy_answers(loaded.model, loaded.tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                          should_stop=should_stop, on_progress=on_progress)


# ---------------------------------------------------------------- one streamed answer (Chat)


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
    """The conversation the model answers: the settings' system prompt (if any), then the turns."""
    system = [{"role": "system", "content": settings.system_prompt}] if settings.system_prompt.strip() else []
    return system + [m for m in history if m["role"] != "system"]


def _sampling_kwargs(model: Any, tokenizer: Any, settings: GenerationSettings) -> dict:
    kwargs: dict[str, Any] = {"max_new_tokens": settings.max_new_tokens, "pad_token_id": pad_token_id(tokenizer),
                              "eos_token_id": eos_token_ids(model, tokenizer)}
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


def _stream(loaded: Any, messages: list[dict], settings: GenerationSettings, stream: ChatStream) -> None:
    if isinstance(loaded, LlamaCppModel):  # a GGUF export held by llama.cpp
        _stream_llamacpp(loaded, messages, settings, stream)
        return
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    class _Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):  # noqa: ARG002
            return stream._cancel.is_set()

    model, tokenizer = loaded.model, loaded.tokenizer
    try:
        with GENERATION_LOCK:
            ids = torch.tensor([prompt_ids(messages, tokenizer)], device=_device(model))
            stream.stats.prompt_tokens = int(ids.shape[1])
            streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
            torch.manual_seed(settings.seed)
            start = time.perf_counter()
            result: dict[str, Any] = {}

            def target() -> None:
                try:
                    with torch.inference_mode():
                        result["ids"] = model.generate(
                            input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                            stopping_criteria=StoppingCriteriaList([_Cancelled()]), **_sampling_kwargs(model, tokenizer, settings),
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


def _stream_llamacpp(model: Any, messages: list[dict], settings: GenerationSettings, stream: ChatStream) -> None:
    """The same stream protocol through llama.cpp: the GGUF renders the prompt with the chat template stored in it."""
    def on_piece(piece: str) -> None:
        if stream.stats.time_to_first_token_s is None:
            stream.stats.time_to_first_token_s = time.perf_counter() - start
        stream.text += piece

    try:
        with GENERATION_LOCK:
            start = time.perf_counter()
            prompt_tokens, new_tokens = stream_chat(model, messages, temperature=settings.temperature, top_p=settings.top_p,
                                                    max_new_tokens=settings.max_new_tokens, seed=settings.seed,
                                                    on_piece=on_piece, cancelled=stream._cancel.is_set)
            stream.stats.latency_s = time.perf_counter() - start
            stream.stats.prompt_tokens, stream.stats.new_tokens = prompt_tokens, new_tokens
    except Exception as exc:  # noqa: BLE001
        stream.error = f"{type(exc).__name__}: {exc}"
    finally:
        stream.done = True


def start_generation(loaded: Any, history: list[dict], settings: GenerationSettings) -> ChatStream:
    """Start generating the next assistant turn in a background thread; returns the live buffer."""
    stream = ChatStream()
    thread = threading.Thread(target=_stream, args=(loaded, build_messages(history, settings), settings, stream), name="chat", daemon=True)
    thread.start()
    return stream


def generate_blocking(loaded: Any, history: list[dict], settings: GenerationSettings | None = None) -> ChatStream:
    """Generate in the calling thread; the finished buffer carries the text and timing stats."""
    settings = settings or GenerationSettings()
    stream = ChatStream()
    _stream(loaded, build_messages(history, settings), settings, stream)
    if stream.error:
        raise RuntimeError(stream.error)
    return stream


def generate_text(loaded: Any, history: list[dict], settings: GenerationSettings | None = None) -> str:
    """Blocking convenience: the whole answer as a string (raises on failure)."""
    return generate_blocking(loaded, history, settings).text


def greedy_continuation_ids(model: Any, tokenizer: Any, input_ids: Sequence[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation of one tokenised prompt as ids, the end-of-answer id excluded: the torch reference
    an export is compared with (the same ids go to llama.cpp)."""
    import torch

    eos = eos_token_ids(model, tokenizer)
    ids = torch.tensor([list(input_ids)], device=_device(model))
    with GENERATION_LOCK, torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                             temperature=None, top_p=None, top_k=None, repetition_penalty=1.0,
                             pad_token_id=pad_token_id(tokenizer), eos_token_id=eos or None)
    new = [int(t) for t in out[0, ids.shape[1]:].tolist()]
    for index, token in enumerate(new):
        if token in eos:
            return new[:index]
    return new
