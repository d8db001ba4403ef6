"""The main journey in a real browser (Debian Chromium) against `streamlit run app.py` on the embedded model:
every page opens; chat streams two answers; curate the demo data and inspect its mask; train a short LoRA
(watching the loss chart grow), evaluate it against the base, chat with it and merge it back toward its base.
Each test drives one browser session, switching pages through the sidebar so session state carries over.
The journey's later branches (export, distillation, RAG / RAFT) are test_journey_*.py: a file runs on one xdist
worker, so apart they can run beside this one."""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

sys.path.insert(0, str(Path(__file__).parent))
from steps import ask_both_columns, fill, finished, go, settle, snapshot, wait_until_succeeded  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TRAIN_STEPS = 6
# How many points the Train page's loss chart (the first plotly chart) has on its "train loss" trace.
TRAIN_LOSS_POINTS = """() => {
  const plot = document.querySelector("[data-testid='stPlotlyChart'] .js-plotly-plot");
  const trace = plot && plot.data ? plot.data.find(t => t.name === "train loss") : null;
  return trace ? trace.x.length : 0;
}"""


def test_every_page_opens(page: Page, app_url: str):
    page.goto(app_url)
    settle(page)
    for title in ("Decide", "Budget", "Data", "Template", "RAG", "Train", "Compare", "Evaluate", "Chat", "Rewards", "Merge", "Prune",
                  "Distill", "Runs", "Export"):
        go(page, title)
        expect(page.locator("h1").first, f"{title} page has no title").to_be_visible()
        if title == "Budget" and os.environ.get("WORKBENCH_SCREENSHOTS"):  # README's screenshot of the memory breakdown
            expect(page.get_by_text("Where it fits")).to_be_visible(timeout=60_000)
            snapshot(page, "budget")
    expect(page.locator("[data-testid='stSidebar']").get_by_text(re.compile("Active model"))).to_be_visible()


def test_chat_streams_two_answers(page: Page, app_url: str):
    """Issue 2's browser check: two columns on the embedded model, both answers stream in."""
    page.goto(app_url)
    settle(page)
    go(page, "Chat")
    texts = ask_both_columns(page, "What is the capital of France?")
    assert any("Paris" in t for t in texts), texts


def test_curate_and_inspect(page: Page, app_url: str):
    """Data: load the demo, de-duplicate, export a curated copy; Template: its tokens as chips."""
    page.goto(app_url)
    settle(page)
    go(page, "Data")
    page.get_by_role("button", name="Find duplicates").click()
    settle(page)
    expect(page.get_by_text(re.compile(r"near\*?\*?: [\d,]+ clusters"))).to_be_visible()
    # the demo's planted copies (assets/make_demo_dataset.py PLANTED): the tools find something to drop
    expect(page.get_by_text(re.compile(r"exact\*?\*?: 2 clusters, 2 rows to drop"))).to_be_visible()
    snapshot(page, "data")
    page.get_by_role("tab", name="Export").click()
    fill(page, "textbox", "Name", "e2e-curated")
    page.get_by_role("button", name=re.compile(r"Export [\d,]+ rows")).click()
    settle(page)
    expect(page.get_by_text(re.compile("Saved .*e2e-curated"))).to_be_visible()

    go(page, "Template")
    expect(page.locator(".tpl-chip.trained").first).to_be_visible(timeout=60_000)
    assert page.locator(".tpl-chip.masked").count() > page.locator(".tpl-chip.trained").count() > 0
    snapshot(page, "template")


@pytest.mark.timeout(2400)  # trains, evaluates and merges in the browser
def test_train_evaluate_chat_merge(page: Page, app_url: str, e2e_home):
    """The main journey on the embedded model (about 4 minutes on 2 idle CPU cores). It is also the demo's proof:
    the one-click CPU fine-tune takes the held-out tickets' strict JSON validity from the base's 0 % up."""
    page.goto(app_url)
    settle(page)

    # Train: a short LoRA on the embedded model; the loss chart grows; the run succeeds.
    go(page, "Train")
    fill(page, "spinbutton", "max steps", TRAIN_STEPS)
    # a smaller batch and 6 held-out rows instead of 30: what is checked (chart, finish, adapter) stays, at half the time
    fill(page, "spinbutton", "batch size", 4)
    fill(page, "spinbutton", "eval fraction", 0.02)
    page.get_by_role("button", name=re.compile("Start training")).click()
    settle(page)
    expect(page.locator("[data-testid='stPlotlyChart']").first).to_be_visible(timeout=600_000)
    page.wait_for_function(f"() => ({TRAIN_LOSS_POINTS})() >= 2", timeout=600_000)
    assert finished(page).count() == 0, "the loss chart shows steps while the run is still going"
    wait_until_succeeded(page)
    settle(page)
    assert page.evaluate(TRAIN_LOSS_POINTS) == TRAIN_STEPS, "the finished chart holds every logged step"
    snapshot(page, "train")

    # Evaluate: the new adapter against the base, a verdict at the end.
    page.get_by_role("button", name=re.compile("Evaluate it")).click()
    settle(page)
    for label, value in (("Task samples", 4), ("General samples", 4), ("Mc samples", 4), ("Bootstrap samples", 200)):
        fill(page, "spinbutton", label, value)
    page.get_by_role("button", name=re.compile("Run evaluation")).click()
    settle(page)
    expect(page.get_by_text(re.compile(r"task rows · .* general texts"))).to_be_visible(timeout=600_000)
    settle(page)
    expect(page.get_by_role("combobox", name="Evaluation run")).to_have_value(re.compile(r"· succeeded$"))
    report = json.loads(max((e2e_home / "runs").glob("*-evaluate/report.json")).read_text())
    gain = next(iter(report["comparisons"].values()))["json_valid"]["value"]
    assert gain >= 30, f"JSON validity gain {gain:.0f} points (base {report['models'][0]['metrics']['json_valid']['value']:.0f} %)"
    snapshot(page, "evaluate")

    # Chat: base and the new adapter side by side.
    go(page, "Chat")
    expect(page.get_by_role("combobox", name="Variant").nth(1)).to_have_value("Active model + trained adapter")
    expect(page.get_by_role("combobox", name="Adapter")).to_have_value(re.compile(r"-train \(succeeded\)$"))
    ask_both_columns(page, "What is the capital of France?")
    snapshot(page, "chat")

    # Merge: blend the fine-tune back toward its base and draw the learning-vs-forgetting curve.
    go(page, "Merge")
    page.get_by_text("Forgetting remedy").click()
    settle(page)
    # λ = 0 is the base (scored once, never re-evaluated): one blend is one merge + one evaluation
    fill(page, "textbox", "λ values", "0, 0.5")
    fill(page, "spinbutton", "Evaluation rows", 2)  # the base answers every ticket at full length: rows are what costs
    page.get_by_role("button", name="Start", exact=True).click()
    settle(page)
    wait_until_succeeded(page)
    settle(page)
    expect(page.locator("[data-testid='stPlotlyChart']").first).to_be_visible()
    snapshot(page, "merge")
