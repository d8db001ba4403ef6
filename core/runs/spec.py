"""Job specs: a dataclass whose fields carry help text and limits is the YAML file, the CLI and the form.

Each job kind (core.runs.jobs.JOBS) defines its own dataclass; this module gives them one way to declare a
field's help text, form group and limits (`meta`), to round-trip to `spec.yaml`, to validate unknown keys
with a message naming the key, and to describe their fields for a generated form (`spec_fields`).

    method: str = field(default="lora", metadata=meta("What is trained.", "method", choices=METHODS))

Choices come from the registry that defines them (a tuple, or a dict whose keys are the names), never a
copied `Literal[...]` list.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, get_args, get_origin

import yaml

from core.runs.status import SPEC_FILE
from core.workspace import atomic_write_text


@dataclass(frozen=True)
class FieldInfo:
    name: str
    type: str  # "int" | "float" | "bool" | "str" | "list" | "dict"
    default: Any
    help: str
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    group: str = "general"
    advanced: bool = False


_META_KEYS = ("help", "group", "advanced", "choices", "min", "max")


def meta(help: str, group: str = "general", *, advanced: bool = False, choices: Any = None,
         min: float | None = None, max: float | None = None) -> dict:  # noqa: A002 - the names the form shows
    """Field metadata for every spec dataclass: help text, form group, advanced flag, choices and limits.

    `choices` is the registry of allowed values (a tuple / list, or a mapping whose keys are the names);
    `check_limits` enforces it and the generated form shows it as a select box."""
    if not help or not help.strip():
        raise ValueError("meta: every spec field needs its help text")
    data: dict[str, Any] = {"help": help, "group": group, "advanced": advanced}
    if choices is not None:
        data["choices"] = tuple(choices)
    if min is not None:
        data["min"] = min
    if max is not None:
        data["max"] = max
    return data


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return _type_name(args[0]) if args else "str"
    if origin is typing.Literal:
        return _type_name(type(get_args(annotation)[0]))
    if origin in (list, tuple) or annotation in (list, tuple):
        return "list"
    if origin is dict or annotation is dict:
        return "dict"
    return {int: "int", float: "float", bool: "bool", str: "str"}.get(annotation, "str")


def spec_fields(cls: type) -> list[FieldInfo]:
    hints = typing.get_type_hints(cls)
    infos = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_"):
            continue
        data = f.metadata or {}
        unknown = sorted(set(data) - set(_META_KEYS))
        if unknown:
            raise TypeError(f"{cls.__name__}.{f.name}: unknown metadata {', '.join(unknown)} (use core.runs.spec.meta)")
        default = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING else None)
        choices = data.get("choices")
        infos.append(
            FieldInfo(
                name=f.name,
                type=_type_name(hints[f.name]),
                default=default,
                help=data.get("help", ""),
                choices=tuple(choices) if choices else None,
                min=data.get("min"),
                max=data.get("max"),
                group=data.get("group", "general"),
                advanced=data.get("advanced", False),
            )
        )
    return infos


def check_limits(spec: Any) -> None:
    """Validate choices and numeric limits declared in field metadata; raise ValueError naming the field."""
    for info in spec_fields(type(spec)):
        value = getattr(spec, info.name)
        if info.choices and value not in info.choices:
            raise ValueError(f"{info.name}: {value!r} is not one of {', '.join(map(str, info.choices))}")
        if info.type in ("int", "float") and value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{info.name}: expected a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{info.name}: {value} is not a finite number")
            if info.min is not None and value < info.min:
                raise ValueError(f"{info.name}: {value} is below the minimum {info.min}")
            if info.max is not None and value > info.max:
                raise ValueError(f"{info.name}: {value} is above the maximum {info.max}")


def spec_to_dict(spec: Any) -> dict:
    data = dataclasses.asdict(spec)
    kind = getattr(type(spec), "kind", None)
    return {"kind": kind, **data} if kind else data


def spec_from_dict(cls: type, data: dict) -> Any:
    data = {k: v for k, v in dict(data or {}).items() if k != "kind"}
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown field(s) in {cls.__name__}: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    hints = typing.get_type_hints(cls)
    coerced = {k: _coerce(k, v, hints[k]) for k, v in data.items()}
    return cls(**coerced)


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """YAML and form widgets give '1e-4' strings and ints where floats belong: convert, or say which field."""
    kind = _type_name(annotation)
    if value is None:
        return None
    try:
        if kind == "float" and not isinstance(value, bool):
            return float(value)
        if kind == "int" and not isinstance(value, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind == "bool" and isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        if kind == "list" and isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if kind == "list" and isinstance(value, tuple):
            return list(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected {kind}, got {value!r}") from None
    return value


class RunSpec:
    """What every job's spec dataclass shares, as peft's PeftConfigMixin and trl's configs share theirs: it is read
    from and written to spec.yaml (`from_dict` / `to_dict`, unknown fields and wrong types refused by name), and its
    fields' limits are checked when it is made. A subclass is a @dataclass with a `kind` ClassVar (its JobKind's
    name); its own __post_init__ calls super().__post_init__() first, then checks what crosses fields."""

    kind: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_limits(self)

    def to_dict(self) -> dict:
        return spec_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Any:
        return spec_from_dict(cls, data)


@dataclass
class DatasetJobSpec(RunSpec):
    """The dataset reference every job over one dataset's rows shares (curation, answer loss): the rows are numbered
    under `dataset_sha256`, so a job refuses a file that changed since the page showed it."""

    dataset: str = field(default="", metadata=meta("The dataset: a file, a saved `datasets` folder, a workspace dataset or a Hub id.",
                                                   "data"))
    split: str = field(default="", metadata=meta("Split of a Hub dataset or saved DatasetDict (empty: train).", "data", advanced=True))
    dataset_sha256: str = field(default="", metadata=meta("The source hash the rows were numbered under; the job refuses a changed file.",
                                                          "data", advanced=True))


def spec_to_yaml(spec: Any) -> str:
    return yaml.safe_dump(spec_to_dict(spec), sort_keys=False, allow_unicode=True)


def write_spec(run_dir: str | Path, spec: Any) -> Path:
    return atomic_write_text(Path(run_dir) / SPEC_FILE, spec_to_yaml(spec))


YAML_MAX_NODES = 100_000  # a spec has hundreds; aliases that expand past this are a "billion laughs" bomb


class _StrictLoader(yaml.SafeLoader):
    """safe_load (no Python tags) that also refuses a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden by the keys beside it
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(text: str, where: str = "YAML") -> Any:
    """yaml.safe_load for files a user hands in: Python tags and duplicate keys are YAMLErrors, and aliases that would
    expand past YAML_MAX_NODES are refused (ValueError naming `where`) before anything is built."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        sizes: dict[int, int] = {}

        def size(n) -> int:  # nodes after expanding aliases, each shared node counted once per use, computed once
            if id(n) not in sizes:
                sizes[id(n)] = 0  # a recursive alias counts as one
                children = [c for pair in n.value for c in pair] if isinstance(n, yaml.MappingNode) else \
                    n.value if isinstance(n, yaml.SequenceNode) else []
                sizes[id(n)] = min(1 + sum(size(c) for c in children), YAML_MAX_NODES + 1)
            return sizes[id(n)]

        if size(node) > YAML_MAX_NODES:
            raise ValueError(f"{where}: its aliases (*name) would expand to more than {YAML_MAX_NODES:,} values; write the values out")
        return loader.construct_document(node)
    except RecursionError:
        raise ValueError(f"{where}: nested too deeply to read") from None
    finally:
        loader.dispose()
