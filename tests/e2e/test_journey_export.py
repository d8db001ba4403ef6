"""The export journey in a real browser (issue 13): a finished train run → GGUF F16 / Q8_0 + Modelfile → chat with it in llama.cpp."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

sys.path.insert(0, str(Path(__file__).parent))
from steps import ask_both_columns, go, settle, snapshot, wait_until_succeeded  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _finished_train_run(home) -> str:
    """A run of the embedded model the browser journey trained in this worker's home; else a 2-step one started
    headless like the Start button. A distilled student trained in the same home (another journey file) is not taken:
    which files share a worker depends on xdist's scheduling."""
    import os

    from core import runs
    from core.train.spec import TrainSpec

    previous = os.environ.get("WORKBENCH_HOME")
    os.environ["WORKBENCH_HOME"] = str(home)
    try:
        done = [r for r in runs.list_runs("train")
                if r.status.state == "succeeded" and (r.spec.get("model") or {}).get("kind") == "embedded"]
        if done:
            return done[0].run_id
        run_dir = runs.create_run(TrainSpec(max_steps=2, batch_size=4, max_length=256, eval_fraction=0.0, eval_on_start=False))
        runs.launch(run_dir)
        assert runs.wait(run_dir, timeout=900).state == "succeeded"
        return run_dir.name
    finally:
        os.environ["WORKBENCH_HOME"] = previous or ""


def test_export_demo_run_to_gguf_then_chat_with_it(page: Page, app_url: str, e2e_home):
    """Train page → Export it → GGUF F16 / Q8_0 + Modelfile, every check passed → Chat: the GGUF in llama.cpp beside the adapter."""
    run_id = _finished_train_run(e2e_home)
    page.goto(f"{app_url}/train?run={run_id}")  # a fresh browser session: the run is opened by its link
    settle(page)
    page.get_by_role("button", name=re.compile("Export it")).click()
    settle(page)
    expect(page.locator("h1").first).to_contain_text("Export")
    page.get_by_role("button", name="Export", exact=True).click()
    settle(page)
    wait_until_succeeded(page)
    settle(page)
    checks = page.locator("[data-testid='stMetric']").filter(has_text="Checks")
    expect(checks).to_contain_text(re.compile(r"passed · 0 failed"))
    expect(page.get_by_text("⬇️ Modelfile")).to_be_visible()
    snapshot(page, "export")

    page.get_by_role("button", name=re.compile("Chat with it \\(llama.cpp\\)")).click()
    settle(page)
    expect(page.get_by_role("combobox", name="Variant").nth(1)).to_have_value("GGUF export (llama.cpp)")
    expect(page.get_by_text("backend: llama.cpp")).to_be_visible()
    texts = ask_both_columns(page, "What is the capital of France?")
    assert all(texts), texts
    expect(page.get_by_text(re.compile(r"tok/s"))).to_have_count(2)
    snapshot(page, "chat-gguf")

    go(page, "Runs")
    expect(page.locator("[data-testid='stGraphVizChart']").first).to_be_visible()
