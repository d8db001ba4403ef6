"""The one place that turns a conversation into `input_ids` + `labels` for training.

The trainer and the Template page both call `encode_conversation`, so what the page draws is what the
model is trained on.

How it works, for any Jinja chat template:

1. Render the conversation with the template (exactly the text the model sees, `tokenize=False`).
2. Render it again with every message content replaced by a unique sentinel. The sentinel render splits
   into the template's own literal text and the places where each content goes; walking both renders
   side by side gives the character span of every message's content in the real render, even when the
   template trims it, folds the system prompt into the first user turn, or injects a default system prompt.
3. The end-of-turn marker of an assistant turn is the text the template emits right after the assistant
   content, up to and including the first special token there (`<|im_end|>`, `</s>`, ...). When the text
   there holds no special token, it is what the template emits after the content when that assistant turn
   ends the conversation (e.g. Alpaca-style `"\\n\\n"`); a template that emits nothing has no marker.
4. Tokenize the render once with offsets (fast tokenizer, `add_special_tokens=False`: the template already
   wrote BOS where it wants one, as `apply_chat_template(tokenize=True)` does at inference) and train every
   token whose characters overlap a trained span (the rule transformers uses for its assistant mask).

Tool calls: an assistant turn that calls tools is rendered by the template from its `tool_calls` (and the
row's `tools` definitions are passed as `apply_chat_template(tools=...)` does). The sentinel render also puts a
sentinel in each call's function name, so the call's place is found the same way; the turn's trained text
starts where the generation prompt ends (the render of the messages before it with `add_generation_prompt=True`,
when that is a prefix of the render) and runs up to the end-of-turn marker that follows the last call: the
assistant's tool-call text and its end-of-turn are trained, tool results (role `tool`) never are. A template that
does not write tool calls at all cannot train them, and says so.

Templates with `{% generation %}` blocks: the blocks are the trained spans, so the labels equal
`apply_chat_template(..., return_assistant_tokens_mask=True)`.

Templates that refuse a system message (Gemma-style `raise_exception('System role not supported')`): the
system prompt is folded into the first user turn (`system + "\\n\\n" + user`) and the row carries a note.

Policies: ``all_assistant`` (every assistant turn + its end-of-turn marker), ``last_assistant`` (only the
final assistant turn), ``completion_only`` (everything after the prompt, where the prompt is the render of
the messages before the last assistant turn with `add_generation_prompt=True` — TRL's prompt/completion
rule), ``everything`` (every token). Labels are the token id where trained and -100 where masked; the
shift by one happens inside the model's loss.

Reasoning (``<think>`` blocks): an assistant message carries its reasoning in a field (``reasoning_content``,
``thinking`` or ``reasoning``) or inline at the start of its content (``<think>...</think>answer``). The sentinel
render puts a sentinel in the reasoning too, so its place is found the same way, wherever the template writes it
(or that it writes it nowhere: the turn is listed in ``reasoning_dropped``). A think block the template writes
(``<think>`` ... ``</think>``, tags included, an empty one the template inserts by itself too) is its own part,
``reasoning``. A turn with reasoning starts where the generation prompt ends (the model writes ``<think>`` itself).
The ``reasoning`` setting: ``train`` trains it with the turn, ``mask`` labels every think block -100 (the answer
after it stays trained), ``strip`` removes the reasoning from the rows before rendering. The setting also decides
the template's ``enable_thinking`` (off for ``strip``), for training and inference alike (`template_kwargs_for`):
a Qwen3-style template then writes the same empty think block in the generation prompt that it writes in the
training answers.
"""
from __future__ import annotations

import bisect
import heapq
import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any, Iterable, NamedTuple, Sequence

IGNORE_INDEX = -100
POLICIES: tuple[str, ...] = ("all_assistant", "last_assistant", "completion_only", "everything")
PARTS: tuple[str, ...] = ("template", "content", "tool_call", "reasoning", "eot")
REASONING_MODES: tuple[str, ...] = ("train", "mask", "strip")
REASONING_KEYS: tuple[str, ...] = ("reasoning_content", "thinking", "reasoning")  # message fields that hold reasoning
REASONING_TOKENIZER_KEY = "workbench_reasoning"  # a trained tokenizer's init kwarg: the reasoning setting it was trained with
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_INLINE_THINK = re.compile(r"\A(\s*)<think>(.*?)</think>(.*)\Z", re.DOTALL)
_THINK_BLOCK = re.compile(r"<think>.*?</think>[ \t]*\n*", re.DOTALL)
_SENTINEL = "\ue000{}\ue001"
_SENTINEL_RE = re.compile("\ue000(\\d+)\ue001")
_GENERATION_RE = re.compile(r"\{%-?\s*generation\s*-?%\}")


class MaskingError(ValueError):
    """A conversation cannot be encoded with this template; the message says which and why."""


class TokenSpan(NamedTuple):
    role: str  # role of the message the token belongs to ("" for text rows' padding-free tail)
    turn: int  # index of that message in the conversation as given
    # "template" (chat-template text), "content" (message text), "tool_call" (an assistant's call), "reasoning" (a think block) or "eot"
    part: str


@dataclass(frozen=True)
class Segment:
    """A character range of the rendered text and the message / part it belongs to."""

    start: int
    end: int
    role: str
    turn: int
    part: str


