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
- rows the template cannot encode at all (with the first row's reason).

`LintReport.can_train` is what the Train page checks ("refuse if no trainable tokens").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from core.data.masking import (
    IGNORE_INDEX,
    EncodedRow,
    MaskingError,
    PackingPreview,
    _Context,
    _render,
    _tokenize,
    encode_conversation,
    encode_conversations,
    encode_text,
    packing_preview,
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
) -> LintReport:
    """Encode (the first `sample` of) the normalised rows and report what would go wrong in training."""
    chosen = list(rows[:sample] if sample else rows)
    report = LintReport(n_rows=len(rows), n_checked=0, policy=policy, max_length=max_length)
    chat_rows = [(i, r) for i, r in enumerate(chosen) if "messages" in r]
    encoded: list[tuple[int, EncodedRow | None]] = []
    if chat_rows:
        results = encode_conversations([r["messages"] for _, r in chat_rows], tokenizer, chat_template=chat_template, policy=policy,
                                       max_length=max_length, train_eot=train_eot, errors="skip", tools=[r.get("tools") for _, r in chat_rows])
        encoded += [(i, e) for (i, _), e in zip(chat_rows, results)]
    encoded += [(i, encode_text(r["text"], tokenizer, max_length=max_length)) for i, r in enumerate(chosen) if "text" in r and "messages" not in r]
    encoded.sort(key=lambda pair: pair[0])
    report.n_checked = len(encoded)
    for index, row in encoded:
        if row is None:
            if "encode_failed" not in report.issues:
                reason = _encode_error(chosen[index], tokenizer, chat_template, policy)
                report._add("encode_failed", "error", f"the chat template could not encode these rows: {reason}", index)
            else:
                report._add("encode_failed", "error", "", index)
            continue
        _check_row(report, index, row, train_eot)
        if row.n_trained and any(span.role == "tool" and label != IGNORE_INDEX for span, label in zip(row.spans, row.labels)):
            report._add("tool_result_trained", "warning", f"tool results are trained (policy {policy!r}): the model learns to write what tools return", index)
    if check_inference and chat_rows:
        _check_inference(report, chat_rows, {i: e for i, e in encoded}, tokenizer, chat_template)
    if report.n_encoded and report.trained_tokens == 0:
        report._add("no_trainable_tokens", "error", "no checked row has a trained token: training would learn nothing", 0)
    if max_length and report.lengths:
        report.packing = packing_preview(report.lengths, max_length)
    return report


def _encode_error(row: dict, tokenizer: Any, chat_template: str | None, policy: str) -> str:
    try:
        encode_conversation(row["messages"], tokenizer, chat_template=chat_template, policy=policy, tools=row.get("tools"))
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
        report._add("no_eot_marker", "warning", "the template writes no end-of-turn marker after the assistant: the model will not learn to stop", index)
    elif not row.eot_trained and row.n_trained:
        reason = "train_eot is off" if not train_eot else "it was cut by truncation" if row.truncated else "it is masked"
        report._add("eot_not_trained", "warning", f"the end-of-turn marker is not trained ({reason}): the model may not learn to stop", index)
    for note in row.notes:
        report._add("note:" + note[:40], "warning", note, index)


def _check_inference(report: LintReport, chat_rows, encoded: dict, tokenizer: Any, chat_template: str | None) -> None:
    """The prompt rendered for generation must tokenize to a prefix of the training tokens, at every assistant turn."""
    ctx = _Context.make(tokenizer, chat_template, "all_assistant", None)
    prompts, owners = [], []
    for index, row in chat_rows:
        if encoded.get(index) is None:
            continue
        messages = row["messages"]
        for turn, message in enumerate(messages):
            if message["role"] == "assistant" and turn > 0:
                try:
                    prompts.append(_render(ctx, list(messages[:turn]), add_generation_prompt=True, tools=row.get("tools"))[0])
                except MaskingError:
                    continue
                owners.append((index, bool(message.get("tool_calls")) or messages[turn - 1]["role"] == "tool"))
    flagged: set[int] = set()
    for (index, tool_turn), prompt, (ids, _) in zip(owners, prompts, _tokenize(tokenizer, prompts)):
        full = encoded[index]
        if index in flagged:
            continue
        if not full.text.startswith(prompt):
            flagged.add(index)
            if tool_turn:
                report._add("tool_inference_mismatch", "error", "at a tool turn (a tool call, or the answer after a tool result) the prompt rendered for generation is not a prefix of the training text: the model is trained on a tool layout it never sees at inference", index)
            else:
                report._add("inference_mismatch", "error", "the prompt rendered for generation (add_generation_prompt=True) is not a prefix of the training text: the model is trained on a layout it never sees", index)
        elif full.input_ids[: len(ids)] != ids[: len(full.input_ids)]:
            flagged.add(index)
            report._add("inference_token_mismatch", "warning", "the generation prompt tokenizes differently from the same text inside the training row (a token spans the prompt's end)", index)


def trained_token_count(rows: Sequence[EncodedRow]) -> int:
    return sum(sum(1 for x in r.labels if x != IGNORE_INDEX) for r in rows)
