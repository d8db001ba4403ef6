"""Load a dataset from a file, folder or Hub id and normalise every row to one conversational form.

Sources: JSONL (streamed line by line), JSON (an array of objects, or columns: an object of equal-length
lists), CSV, Parquet (read in record batches), a folder written by `datasets.save_to_disk`, a workspace
dataset folder (`datasets/<name>/data.jsonl`), or a Hugging Face Hub id with a split.

Formats detected (or forced with `fmt=`):

- ``messages``           OpenAI style: ``{"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": ...}]}``;
                         assistant ``tool_calls`` (and the legacy ``function_call`` / ``function`` role) are read, and
                         Gemma's ``model`` role is read as ``assistant`` (with a note in the report)
- ``sharegpt``           ``{"conversations": [{"from": "human"|"gpt"|"system"|"function_call"|"observation", "value": ...}]}``
                         (LLaMA-Factory's tool turns: ``function_call`` holds the call as JSON, ``observation`` its result)
- ``alpaca``             ``{"instruction": ..., "input": ..., "output": ...}`` (input optional)
- ``prompt_completion``  ``{"prompt": ..., "completion": ...}``
- ``text``               ``{"text": ...}`` plain text for language-model training

Normalised rows: conversations become ``{"messages": [{"role": ..., "content": ...}, ...]}``. A row's tool
definitions (a ``tools`` column: OpenAI ``[{"type": "function", "function": {...}}]``, or LLaMA-Factory's JSON text
of ``[{"name": ..., "parameters": ...}]``) become ``"tools"`` in the OpenAI form, and an assistant turn that calls
tools carries ``"tool_calls": [{"type": "function", "function": {"name": ..., "arguments": {...}}}]`` with the
arguments parsed to an object: the form chat templates (``apply_chat_template(tools=...)``) expect. An assistant
message's reasoning field (``reasoning_content``, ``thinking`` or ``reasoning``, see core.data.masking) is kept as is.

Every other column of the source row (``id``, ``source``, ...) is kept on the normalised row under its own name, so it
survives curation and export; a column whose name collides with a normalised key (``messages``, ``text``, ``tools``)
is kept as ``<name>_original``. `LoadedDataset.id_column` names the column that identifies rows, when one does.
Plain text stays ``{"text": ...}``: wrapping it in an assistant turn would train the chat template's
tokens around text that is never used as a chat, so text rows are trained on every token, untemplated
(see `core.data.masking.encode_text`).

A ``mapping`` names the columns for the canonical fields when the data uses other names or detection is
ambiguous, e.g. ``{"prompt": "question", "completion": "answer"}``; when ``fmt`` is not given the format
follows from the mapped fields. Canonical fields: messages, conversations, instruction, input, output,
prompt, completion, text, system.

``prompts_only=True`` reads the prompts of a dataset (for a teacher to answer): rows need not end in an answer, so
``{"prompt": ...}``, ``{"instruction": ...}`` and conversations that end in a user turn are valid too.

Every row is validated. A row with a problem is not kept, but it is counted under its (first) error kind
in the `ValidationReport`, with the first few examples (row index, field, message).
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from core.data.masking import REASONING_KEYS
from core.models import hub_reachable
from core.workspace import REPO_ROOT, atomic_write_bytes, atomic_write_text, datasets_dir, refuse_links_outside, safe_name, subdir

FORMATS: tuple[str, ...] = ("messages", "sharegpt", "alpaca", "prompt_completion", "text")
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")
ROLE_ALIASES: dict[str, str] = {"model": "assistant", "function": "tool"}  # Gemma's assistant; OpenAI's legacy function results
ROLE_NOTES: dict[str, str] = {
    "model": "with Gemma's `model` role: read as the assistant",
    "function": "with OpenAI's legacy `function` role: read as a tool result",
}
SHAREGPT_ROLES: dict[str, str] = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "function_call": "assistant",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
}
ERROR_KINDS: tuple[str, ...] = (
    "bad_json",
    "not_an_object",
    "missing_field",
    "not_a_string",
    "bad_messages",
    "unknown_role",
    "empty_content",
    "no_assistant_turn",
    "turn_order",
    "bad_tool_call",
    "bad_tools",
    "bad_text",
)
FIELD_NAMES: tuple[str, ...] = (
    "messages", "conversations", "instruction", "input", "output", "prompt", "completion", "text", "system", "tools",
)
NORMALISED_KEYS: tuple[str, ...] = ("messages", "text", "tools")
ID_COLUMNS: tuple[str, ...] = ("id", "_id", "uuid", "row_id", "example_id", "sample_id", "question_id", "task_id", "idx", "key")
FILE_SUFFIXES: dict[str, str] = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet",
}
DEMO_SPLITS: tuple[str, ...] = ("train", "eval", "pairs_train", "pairs_eval")  # pairs_*: preference pairs (assets/make_demo_preferences.py)
EXAMPLES_PER_KIND = 5
DETECT_ROWS = 50
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class DatasetLoadError(RuntimeError):
    """The dataset as a whole could not be read; the message names the file / id and why."""


class RowInvalid(ValueError):
    """One row is invalid: `kind` is one of ERROR_KINDS, `field` names the offending field."""

    def __init__(self, kind: str, field: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.field = field
        self.message = message


@dataclass(frozen=True)
class RowError:
    row: int  # 0-based index of the row in the source (line N of a JSONL file is row N-1)
    kind: str
    field: str
    message: str

    def as_dict(self) -> dict:
        return {"row": self.row, "kind": self.kind, "field": self.field, "message": self.message}


@dataclass
class ValidationReport:
    n_read: int = 0
    n_valid: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # error kind -> rows rejected for it
    examples: dict[str, list[RowError]] = field(default_factory=dict)  # error kind -> first rows
    notes: dict[str, int] = field(default_factory=dict)  # something read in a way worth saying -> rows it concerns
    file_notes: list[str] = field(default_factory=list)  # the same about the file as a whole

    @property
    def n_invalid(self) -> int:
        return sum(self.counts.values())

    @property
    def ok(self) -> bool:
        return self.n_invalid == 0

    def add_valid(self) -> None:
        self.n_read += 1
        self.n_valid += 1

    def add_error(self, row: int, kind: str, field: str, message: str) -> None:
        self.n_read += 1
        self.counts[kind] = self.counts.get(kind, 0) + 1
        shown = self.examples.setdefault(kind, [])
        if len(shown) < EXAMPLES_PER_KIND:
            shown.append(RowError(row, kind, field, message))

    def add_note(self, note: str) -> None:
        self.notes[note] = self.notes.get(note, 0) + 1

    def note_lines(self) -> list[str]:
        """One sentence per note: "12 rows use Gemma's `model` role: read as the assistant"."""
        return list(self.file_notes) + [f"{n:,} row{'' if n == 1 else 's'} {note}" for note, n in self.notes.items()]

    def first_errors(self) -> list[RowError]:
        return sorted((e for errs in self.examples.values() for e in errs), key=lambda e: e.row)

    def summary(self) -> str:
        if self.ok:
            return f"{self.n_valid} rows, all valid"
        kinds = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in sorted(self.counts.items()))
        return f"{self.n_valid} of {self.n_read} rows valid; rejected: {kinds}"

    def as_dict(self) -> dict:
        return {
            "n_read": self.n_read,
            "n_valid": self.n_valid,
            "n_invalid": self.n_invalid,
            "counts": dict(self.counts),
            "examples": {k: [e.as_dict() for e in v] for k, v in self.examples.items()},
            "notes": dict(self.notes),
            "file_notes": list(self.file_notes),
        }


@dataclass
class LoadedDataset:
    rows: list[dict]
    report: ValidationReport
    detected_format: str
    source: str
    source_hash: str
    columns: list[str] = field(default_factory=list)  # the source's own columns kept on every row (id, source, ...)
    id_column: str | None = None  # a kept column whose values are present and unique on every row

    def __len__(self) -> int:
        return len(self.rows)

    def row_ids(self, column: str | None = None) -> list | None:
        """The values of the id column (given, or the detected one) per row, or None without one."""
        column = column or self.id_column
        if not column:
            return None
        return [row.get(column) for row in self.rows]


# ---------------------------------------------------------------- detection


def detect_format(raw: dict, mapping: dict | None = None, prompts_only: bool = False) -> str | None:
    """The format one raw row looks like, or None. Order decides ties: messages > sharegpt > alpaca > ..."""
    if not isinstance(raw, dict):
        return None
    cols = _columns(mapping)
    for key in ("messages", "conversations"):
        value = raw.get(cols[key])
        if isinstance(value, str) and value.lstrip().startswith("["):
            value = _parse_json_list(value)
        if isinstance(value, list) and value and isinstance(value[0], dict):
            first = value[0]
            if "from" in first or "value" in first:
                return "sharegpt"
            return "messages"
        if isinstance(value, list) and cols[key] in raw:
            return "messages" if key == "messages" else "sharegpt"
    if cols["instruction"] in raw and cols["output"] in raw:
        return "alpaca"
    if cols["prompt"] in raw and cols["completion"] in raw:
        return "prompt_completion"
    if prompts_only and cols["instruction"] in raw:
        return "alpaca"
    if prompts_only and cols["prompt"] in raw:
        return "prompt_completion"
    if cols["text"] in raw:
        return "text"
    return None


def format_from_mapping(mapping: dict | None) -> str | None:
    """When a mapping names the fields of exactly one format, that format."""
    keys = set(mapping or {})
    if "messages" in keys:
        return "messages"
    if "conversations" in keys:
        return "sharegpt"
    if keys & {"instruction", "output"}:
        return "alpaca"
    if keys & {"prompt", "completion"}:
        return "prompt_completion"
    if "text" in keys:
        return "text"
    return None


def detect_dataset_format(raws: Iterable[dict], mapping: dict | None = None, prompts_only: bool = False) -> str:
    """Majority format over the first rows; raises DatasetLoadError naming the columns when none fits."""
    votes: dict[str, int] = {}
    seen_keys: set[str] = set()
    for raw in raws:
        if isinstance(raw, dict):
            seen_keys.update(map(str, raw))
        fmt = detect_format(raw, mapping, prompts_only)
        if fmt:
            votes[fmt] = votes.get(fmt, 0) + 1
    if not votes:
        cols = ", ".join(sorted(seen_keys)[:20]) or "none"
        raise DatasetLoadError(
            f"could not detect the dataset format from columns [{cols}]; expected one of {', '.join(FORMATS)} "
            "or a column mapping such as {'prompt': 'question', 'completion': 'answer'}"
        )
    return max(votes, key=lambda f: (votes[f], -FORMATS.index(f)))


# ---------------------------------------------------------------- normalisation


def normalise_row(raw: Any, fmt: str, mapping: dict | None = None, prompts_only: bool = False, notes: list[str] | None = None) -> dict:
    """One raw row to ``{"messages": [...]}`` (or ``{"text": ...}``) plus its other columns; raises RowInvalid
    when it is not valid. Sentences about how the row was read (a Gemma `model` role, ...) go to `notes`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r}; expected one of {FORMATS}")
    if not isinstance(raw, dict):
        raise RowInvalid("not_an_object", "", f"row is a {type(raw).__name__}, expected a JSON object")
    cols = _columns(mapping)
    notes = notes if notes is not None else []
    used = [cols[name] for name in CONSUMED[fmt]]
    if fmt == "text":
        return _with_extras({"text": _required_text(raw, cols["text"], strip_check=True)}, raw, used)
    tools = None
    if fmt == "messages":
        name = _present(raw, cols["messages"], cols["conversations"])
        messages = _messages_from_openai(raw, name, notes)
        tools = _tools(raw, cols["tools"])
    elif fmt == "sharegpt":
        name = _present(raw, cols["conversations"], cols["messages"])
        messages = _messages_from_sharegpt(raw, name, notes)
        tools = _tools(raw, cols["tools"])
    elif fmt == "alpaca":
        instruction = _required_text(raw, cols["instruction"], strip_check=True)
        extra = _optional_text(raw, cols["input"])
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = [{"role": "user", "content": user}]
        if not prompts_only or _optional_text(raw, cols["output"]).strip():
            messages.append({"role": "assistant", "content": _required_text(raw, cols["output"], strip_check=True)})
    elif prompts_only and raw.get(cols["completion"]) is None and isinstance(raw.get(cols["prompt"]), str):
        messages = [{"role": "user", "content": _required_text(raw, cols["prompt"], strip_check=True)}]
    else:
        messages = _messages_from_prompt_completion(raw, cols["prompt"], cols["completion"], notes)
    system = _optional_text(raw, cols["system"]) if fmt in ("alpaca", "prompt_completion", "sharegpt") else ""
    if system.strip() and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system})
    check_conversation(messages, answered=not prompts_only)
    row: dict[str, Any] = {"messages": messages}
    if tools:
        row["tools"] = tools
    return _with_extras(row, raw, used + ([name] if fmt in ("messages", "sharegpt") else []))


