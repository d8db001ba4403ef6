"""GRPO in a real browser (issue 28 item 4): the Train form's objective grpo on the embedded model and the demo tickets
(2 steps, a group of 2, 16-token completions, the default JSON-valid + urgency rewards), and the run's page charts its
rewards beside the loss with the sampled completions and their rewards."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

sys.path.insert(0, str(Path(__file__).parent))
from steps import choose, fill, go, settle, snapshot, wait_until_succeeded  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.mark.timeout(600)
def test_grpo_run_charts_its_rewards_and_sampled_completions(page: Page, app_url: str):
    page.goto(app_url)
    settle(page)
    go(page, "Train")
    choose(page, "objective", "grpo")
    fill(page, "spinbutton", "max steps", 2)
    fill(page, "spinbutton", "batch size", 2)
    fill(page, "spinbutton", "num generations", 2)
    fill(page, "spinbutton", "max completion length", 16)
    fill(page, "spinbutton", "max length", 256)
    fill(page, "spinbutton", "eval fraction", 0.0)
    page.get_by_role("button", name=re.compile("Start training")).click()
    settle(page)
    wait_until_succeeded(page)
    settle(page)
    expect(page.get_by_text("GRPO metrics", exact=False).first).to_be_visible()
    expect(page.get_by_text("Sampled completions", exact=False).first).to_be_visible()
    assert page.locator("[data-testid='stPlotlyChart']").count() >= 5, "the loss chart and GRPO's reward charts"
    snapshot(page, "train_grpo")