@dataclass
class EncodedRow:
    input_ids: list[int]
    labels: list[int]  # input id where trained, IGNORE_INDEX where masked
    truncated: bool
    n_trained: int
    text: str = ""  # the rendered conversation (before truncation)
    offsets: list[tuple[int, int]] = field(default_factory=list, repr=False)
    segments: list[Segment] = field(default_factory=list, repr=False)
    trained_chars: list[tuple[int, int]] = field(default_factory=list, repr=False)  # [start, end) of text trained
    n_tokens_full: int = 0  # length before truncation
    has_eot_marker: bool = True  # the template emits an end-of-turn marker after assistant turns
    eot_trained: bool = True  # every trained assistant turn has its whole marker trained (after truncation)
    notes: list[str] = field(default_factory=list)
    reasoning_mode: str = "train"
    reasoning_turns: list[int] = field(default_factory=list)  # turns whose message carried reasoning (before any strip)
    reasoning_dropped: list[int] = field(default_factory=list)  # turns whose reasoning the template did not write

    @cached_property
    def spans(self) -> list[TokenSpan]:
        """Per token: role, turn index and part, taken from the segment holding the token's last character."""
        starts = [s.start for s in self.segments]
        result = []
        for start, end in self.offsets[: len(self.input_ids)]:
            i = bisect.bisect_right(starts, max(end - 1, start)) - 1
            seg = self.segments[max(i, 0)] if self.segments else None
            result.append(TokenSpan(seg.role, seg.turn, seg.part) if seg else TokenSpan("", -1, "template"))
        return result

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def attention_mask(self) -> list[int]:
        return [1] * len(self.input_ids)

    @property
    def trained_share(self) -> float:
        return self.n_trained / len(self.input_ids) if self.input_ids else 0.0

    @property
    def trained_mask(self) -> list[bool]:
        return [label != IGNORE_INDEX for label in self.labels]

    def trained_runs(self) -> list[tuple[int, int]]:
        """Maximal [start, end) token ranges that are trained."""
        runs, start = [], None
        for i, label in enumerate(self.labels + [IGNORE_INDEX]):
            if label != IGNORE_INDEX and start is None:
                start = i
            elif label == IGNORE_INDEX and start is not None:
                runs.append((start, i))
                start = None
        return runs

    def trained_texts(self, tokenizer: Any) -> list[str]:
        """The decoded text of each trained run (special tokens kept)."""
        return [tokenizer.decode(self.input_ids[a:b], skip_special_tokens=False) for a, b in self.trained_runs()]

    def as_features(self) -> dict:
        """What a collator needs."""
        return {"input_ids": self.input_ids, "labels": self.labels, "attention_mask": self.attention_mask}


# ---------------------------------------------------------------- public API


def encode_conversation(
    messages: Sequence[dict],
    tokenizer: Any,
    *,
    chat_template: str | None = None,
    policy: str = "all_assistant",
    max_length: int | None = None,
    train_eot: bool = True,
    tools: Sequence[dict] | None = None,
    reasoning: str | None = None,
) -> EncodedRow:
    """One conversation (and its tool definitions) → ids, labels (-100 where masked) and per-token spans."""
    return encode_conversations([messages], tokenizer, chat_template=chat_template, policy=policy, max_length=max_length,
                                train_eot=train_eot, tools=[tools], reasoning=reasoning)[0]


def encode_conversations(
    conversations: Iterable[Sequence[dict]],
    tokenizer: Any,
    *,
    chat_template: str | None = None,
    policy: str = "all_assistant",
    max_length: int | None = None,
    train_eot: bool = True,
    errors: str = "raise",
    tools: Sequence[Sequence[dict] | None] | None = None,
    reasoning: str | None = None,
) -> list[EncodedRow | None]:
    """Many conversations with one batched tokenizer call (fast). errors="skip" puts None for rows that fail.
    `tools`, when given, holds each conversation's tool definitions (None for a row without). `reasoning`:
    train / mask / strip (None: the setting the tokenizer was trained with, else train)."""
    if errors not in ("raise", "skip"):
        raise ValueError("errors must be 'raise' or 'skip'")
    ctx = _Context.make(tokenizer, chat_template, policy, max_length, reasoning)
    conversations = list(conversations)
    tools = list(tools) if tools is not None else [None] * len(conversations)
    if len(tools) != len(conversations):
        raise ValueError(f"tools has {len(tools)} entries for {len(conversations)} conversations")
    plans: list[_Plan | None] = []
    for messages, row_tools in zip(conversations, tools):
        try:
            plans.append(_plan(list(messages), ctx, train_eot, list(row_tools) if row_tools else None))
        except MaskingError:
            if errors == "raise":
                raise
            plans.append(None)
    texts = [p.text for p in plans if p is not None]
    encodings = iter(_tokenize(tokenizer, texts))
    return [None if p is None else _finish(p, *next(encodings), max_length) for p in plans]


def encode_text(text: str, tokenizer: Any, *, max_length: int | None = None, add_eos: bool = True) -> EncodedRow:
    """A plain-text row for language-model training: every token trained, no chat template, EOS appended."""
    body = text + (tokenizer.eos_token or "") if add_eos else text
    ids, offsets = _tokenize(tokenizer, [body])[0]
    segments = [Segment(0, len(text), "text", 0, "content")]
    if len(body) > len(text):
        segments.append(Segment(len(text), len(body), "text", 0, "eot"))
    plan = _Plan(body, segments, [(0, len(body))], [], True, [])
    return _finish(plan, ids, offsets, max_length)