# The canonical fields each format reads; every other column is kept on the row as it is.
CONSUMED: dict[str, tuple[str, ...]] = {
    "messages": ("messages", "tools"),
    "sharegpt": ("conversations", "tools", "system"),
    "alpaca": ("instruction", "input", "output", "system"),
    "prompt_completion": ("prompt", "completion", "system"),
    "text": ("text",),
}


def _with_extras(row: dict, raw: dict, used: list[str]) -> dict:
    """The normalised row plus the source row's other columns (JSON-safe; colliding names get `_original`)."""
    for column, value in raw.items():
        column = str(column)
        if column in used:
            continue
        key = f"{column}_original" if column in NORMALISED_KEYS else column
        try:
            row[key] = _json_value(value)
        except RecursionError:
            raise RowInvalid("bad_json", column, f"column {column!r} is nested too deeply to keep") from None
    return row


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None  # NaN from a CSV / parquet column is a missing value; ±inf is not JSON
    if hasattr(value, "tolist"):  # numpy scalars and arrays from parquet / datasets
        return _json_value(value.tolist())
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return str(value)  # dates, decimals, bytes: kept as their text


def check_conversation(messages: list[dict], answered: bool = True) -> None:
    """Roles known, contents non-empty, at least one assistant turn, and turns in a trainable order.

    answered=False (prompts to be answered): no assistant turn is needed and the last turn may be the user's."""
    for i, message in enumerate(messages):
        if message["role"] not in ROLES:
            raise RowInvalid("unknown_role", f"messages[{i}].role",
                             f"unknown role {message['role']!r} in message {i}; expected one of {', '.join(ROLES)}")
        if not message["content"].strip() and not message.get("tool_calls"):
            raise RowInvalid("empty_content", f"messages[{i}].content", f"message {i} ({message['role']}) has empty content")
        _check_nul(message["content"], f"messages[{i}].content")
    roles = [m["role"] for m in messages]
    if "assistant" not in roles and answered:
        raise RowInvalid("no_assistant_turn", "messages", "conversation has no assistant turn, so nothing would be trained")
    allowed_before = {"user": {None, "system", "assistant", "tool"}, "assistant": {"user", "tool"}, "tool": {"assistant", "tool"}}
    previous = None
    for i, role in enumerate(roles):
        if role == "system":
            if i != 0:
                raise RowInvalid("turn_order", f"messages[{i}].role",
                                 f"system message at position {i}; only the first message may be a system message")
        elif previous not in allowed_before[role]:
            after = f"after a {previous} turn" if previous else "as the first turn"
            raise RowInvalid("turn_order", f"messages[{i}].role", f"{role} turn at position {i} {after}")
        previous = role
    if roles[-1] != "assistant" and (answered or roles[-1] != "user"):
        raise RowInvalid("turn_order", f"messages[{len(roles) - 1}].role",
                         f"conversation ends with a {roles[-1]} turn that is never answered")


