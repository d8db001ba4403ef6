"""Chat speed as a user sees it: `streamlit run app.py` driven by Debian's Chromium, two columns, two prompts.

bench/models_chat.py measures generation alone; this adds everything the page does around it (the server, the
fragment that polls the answer buffer, the browser). It reads the stats line under each answer
("N tokens · first token X s · Y s total · Z tok/s") and prints them with the wall time per prompt.

    .venv/bin/python bench/chat_in_browser.py      # last line is JSON; needs /usr/bin/chromium (make test installs it)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from e2e.conftest import CHROMIUM, CHROMIUM_ARGS, _free_port, _wait_healthy  # noqa: E402

PROMPTS = ("Write a short poem about the sea.", "Explain what a neural network is in three sentences.")
COLUMNS = 2  # the Chat page's default
STATS = re.compile(r"(\d+) tokens · first token ([\d.]+) s · ([\d.]+) s total · ([\d.]+) tok/s")


def main() -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    from playwright.sync_api import expect, sync_playwright

    from core.workspace import models_dir

    home = Path(tempfile.mkdtemp(prefix="workbench-chat-bench-"))
    (home / "models").symlink_to(models_dir(), target_is_directory=True)  # reuse the converted embedded model
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.address", "127.0.0.1", "--server.port", str(port)],
        cwd=ROOT, env={**os.environ, "WORKBENCH_HOME": str(home), "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    walls = []
    try:
        _wait_healthy(url, server)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(f"{url}/chat")
            expect(page.get_by_placeholder("Ask all columns…")).to_be_visible(timeout=120_000)
            stats = page.get_by_text(STATS)
            for i, prompt in enumerate(PROMPTS, start=1):
                box = page.get_by_placeholder("Ask all columns…")
                box.fill(prompt)
                started = time.perf_counter()
                box.press("Enter")
                expect(stats).to_have_count(COLUMNS * i, timeout=600_000)
                walls.append(round(time.perf_counter() - started, 1))
                print(f"prompt {i}: both columns answered in {walls[-1]} s", flush=True)
            lines = stats.all_inner_texts()  # column by column, each column's answers in order
            browser.close()
    finally:
        server.kill()
    answers = []
    for n, line in enumerate(lines):
        tokens, ttft, total, rate = STATS.search(line).groups()
        answers.append({"column": n // len(PROMPTS) + 1, "prompt": n % len(PROMPTS) + 1, "tokens": int(tokens),
                        "first_token_s": float(ttft), "total_s": float(total), "tokens_per_s": float(rate)})
        print(f"column {answers[-1]['column']}, prompt {answers[-1]['prompt']}: {line}")
    rates = [a["tokens_per_s"] for a in answers]
    print(json.dumps({"wall_s_per_prompt": walls, "answers": answers, "min_tokens_per_s": min(rates), "max_tokens_per_s": max(rates)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