def encode_row(row: dict, tokenizer: Any, **kwargs: Any) -> EncodedRow:
    """A normalised row from core.data.formats: ``{"messages": ...}`` or ``{"text": ...}``."""
    if "messages" in row:
        return encode_conversation(row["messages"], tokenizer, tools=row.get("tools"), **kwargs)
    if "text" in row:
        return encode_text(row["text"], tokenizer, max_length=kwargs.get("max_length"))
    raise MaskingError(f"row has neither 'messages' nor 'text' (keys: {sorted(row)})")


def render_conversation(messages: Sequence[dict], tokenizer: Any, *, chat_template: str | None = None, add_generation_prompt: bool = False,
                        tools: Sequence[dict] | None = None, reasoning: str | None = None) -> str:
    """The text the template makes of these messages (system folded where the template refuses it), with the
    reasoning setting applied exactly as training applies it (the template's enable_thinking; strip)."""
    ctx = _Context.make(tokenizer, chat_template, "all_assistant", None, reasoning)
    return _render(ctx, _apply_reasoning(list(messages), ctx.reasoning), add_generation_prompt=add_generation_prompt, tools=tools)[0]


def inference_prompt_ids(messages: Sequence[dict], tokenizer: Any, *, chat_template: str | None = None, tools: Sequence[dict] | None = None,
                         reasoning: str | None = None) -> list[int]:
    """Token ids the model sees at inference for these messages (`add_generation_prompt=True`)."""
    text = render_conversation(messages, tokenizer, chat_template=chat_template, add_generation_prompt=True, tools=tools,
                               reasoning=reasoning)
    return _tokenize(tokenizer, [text])[0][0]


# ---------------------------------------------------------------- reasoning


def check_reasoning_mode(reasoning: str) -> str:
    if reasoning not in REASONING_MODES:
        raise ValueError(f"unknown reasoning setting {reasoning!r}; expected one of {', '.join(REASONING_MODES)}")
    return reasoning


def reasoning_mode_of(tokenizer: Any, reasoning: str | None = None) -> str:
    """The reasoning setting to render with: the one given, else the one the tokenizer was trained with, else train."""
    if reasoning is None:
        reasoning = (getattr(tokenizer, "init_kwargs", None) or {}).get(REASONING_TOKENIZER_KEY) or "train"
    return check_reasoning_mode(reasoning)


def template_kwargs_for(reasoning: str) -> dict:
    """The template variables a reasoning setting sets, for training rows and inference prompts alike."""
    return {"enable_thinking": check_reasoning_mode(reasoning) != "strip"}


def message_reasoning(message: dict) -> tuple[str, str] | None:
    """(where, text) of an assistant message's reasoning: a field name of REASONING_KEYS or "inline" (a leading
    <think>...</think> in its content); None when it has none."""
    if not isinstance(message, dict) or message.get("role") != "assistant":
        return None
    for key in REASONING_KEYS:
        value = message.get(key)
        if isinstance(value, str) and value.strip():
            return key, value
    content = message.get("content")
    match = _INLINE_THINK.match(content) if isinstance(content, str) else None
    if match and match.group(2).strip():
        return "inline", match.group(2)
    return None


def strip_reasoning(messages: Sequence[dict]) -> list[dict]:
    """The messages without reasoning: no reasoning fields, no leading <think>...</think> in assistant contents."""
    out = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") != "assistant":
            out.append(message)
            continue
        copy = {k: v for k, v in message.items() if k not in REASONING_KEYS}
        content = copy.get("content")
        match = _INLINE_THINK.match(content) if isinstance(content, str) else None
        if match:
            copy["content"] = match.group(1) + match.group(3).lstrip()
        out.append(copy)
    return out


def template_reasoning_fields(tokenizer: Any, *, chat_template: str | None = None) -> tuple[str, ...]:
    """Where this template takes an answer's reasoning from: the fields of REASONING_KEYS (and "inline", a leading
    <think>...</think> in the content) whose text appears when a one-turn conversation is rendered with it."""
    ctx = _Context.make(tokenizer, chat_template, "all_assistant", None, "train")
    return _reasoning_fields(ctx.template, tuple(sorted(ctx.kwargs.items())))


@lru_cache(maxsize=64)
def _reasoning_fields(template: str, kwargs: tuple) -> tuple[str, ...]:
    import jinja2

    compiled, probe = _compile(template), "\ue002probe\ue003"
    found = []
    for key in REASONING_KEYS + ("inline",):
        answer = {"role": "assistant", "content": f"{THINK_OPEN}{probe}{THINK_CLOSE}answer" if key == "inline" else "answer"}
        if key != "inline":
            answer[key] = probe
        try:
            text = compiled.render(**dict(kwargs), messages=[{"role": "user", "content": "question"}, answer], add_generation_prompt=False,
                                   tools=None, documents=None)
        except jinja2.TemplateError:
            continue
        if probe in text:
            found.append(key)
    return tuple(found)


def _apply_reasoning(messages: list[dict], reasoning: str) -> list[dict]:
    return strip_reasoning(messages) if reasoning == "strip" else messages


def has_tool_calls(messages: Sequence[dict]) -> bool:
    return any(m.get("tool_calls") for m in messages if isinstance(m, dict))


def has_generation_markers(chat_template: str) -> bool:
    return bool(_GENERATION_RE.search(chat_template or ""))


@dataclass(frozen=True)
class PackingPreview:
    max_length: int
    n_rows: int
    n_sequences: int
    rows_per_sequence: float
    fill: float  # share of the packed sequences' capacity holding real tokens
    n_truncated: int  # rows longer than max_length (cut to max_length before packing)