def _columns(mapping: dict | None) -> dict[str, str]:
    cols = {name: name for name in FIELD_NAMES}
    for key, column in (mapping or {}).items():
        if key not in cols:
            raise ValueError(f"unknown mapping field {key!r}; expected one of {', '.join(FIELD_NAMES)}")
        cols[key] = str(column)
    return cols


def _present(raw: dict, preferred: str, alternative: str) -> str:
    """The preferred column, or the alternative when only that one is there (errors then name the preferred)."""
    return alternative if preferred not in raw and alternative in raw else preferred


def _required_text(raw: dict, name: str, *, strip_check: bool = False) -> str:
    if name not in raw or raw[name] is None:
        raise RowInvalid("missing_field", name, f"missing field {name!r}")
    value = raw[name]
    if not isinstance(value, str):
        raise RowInvalid("not_a_string", name, f"field {name!r} is a {type(value).__name__}, expected a string")
    if strip_check and not value.strip():
        raise RowInvalid("empty_content", name, f"field {name!r} is empty")
    return _check_nul(value, name)


def _check_nul(value: str, name: str) -> str:
    """A NUL character is never text a model should learn (a binary file or a broken export): the row is refused."""
    if "\x00" in value:
        raise RowInvalid("bad_text", name, f"field {name!r} contains a NUL character (\\x00) at position {value.index(chr(0))}")
    return value


