"""Preference tuning in a real browser (issue 27): a DPO run continues an SFT run of the embedded model on the shipped
demo pairs, from the Train page's form, and the run's page charts its rewards / margins / accuracies beside the loss
with the reading guide."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

sys.path.insert(0, str(Path(__file__).parent))
from steps import choose, fill, finished_train_run, go, settle, snapshot, wait_until_succeeded  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.mark.timeout(1800)
def test_dpo_continues_an_sft_run_and_charts_its_preference_metrics(page: Page, app_url: str, e2e_home):
    sft_run = finished_train_run(e2e_home)
    page.goto(app_url)
    settle(page)
    go(page, "Train")
    choose(page, "Training data", re.compile("Demo: support ticket pairs"))
    choose(page, "objective", "dpo")
    choose(page, "Continue from run …", re.compile(re.escape(sft_run)))
    fill(page, "spinbutton", "max steps", 2)
    fill(page, "spinbutton", "batch size", 1)
    fill(page, "spinbutton", "max length", 256)
    fill(page, "spinbutton", "eval fraction", 0.0)  # the charts and the guide read the train rows; eval is the unit tests'
    page.get_by_role("button", name=re.compile("Start training")).click()
    settle(page)
    wait_until_succeeded(page)
    settle(page)
    expect(page.get_by_text("Preference metrics", exact=False).first).to_be_visible()
    expect(page.get_by_text("Reading guide").first).to_be_visible()
    expect(page.get_by_text(re.compile(f"continues run.*{re.escape(sft_run)}")).first).to_be_visible()
    assert page.locator("[data-testid='stPlotlyChart']").count() >= 3, "the loss chart and the preference charts"
    snapshot(page, "train_dpo")
