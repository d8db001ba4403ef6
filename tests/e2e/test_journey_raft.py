"""The RAG / RAFT journey in a real browser (issue 15): index the demo handbook, build a RAFT set, see its mask, hand it to Train."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

sys.path.insert(0, str(Path(__file__).parent))
from steps import go, settle, snapshot  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_build_a_raft_set_from_the_demo_handbook(page: Page, app_url: str):
    """RAG / RAFT: index the demo handbook (recall table), build a RAFT set from it, see its mask on Template,
    and hand it to the Train page with a max_length that holds its rows."""
    page.goto(app_url)
    settle(page)
    go(page, "RAG")  # a "/" in the name breaks Playwright's regex selector
    page.get_by_role("button", name=re.compile("Index and measure retrieval")).click()
    settle(page)
    expect(page.get_by_text(re.compile(r"30 documents → 79 chunks"))).to_be_visible(timeout=300_000)
    settle(page)
    expect(page.locator("[data-testid='stDataFrame']").first).to_be_visible()  # the recall table (a canvas grid:
    expect(page.get_by_text("BM25 (lexical)", exact=True).first).to_be_attached()  # its cells live in a hidden a11y table)

    page.get_by_role("tab", name=re.compile("Build a RAFT set")).click()
    page.get_by_role("button", name=re.compile("Build the RAFT set")).click()
    settle(page)
    expect(page.get_by_text(re.compile(r"Saved handbook-raft: 120 examples \(24 distractor-only\), "
                                       r"30 held-out"))).to_be_visible(timeout=300_000)
    settle(page)
    snapshot(page, "raft")
    page.get_by_role("button", name=re.compile("See its mask on the Template page")).click()
    settle(page)
    expect(page.locator(".tpl-chip.trained").first).to_be_visible(timeout=60_000)
    trained = " ".join(page.locator(".tpl-chip.trained").all_inner_texts())
    assert "begin" in trained and "quote" in trained, trained[:300]  # the cite-then-answer turn is what is trained

    go(page, "RAG")  # a "/" in the name breaks Playwright's regex selector
    page.get_by_role("tab", name=re.compile("Build a RAFT set")).click()
    page.get_by_role("button", name=re.compile("Train RAFT on it")).click()
    settle(page)
    expect(page.get_by_text(re.compile(r"Prefilled from the RAG / RAFT page.s recipe: dataset=.*handbook-raft"))).to_be_visible()
