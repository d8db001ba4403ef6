"""The main journey in a real browser (Debian Chromium) against `streamlit run app.py` on the embedded model."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def open_page(page: Page, app_url: str, path: str) -> None:
    page.goto(f"{app_url}/{path}")
    page.wait_for_selector("[data-testid='stAppViewContainer']")
    expect(page.locator("[data-testid='stStatusWidget']")).to_have_count(0, timeout=60_000)


def test_chat_streams_two_answers(page: Page, app_url: str):
    open_page(page, app_url, "chat")
    expect(page.get_by_role("heading", name=re.compile("Chat side by side"))).to_be_visible()
    box = page.get_by_placeholder("Ask all columns…")
    box.fill("What is the capital of France?")
    box.press("Enter")
    answers = page.locator("[data-testid='stChatMessage']").filter(has=page.locator("[data-testid='stChatMessageAvatarAssistant']"))
    stats = page.get_by_text(re.compile(r"\d+ tokens · first token"))
    expect(stats).to_have_count(2, timeout=120_000)
    texts = [t.strip() for t in answers.all_inner_texts()]
    assert len(texts) == 2 and all(len(t) > 20 for t in texts), texts
    assert any("Paris" in t for t in texts), texts
