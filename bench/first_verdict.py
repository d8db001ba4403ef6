"""A new user's first hour, timed in the browser (issue 29): the app started on a fresh workspace, then clicked as a new
user would with every default left as it is — Train page, Start training, wait; Evaluate it, Run evaluation, wait — up to
the forgetting report's verdict. bench/demo_run.py times the same two jobs headless; this adds the server, the pages and
the clicks (at machine speed: a person's reading time between clicks is not in it).

The workspace is new but shares the converted embedded model (what `make run` prepares before it serves the app), so
the figure is from `streamlit run` to the verdict on an installed checkout; a fresh machine adds `make run`'s install.

    .venv/bin/python bench/first_verdict.py      # last line is JSON; needs /usr/bin/chromium (make test installs it)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from e2e.conftest import CHROMIUM, CHROMIUM_ARGS, serve_app  # noqa: E402
from steps import go, settle, wait_until_succeeded  # noqa: E402

WAIT_MS = 1_800_000


def main() -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    from playwright.sync_api import expect, sync_playwright

    from core.workspace import models_dir

    home = Path(tempfile.mkdtemp(prefix="workbench-first-verdict-"))
    (home / "models").symlink_to(models_dir(), target_is_directory=True)
    marks: dict[str, float] = {}
    started = time.perf_counter()

    def mark(name: str) -> None:
        marks[name] = round(time.perf_counter() - started, 1)
        print(f"{marks[name]:7.1f} s  {name}", flush=True)

    with serve_app(home) as url, sync_playwright() as pw:  # the browser journeys' server: its jobs end with it
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.goto(url)
        settle(page)
        mark("first page shown")
        go(page, "Train")
        page.get_by_role("button", name=re.compile("Start training")).click()
        settle(page)
        mark("Start training clicked")
        wait_until_succeeded(page, timeout=WAIT_MS)
        settle(page)
        mark("training succeeded")
        page.get_by_role("button", name=re.compile("Evaluate it")).click()
        settle(page)
        page.get_by_role("button", name=re.compile("Run evaluation")).click()
        settle(page)
        mark("Run evaluation clicked")
        expect(page.get_by_text(re.compile(r"task rows · .* general texts"))).to_be_visible(timeout=WAIT_MS)
        mark("verdict shown")
        browser.close()
    report = json.loads(max((home / "runs").glob("*-evaluate/report.json")).read_text())
    verdict = report["verdicts"][0]
    result = {"seconds_to_verdict": marks["verdict shown"], **{f"at_{k.replace(' ', '_')}_s": v for k, v in marks.items()},
              "verdict": verdict["verdict"], "headline": verdict.get("headline", ""),
              "json_valid_base_pct": report["models"][0]["metrics"]["json_valid"]["value"],
              "json_valid_tuned_pct": report["models"][1]["metrics"]["json_valid"]["value"],
              "load_avg_1m": round(os.getloadavg()[0], 2)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
