"""Preference data: pairs (chosen vs rejected) for DPO / ORPO / SimPO and unpaired rows for KTO.

Read through core.data.formats (the same file reading, JSON reader, row errors and kept columns as every dataset);
only the row shapes differ. Shapes detected:

- ``prompt`` / ``chosen`` / ``rejected`` as strings, or as message lists (TRL's conversational form: prompt is a list
  of messages, chosen / rejected lists of assistant messages). A side that is a whole conversation (UltraFeedback's
  ``chosen: [user, assistant]``) carries its own prompt: it is split off and compared with the other side's;
- ``messages`` (the conversation up to and including the chosen answer) + ``rejected_response`` (a string);
- Anthropic-HH transcripts: ``chosen`` and ``rejected`` are whole ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` strings
  sharing the prompt, split at the last ``"\\n\\nAssistant:"``;
- unpaired (KTO): ``prompt`` + ``completion`` + boolean ``label`` (prompt / completion as strings or message lists).

Normal form: pairs ``{"prompt": [messages], "chosen": [assistant message], "rejected": [assistant message]}``,
unpaired ``{"prompt": [...], "completion": [assistant message], "label": bool}``, each with the source's other columns.
When the two sides of a pair carry different prompts, the rejected side's is kept as ``rejected_prompt`` so that
`check_preferences` can say so. `encode_pair` builds the pair's two token sequences through the one masking function.
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from core.data.formats import (
    DETECT_ROWS,
    ROLES,
    DatasetLoadError,
    LoadedDataset,
    RowInvalid,
    ValidationReport,
    _BadJson,
    _content_text,
    _json_value,
    _messages_from_openai,
    _open_source,
    check_conversation,
    detect_id_column,
    kept_columns,
    load_dataset_file,
    load_uploaded,
    upload_name,
)
from core.data.masking import IGNORE_INDEX, EncodedRow, encode_conversation

PREFERENCE_FORMATS: tuple[str, ...] = ("preference", "unpaired")
PAIR_KEYS: tuple[str, ...] = ("prompt", "chosen", "rejected")
UNPAIRED_KEYS: tuple[str, ...] = ("prompt", "completion", "label")
HH_ASSISTANT = "\n\nAssistant:"
HH_HUMAN = "\n\nHuman:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
LENGTH_BIAS_WARN = 0.70  # share of pairs whose chosen answer is longer, above which DPO learns "longer is better"
LENGTH_BIAS_MIN_PAIRS = 10  # fewer pairs than this say nothing about a bias
LONG_PREFIX_CHARS = 40  # a shared prefix at least this long (and half the shorter side) is reported
TRUE_LABELS = {"true", "1", "yes", "desirable", "good"}
FALSE_LABELS = {"false", "0", "no", "undesirable", "bad"}


# ---------------------------------------------------------------- detection


def detect_preference_format(raw: Any) -> str | None:
    """"preference", "unpaired" or None for one raw row."""
    if not isinstance(raw, dict):
        return None
    if "chosen" in raw and "rejected" in raw:
        return "preference"
    if "messages" in raw and "rejected_response" in raw:
        return "preference"
    if "prompt" in raw and "completion" in raw and "label" in raw and _label(raw["label"]) is not None:
        return "unpaired"
    return None


def _label(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE_LABELS | FALSE_LABELS:
        return value.strip().lower() in TRUE_LABELS
    return None


# ---------------------------------------------------------------- normalisation


def normalise_preference_row(raw: Any, fmt: str) -> dict:
    """One raw row to the normal form (see the module doc); raises formats.RowInvalid naming the field."""
    if fmt not in PREFERENCE_FORMATS:
        raise ValueError(f"unknown preference format {fmt!r}; expected one of {PREFERENCE_FORMATS}")
    if not isinstance(raw, dict):
        raise RowInvalid("not_an_object", "", f"row is a {type(raw).__name__}, expected a JSON object")
    if fmt == "unpaired":
        return _unpaired(raw)
    if "messages" in raw and "rejected_response" in raw and not ("chosen" in raw and "rejected" in raw):
        messages = _messages_from_openai(raw, "messages", [])
        if messages[-1]["role"] != "assistant":
            raise RowInvalid("turn_order", "messages", "`messages` must end with the chosen assistant answer")
        rejected = _side_text(raw, "rejected_response")
        row = {"prompt": messages[:-1], "chosen": [messages[-1]], "rejected": [rejected]}
        used = ["messages", "rejected_response"]
    elif isinstance(raw.get("chosen"), str) and isinstance(raw.get("rejected"), str) and "prompt" not in raw:
        row = _hh(raw)
        used = ["chosen", "rejected"]
    else:
        prompt = _prompt(raw) if "prompt" in raw else None
        chosen_prompt, chosen = _side(raw, "chosen")
        rejected_prompt, rejected = _side(raw, "rejected")
        prompt = prompt if prompt is not None else chosen_prompt
        if not prompt:
            raise RowInvalid("missing_field", "prompt",
                             "missing field 'prompt' (and `chosen` does not carry the conversation before its answer)")
        row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        if chosen_prompt and chosen_prompt != prompt:
            row["chosen_prompt"] = chosen_prompt
        if rejected_prompt and rejected_prompt != prompt:
            row["rejected_prompt"] = rejected_prompt
        used = list(PAIR_KEYS)
    _check_pair_side(row, "chosen")
    _check_pair_side(row, "rejected")
    return _with_extras(row, raw, used)


def _unpaired(raw: dict) -> dict:
    label = _label(raw.get("label"))
    if label is None:
        raise RowInvalid("bad_label", "label", f"`label` is {raw.get('label')!r}, expected true (desirable) or false (undesirable)")
    prompt = _prompt(raw)
    _, completion = _side(raw, "completion")
    check_conversation(prompt + completion)
    return _with_extras({"prompt": prompt, "completion": completion, "label": label}, raw, list(UNPAIRED_KEYS))


def _prompt(raw: dict) -> list[dict]:
    value = raw.get("prompt")
    if value is None:
        raise RowInvalid("missing_field", "prompt", "missing field 'prompt'")
    if isinstance(value, str):
        if not value.strip():
            raise RowInvalid("empty_content", "prompt", "`prompt` is empty")
        return [{"role": "user", "content": value}]
    messages = _messages_from_openai(raw, "prompt", [])
    if messages[-1]["role"] == "assistant":
        raise RowInvalid("turn_order", "prompt", "`prompt` ends with an assistant turn: the answer belongs in `chosen` / `rejected`")
    return messages


def _side_text(raw: dict, name: str) -> dict:
    value = raw.get(name)
    if value is None:
        raise RowInvalid("missing_field", name, f"missing field {name!r}")
    text = _content_text(value, f"`{name}`")
    if not text.strip():
        raise RowInvalid("empty_content", name, f"`{name}` is empty")
    return {"role": "assistant", "content": text}


def _side(raw: dict, name: str) -> tuple[list[dict], list[dict]]:
    """(the prompt this side carries (empty when none), [the assistant answer])."""
    value = raw.get(name)
    if not isinstance(value, list) or (value and not isinstance(value[0], dict)):
        return [], [_side_text(raw, name)]
    messages = _messages_from_openai(raw, name, [])
    for i, message in enumerate(messages):
        if message["role"] not in ROLES:
            raise RowInvalid("unknown_role", f"{name}[{i}].role",
                             f"unknown role {message['role']!r} in `{name}`; expected one of {', '.join(ROLES)}")
    if messages[-1]["role"] != "assistant":
        raise RowInvalid("turn_order", name, f"`{name}` must end with an assistant message (its last is {messages[-1]['role']})")
    answers = [m for m in messages if m["role"] == "assistant"]
    if len(answers) > 1 and all(m["role"] == "assistant" for m in messages):
        raise RowInvalid("bad_messages", name, f"`{name}` holds {len(answers)} assistant messages; a pair compares one answer per side")
    if not messages[-1]["content"].strip() and not messages[-1].get("tool_calls"):
        raise RowInvalid("empty_content", name, f"`{name}` is empty")
    return messages[:-1], [messages[-1]]


def _hh(raw: dict) -> dict:
    """Anthropic-HH: two whole transcripts sharing the prompt; each split at its last "\\n\\nAssistant:"."""
    sides = {}
    for name in ("chosen", "rejected"):
        text = raw[name]
        cut = text.rfind(HH_ASSISTANT)
        if cut < 0:
            raise RowInvalid("bad_messages", name,
                             f"`{name}` has no \"\\n\\nAssistant:\" turn (expected an Anthropic-HH transcript, or give a `prompt` column)")
        answer = text[cut + len(HH_ASSISTANT):].strip()
        if not answer:
            raise RowInvalid("empty_content", name, f"`{name}` is empty (nothing after its last \"Assistant:\")")
        sides[name] = (_hh_messages(text[:cut], name), {"role": "assistant", "content": answer})
    prompt, chosen = sides["chosen"]
    rejected_prompt, rejected = sides["rejected"]
    row = {"prompt": prompt, "chosen": [chosen], "rejected": [rejected]}
    if rejected_prompt != prompt:
        row["rejected_prompt"] = rejected_prompt
    return row


def _hh_messages(prefix: str, name: str) -> list[dict]:
    parts = _HH_TURN.split(prefix)
    if parts[0].strip() or len(parts) < 3:
        raise RowInvalid("bad_messages", name, f"`{name}` does not start with \"\\n\\nHuman:\"")
    messages = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    if messages[-1]["role"] != "user":
        raise RowInvalid("turn_order", name, f"`{name}`: the turn before the last \"Assistant:\" is not a human turn")
    return messages


def _check_pair_side(row: dict, name: str) -> None:
    try:
        check_conversation(row["prompt"] + row[name])
    except RowInvalid as exc:  # name the side, not the joined conversation
        raise RowInvalid(exc.kind, name, f"`{name}`: {exc.message}") from None


def _with_extras(row: dict, raw: dict, used: Sequence[str]) -> dict:
    for key, value in raw.items():
        if key in used:
            continue
        row[f"{key}_original" if key in row else key] = _json_value(value)
    return row


# ---------------------------------------------------------------- loading


def _head(path_or_id: str | Path, split: str | None) -> list[Any]:
    _, records, _ = _open_source(path_or_id, split, [])
    head = []
    for _, record in records:
        head.append(record)
        if len(head) >= DETECT_ROWS:
            break
    return head


def sniff_preference_format(path_or_id: str | Path, split: str | None = None) -> str | None:
    """"preference" / "unpaired" when most of the first rows have that shape, else None."""
    votes: dict[str, int] = {}
    head = [r for r in _head(path_or_id, split) if not isinstance(r, _BadJson)]
    for record in head:
        fmt = detect_preference_format(record)
        if fmt:
            votes[fmt] = votes.get(fmt, 0) + 1
    if not votes:
        return None
    best = max(votes, key=votes.get)
    return best if votes[best] * 2 > len(head) else None


def load_preference_file(path_or_id: str | Path, *, fmt: str | None = None, split: str | None = None,
                         limit: int | None = None) -> LoadedDataset:
    """Read a preference file with core.data.formats' readers; rows normalised, row errors in the report."""
    if fmt is not None and fmt not in PREFERENCE_FORMATS:
        raise ValueError(f"unknown preference format {fmt!r}; expected one of {', '.join(PREFERENCE_FORMATS)}")
    fmt = fmt or sniff_preference_format(path_or_id, split)
    if fmt is None:
        raise DatasetLoadError(f"{path_or_id}: not a preference dataset (expected prompt / chosen / rejected, messages + "
                               "rejected_response, Anthropic-HH chosen / rejected transcripts, or prompt / completion / label)")
    file_notes: list[str] = []
    source, records, hasher = _open_source(path_or_id, split, file_notes)
    report = ValidationReport()
    rows: list[dict] = []
    for index, record in records:
        if limit is not None and report.n_read >= limit:
            break
        if isinstance(record, _BadJson):
            report.add_error(index, "bad_json", "", record.message)
            continue
        try:
            rows.append(normalise_preference_row(record, fmt))
        except RowInvalid as exc:
            report.add_error(index, exc.kind, exc.field, exc.message)
            continue
        report.add_valid()
    if report.n_read == 0:
        raise DatasetLoadError(f"{source} has no rows")
    report.file_notes.extend(file_notes)
    columns = [c for c in kept_columns(rows) if c not in PAIR_KEYS + UNPAIRED_KEYS + ("rejected_prompt", "chosen_prompt")]
    return LoadedDataset(rows=rows, report=report, detected_format=fmt, source=source, source_hash=hasher(),
                         columns=columns, id_column=detect_id_column(rows, columns))


