"""Lint a dataset against a chat template before training: the silent failure modes of masking.

Checks, per row, with the same `encode_conversation` the trainer uses:

- no trained token at all (the row teaches nothing; a whole dataset like that must not train),
- the end-of-turn marker not trained (the model never learns to stop) or absent from the template,
- rows longer than `max_length` (truncated; the cut may remove the answer),
- the training render disagrees with inference: the `add_generation_prompt=True` render of the prompt
  must tokenize to a prefix of the training tokens, or the model is trained on a context it never sees
  (checked at every assistant turn, tool-call turns and the answers after a tool result included, with the
  row's tool definitions passed as at inference),
- tool rows: tool results that would be trained (only the `everything` policy does that), tool definitions the
  template never shows, and templates that cannot write tool calls at all,
- rows the template cannot encode at all (with the first row's reason),
- reasoning (``<think>`` blocks, see core.data.masking): a think block the template inserts by itself (Qwen3's
  empty ``<think>\n\n</think>``) inside trained text, or as context inference never shows; two think blocks in one
  answer; reasoning the template drops (a ``thinking`` field where it reads ``reasoning_content``, a template that
  strips everything before ``</think>``, reasoning kept only in the last turns); reasoning trained or masked against
  the ``reasoning`` setting; a generation prompt that opens a think block the training text lacks there.

`LintReport.can_train` is what the Train page checks ("refuse if no trainable tokens").
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from core.data.masking import (
    IGNORE_INDEX,
    THINK_CLOSE,
    THINK_OPEN,
    EncodedRow,
    MaskingError,
    PackingPreview,
    _apply_reasoning,
    _Context,
    _render,
    _tokenize,
    encode_conversation,
    encode_conversations,
    encode_text,
    message_reasoning,
    packing_preview,
    template_reasoning_fields,
)

EXAMPLES = 5
SHARE_BINS = 20


@dataclass
class LintIssue:
    kind: str
    severity: str  # "error" stops training, "warning" is shown
    message: str
    count: int = 0
    rows: list[int] = field(default_factory=list)  # first row indices

    def as_dict(self) -> dict:
        return {"kind": self.kind, "severity": self.severity, "message": self.message, "count": self.count, "rows": list(self.rows)}


@dataclass
class LintReport:
    n_rows: int
    n_checked: int  # rows attempted (the first `sample`), including those that failed to encode
    policy: str
    max_length: int | None
    n_encoded: int = 0  # rows the template could encode
    total_tokens: int = 0
    trained_tokens: int = 0
    trained_share: list[float] = field(default_factory=list)  # per checked row (histogram data)
    lengths: list[int] = field(default_factory=list)  # tokens per row before truncation
    issues: dict[str, LintIssue] = field(default_factory=dict)
    packing: PackingPreview | None = None

    @property
    def can_train(self) -> bool:
        return self.trained_tokens > 0 and not any(i.severity == "error" and i.kind == "no_trainable_tokens" for i in self.issues.values())

    def count(self, kind: str) -> int:
        issue = self.issues.get(kind)
        return issue.count if issue else 0

    @property
    def errors(self) -> list[LintIssue]:
        return [i for i in self.issues.values() if i.severity == "error"]

    @property
    def warnings(self) -> list[LintIssue]:
        return [i for i in self.issues.values() if i.severity == "warning"]

    def refusal(self) -> str | None:
        """Why training must not start, or None."""
        if self.n_checked == 0:
            return "the dataset has no rows"
        if self.n_encoded == 0:
            return "no row could be encoded with this chat template"
        if self.trained_tokens == 0:
            return f"none of the {self.n_checked} checked rows has a trained token (policy {self.policy!r}); training would learn nothing"
        return None

    def share_histogram(self, bins: int = SHARE_BINS) -> tuple[list[float], list[int]]:
        """(bin left edges, counts) of the trained-token share per row."""
        counts = [0] * bins
        for share in self.trained_share:
            counts[min(int(share * bins), bins - 1)] += 1
        return [i / bins for i in range(bins)], counts

    def as_dict(self) -> dict:
        return {
            "n_rows": self.n_rows,
            "n_checked": self.n_checked,
            "n_encoded": self.n_encoded,
            "policy": self.policy,
            "max_length": self.max_length,
            "total_tokens": self.total_tokens,
            "trained_tokens": self.trained_tokens,
            "can_train": self.can_train,
            "issues": {k: v.as_dict() for k, v in self.issues.items()},
            "packing": None if self.packing is None else vars(self.packing),
        }

    def _add(self, kind: str, severity: str, message: str, row: int) -> None:
        issue = self.issues.setdefault(kind, LintIssue(kind, severity, message))
        issue.count += 1
        if len(issue.rows) < EXAMPLES:
            issue.rows.append(row)


def lint_dataset(
    rows: Sequence[dict],
    tokenizer: Any,
    *,
    chat_template: str | None = None,
    policy: str = "all_assistant",
    max_length: int | None = None,
    train_eot: bool = True,
    sample: int | None = 2000,
    check_inference: bool = True,
    reasoning: str | None = None,
) -> LintReport:
    """Encode (the first `sample` of) the normalised rows and report what would go wrong in training."""
    chosen = list(rows[:sample] if sample else rows)
    report = LintReport(n_rows=len(rows), n_checked=0, policy=policy, max_length=max_length)
    chat_rows = [(i, r) for i, r in enumerate(chosen) if "messages" in r]
    encoded: list[tuple[int, EncodedRow | None]] = []
    if chat_rows:
        results = encode_conversations([r["messages"] for _, r in chat_rows], tokenizer, chat_template=chat_template, policy=policy,
                                       max_length=max_length, train_eot=train_eot, errors="skip",
                                       tools=[r.get("tools") for _, r in chat_rows],
                                       reasoning=reasoning)
        encoded += [(i, e) for (i, _), e in zip(chat_rows, results)]
    encoded += [(i, encode_text(r["text"], tokenizer, max_length=max_length)) for i, r in enumerate(chosen)
                if "text" in r and "messages" not in r]
    encoded.sort(key=lambda pair: pair[0])
    report.n_checked = len(encoded)
    for index, row in encoded:
        if row is None:
            if "encode_failed" not in report.issues:
                reason = _encode_error(chosen[index], tokenizer, chat_template, policy, reasoning)
                report._add("encode_failed", "error", f"the chat template could not encode these rows: {reason}", index)
            else:
                report._add("encode_failed", "error", "", index)
            continue
        _check_row(report, index, row, train_eot)
        if row.n_trained and any(span.role == "tool" and label != IGNORE_INDEX for span, label in zip(row.spans, row.labels)):
            report._add("tool_result_trained", "warning",
                        f"tool results are trained (policy {policy!r}): the model learns to write what tools return", index)
    prompt_ends: dict[tuple[int, int], int] = {}
    if check_inference and chat_rows:
        prompt_ends = _check_inference(report, chat_rows, {i: e for i, e in encoded}, tokenizer, chat_template, reasoning)
    by_index = {i: e for i, e in encoded}
    reasoning_rows = [(i, r) for i, r in chat_rows if by_index.get(i) is not None]
    if reasoning_rows:
        _check_reasoning(report, reasoning_rows, by_index, prompt_ends, tokenizer, chat_template, check_inference)
    if report.n_encoded and report.trained_tokens == 0:
        report._add("no_trainable_tokens", "error", "no checked row has a trained token: training would learn nothing", 0)
    if max_length and report.lengths:
        report.packing = packing_preview(report.lengths, max_length)
    return report


def _encode_error(row: dict, tokenizer: Any, chat_template: str | None, policy: str, reasoning: str | None = None) -> str:
    try:
        encode_conversation(row["messages"], tokenizer, chat_template=chat_template, policy=policy, tools=row.get("tools"),
                            reasoning=reasoning)
    except MaskingError as exc:
        return str(exc)
    return "unknown reason"


def _check_row(report: LintReport, index: int, row: EncodedRow, train_eot: bool) -> None:
    report.n_encoded += 1
    report.total_tokens += row.n_tokens
    report.trained_tokens += row.n_trained
    report.trained_share.append(row.trained_share)
    report.lengths.append(row.n_tokens_full)
    if row.n_trained == 0:
        why = " after truncation to max_length" if row.truncated else ""
        report._add("zero_trained", "warning", f"rows with no trained token{why}: they cost compute and teach nothing", index)
    if row.truncated:
        report._add("over_max_length", "warning", f"rows longer than max_length ({report.max_length} tokens) are truncated", index)
    if not row.has_eot_marker:
        report._add("no_eot_marker", "warning",
                    "the template writes no end-of-turn marker after the assistant: the model will not learn to stop", index)
    elif not row.eot_trained and row.n_trained:
        reason = "train_eot is off" if not train_eot else "it was cut by truncation" if row.truncated else "it is masked"
        report._add("eot_not_trained", "warning", f"the end-of-turn marker is not trained ({reason}): the model may not learn to stop",
                    index)
    for note in row.notes:
        report._add("note:" + note[:40], "warning", note, index)


def _check_inference(report: LintReport, chat_rows, encoded: dict, tokenizer: Any, chat_template: str | None,
                     reasoning: str | None = None) -> dict[tuple[int, int], int]:
    """The prompt rendered for generation must tokenize to a prefix of the training tokens, at every assistant turn.
    Returns, per (row, assistant turn) whose prompt is a prefix of the training text, where that prompt ends."""
    ctx = _Context.make(tokenizer, chat_template, "all_assistant", None, reasoning)
    prompts, owners = [], []
    for index, row in chat_rows:
        if encoded.get(index) is None:
            continue
        messages = _apply_reasoning(list(row["messages"]), ctx.reasoning)
        for turn, message in enumerate(messages):
            if message["role"] == "assistant" and turn > 0:
                try:
                    prompts.append(_render(ctx, list(messages[:turn]), add_generation_prompt=True, tools=row.get("tools"))[0])
                except MaskingError:
                    continue
                owners.append((index, turn, bool(message.get("tool_calls")) or messages[turn - 1]["role"] == "tool"))
    flagged: set[int] = set()
    prompt_ends: dict[tuple[int, int], int] = {}
    for (index, turn, tool_turn), prompt, (ids, _) in zip(owners, prompts, _tokenize(tokenizer, prompts)):
        full = encoded[index]
        if full.text.startswith(prompt):
            prompt_ends[(index, turn)] = len(prompt)
        if index in flagged:
            continue
        if not full.text.startswith(prompt):
            flagged.add(index)
            at = len(os.path.commonprefix((full.text, prompt)))
            if THINK_OPEN in prompt[at:] or THINK_CLOSE in prompt[at:]:
                report._add("reasoning_inference_mismatch", "error",
                            f"the generation prompt ends with {prompt[at:][-40:]!r} where the training text has {full.text[at:at + 40]!r}: "
                            "inference opens a think block that the training answers do not have there (the template strips the reasoning "
                            "from training answers, or the rows lack it): the model is trained on a prefix inference never produces. Use a "
                            "template that keeps the reasoning in the trained turn (e.g. qwen3), or give every answer its reasoning; where "
                            "the template drops think blocks from earlier turns, train only the last turn or one row per turn", index)
            elif tool_turn:
                report._add("tool_inference_mismatch", "error",
                            "at a tool turn (a tool call, or the answer after a tool result) the prompt rendered for generation is not a "
                            "prefix of the training text: the model is trained on a tool layout it never sees at inference", index)
            else:
                report._add("inference_mismatch", "error",
                            "the prompt rendered for generation (add_generation_prompt=True) is not a prefix of the training text: the "
                            "model is trained on a layout it never sees", index)
        elif full.input_ids[: len(ids)] != ids[: len(full.input_ids)]:
            flagged.add(index)
            report._add("inference_token_mismatch", "warning", _token_mismatch_message(tokenizer, prompt), index)
    return prompt_ends


# Chat-template markers: <|eot_id|>-style (Llama-3, ChatML, Phi), Gemma's turn tags, Llama-2 / Mistral's [INST] and <s>.
_MARKER = re.compile(r"<\|[^|\s<>]{1,40}\|>|</?(?:start_of_turn|end_of_turn|s)>|\[/?INST\]")


def split_markers(tokenizer: Any, text: str) -> list[tuple[str, int]]:
    """The chat-template markers in `text` this tokenizer has no single token for: (marker, the pieces it splits into).
    A template written for another model family (Llama-3's <|start_header_id|> on a ChatML tokenizer) is the usual cause."""
    markers = list(dict.fromkeys(_MARKER.findall(text)))
    return [(marker, len(ids)) for marker, (ids, _) in zip(markers, _tokenize(tokenizer, markers)) if len(ids) > 1]


def _token_mismatch_message(tokenizer: Any, prompt: str) -> str:
    missing = split_markers(tokenizer, prompt)
    if not missing:
        return "the generation prompt tokenizes differently from the same text inside the training row (a token spans the prompt's end)"
    named = ", ".join(f"{marker} (split into {pieces} pieces)" for marker, pieces in missing)
    return (f"this tokenizer has no token for the template's markers {named}: the template was written for another model "
            "family, so the pieces merge differently where the generation prompt ends than inside the training row, and the "
            "model is trained on token sequences it never sees at inference. Use the model's own chat template (or one written "
            "for its special tokens), or add these markers as special tokens and resize the embeddings before training")


def _check_reasoning(report: LintReport, chat_rows, encoded: dict, prompt_ends: dict, tokenizer: Any, chat_template: str | None,
                     context_checked: bool) -> None:
    """Per row: think blocks the template inserts, duplicated blocks, reasoning the template drops, and reasoning
    trained / masked against the setting (see the module docstring)."""
    fields: tuple[str, ...] | None = None
    seen: set[tuple[str, int]] = set()

    def add(kind: str, message: str, index: int) -> None:  # once per row and kind
        if (kind, index) not in seen:
            seen.add((kind, index))
            report._add(kind, "warning", message, index)

    for index, source in chat_rows:
        row = encoded[index]
        messages = source["messages"]
        mode = row.reasoning_mode
        blocks: dict[int, list] = {}
        for seg in row.segments:
            if seg.part == "reasoning" and seg.role == "assistant":
                blocks.setdefault(seg.turn, []).append(seg)
        if not blocks and not row.reasoning_turns:
            continue
        for turn, segs in blocks.items():
            if _turn_text(row, turn).count(THINK_OPEN) > 1:
                add("think_block_duplicated", "an assistant turn holds two think blocks (the row's reasoning and one the "
                    "template adds, or reasoning both in a field and inline in the content): the model learns to think twice", index)
            if turn in row.reasoning_turns and turn not in row.reasoning_dropped and mode != "strip":
                continue
            for seg in segs:
                inner = row.text[seg.start:seg.end].replace(THINK_OPEN, "").replace(THINK_CLOSE, "").strip()
                what = f"an {'empty ' if not inner else ''}think block ({row.text[seg.start:seg.end]!r})"
                if _any_trained(row, seg.start, seg.end):
                    add("think_block_trained", f"the chat template inserts {what} into answers that have no reasoning, and it is "
                        f"trained (policy {report.policy!r}): the model learns to write it (TRL #6361). Choose reasoning 'strip' (the "
                        "template's enable_thinking off: inference then gets the same block in its prompt) or 'mask'", index)
                elif context_checked and mode != "strip" and prompt_ends.get((index, turn), -1) < seg.end:
                    add("think_block_context", f"the chat template inserts {what} before answers that have no reasoning; "
                        "it is masked, but the generation prompt does not hold it (or only its start): the model is trained to answer "
                        "after a think block it is never taught to write and never shown at inference. Choose reasoning 'strip' "
                        "(enable_thinking off puts the same block in the prompt)", index)
        if row.reasoning_dropped:
            if fields is None:
                fields = template_reasoning_fields(tokenizer, chat_template=chat_template)
            last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
            if last in row.reasoning_dropped or not blocks:
                where = (message_reasoning(messages[row.reasoning_dropped[-1]]) or ("",))[0]
                shown = "a leading <think>...</think> in the content" if where == "inline" else f"field {where!r}"
                why = _dropped_reason(where, fields)
                add("reasoning_dropped", f"the rows' reasoning ({shown}) never reaches the training text: {why}. The model is "
                    "trained on answers without their reasoning", index)
            elif report.policy in ("all_assistant", "everything") and any(_turn_trained(row, t) for t in row.reasoning_dropped):
                add("reasoning_history_dropped", "the template keeps the reasoning only in the turns after the last user "
                    "message and drops it from earlier assistant turns, which are trained (policy "
                    f"{report.policy!r}) as answers without their reasoning. Use policy last_assistant, or one row per turn", index)
        for turn in (t for t in row.reasoning_turns if t not in row.reasoning_dropped):
            tokens = [label for span, label in zip(row.spans, row.labels) if span.turn == turn and span.part == "reasoning"]
            if not tokens:
                continue
            if mode == "mask" and any(label != IGNORE_INDEX for label in tokens):
                add("reasoning_trained_against_choice", "reasoning tokens are trained although the reasoning setting is "
                    "'mask' (a token spans the end of the think block and the answer)", index)
            elif mode == "train" and _turn_trained(row, turn) and any(label == IGNORE_INDEX for label in tokens):
                add("reasoning_masked_against_choice", "reasoning tokens are masked although the reasoning setting is "
                    "'train': the template puts the think block outside the text the model writes (a {% generation %} block around the "
                    "answer only, or a generation prompt that opens the block itself), so it is context, not answer", index)


def _dropped_reason(where: str, fields: tuple[str, ...]) -> str:
    """Why a template did not write a row's reasoning, from where it takes reasoning (masking.template_reasoning_fields)."""
    keys = [f for f in fields if f != "inline"]
    named = ", ".join(repr(f) for f in keys)
    if not fields:
        return ("this template writes no reasoning at all (it removes it, as DeepSeek-R1-distill templates remove everything up to "
                "</think> from every answer)")
    if where == "inline":
        if "inline" in fields:
            return "this template leaves it out of this conversation's layout"
        return f"this template removes a <think>...</think> from the content and reads reasoning only from the field {named}: move it there"
    if where in keys:
        return "this template leaves it out of this conversation's layout"
    if keys:
        return f"this template reads the field {named}, not {where!r} (transformers #44301): rename the field"
    return "this template reads no reasoning field; it keeps a <think>...</think> written at the start of the content: put it there"


def _turn_text(row: EncodedRow, turn: int) -> str:
    return "".join(row.text[s.start:s.end] for s in row.segments if s.turn == turn and s.role == "assistant")


def _any_trained(row: EncodedRow, start: int, end: int) -> bool:
    return any(a < end and start < b for a, b in row.trained_chars)


def _turn_trained(row: EncodedRow, turn: int) -> bool:
    return any(s.turn == turn and s.part == "content" and _any_trained(row, s.start, s.end) for s in row.segments)


def trained_token_count(rows: Sequence[EncodedRow]) -> int:
    return sum(sum(1 for x in r.labels if x != IGNORE_INDEX) for r in rows)