def pack_bins(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Best-fit decreasing: the indices of the rows in each packed sequence of at most max_length tokens (a row
    longer than max_length gets a sequence of its own). The one packing of the project: training packs with it
    (core.train.data.pack_features) and the lint / pre-flight preview counts with it.

    Rows go longest first (ties in row order) into the fullest sequence that still has room for them (ties: the
    earliest sequence), else a new one. The rooms are integers in [0, max_length]: a bitmask of the rooms some
    sequence has, and a heap of sequence numbers per room, find that sequence with one shift and one lowest-set-bit
    instead of a scan over every sequence, so 1M rows pack in seconds (sorting is the n log n part)."""
    if max_length <= 0:
        raise ValueError("max_length must be positive")
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
    bins: list[list[int]] = []
    by_room: dict[int, list[int]] = {}  # room left -> heap of the sequences with exactly that room
    rooms = 0  # bit r set <=> by_room[r] is not empty
    for i in order:
        n = max(0, int(lengths[i]))
        fits = rooms >> n if n <= max_length else 0
        if fits:
            room = (fits & -fits).bit_length() - 1 + n  # the smallest room >= n
            waiting = by_room[room]
            b = heapq.heappop(waiting)
            if not waiting:
                rooms ^= 1 << room
            bins[b].append(i)
            left = room - n
        else:
            b = len(bins)
            bins.append([i])
            left = max(0, max_length - n)
        heapq.heappush(by_room.setdefault(left, []), b)
        rooms |= 1 << left
    return bins


def packing_preview(lengths: Sequence[int], max_length: int) -> PackingPreview:
    """How rows would pack into sequences of max_length: the same best-fit decreasing packing training uses."""
    if max_length <= 0:
        raise ValueError("max_length must be positive")
    clipped = [min(n, max_length) for n in lengths if n > 0]
    n_seq = len(pack_bins(clipped, max_length))
    return PackingPreview(
        max_length=max_length,
        n_rows=len(clipped),
        n_sequences=n_seq,
        rows_per_sequence=len(clipped) / n_seq if n_seq else 0.0,
        fill=sum(clipped) / (n_seq * max_length) if n_seq else 0.0,
        n_truncated=sum(1 for n in lengths if n > max_length),
    )


# ---------------------------------------------------------------- internals


@dataclass
class _Context:
    template: str
    compiled: Any
    kwargs: dict
    special_re: re.Pattern | None
    policy: str
    generation_markers: bool
    reasoning: str = "train"

    @classmethod
    def make(cls, tokenizer: Any, chat_template: str | None, policy: str, max_length: int | None,
             reasoning: str | None = None) -> "_Context":
        if policy not in POLICIES:
            raise ValueError(f"unknown masking policy {policy!r}; expected one of {', '.join(POLICIES)}")
        if max_length is not None and max_length <= 0:
            raise ValueError("max_length must be a positive number of tokens")
        template = chat_template or getattr(tokenizer, "chat_template", None)
        if isinstance(template, dict):  # tokenizers with several named templates
            template = template.get("default") or next(iter(template.values()))
        if not template:
            raise MaskingError("the tokenizer has no chat template; choose one of the shipped templates")
        mode = reasoning_mode_of(tokenizer, reasoning)
        return cls(
            template=template,
            compiled=_compile(template),
            kwargs=dict(_template_kwargs(tokenizer), **template_kwargs_for(mode)),
            special_re=_special_tokens_re(tuple(_special_tokens(tokenizer))),
            policy=policy,
            generation_markers=has_generation_markers(template),
            reasoning=mode,
        )


@dataclass
class _Plan:
    text: str
    segments: list[Segment]
    trained: list[tuple[int, int]]  # merged char ranges to train
    eot_ranges: list[tuple[int, int]]  # the markers of trained assistant turns
    has_eot_marker: bool
    notes: list[str]
    reasoning_turns: list[int] = field(default_factory=list)
    reasoning_dropped: list[int] = field(default_factory=list)
    reasoning_mode: str = "train"


def _compile(template: str) -> Any:
    from transformers.utils.chat_template_utils import _compile_jinja_template

    try:
        return _compile_jinja_template(template)
    except Exception as exc:  # jinja2.TemplateSyntaxError and friends
        raise MaskingError(f"the chat template does not compile: {exc}") from exc


def _template_kwargs(tokenizer: Any) -> dict:
    kwargs = {k: v for k, v in getattr(tokenizer, "special_tokens_map", {}).items() if isinstance(v, str)}
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        kwargs.setdefault(name, getattr(tokenizer, name, None) or "")
    return kwargs


def _special_tokens(tokenizer: Any) -> list[str]:
    tokens = set(getattr(tokenizer, "all_special_tokens", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    tokens.update(t.content for t in decoder.values() if t.special)
    return sorted(t for t in tokens if t and not t.isspace())


@lru_cache(maxsize=32)
def _special_tokens_re(tokens: tuple[str, ...]) -> re.Pattern | None:
    if not tokens:
        return None
    return re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))


def _render(ctx: _Context, messages: list[dict], *, add_generation_prompt: bool = False, track: bool = False,
            tools: Sequence[dict] | None = None) -> tuple[str, list, list[dict], list[str]]:
    """(text, generation spans, messages actually rendered, notes). Folds the system prompt if refused."""
    import jinja2

    notes: list[str] = []
    try:
        text, spans = _render_raw(ctx, messages, add_generation_prompt, track, tools)
    except jinja2.TemplateError as exc:
        if not (messages and messages[0].get("role") == "system" and "system" in str(exc).lower() and len(messages) > 1):
            raise MaskingError(f"the chat template rejected this conversation: {exc}{_tool_hint(messages)}") from exc
        messages = _fold_system(messages)
        notes.append("the template does not accept a system message: it was folded into the first user turn")
        try:
            text, spans = _render_raw(ctx, messages, add_generation_prompt, track, tools)
        except jinja2.TemplateError as exc2:
            raise MaskingError(f"the chat template rejected this conversation: {exc2}{_tool_hint(messages)}") from exc2
    return text, spans, messages, notes


def _render_raw(ctx: _Context, messages: list[dict], add_generation_prompt: bool, track: bool,
                tools: Sequence[dict] | None = None) -> tuple[str, list]:
    kwargs = dict(ctx.kwargs, messages=messages, add_generation_prompt=add_generation_prompt, tools=list(tools) if tools else None,
                  documents=None)
    if not track:
        return ctx.compiled.render(**kwargs), []
    blocks: list[str] = []
    spans: list[tuple[int, int]] = []
    with ctx.compiled.environment.activate_tracker(blocks, spans):
        for block in ctx.compiled.generate(**kwargs):
            blocks.append(block)
    return "".join(blocks), spans


TOOL_TEMPLATE_HINT = "choose a template with tool support (for example qwen2.5-instruct or llama-3.1-tools)"


def _tool_hint(messages: list[dict]) -> str:
    if any(m.get("role") == "tool" or m.get("tool_calls") for m in messages):
        return f" (the conversation has tool turns: {TOOL_TEMPLATE_HINT})"
    return ""


def _fold_system(messages: list[dict]) -> list[dict]:
    system, first, rest = messages[0], messages[1], messages[2:]
    folded = dict(first, content=f"{system['content']}\n\n{first['content']}")
    return [folded] + rest


def _plan(messages: list[dict], ctx: _Context, train_eot: bool, tools: list[dict] | None = None) -> _Plan:
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or not isinstance(m.get("role"), str):
            raise MaskingError(f"message {i} needs a string 'role' and a string 'content'")
    if not messages:
        raise MaskingError("empty conversation")
    reasoning_turns = [i for i, m in enumerate(messages) if message_reasoning(m)]
    messages = _apply_reasoning(messages, ctx.reasoning)
    text, generation_spans, rendered_messages, notes = _render(ctx, messages, track=ctx.generation_markers, tools=tools)
    folded = len(rendered_messages) != len(messages)
    turn_of = (lambda i: i + 1) if folded else (lambda i: i)  # index into the caller's messages
    elements = _contents_via_skeleton(ctx, text, rendered_messages, tools)
    written = {turn_of(e.message) for e in elements if e.part == "reasoning"}
    dropped = [t for t in reasoning_turns if t not in written] if ctx.reasoning != "strip" else []
    _check_tool_calls_rendered(rendered_messages, elements, turn_of)
    if tools and text == _render(ctx, messages, tools=None)[0]:
        notes.append("the template does not show the tool definitions to the model: it will call tools it was never shown")

    turns = _turns(ctx, text, elements, rendered_messages, tools, turn_of)
    segments, eot_by_turn, body_of = _segments(text, turns, ctx)
    assistant_turns = sorted(eot_by_turn)
    if not assistant_turns:
        raise MaskingError("no assistant content appears in the rendered conversation, so nothing can be trained")
    has_marker = all(eot_by_turn[t][1] > eot_by_turn[t][0] for t in assistant_turns)

    trained, eot_ranges = _trained_ranges(ctx, messages, text, body_of, eot_by_turn, generation_spans, train_eot, tools)
    if ctx.reasoning == "mask":
        trained = _subtract(trained, [(s.start, s.end) for s in segments if s.part == "reasoning"])
    return _Plan(text, segments, trained, eot_ranges, has_marker, notes, reasoning_turns, dropped, ctx.reasoning)


_SKELETONS: dict[tuple, str] = {}


class _Content(NamedTuple):
    start: int
    end: int
    message: int  # index into the rendered messages
    part: str = "content"  # "content", "reasoning", or "tool_call" for the sentinel in a call's function name


def _sentinel_messages(messages: list[dict]) -> tuple[list[dict], list[str], dict[int, tuple[int, str]]]:
    """The messages with a sentinel for every content (empty contents stay empty: templates test them) and for
    every tool call's function name; the text each sentinel stands for; sentinel -> (message, part)."""
    expected: list[str] = []
    owner: dict[int, tuple[int, str]] = {}
    out = []
    def sentinel(text: str, i: int, part: str) -> str:
        owner[len(expected)] = (i, part)
        expected.append(text)
        return _SENTINEL.format(len(expected) - 1)

    for i, message in enumerate(messages):
        copy = dict(message)
        reasoning = message_reasoning(message)
        if reasoning and reasoning[0] == "inline":  # <think>R</think>A: a sentinel each for R and A, the tags kept
            lead, inner, after = _INLINE_THINK.match(message["content"]).groups()
            copy["content"] = (lead + THINK_OPEN + sentinel(inner, i, "reasoning") + THINK_CLOSE
                               + (sentinel(after, i, "content") if after else ""))
        elif message["content"] or not message.get("tool_calls"):
            copy["content"] = sentinel(message["content"], i, "content")
        if reasoning and reasoning[0] != "inline":
            copy[reasoning[0]] = sentinel(reasoning[1], i, "reasoning")
        if message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                function = call.get("function", call)
                owner[len(expected)] = (i, "tool_call")
                named = dict(function, name=_SENTINEL.format(len(expected)))
                expected.append(str(function.get("name", "")))
                calls.append(dict(call, function=named) if "function" in call else named)
            copy["tool_calls"] = calls
        out.append(copy)
    return out, expected, owner


def _contents_via_skeleton(ctx: _Context, text: str, messages: list[dict], tools: list[dict] | None = None) -> list[_Content]:
    """Content (and tool-call) spans from the sentinel render. Skeletons are reused across rows with the same
    roles, but only trusted when every content then matches exactly; otherwise the row gets its own render.
    Rows with tools are not cached: their skeleton holds the calls' arguments and the tool definitions."""
    sentinel_messages, expected, owner = _sentinel_messages(messages)
    cacheable = not tools and not any(m.get("tool_calls") for m in messages)
    key = (ctx.template, tuple(sorted(ctx.kwargs.items())), tuple((m["role"], (message_reasoning(m) or ("",))[0]) for m in messages))
    cached = _SKELETONS.get(key) if cacheable else None
    if cached is not None:
        try:
            return _locate_contents(text, cached, expected, owner, exact_only=True)
        except MaskingError:
            pass
    skeleton = _render_raw(ctx, sentinel_messages, False, False, tools)[0]
    if cacheable:
        if len(_SKELETONS) > 4096:
            _SKELETONS.clear()
        _SKELETONS[key] = skeleton
    return _locate_contents(text, skeleton, expected, owner)


def _locate_contents(text: str, skeleton: str, expected: Sequence[str], owner: dict[int, tuple[int, str]], *,
                     exact_only: bool = False) -> list[_Content]:
    """Walk the sentinel render and the real render together to find each sentinel's character span."""
    pieces = _SENTINEL_RE.split(skeleton)  # [literal, index, literal, index, ..., literal]
    literals, indices = pieces[0::2], [int(i) for i in pieces[1::2]]
    found: list[_Content] = []
    pos = 0
    for k, idx in enumerate(indices):
        literal = literals[k]
        if not text.startswith(literal, pos):
            raise _alignment_error(text, pos, literal)
        pos += len(literal)
        following = literals[k + 1]
        is_last = k == len(indices) - 1
        end = _content_end(text, pos, expected[idx], following, is_last, exact_only)
        found.append(_Content(pos, end, *owner[idx]))
        pos = end
    if text[pos:] != literals[-1]:
        raise _alignment_error(text, pos, literals[-1])
    return found


def _check_tool_calls_rendered(messages: list[dict], elements: list[_Content], turn_of) -> None:
    written = {e.message for e in elements if e.part == "tool_call"}
    for i, message in enumerate(messages):
        if message.get("tool_calls") and i not in written:
            raise MaskingError(
                f"the chat template does not write the tool calls of message {turn_of(i)}, so they could never be trained; "
                + TOOL_TEMPLATE_HINT
            )


class _Turn(NamedTuple):
    role: str
    turn: int  # index into the caller's messages
    elements: list[_Content]  # this message's located contents / tool-call names, in text order
    start: int  # where the turn's own text begins (an assistant tool call: where the generation prompt ends)


def _turns(ctx: _Context, text: str, elements: list[_Content], messages: list[dict], tools, turn_of) -> list[_Turn]:
    """Located elements grouped by message, in text order."""
    groups: list[list[_Content]] = []
    for element in elements:
        if groups and groups[-1][-1].message == element.message:
            groups[-1].append(element)
        else:
            groups.append([element])
    turns = []
    for group in groups:
        first, role = group[0], messages[group[0].message]["role"]
        start = first.start
        if role == "assistant" and (first.part == "tool_call" or any(e.part == "reasoning" for e in group)):
            start = _generation_prompt_end(ctx, text, messages[: first.message], tools, first.start)
        turns.append(_Turn(role, turn_of(first.message), group, start))
    return turns


def _generation_prompt_end(ctx: _Context, text: str, before: list[dict], tools, limit: int) -> int:
    """Where the model starts writing this turn at inference: the end of the render of the earlier messages with
    `add_generation_prompt=True`, when that render is a prefix of the conversation's (else the call's name)."""
    import jinja2

    if not before:
        return limit
    try:
        prompt = _render_raw(ctx, before, True, False, tools)[0]
    except jinja2.TemplateError:
        return limit
    return len(prompt) if text.startswith(prompt) and len(prompt) <= limit else limit


def _cut_at_special(literal: str, ctx: _Context) -> str | None:
    """The literal up to and including its first special token, or None when it holds none."""
    if ctx.special_re is None:
        return None
    match = ctx.special_re.search(literal)
    return literal[: match.end()] if match else None


def _closing_text(text: str, turns: list[_Turn], ctx: _Context) -> str:
    """What the template writes after assistant content when that turn ends the conversation."""
    if not turns or turns[-1].role != "assistant" or turns[-1].elements[-1].part != "content":
        return ""
    trailing = text[turns[-1].elements[-1].end:]
    cut = _cut_at_special(trailing, ctx)
    return cut if cut is not None else trailing


def _eot_length(after: str, closing: str, ctx: _Context) -> int:
    cut = _cut_at_special(after, ctx)
    if cut is not None and (not closing or len(cut) <= len(closing) or not after.startswith(closing)):
        return len(cut)
    if closing and after.startswith(closing):
        return len(closing)
    return 0


def _call_end(text: str, after: int, limit: int, closing: str, ctx: _Context, turn: int) -> int:
    """Where an assistant's tool-call text ends: at the first special token after its last call (the
    end-of-turn marker), else where the closing text of an answer starts, else at the end of the render."""
    tail = text[after:limit]
    match = ctx.special_re.search(tail) if ctx.special_re is not None else None
    if match:
        return after + match.start()
    at = tail.find(closing) if closing else -1
    if at >= 0:
        return after + at
    if limit == len(text):
        return limit
    raise MaskingError(f"cannot tell where the tool call of message {turn} ends: the template writes no special token after it")


def _segments(text: str, turns: list[_Turn], ctx: _Context) -> tuple[list[Segment], dict[int, tuple[int, int]], dict[int, tuple[int, int]]]:
    """Cover the whole render with segments; template text belongs to the turn whose text follows it.
    Also: each assistant turn's end-of-turn range and its body (content and tool calls) range."""
    segments: list[Segment] = []
    eot_by_turn: dict[int, tuple[int, int]] = {}
    body_of: dict[int, tuple[int, int]] = {}
    closing = _closing_text(text, turns, ctx)
    pos = 0
    for k, t in enumerate(turns):
        limit = turns[k + 1].elements[0].start if k + 1 < len(turns) else len(text)
        if t.start > pos:
            segments.append(Segment(pos, t.start, t.role, t.turn, "template"))
            pos = t.start
        contents = [e for e in t.elements if e.part in ("content", "reasoning")]
        for j, e in enumerate(contents):
            start, end = e.start, e.end
            if e.part == "reasoning":  # the think block around the reasoning, tags included
                start, end = _think_block(text, pos, e, contents[j + 1].start if j + 1 < len(contents) else limit)
            if start > pos:
                segments.append(Segment(pos, start, t.role, t.turn, "template"))
            segments.append(Segment(start, end, t.role, t.turn, e.part))
            pos = end
        if t.role != "assistant":
            continue
        calls = [e for e in t.elements if e.part == "tool_call"]
        body_end = _call_end(text, calls[-1].end, limit, closing, ctx, t.turn) if calls else pos
        if calls:
            segments.append(Segment(pos, body_end, t.role, t.turn, "tool_call"))
        body_of[t.turn] = (t.start, body_end)
        n = _eot_length(text[body_end:limit], closing, ctx)
        eot_by_turn[t.turn] = (body_end, body_end + n)
        pos = body_end
        if n:
            segments.append(Segment(body_end, body_end + n, t.role, t.turn, "eot"))
            pos = body_end + n
    if pos < len(text):
        last = segments[-1] if segments else Segment(0, 0, "", -1, "template")
        segments.append(Segment(pos, len(text), last.role, last.turn, "template"))
    return _carve_think_blocks(text, segments), eot_by_turn, body_of


_OPEN_BEFORE = re.compile(r"<think>\s*\Z")
_CLOSE_AFTER = re.compile(r"\s*</think>[ \t]*\n*")


def _think_block(text: str, pos: int, element: _Content, limit: int) -> tuple[int, int]:
    """The reasoning's span widened to the <think> tag right before it and the </think> (and blank lines) right after."""
    start, end = element.start, element.end
    before = _OPEN_BEFORE.search(text, pos, start)
    if before:
        start = before.start()
    after = _CLOSE_AFTER.match(text, end, limit)
    if after and THINK_CLOSE in after.group():
        end = after.end()
    return start, end


def _carve_think_blocks(text: str, segments: list[Segment]) -> list[Segment]:
    """Think blocks the template writes by itself (e.g. Qwen3's empty <think>\\n\\n</think>) are reasoning, not template text."""
    out: list[Segment] = []
    for seg in segments:
        if seg.part != "template" or seg.role != "assistant" or THINK_OPEN not in text[seg.start:seg.end]:
            out.append(seg)
            continue
        pos = seg.start
        for match in _THINK_BLOCK.finditer(text, seg.start, seg.end):
            if match.start() > pos:
                out.append(Segment(pos, match.start(), seg.role, seg.turn, "template"))
            out.append(Segment(match.start(), match.end(), seg.role, seg.turn, "reasoning"))
            pos = match.end()
        if pos < seg.end:
            out.append(Segment(pos, seg.end, seg.role, seg.turn, "template"))
    return out


def _trained_ranges(ctx, messages, text, body_of, eot_by_turn, generation_spans, train_eot, tools=None):
    assistant_turns = sorted(eot_by_turn)
    last_turn = assistant_turns[-1]
    if ctx.policy == "everything":
        return [(0, len(text))], [eot_by_turn[t] for t in assistant_turns]
    if ctx.policy == "completion_only":
        prompt_messages = messages[:last_turn]
        start = body_of[last_turn][0]
        if prompt_messages:
            prompt = _render(ctx, prompt_messages, add_generation_prompt=True, tools=tools)[0]
            if text.startswith(prompt) and len(prompt) <= start:
                start = len(prompt)
        ranges = [(start, len(text))]
        if not train_eot:
            ranges = _subtract(ranges, [eot_by_turn[last_turn]])
        return ranges, [eot_by_turn[last_turn]]
    turns = assistant_turns if ctx.policy == "all_assistant" else [last_turn]
    if ctx.generation_markers:
        ranges = _generation_ranges_for(generation_spans, turns, body_of, assistant_turns)
        if not train_eot:
            ranges = _intersect(ranges, [body_of[t] for t in turns])
        return ranges, [eot_by_turn[t] for t in turns]
    ranges = [(body_of[t][0], eot_by_turn[t][1] if train_eot else body_of[t][1]) for t in turns]
    return _merge(ranges), [eot_by_turn[t] for t in turns]


def _content_end(text: str, pos: int, content: str, following: str, is_last: bool, exact_only: bool = False) -> int:
    def fits(candidate: str) -> bool:
        end = pos + len(candidate)
        if not text.startswith(candidate, pos) or not text.startswith(following, end):
            return False
        return not is_last or end + len(following) == len(text)

    for candidate in (content, content.strip(), content.rstrip(), content.lstrip()):
        if fits(candidate):
            return pos + len(candidate)
    # The template transformed the content (e.g. replaced blank lines): it ends where the next literal starts.
    if exact_only:
        raise MaskingError("content not found verbatim")
    if is_last:
        if text.endswith(following) and len(text) - len(following) >= pos:
            return len(text) - len(following)
    elif following:
        end = text.find(following, pos)
        if end >= 0:
            return end
    raise MaskingError("could not find where a message's content ends in the rendered template; the template rewrites contents in a way "
                       "this tool cannot follow")


def _alignment_error(text: str, pos: int, literal: str) -> MaskingError:
    return MaskingError(
        "the chat template lays out this conversation differently depending on the message text "
        f"(expected {literal[:40]!r} at character {pos}, found {text[pos:pos + 40]!r}); masking cannot be derived reliably"
    )


def _generation_ranges_for(spans, turns, content_of, all_turns):
    """The generation blocks that cover the chosen assistant turns (all blocks for all_assistant)."""
    spans = _merge([s for s in spans if s[1] > s[0]])
    if set(turns) == set(all_turns):
        return spans
    wanted = [content_of[t] for t in turns]
    return [s for s in spans if any(s[0] < b and a < s[1] for a, b in wanted)]


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for a, b in sorted(r for r in ranges if r[1] > r[0]):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def _subtract(ranges, holes):
    out = []
    for a, b in ranges:
        pieces = [(a, b)]
        for h0, h1 in holes:
            pieces = [p for x, y in pieces for p in ((x, min(y, h0)), (max(x, h1), y)) if p[1] > p[0]]
        out.extend(pieces)
    return _merge(out)


def _intersect(ranges, keep):
    return _merge([(max(a, c), min(b, d)) for a, b in ranges for c, d in keep if min(b, d) > max(a, c)])


def _tokenize(tokenizer: Any, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is not None:
        encodings = backend.encode_batch(texts, add_special_tokens=False)
        return [(e.ids, e.offsets) for e in encodings]
    try:
        out = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError as exc:
        raise MaskingError("masking needs a fast tokenizer (with character offsets)") from exc
    return list(zip(out["input_ids"], out["offset_mapping"]))


def _finish(plan: _Plan, ids: list[int], offsets: list[tuple[int, int]], max_length: int | None) -> EncodedRow:
    n_full = len(ids)
    truncated = max_length is not None and n_full > max_length
    if truncated:
        ids, offsets = ids[:max_length], offsets[:max_length]
    token_ranges = _token_ranges(offsets, plan.trained)
    labels = [IGNORE_INDEX] * len(ids)
    for i0, i1 in token_ranges:
        labels[i0:i1] = ids[i0:i1]
    return EncodedRow(
        input_ids=ids,
        labels=labels,
        truncated=truncated,
        n_trained=sum(i1 - i0 for i0, i1 in token_ranges),
        text=plan.text,
        offsets=offsets,
        segments=plan.segments,
        trained_chars=plan.trained,
        n_tokens_full=n_full,
        has_eot_marker=plan.has_eot_marker,
        eot_trained=_eot_trained(plan, offsets, token_ranges),
        notes=list(plan.notes),
        reasoning_mode=plan.reasoning_mode,
        reasoning_turns=list(plan.reasoning_turns),
        reasoning_dropped=list(plan.reasoning_dropped),
    )


def _start(offset: tuple[int, int]) -> int:
    return offset[0]


def _end(offset: tuple[int, int]) -> int:
    return offset[1]


def _token_ranges(offsets: Sequence[tuple[int, int]], char_ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Token index ranges overlapping the character ranges: a token is trained when any of its characters
    is (transformers' assistant-mask rule). Offsets are in text order, so two bisections per range do it."""
    if not offsets or not char_ranges:
        return []
    out: list[tuple[int, int]] = []
    for a, b in char_ranges:
        i0 = bisect.bisect_right(offsets, a, key=_end)  # first token ending after a
        i1 = bisect.bisect_left(offsets, b, key=_start)  # first token starting at or after b
        if i1 > i0:
            if out and i0 <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], i1))
            else:
                out.append((i0, i1))
    return out


def _eot_trained(plan: _Plan, offsets: Sequence[tuple[int, int]], token_ranges: list[tuple[int, int]]) -> bool:
    """Every end-of-turn marker of a trained turn is inside the (truncated) row and all its tokens trained."""
    if not plan.has_eot_marker or not offsets:
        return False
    for start, end in plan.eot_ranges:
        if end <= start or offsets[-1][1] < end:
            return False
        needed = _token_ranges(offsets, [(start, end)])
        if not needed or not any(a <= needed[0][0] and needed[0][1] <= b for a, b in token_ranges):
            return False
    return True