def load_any_dataset(path_or_id: str | Path, **kwargs: Any) -> LoadedDataset:
    """A preference file when its rows look like one, else core.data.formats.load_dataset_file."""
    if sniff_preference_format(path_or_id, kwargs.get("split")):
        return load_preference_file(path_or_id, split=kwargs.get("split"), limit=kwargs.get("limit"))
    return load_dataset_file(path_or_id, **kwargs)


def is_preference_dataset(dataset: Any) -> bool:
    return getattr(dataset, "detected_format", None) in PREFERENCE_FORMATS


def is_pair(row: Any) -> bool:
    return isinstance(row, dict) and isinstance(row.get("prompt"), list) and "chosen" in row and "rejected" in row


# ---------------------------------------------------------------- checks


def _answer(side: Any) -> str:
    if isinstance(side, str):
        return side
    return "\n\n".join(m.get("content") or "" for m in side or [] if isinstance(m, dict))


@dataclass
class PairIssue:
    row: int
    message: str

    def as_dict(self) -> dict:
        return {"row": self.row, "message": self.message}


@dataclass
class PreferenceReport:
    n_rows: int = 0
    n_pairs: int = 0
    identical: list[int] = field(default_factory=list)  # chosen == rejected
    empty: list[PairIssue] = field(default_factory=list)  # a side with no text
    prompt_mismatch: list[int] = field(default_factory=list)  # the two sides carry different prompts
    shared_prefix: list[PairIssue] = field(default_factory=list)  # where the sides start to differ, when late
    chosen_longer: int = 0
    n_desirable: int = 0
    n_undesirable: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def chosen_longer_share(self) -> float:
        return self.chosen_longer / self.n_pairs if self.n_pairs else 0.0

    @property
    def desirable_share(self) -> float:
        total = self.n_desirable + self.n_undesirable
        return self.n_desirable / total if total else 0.0

    def findings(self) -> list[tuple[str, str]]:
        """(level, sentence) per finding: "error" for pairs that teach nothing, "warning" otherwise."""
        out = []
        if self.identical:
            out.append(("error",
                        f"{len(self.identical)} pair(s) have chosen equal to rejected: they teach nothing (rows {_rows(self.identical)})"))
        if self.empty:
            out.append(("error", f"{len(self.empty)} pair(s) have an empty side (rows {_rows([i.row for i in self.empty])})"))
        if self.prompt_mismatch:
            out.append(("error",
                        f"{len(self.prompt_mismatch)} pair(s) carry different prompts on the two sides: chosen and rejected must answer "
                        f"the same prompt (rows {_rows(self.prompt_mismatch)})"))
        if self.shared_prefix:
            out.append(("warning", f"{len(self.shared_prefix)} pair(s) share a long start; the loss only sees the difference "
                                   f"(e.g. row {self.shared_prefix[0].row}: {self.shared_prefix[0].message})"))
        return out + [("warning", w) for w in self.warnings]

    def as_dict(self) -> dict:
        return {"n_rows": self.n_rows, "n_pairs": self.n_pairs, "identical": self.identical, "empty": [i.as_dict() for i in self.empty],
                "prompt_mismatch": self.prompt_mismatch, "shared_prefix": [i.as_dict() for i in self.shared_prefix],
                "chosen_longer_share": self.chosen_longer_share, "n_desirable": self.n_desirable, "n_undesirable": self.n_undesirable,
                "warnings": list(self.warnings)}


