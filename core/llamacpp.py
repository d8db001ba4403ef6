"""Every llama.cpp call of the workbench (through llama-cpp-python): load a GGUF, greedy and teacher-forced
decoding, tokenization, llama.cpp's own chat-template rendering, K-quantisation and streamed chat.

llama-cpp-python comes with the embedded model's package, so it is normally there; when it does not import,
`available()` is False and callers turn that into a note, never a crash.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

# K-quants and the legacy block formats llama.cpp's quantiser writes (our converter writes F16 / Q8_0 itself).
QUANT_TYPES = ("Q2_K", "Q3_K_M", "Q4_0", "Q4_K_S", "Q4_K_M", "Q5_0", "Q5_K_S", "Q5_K_M", "Q6_K")


def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def missing_note() -> str:
    return ("llama.cpp (the `llama-cpp-python` package) is not installed: GGUF files are written but not loaded back, K-quants are "
            "unavailable.")


_LOAD_LOCK = threading.Lock()


def _llama(path: Path, **kwargs: Any) -> Any:
    """llama_cpp.Llama(path, ...) with llama.cpp's extra CPU buffer types off. Their weight repacking (the AMX /
    repacked-CPU kernels chosen on a CPU with AMX, llama-cpp-python built for the host) made the first decode of every
    model — the embedded Q4_1 one included — die with a segfault (0.3.35 and 0.3.36 on this kind of machine); without
    it the plain CPU kernels run. Llama() has no argument for it, so its defaults are wrapped while it loads."""
    from llama_cpp import Llama
    from llama_cpp import llama_cpp as lib

    defaults = lib.llama_model_default_params

    def without_repacking() -> Any:
        params = defaults()
        if hasattr(params, "use_extra_bufts"):
            params.use_extra_bufts = False
        return params

    with _LOAD_LOCK:
        lib.llama_model_default_params = without_repacking
        try:
            return Llama(str(path), **kwargs)
        finally:
            lib.llama_model_default_params = defaults


def _threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


@contextmanager
def open_gguf(path: str | Path, *, n_ctx: int = 2048, logits_all: bool = False) -> Iterator[Any]:
    """A llama.cpp model for the duration of the block (closed explicitly: its finaliser fails at interpreter exit)."""
    path = Path(path)
    try:
        llm = _llama(path, n_ctx=n_ctx, n_threads=_threads(), n_threads_batch=_threads(), logits_all=logits_all,
                    verbose=False, seed=0)
    except Exception as exc:  # noqa: BLE001 - llama.cpp reports a bad file as a bare ValueError
        raise ValueError(f"llama.cpp could not load {path.name}: {exc}") from exc
    try:
        yield llm
    finally:
        llm.close()


def metadata(llm: Any) -> dict[str, str]:
    return dict(llm.metadata or {})


def tokenize(llm: Any, text: str, *, add_bos: bool = False) -> list[int]:
    """Token ids as llama.cpp splits `text`, special tokens (<|im_start|>…) parsed as such."""
    return list(llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))


def greedy(llm: Any, prompt_ids: list[int], max_new_tokens: int, stop_ids: set[int] = frozenset()) -> list[int]:
    """Greedy continuation: the argmax of llama.cpp's logits after each token (no sampler, no penalties),
    stopping at an end-of-generation id."""
    import numpy as np

    llm.reset()
    llm.eval(prompt_ids)
    out: list[int] = []
    while len(out) < max_new_tokens:
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if token in stop_ids:
            break
        out.append(token)
        llm.eval([token])
    return out


def next_token_scores(llm: Any, ids: list[int]):
    """Teacher-forced: llama.cpp's logits after every prefix of `ids`, (len(ids), vocab) float32 (needs logits_all)."""
    import numpy as np

    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def eos_ids(llm: Any) -> set[int]:
    ids = {int(llm.token_eos())}
    eot = getattr(llm._model, "token_eot", None)  # noqa: SLF001 - llama-cpp-python exposes eot only there
    if callable(eot) and eot() >= 0:
        ids.add(int(eot()))
    return ids


