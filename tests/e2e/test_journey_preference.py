"""Preference tuning in a real browser (issue 27): a DPO run continues an SFT run of the embedded model on the shipped
demo pairs, from the Train page's form, and the run's page charts its rewards / margins / accuracies beside the loss
with the reading guide. The blind arena (issue 28 item 2): three votes on the Chat page become a dataset the Train page
offers."""
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


@pytest.mark.timeout(600)
def test_three_arena_votes_become_a_dataset_on_the_train_page(page: Page, app_url: str):
    page.goto(app_url)
    settle(page)
    go(page, "Chat")
    page.get_by_text("Arena (blind A / B)").click()
    settle(page)
    page.get_by_text("Sampling settings").click()
    fill(page, "spinbutton", "Max new tokens", 4)  # short answers: the votes, not the text, are under test
    temperature = page.locator("[data-testid='stSlider']").filter(has_text="Temperature").get_by_role("slider")
    temperature.focus()
    temperature.press("End")  # sampled: one model on both sides gives two different answers (each side has its own seed)
    settle(page)
    fill(page, "textbox", "Arena dataset name", "journey")
    for n, vote in enumerate(("A is better", "B is better", "Tie")):
        box = page.get_by_placeholder("Ask both, blind…")
        box.fill(f"Name a colour, please ({n}).")
        box.press("Enter")
        button = page.get_by_role("button", name=vote)
        expect(button).to_be_enabled(timeout=120_000)
        expect(page.get_by_text(re.compile(r"^A was "))).to_have_count(0)  # blind until the vote
        button.click()
        settle(page)
        expect(page.get_by_text(re.compile(r"^A was ")).first).to_be_visible()
    expect(page.get_by_text(re.compile(r"2 pairs .* 1 tie and 0 both-bad votes")).first).to_be_visible()
    snapshot(page, "chat_arena")
    go(page, "Train")
    choose(page, "Training data", "Workspace: arena-journey")