def _optional_text(raw: dict, name: str) -> str:
    value = raw.get(name)
    if value is None or (isinstance(value, float) and value != value):  # None or NaN from a CSV / parquet column
        return ""
    if not isinstance(value, str):
        raise RowInvalid("not_a_string", name, f"field {name!r} is a {type(value).__name__}, expected a string")
    return _check_nul(value, name)


def _parse_json_list(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _message_list(raw: dict, name: str) -> list:
    if name not in raw or raw[name] is None:
        raise RowInvalid("missing_field", name, f"missing field {name!r}")
    value = raw[name]
    if isinstance(value, str):  # CSV cells hold conversations as JSON text
        value = _parse_json_list(value)
    if hasattr(value, "tolist"):  # numpy arrays from parquet via pandas
        value = value.tolist()
    if not isinstance(value, list):
        raise RowInvalid("bad_messages", name, f"field {name!r} is a {type(value).__name__}, expected a list of messages")
    if not value:
        raise RowInvalid("bad_messages", name, f"field {name!r} is an empty list")
    return value


def _content_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                         for p in content):
        return "".join(p["text"] for p in content)  # OpenAI content parts, text only
    if content is None:
        raise RowInvalid("missing_field", where, f"{where} is missing")
    raise RowInvalid("not_a_string", where, f"{where} is a {type(content).__name__}, expected a string")


def _messages_from_openai(raw: dict, name: str, notes: list[str]) -> list[dict]:
    messages = []
    for i, message in enumerate(_message_list(raw, name)):
        where = f"{name}[{i}]"
        if not isinstance(message, dict):
            raise RowInvalid("bad_messages", where, f"{where} is a {type(message).__name__}, expected an object with role and content")
        if "role" not in message:
            raise RowInvalid("missing_field", f"{where}.role", f"{where} has no 'role'")
        role = message["role"]
        if not isinstance(role, str):
            raise RowInvalid("not_a_string", f"{where}.role", f"{where}.role is a {type(role).__name__}, expected a string")
        if role in ROLE_ALIASES:
            notes.append(ROLE_NOTES[role])
            role = ROLE_ALIASES[role]
        calls = message.get("tool_calls") or ([message["function_call"]] if message.get("function_call") else [])
        reasoning = {k: message[k] for k in REASONING_KEYS
                     if role == "assistant" and isinstance(message.get(k), str) and message[k].strip()}
        if calls and role == "assistant":
            text = _content_text(message.get("content") or "", f"{where}.content")
            messages.append({"role": role, "content": text, "tool_calls": _tool_calls(calls, f"{where}.tool_calls"), **reasoning})
            continue
        normalised = {"role": role, "content": _content_text(message.get("content"), f"{where}.content"), **reasoning}
        if role == "tool":
            normalised.update({k: str(message[k]) for k in ("name", "tool_call_id") if isinstance(message.get(k), (str, int))})
        messages.append(normalised)
    return messages


def _messages_from_sharegpt(raw: dict, name: str, notes: list[str]) -> list[dict]:
    messages = []
    for i, turn in enumerate(_message_list(raw, name)):
        where = f"{name}[{i}]"
        if not isinstance(turn, dict):
            raise RowInvalid("bad_messages", where, f"{where} is a {type(turn).__name__}, expected an object with from and value")
        if "from" not in turn:
            raise RowInvalid("missing_field", f"{where}.from", f"{where} has no 'from'")
        speaker = turn["from"]
        if not isinstance(speaker, str):
            raise RowInvalid("not_a_string", f"{where}.from", f"{where}.from is a {type(speaker).__name__}, expected a string")
        role = SHAREGPT_ROLES.get(speaker.lower())
        if role is None:
            raise RowInvalid("unknown_role", f"{where}.from",
                             f"unknown speaker {speaker!r} in turn {i}; expected one of {', '.join(sorted(SHAREGPT_ROLES))}")
        if speaker.lower() == "model":
            notes.append(ROLE_NOTES["model"])
        value = _content_text(turn.get("value"), f"{where}.value")
        if speaker.lower() == "function_call":  # LLaMA-Factory: the call (or a list of calls) as JSON text
            messages.append({"role": "assistant", "content": "",
                             "tool_calls": _tool_calls(_json_or_invalid(value, f"{where}.value", "bad_tool_call"), f"{where}.value")})
        else:
            messages.append({"role": role, "content": value})
    return messages


