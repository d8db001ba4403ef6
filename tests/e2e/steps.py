"""The browser journey's page helpers, shared by every tests/e2e file (all of them run on one xdist worker: tests/conftest.py)."""
from __future__ import annotations

import os
import re

from playwright.sync_api import Page, expect


def snapshot(page: Page, name: str) -> None:
    """With WORKBENCH_SCREENSHOTS=<folder>, keep a full-page PNG of this step (how docs/*.png are made)."""
    folder = os.environ.get("WORKBENCH_SCREENSHOTS")
    if folder:
        page.screenshot(path=os.path.join(folder, f"{name}.png"), full_page=True)


def settle(page: Page, timeout: float = 120_000) -> None:
    """Wait until the script run finished (the running indicator is gone) and nothing raised."""
    page.wait_for_selector("[data-testid='stAppViewContainer']")
    page.wait_for_timeout(300)
    expect(page.locator("[data-testid='stStatusWidget']")).to_have_count(0, timeout=timeout)
    exceptions = page.locator("[data-testid='stException']")
    assert exceptions.count() == 0, exceptions.first.inner_text()


def go(page: Page, title: str) -> None:
    """Switch page through the sidebar (keeps the session, unlike a new URL)."""
    page.locator("[data-testid='stSidebarNav']").get_by_role("link", name=re.compile(title)).click()
    settle(page)


def fill(page: Page, role: str, label: str, value) -> None:
    """Type into a text ("textbox") or number ("spinbutton") input and commit it with Enter."""
    box = page.get_by_role(role, name=label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    settle(page)


def ask_both_columns(page: Page, prompt: str) -> list[str]:
    """Send one prompt from the Chat page; wait until both columns finished; their answers' text."""
    box = page.get_by_placeholder("Ask all columns…")
    box.fill(prompt)
    box.press("Enter")
    expect(page.get_by_text(re.compile(r"\d+ tokens · first token"))).to_have_count(2, timeout=300_000)
    answers = page.locator("[data-testid='stChatMessage']").filter(has=page.locator("[data-testid='stChatMessageAvatarAssistant']"))
    texts = [t.strip() for t in answers.all_inner_texts()]
    assert len(texts) == 2 and all(len(t) > 10 for t in texts), texts
    return texts


def finished(page: Page):
    """The run panel's status line once the job is done (not the word inside a picker label)."""
    return page.locator("strong", has_text=re.compile(r"succeeded"))


def wait_until_succeeded(page: Page, timeout: float = 600_000) -> None:
    """Wait for the run panel's final state; a run that failed or stopped fails the test at once, with its error
    (instead of waiting out the timeout for a "succeeded" that cannot come)."""
    final = page.locator("strong", has_text=re.compile(r"^\S+\s+(succeeded|failed|stopped)$"))
    expect(final.first).to_be_visible(timeout=timeout)
    # read from the final line itself (waits for it): a count() of another locator can fall between the panel's last
    # poll and the page's rerun on the state change, and find nothing although the run succeeded
    ended = final.first.inner_text()
    if "succeeded" not in ended:
        alert = page.locator("[data-testid='stAlert']")
        raise AssertionError(f"the run ended {ended}: " + (alert.first.inner_text() if alert.count() else "(no error shown)"))


def choose(page: Page, label: str, option, attempts: int = 5) -> None:
    """Pick `option` (its text, or a compiled pattern) in the selectbox labelled `label`. A rerun of the page (the
    pre-flight's background check ends) closes an open list: then the list is opened again."""
    for attempt in range(attempts):
        settle(page)
        page.get_by_role("combobox", name=label, exact=True).click()
        wanted = page.get_by_role("option", name=option).first
        try:
            wanted.wait_for(state="visible", timeout=10_000)
            wanted.click()
            break
        except Exception:  # noqa: BLE001 - the list closed under us (a rerun): open it again
            page.keyboard.press("Escape")
            if attempt == attempts - 1:
                raise
    settle(page)


def finished_train_run(home) -> str:
    """A succeeded train run of the embedded model in this worker's home: the main journey's (in `make test` every
    journey runs on one worker, main journey first: tests/conftest.py); else, when a journey runs on its own, a 2-step
    one started headless like the Start button."""
    from core import runs
    from core.train.spec import TrainSpec

    previous = os.environ.get("WORKBENCH_HOME")
    os.environ["WORKBENCH_HOME"] = str(home)
    try:
        done = [r for r in runs.list_runs("train") if r.status.state == "succeeded" and r.spec.get("objective", "sft") == "sft"
                and (r.spec.get("model") or {}).get("kind", "embedded") == "embedded"]
        if done:
            return done[0].run_id
        run_dir = runs.create_run(TrainSpec(max_steps=2, batch_size=4, max_length=256, eval_fraction=0.0, eval_on_start=False))
        runs.launch(run_dir)
        assert runs.wait(run_dir, timeout=900).state == "succeeded"
        return run_dir.name
    finally:
        os.environ["WORKBENCH_HOME"] = previous or ""
