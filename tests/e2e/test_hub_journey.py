"""The Hub path in a real browser: pick a Hub id in the sidebar (its config alone, no weights), see the Budget page
work from that, start the download job from the sidebar and watch it finish — against a local HF_ENDPOINT."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

sys.path.insert(0, str(Path(__file__).parent))
from steps import go, settle  # noqa: E402 - the journey's page helpers

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
HUB_REPO = "tiny-org/tiny-llama"


def test_a_hub_model_from_its_config_then_its_download(page: Page, hub_app_url: str, hub):
    page.goto(hub_app_url)
    settle(page)
    sidebar = page.locator("[data-testid='stSidebar']")
    sidebar.get_by_text("Change model").click()
    for attempt in range(5):  # a rerun of the page closes an open list: open it again
        sidebar.get_by_label("Source").click()
        option = page.get_by_role("option", name="Hugging Face Hub id")
        try:
            option.wait_for(state="visible", timeout=10_000)
            option.click()
            break
        except Exception:  # noqa: BLE001
            page.keyboard.press("Escape")
            if attempt == 4:
                raise
    settle(page)
    box = sidebar.get_by_label("Path or id")
    box.fill(HUB_REPO)
    box.press("Enter")
    settle(page)
    sidebar.get_by_role("button", name="Use this model").click()
    settle(page)
    expect(sidebar.get_by_text(re.compile("Weights: not downloaded yet"))).to_be_visible()
    assert not hub.fetched("model.safetensors"), "choosing a Hub model reads its config, never its weights"

    go(page, "Budget")
    expect(page.get_by_text(re.compile(rf"{HUB_REPO} · 0\.0\d+ B parameters"))).to_be_visible()

    sidebar.get_by_role("button", name=re.compile("Download weights")).click()
    settle(page)
    for _ in range(60):  # each page switch reruns the sidebar, which reads the download run's state
        if sidebar.get_by_text("Weights: downloaded (Hub cache)").count():
            break
        page.wait_for_timeout(1000)
        go(page, "Budget" if _ % 2 else "Decide")
    expect(sidebar.get_by_text("Weights: downloaded (Hub cache)")).to_be_visible()
    assert hub.fetched("model.safetensors")