def _json_or_invalid(text: Any, where: str, kind: str) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RowInvalid(kind, where, f"{where} is not valid JSON ({exc})") from None


def _tool_calls(calls: Any, where: str) -> list[dict]:
    """Calls in any of the common shapes to ``[{"type": "function", "function": {"name", "arguments": {...}}}]``."""
    if isinstance(calls, dict):
        calls = [calls]
    if not isinstance(calls, list) or not calls:
        raise RowInvalid("bad_tool_call", where, f"{where} must be a tool call object or a non-empty list of them")
    out = []
    for k, call in enumerate(calls):
        at = f"{where}[{k}]"
        if not isinstance(call, dict):
            raise RowInvalid("bad_tool_call", at, f"{at} is a {type(call).__name__}, expected an object with a function name and arguments")
        function = call.get("function") if isinstance(call.get("function"), dict) else call
        fname = function.get("name")
        if not isinstance(fname, str) or not fname.strip():
            raise RowInvalid("bad_tool_call", f"{at}.name", f"{at} has no function name")
        arguments = function.get("arguments", function.get("parameters", {}))
        arguments = _json_or_invalid(arguments, f"{at}.arguments", "bad_tool_call")
        if not isinstance(arguments, dict):
            raise RowInvalid("bad_tool_call", f"{at}.arguments", f"{at}.arguments is a {type(arguments).__name__}, expected a JSON object")
        normalised = {"type": "function", "function": {"name": fname, "arguments": arguments}}
        if isinstance(call.get("id"), (str, int)):
            normalised["id"] = str(call["id"])
        out.append(normalised)
    return out


def _tools(raw: dict, name: str) -> list[dict] | None:
    """Tool definitions of a row in OpenAI's form, or None when the row has none."""
    value = raw.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    value = _json_or_invalid(value, name, "bad_tools")
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise RowInvalid("bad_tools", name, f"field {name!r} is a {type(value).__name__}, expected a list of tool definitions")
    tools = []
    for k, tool in enumerate(value):
        at = f"{name}[{k}]"
        function = tool.get("function") if isinstance(tool, dict) and isinstance(tool.get("function"), dict) else tool
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"].strip():
            raise RowInvalid("bad_tools", at, f"{at} is not a tool definition with a function name")
        tools.append({"type": "function", "function": _json_value(function)})
    return tools or None


def _messages_from_prompt_completion(raw: dict, prompt_col: str, completion_col: str, notes: list[str]) -> list[dict]:
    prompt, completion = raw.get(prompt_col), raw.get(completion_col)
    if isinstance(prompt, list) or isinstance(completion, list):  # TRL's conversational prompt/completion
        return _messages_from_openai({"p": prompt}, "p", notes) + _messages_from_openai({"c": completion}, "c", notes)
    prompt = _required_text(raw, prompt_col, strip_check=True)
    completion = _required_text(raw, completion_col, strip_check=True)
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]


# ---------------------------------------------------------------- reading sources


def load_dataset_file(
    path_or_id: str | Path,
    *,
    fmt: str | None = None,
    mapping: dict | None = None,
    split: str | None = None,
    limit: int | None = None,
    prompts_only: bool = False,
) -> LoadedDataset:
    """Read, detect, normalise and validate. Raises DatasetLoadError when the source itself is unusable."""
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}")
    _columns(mapping)  # validate the mapping keys up front
    fmt = fmt or format_from_mapping(mapping)
    file_notes: list[str] = []
    source, records, hasher = _open_source(path_or_id, split, file_notes)
    report = ValidationReport()
    rows: list[dict] = []
    head: list[tuple[int, Any]] = []
    for index, record in records:
        if limit is not None and report.n_read + len(head) >= limit:
            break
        if fmt is None:  # buffer the first rows until the format is known
            head.append((index, record))
            if len(head) < DETECT_ROWS:
                continue
            fmt = _detect_head(head, mapping, source, prompts_only)
            for i, r in head:
                _accept(i, r, fmt, mapping, rows, report, prompts_only)
            head = []
            continue
        _accept(index, record, fmt, mapping, rows, report, prompts_only)
    if head:
        fmt = _detect_head(head, mapping, source, prompts_only)
        for i, r in head:
            _accept(i, r, fmt, mapping, rows, report, prompts_only)
    if fmt is None:
        raise DatasetLoadError(f"{source} has no rows")
    report.file_notes.extend(file_notes)
    columns = kept_columns(rows)
    return LoadedDataset(rows=rows, report=report, detected_format=fmt, source=source, source_hash=hasher(),
                         columns=columns, id_column=detect_id_column(rows, columns))


