"""The export journey in a real browser (issue 13): a finished train run → GGUF F16 / Q8_0 + Modelfile → chat with it in llama.cpp."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

sys.path.insert(0, str(Path(__file__).parent))
from steps import ask_both_columns, finished_train_run, go, settle, snapshot, wait_until_succeeded  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_export_demo_run_to_gguf_then_chat_with_it(page: Page, app_url: str, e2e_home):
    """Train page → Export it → GGUF F16 / Q8_0 + Modelfile, every check passed → Chat: the GGUF in llama.cpp beside the adapter."""
    run_id = finished_train_run(e2e_home)
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
    # both columns finished with their stats (ask_both_columns); a rate needs two tokens, and a 2-step adapter's GGUF
    # may answer in one under the training system prompt Chat now pre-fills: at least the torch column shows its rate
    expect(page.get_by_text(re.compile(r"tok/s")).first).to_be_visible()
    snapshot(page, "chat-gguf")

    go(page, "Runs")
    expect(page.locator("[data-testid='stGraphVizChart']").first).to_be_visible()