def _rows(rows: Sequence[int]) -> str:
    return ", ".join(map(str, rows[:10])) + (" …" if len(rows) > 10 else "")


def common_prefix(a: str, b: str) -> int:
    """Characters the two texts share from their start."""
    return len(os.path.commonprefix((a, b)))


def check_preferences(rows: Sequence[dict], *, length_bias_warn: float = LENGTH_BIAS_WARN,
                      long_prefix_chars: int = LONG_PREFIX_CHARS) -> PreferenceReport:
    """What to know about preference rows before any model loads (no tokenizer needed)."""
    report = PreferenceReport(n_rows=len(rows))
    for index, row in enumerate(rows):
        if "label" in row and "completion" in row:
            if row["label"]:
                report.n_desirable += 1
            else:
                report.n_undesirable += 1
            continue
        if not is_pair(row):
            continue
        report.n_pairs += 1
        chosen, rejected = _answer(row["chosen"]), _answer(row["rejected"])
        empty = [name for name, text in (("chosen", chosen), ("rejected", rejected)) if not text.strip()]
        if empty:
            report.empty.append(PairIssue(index, " and ".join(f"`{n}`" for n in empty) + " is empty"))
            continue
        for key in ("rejected_prompt", "chosen_prompt"):
            if row.get(key) and row[key] != row["prompt"]:
                report.prompt_mismatch.append(index)
                break
        if chosen.strip() == rejected.strip():
            report.identical.append(index)
            continue
        if len(chosen) > len(rejected):
            report.chosen_longer += 1
        shared = common_prefix(chosen, rejected)
        if shared >= long_prefix_chars and shared * 2 >= min(len(chosen), len(rejected)):
            word = len(chosen[:shared].split()) + (1 if chosen[shared - 1].isspace() else 0)  # mid-word: that word differs
            report.shared_prefix.append(PairIssue(index, f"the sides differ from character {shared} (word {word}) on"))
    if report.n_pairs >= LENGTH_BIAS_MIN_PAIRS and report.chosen_longer_share > length_bias_warn:
        report.warnings.append(f"the chosen answer is the longer one in {report.chosen_longer_share:.0%} of pairs "
                               f"(above {length_bias_warn:.0%}): DPO is known to learn length rather than quality from such data; "
                               "balance lengths or use a length-normalised objective (SimPO, or DPO with length regularisation)")
    unpaired = report.n_desirable + report.n_undesirable
    if unpaired and (not report.n_desirable or not report.n_undesirable):
        missing = "undesirable (label false)" if not report.n_undesirable else "desirable (label true)"
        report.warnings.append(f"no {missing} rows: KTO needs both kinds to learn what to prefer")
    elif unpaired and not 0.1 <= report.desirable_share <= 0.9:
        report.warnings.append(f"{report.desirable_share:.0%} of rows are desirable: KTO works best near balance "
                               "(or set its desirable / undesirable weights to make up for it)")
    return report