def _detect_head(head: list[tuple[int, Any]], mapping: dict | None, source: str, prompts_only: bool = False) -> str:
    parsed = [r for _, r in head if not isinstance(r, _BadJson)]
    if not parsed:
        raise DatasetLoadError(f"{source}: none of the first {len(head)} rows is valid JSON ({head[0][1].message})")
    try:
        return detect_dataset_format(parsed, mapping, prompts_only)
    except DatasetLoadError as exc:  # name the file
        raise DatasetLoadError(f"{source}: {exc}") from None


def _accept(index: int, record: Any, fmt: str, mapping: dict | None, rows: list, report: ValidationReport,
            prompts_only: bool = False) -> None:
    if isinstance(record, _BadJson):
        report.add_error(index, "bad_json", "", record.message)
        return
    notes: list[str] = []
    try:
        rows.append(normalise_row(record, fmt, mapping, prompts_only, notes))
    except RowInvalid as exc:
        report.add_error(index, exc.kind, exc.field, exc.message)
        return
    report.add_valid()
    for note in dict.fromkeys(notes):
        report.add_note(note)


def kept_columns(rows: Sequence[dict]) -> list[str]:
    """The source columns the rows carry beside the normalised keys, in first-seen order."""
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            if key not in NORMALISED_KEYS and key not in seen:
                seen[key] = None
    return list(seen)


def detect_id_column(rows: Sequence[dict], columns: Sequence[str]) -> str | None:
    """The first column among the usual id names (then any column ending in `id`) whose values are
    present on every row, scalar, and unique."""
    names = [c for c in ID_COLUMNS if c in columns] + [c for c in columns if c.lower().endswith("id") and c not in ID_COLUMNS]
    for name in names:
        seen = set()
        for row in rows:
            value = row.get(name)
            if value is None or isinstance(value, (dict, list, float, bool)) or value in seen:
                break
            seen.add(value)
        else:
            return name
    return None


@dataclass(frozen=True)
class _BadJson:
    message: str


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON (write null, or a number)")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    row = dict(pairs)
    if len(row) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"duplicate key {twice!r} in one object (which value is meant?)")
    return row


def loads_strict(data: str | bytes) -> Any:
    """json.loads as the standard reads JSON: no NaN / Infinity, no key twice in one object, and a ValueError
    (not a RecursionError) for nesting too deep to read. The one JSON reader of user files."""
    try:
        return json.loads(data, parse_constant=_no_constant, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise ValueError("nested too deeply (thousands of [ or {) to read") from None


# Signatures of files that are not text, whatever their name says.
_BINARY_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a zip archive"), (b"\x1f\x8b", "a gzip archive"), (b"%PDF", "a PDF"), (b"PAR1", "a Parquet file"),
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"\x7fELF", "a program"),
)


