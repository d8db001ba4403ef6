"""`python -m core.train [spec.yaml] [--field value ...]`: create a training run and run it here, in the foreground.

Every TrainSpec field is an option (help text and limits from the dataclass). Without a spec file the
defaults are used: a LoRA of the embedded model on the demo data. `--dry-run` prints the spec YAML and
exits. A run folder can also be (re)started with `python -m core.runs.worker <run_dir>`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from core.models import ModelSource
from core.runs import create_run
from core.runs.spec import spec_fields, spec_to_yaml
from core.runs.worker import main as run_worker
from core.train.spec import TrainSpec


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", nargs="?", type=Path, help="a spec.yaml (kind: train); options below override its fields")
    parser.add_argument("--dry-run", action="store_true", help="print the resulting spec YAML and exit")
    for info in spec_fields(TrainSpec):
        text = info.help + (f" [default: {info.default}]" if info.default not in ("", None) else "")
        if info.min is not None or info.max is not None:
            text += f" (range {info.min if info.min is not None else '-inf'}..{info.max if info.max is not None else 'inf'})"
        flag = f"--{info.name}"
        if info.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif info.type == "dict":
            parser.add_argument(flag, default=None, metavar="MODEL",
                                help=text + " On the command line: 'embedded', a folder, a .gguf file or a Hub id.")
        else:
            parser.add_argument(flag, default=None, choices=info.choices, metavar=None if info.choices else info.type.upper(), help=text)
    return parser


def spec_from_args(args: argparse.Namespace) -> TrainSpec:
    data = {}
    if args.spec:
        loaded = yaml.safe_load(args.spec.read_text(encoding="utf-8")) or {}
        if loaded.get("kind", "train") != "train":
            raise ValueError(f"{args.spec}: kind is {loaded.get('kind')!r}, expected 'train'")
        data.update(loaded)
    for info in spec_fields(TrainSpec):
        value = getattr(args, info.name)
        if value is None:
            continue
        data[info.name] = ModelSource.parse(value).as_dict() if info.type == "dict" else value
    return TrainSpec.from_dict(data)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        spec = spec_from_args(args)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(spec_to_yaml(spec), end="")
        return 0
    run_dir = create_run(spec)
    print(f"run folder: {run_dir}", file=sys.stderr)
    return run_worker([str(run_dir)])


if __name__ == "__main__":
    sys.exit(main())
