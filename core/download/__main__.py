"""`python -m core.download org/name [--revision R] [--trust-remote-code]`: the download job, headless."""
from __future__ import annotations

import argparse
import sys

from core.download.spec import DownloadSpec
from core.runs import create_run
from core.runs.worker import main as worker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Download a Hub model's weights into the Hub cache (resumable).")
    parser.add_argument("repo_id")
    parser.add_argument("--revision", default="")
    parser.add_argument("--trust-remote-code", action="store_true", help="also fetch the repository's *.py files")
    args = parser.parse_args(argv)

    model = {"kind": "hub", "ref": args.repo_id, "revision": args.revision, "trust_remote_code": args.trust_remote_code}
    run_dir = create_run(DownloadSpec(model={k: v for k, v in model.items() if v}))
    print(f"run folder: {run_dir}", file=sys.stderr)
    return worker([str(run_dir)])


if __name__ == "__main__":
    raise SystemExit(main())