def text_encoding_problem(head: bytes) -> str | None:
    """Why the first bytes of a file that should be UTF-8 text are not, in words (None when they may be)."""
    if head.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return "the file is UTF-32 encoded; save it as UTF-8"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or (len(head) >= 4 and (head[1::2].count(0) > len(head) // 4
                                                                           or head[0::2].count(0) > len(head) // 4)):
        return "the file is UTF-16 encoded; save it as UTF-8"
    for signature, what in _BINARY_SIGNATURES:
        if head.startswith(signature):
            return f"this is {what}, not a text file"
    return None


NOT_UTF8 = "this file is not UTF-8 text — is it really a dataset?"
_UTF8_SNIFF = 1 << 16  # bytes decoded up front: random or binary bytes are named before any parser sees them


def _check_text_file(path: Path) -> None:
    with open(path, "rb") as handle:
        head = handle.read(_UTF8_SNIFF)
    problem = text_encoding_problem(head[:64])
    if problem:
        raise DatasetLoadError(f"{path}: {problem}")
    # Mostly undecodable: binary or random bytes, not a dataset in another encoding (a stray Latin-1 'é' is named by its line)
    undecodable = head.decode("utf-8", errors="replace").count("\ufffd") - head.count("\ufffd".encode())
    if undecodable > max(4, len(head) // 50):
        raise DatasetLoadError(f"{path}: {NOT_UTF8} ({undecodable} of its first {len(head):,} bytes are not UTF-8 text)")


def _utf8_error(path: Path, exc: UnicodeDecodeError) -> DatasetLoadError:
    """A decoding error as the line it is on (the reader only knows its buffer position)."""
    line = ""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as inner:
                line = f" on line {number} (byte {inner.start} of the line: {raw[inner.start:inner.start + 1]!r})"
                break
    return DatasetLoadError(f"{path}: not UTF-8 text{line or f' ({exc.reason})'}; save it as UTF-8")


def _open_source(path_or_id: str | Path, split: str | None, notes: list[str]):
    """(source label, iterator of (row index, record), function giving the source hash once read).
    Sentences about how the file was read go to `notes`."""
    text = str(path_or_id)
    if "\x00" in text:
        raise DatasetLoadError(f"{text!r}: a path cannot contain a NUL character")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
        raise DatasetLoadError(f"{text!r} is a URL: download the file and load it from disk, or give a Hugging Face dataset id (org/name)")
    path = Path(text).expanduser()
    if path.is_dir():
        refuse_links_outside(path, DatasetLoadError)
        if (path / "data.jsonl").is_file():
            return _open_file(path / "data.jsonl", notes)
        return _open_saved_dataset(path, split)
    if path.is_file():
        return _open_file(path, notes)
    if _looks_like_path(text):
        raise DatasetLoadError(f"no such file or folder: {path}")
    if _HUB_ID.match(text):
        return _open_hub(text, split)
    raise DatasetLoadError(f"{text!r} is neither an existing file or folder nor a Hugging Face dataset id")


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", ".", "~")) or os.sep in text.strip("/").split("/", 1)[-1] or Path(text).suffix.lower() in FILE_SUFFIXES


def _file_kind(path: Path) -> str:
    name = path.name.lower()
    for suffix, kind in FILE_SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    if name.endswith((".jsonl.gz", ".json.gz")):
        raise DatasetLoadError(f"{path}: compressed files are not supported, decompress it first")
    raise DatasetLoadError(f"{path}: unknown file type; expected one of {', '.join(sorted(FILE_SUFFIXES))}")


def _open_file(path: Path, notes: list[str]):
    kind = _file_kind(path)
    if kind != "parquet":
        _check_text_file(path)
    digest = hashlib.sha256()
    if kind == "jsonl":
        if _first_byte(path) == b"[":
            _hash_file(path, digest)
            return str(path), _read_jsonl_array(path, notes), digest.hexdigest
        return str(path), _read_jsonl(path, digest), digest.hexdigest
    _hash_file(path, digest)
    readers = {"json": _read_json, "csv": _read_csv, "parquet": _read_parquet}
    return str(path), readers[kind](path), digest.hexdigest


def _hash_file(path: Path, digest) -> None:
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def _read_jsonl(path: Path, digest) -> Iterator[tuple[int, Any]]:
    """One line at a time; the hash is fed the same bytes, so the file is read once."""
    index = 0
    with open(path, "rb") as handle:
        for line_number, line in enumerate(handle, start=1):
            digest.update(line)
            if not line.strip():
                continue
            try:
                record = loads_strict(line)
            except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
                record = _BadJson(f"bad JSON on line {line_number}: {exc}")
            yield index, record
            index += 1


def _first_byte(path: Path) -> bytes:
    """The first byte that is not whitespace (or a UTF-8 byte-order mark)."""
    with open(path, "rb") as handle:
        while block := handle.read(1 << 16):
            stripped = block.lstrip(b" \t\r\n\xef\xbb\xbf")
            if stripped:
                return stripped[:1]
    return b""


def _read_jsonl_array(path: Path, notes: list[str]) -> Iterator[tuple[int, Any]]:
    """A .jsonl file that holds one JSON array (a common export mistake): read it as that array, and say so."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            data = loads_strict(handle.read())
    except (ValueError, UnicodeDecodeError) as exc:
        with open(path, encoding="utf-8-sig", errors="replace") as handle:
            first_line = handle.readline()
        if isinstance(_parse_json_list(first_line), list):
            raise DatasetLoadError(f"{path}: every line is a JSON array, but a .jsonl file needs one JSON object per line "
                                   '(for example {"messages": [...]})') from exc
        raise DatasetLoadError(f"{path}: the file starts with '[' like one JSON array, but it is not valid JSON ({exc}); "
                               "fix the array or write one JSON object per line") from exc
    notes.append(f"{path.name} holds one JSON array rather than one object per line: it was read as that array")
    yield from enumerate(data)


def _read_json(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        with open(path, encoding="utf-8-sig") as handle:
            data = loads_strict(handle.read())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DatasetLoadError(f"{path}: not valid JSON ({exc}); for one object per line use a .jsonl file") from exc
    if isinstance(data, dict):
        lists = {k: v for k, v in data.items() if isinstance(v, list)}
        if len(lists) == 1 and len(data) == 1 and all(isinstance(r, dict) for r in next(iter(lists.values()))[:5]):
            data = next(iter(lists.values()))  # {"data": [...]} wrapper
        elif lists and len(lists) == len(data) and len({len(v) for v in lists.values()}) == 1:
            yield from _iter_columns(data)
            return
        else:
            raise DatasetLoadError(f"{path}: a JSON object must be columns (equal-length lists), got keys {sorted(data)[:10]}")
    if not isinstance(data, list):
        raise DatasetLoadError(f"{path}: expected a JSON array of rows, got a {type(data).__name__}")
    yield from enumerate(data)


def _iter_columns(columns: dict[str, list]) -> Iterator[tuple[int, dict]]:
    names = list(columns)
    n = len(columns[names[0]])
    for i in range(n):
        yield i, {name: columns[name][i] for name in names}


def _read_csv(path: Path) -> Iterator[tuple[int, dict]]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            if not reader.fieldnames:
                raise DatasetLoadError(f"{path}: CSV file has no header row")
            for i, record in enumerate(reader):
                yield i, {k: v for k, v in record.items() if k is not None}
        except UnicodeDecodeError as exc:
            raise _utf8_error(path, exc) from None
        except csv.Error as exc:
            raise DatasetLoadError(f"{path}, line {reader.line_num}: not readable as CSV ({exc})") from None


def _read_parquet(path: Path) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DatasetLoadError(f"{path}: not a readable Parquet file ({exc})") from exc
    index = 0
    for batch in parquet.iter_batches(batch_size=4096):
        for record in batch.to_pylist():
            yield index, record
            index += 1


def _iter_hf_dataset(dataset) -> Iterator[tuple[int, dict]]:
    for i, record in enumerate(dataset):
        yield i, record


def _pick_split(dataset, split: str | None, label: str):
    from datasets import DatasetDict

    if not isinstance(dataset, DatasetDict):
        return dataset
    splits = list(dataset)
    if split is None:
        if len(splits) == 1 or "train" in splits:
            split = "train" if "train" in splits else splits[0]
        else:
            raise DatasetLoadError(f"{label} has splits {splits}; choose one with split=")
    if split not in dataset:
        raise DatasetLoadError(f"{label} has no split {split!r}; it has {splits}")
    return dataset[split]


def _open_saved_dataset(path: Path, split: str | None):
    if not any((path / name).exists() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
        raise DatasetLoadError(f"{path} is a folder but neither a saved `datasets` folder nor a workspace dataset (data.jsonl)")
    from datasets import load_from_disk

    try:
        dataset = _pick_split(load_from_disk(str(path)), split, str(path))
    except DatasetLoadError:
        raise
    except Exception as exc:
        raise DatasetLoadError(f"{path}: could not load the saved dataset ({exc})") from exc
    digest = hashlib.sha256()
    for name in sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()):
        digest.update(name.encode())
        _hash_file(path / name, digest)
    return str(path), _iter_hf_dataset(dataset), digest.hexdigest


def _open_hub(dataset_id: str, split: str | None):
    split = split or "train"
    label = f"{dataset_id} [{split}]"
    offline = (os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
               or os.environ.get("HF_DATASETS_OFFLINE", "").lower() in ("1", "true", "yes"))
    if not offline and not hub_reachable(timeout=3.0):
        raise DatasetLoadError(f"cannot download {dataset_id!r}: the Hugging Face Hub is unreachable from this machine; load a local file "
                               "instead")
    from datasets import load_dataset

    try:
        dataset = load_dataset(dataset_id, split=split)
    except Exception as exc:
        why = "offline mode and not in the local cache" if offline else str(exc).splitlines()[0][:300]
        raise DatasetLoadError(f"could not load Hub dataset {label}: {why}") from exc
    fingerprint = getattr(dataset, "_fingerprint", "") or ""
    digest = hashlib.sha256(f"{dataset_id}:{split}:{fingerprint}".encode())
    return f"hub:{label}", _iter_hf_dataset(dataset), digest.hexdigest


def load_uploaded(filename: str, data: bytes, **kwargs: Any) -> LoadedDataset:
    """A file the user uploaded in the browser: read from a temporary copy that keeps its file type."""
    name = upload_name(filename)
    suffix = "".join(Path(name).suffixes[-2:])
    if not suffix:
        raise DatasetLoadError(f"{name}: unknown file type; expected one of {', '.join(sorted(FILE_SUFFIXES))}")
    with tempfile.TemporaryDirectory(prefix="upload-") as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            loaded = load_dataset_file(path, **kwargs)
        except DatasetLoadError as exc:  # name the file the user uploaded, not the temporary copy
            raise DatasetLoadError(str(exc).replace(str(path), name)) from None
    loaded.source = f"upload:{filename}"
    return loaded


def upload_name(filename: str) -> str:
    """The last part of the name a browser sent (a name, never a path: '/' and '\\' both separate), NUL-free."""
    return Path(str(filename).replace("\\", "/").replace("\x00", "-")).name or "upload"


def save_upload(filename: str, data: bytes, digest: str | None = None) -> Path:
    """Keep an uploaded file in the workspace (``uploads/<sha256 prefix>-<name>``), once per content, so a job
    can read the very bytes the page loaded. `digest`: the bytes' sha256 when the caller has it already."""
    digest = (digest or hashlib.sha256(data).hexdigest())[:16]
    name = upload_name(filename)
    suffix = "".join(Path(name).suffixes[-2:]).lower() or ".jsonl"
    suffix = "." + safe_name(suffix.lstrip("."), default="jsonl", max_len=16)
    target = subdir("uploads") / f"{digest}-{safe_name(name[: len(name) - len(suffix)] or 'upload', max_len=60)}{suffix}"
    if not target.is_file():
        atomic_write_bytes(target, data)
    return target


# ---------------------------------------------------------------- workspace and demo


def list_workspace_datasets() -> list[str]:
    """Names of the curated datasets saved in the workspace (folders holding data.jsonl)."""
    root = datasets_dir()
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "data.jsonl").is_file())


def workspace_dataset_path(name: str) -> Path:
    return datasets_dir() / name / "data.jsonl"


def assets_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "assets"


def resolve_data_path(text: str) -> Path:
    """A dataset path as typed: absolute, relative to the working folder, or relative to the repository (the demo)."""
    path = Path(str(text)).expanduser()
    if path.is_absolute() or path.exists():
        return path
    in_repo = REPO_ROOT / path
    return in_repo if in_repo.exists() else path


def demo_dataset_path(split: str = "train") -> Path:
    """The shipped support-ticket → JSON demo task: split 'train' or 'eval' (SFT rows), 'pairs_train' or 'pairs_eval' (preference pairs)."""
    if split not in DEMO_SPLITS:
        raise ValueError(f"demo split must be one of {DEMO_SPLITS}, got {split!r}")
    return assets_dir() / "demo" / f"{split}.jsonl"


def write_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    """Normalised rows to a JSONL file, atomically."""
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