# ---------------------------------------------------------------- the pair mask


@dataclass
class EncodedPair:
    chosen: EncodedRow
    rejected: EncodedRow
    prompt_tokens: int  # tokens before the first trained token of chosen
    diverge: int  # first token index where chosen and rejected ids differ

    def as_dict(self) -> dict:
        return {"chosen": self.chosen.as_features(), "rejected": self.rejected.as_features(), "prompt_tokens": self.prompt_tokens,
                "diverge": self.diverge}


def encode_pair(row: dict, tokenizer: Any, *, chat_template: str | None = None, max_length: int | None = None, train_eot: bool = True,
                reasoning: str | None = None, tools: Sequence[dict] | None = None) -> EncodedPair:
    """prompt + chosen and prompt + rejected through core.data.masking.encode_conversation: only the final answer (and its
    end-of-turn) is trained, the prompt never is (earlier assistant turns of the prompt included)."""
    if not is_pair(row):
        raise ValueError(f"not a preference pair (keys: {sorted(row) if isinstance(row, dict) else type(row).__name__})")
    kwargs = dict(chat_template=chat_template, policy="last_assistant", max_length=max_length, train_eot=train_eot, reasoning=reasoning,
                  tools=tools or row.get("tools"))
    chosen = encode_conversation(list(row["prompt"]) + list(row["chosen"]), tokenizer, **kwargs)
    rejected = encode_conversation(list(row["prompt"]) + list(row["rejected"]), tokenizer, **kwargs)
    diverge = common_prefix(chosen.input_ids, rejected.input_ids)
    prompt_tokens = next((i for i, label in enumerate(chosen.labels) if label != IGNORE_INDEX), len(chosen.labels))
    return EncodedPair(chosen, rejected, prompt_tokens, diverge)