def render_native(template: str, messages: list[dict], add_generation_prompt: bool = True) -> str | None:
    """llama.cpp's built-in rendering of a conversation for this template (what llama-server / Ollama-style
    clients without Jinja do); None when llama.cpp does not recognise the template."""
    import llama_cpp

    chat = (llama_cpp.llama_chat_message * len(messages))(
        *[llama_cpp.llama_chat_message(role=m["role"].encode(), content=m["content"].encode()) for m in messages]
    )
    size = 4096 + sum(len(m["content"]) * 2 for m in messages)
    for _ in range(2):
        buffer = ctypes.create_string_buffer(size)
        written = llama_cpp.llama_chat_apply_template(template.encode(), chat, len(messages), add_generation_prompt, buffer, size)
        if written < 0:
            return None
        if written <= size:
            return buffer.raw[:written].decode("utf-8", errors="replace")
        size = written + 1
    return None


def quantize(source: str | Path, target: str | Path, qtype: str) -> float:
    """llama.cpp's quantiser (`llama-quantize`): source GGUF (F16) -> target GGUF in `qtype`; returns seconds."""
    import llama_cpp

    if qtype not in QUANT_TYPES:
        raise ValueError(f"quantisation type must be one of {', '.join(QUANT_TYPES)}, got {qtype!r}")
    target = Path(target)
    tmp = target.with_name(f".{target.name}.partial")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype}")
    params.nthread = _threads()
    started = time.perf_counter()
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params))
    if code != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"llama.cpp could not quantise {Path(source).name} to {qtype} (code {code})")
    os.replace(tmp, target)
    return time.perf_counter() - started


# --------------------------------------------------------------------------- chat backend


@dataclass(frozen=True)
class LlamaCppChoice:
    """A GGUF file chosen for chat through llama.cpp (what a ModelSource is for torch models)."""

    path: str

    @property
    def label(self) -> str:
        return f"{Path(self.path).stem} (llama.cpp)"


@dataclass
class LlamaCppModel:
    """A GGUF file held open by llama.cpp for the Chat page (the counterpart of core.models.LoadedModel)."""

    path: Path
    llm: Any
    name: str
    lock: threading.Lock

    @property
    def label(self) -> str:
        return f"{self.name} (llama.cpp)"

    def close(self) -> None:
        self.llm.close()


def load_chat_model(path: str | Path, n_ctx: int = 4096) -> LlamaCppModel:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    try:
        llm = _llama(path, n_ctx=n_ctx, n_threads=_threads(), n_threads_batch=_threads(), verbose=False, seed=0)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"llama.cpp could not load {path.name}: {exc}") from exc
    return LlamaCppModel(path=path, llm=llm, name=path.stem, lock=threading.Lock())


def stream_chat(model: LlamaCppModel, messages: list[dict], *, temperature: float, top_p: float, max_new_tokens: int,
                seed: int, on_piece: Callable[[str], None], cancelled: Callable[[], bool]) -> tuple[int, int]:
    """Stream one assistant turn through the GGUF's own chat template; returns (prompt_tokens, new_tokens)."""
    sampling = dict(temperature=temperature, top_p=top_p, top_k=0 if temperature > 0 else 1, min_p=0.0, repeat_penalty=1.0)
    with model.lock:
        new_tokens = 0
        stream = model.llm.create_chat_completion(messages=messages, stream=True, max_tokens=max_new_tokens, seed=seed, **sampling)
        for chunk in stream:
            if cancelled():
                break
            piece = chunk["choices"][0]["delta"].get("content") or ""
            if piece:
                new_tokens += 1  # llama-cpp-python yields one chunk per sampled token
                on_piece(piece)
        prompt_tokens = int(model.llm.n_tokens) - new_tokens
    return max(0, prompt_tokens), new_tokens