def load_uploaded_any(filename: str, data: bytes) -> LoadedDataset:
    """An uploaded file: a preference file when its rows look like one, else formats.load_uploaded."""
    name = upload_name(filename)
    suffix = "".join(Path(name).suffixes[-2:])
    if suffix:
        with tempfile.TemporaryDirectory(prefix="upload-") as folder:
            path = Path(folder) / f"upload{suffix}"
            path.write_bytes(data)
            try:
                if sniff_preference_format(path):
                    loaded = load_preference_file(path)
                    loaded.source = f"upload:{filename}"
                    return loaded
            except DatasetLoadError as exc:  # name the file the user uploaded, not the temporary copy
                raise DatasetLoadError(str(exc).replace(str(path), name)) from None
    return load_uploaded(filename, data)


def as_conversation(row: dict) -> dict:
    """An unpaired (KTO) row as the conversation it scores, ``{"messages": prompt + completion}`` (other keys kept), for
    the views that draw one conversation (the Template page); any other row unchanged."""
    if isinstance(row, dict) and "completion" in row and "label" in row and isinstance(row.get("prompt"), list):
        rest = {k: v for k, v in row.items() if k not in ("prompt", "completion")}
        return {"messages": list(row["prompt"]) + list(row["completion"]), **rest}
    return row
