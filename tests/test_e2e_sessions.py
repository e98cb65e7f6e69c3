"""Two browser sessions on ONE `streamlit run` server at once (issue 7): session A trains a
toy2d model on the Models page while session B, on another checkpoint, opens ROC & metrics.
Neither may see or change the other's state: B shows B's model's numbers (checked against
``ood_core`` computed outside the app), B never sees A's job, A's run saves its file, and A's
sidebar still shows A's checkpoint afterwards. Two Playwright browser contexts = two sessions
(separate cookies and websockets).

Same server, browser and skip machinery as ``test_e2e_browser.py`` (imported, not copied):
skipped without playwright or Chromium unless ``E2E_REQUIRED=1``.
"""
from __future__ import annotations

import time

import pytest

from test_e2e_browser import _assert_no_error, _settle, browser, fill_training_form, server  # noqa: F401  (fixtures)
from ood_core.app import tables
from apptest_helpers import evaluation_of

A_CHECKPOINT = "l2norm_digits.pt"
B_CHECKPOINT = "ib_digits.pt"
TRAIN_EPOCHS = 30  # x the page's default slow motion (0.3 s per epoch): still running while B works


def _pick_checkpoint(page, name: str) -> None:
    assert name not in _sidebar_checkpoint(page)  # the check below can tell the choices apart
    box = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').filter(has_text="Checkpoint")
    box.click()
    page.get_by_role("option", name=name, exact=True).click()
    deadline = time.time() + 10
    while name not in _sidebar_checkpoint(page) and time.time() < deadline:
        page.wait_for_timeout(200)
    assert name in _sidebar_checkpoint(page)


def _sidebar_checkpoint(page) -> str:
    """The sidebar selectbox's label and shown value (a searchable selectbox keeps the value
    in its input, an older one in its text)."""
    box = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').filter(has_text="Checkpoint")
    inputs = box.locator("input")
    shown = inputs.first.input_value() if inputs.count() else ""
    return f"{box.inner_text()} {shown} {box.first.get_attribute('aria-label') or ''} " + " ".join(
        box.locator("[value]").evaluate_all("els => els.map(e => e.getAttribute('value'))"))


def _wait_for_text(page, text: str, timeout_s: float = 120) -> None:
    page.get_by_text(text, exact=False).first.wait_for(timeout=timeout_s * 1000)


def test_two_sessions_one_training_do_not_see_each_other(server, browser):  # noqa: F811
    base, folder = server
    expected = evaluation_of(folder / B_CHECKPOINT)
    other = evaluation_of(folder / A_CHECKPOINT)
    report = expected["report"]
    scores = tables.score_names(expected["scores"])[:2]  # the ROC page's default choice
    ood_set = tables.ood_set_names(report)[0]
    legend = [f"{s} vs {ood_set} (AUROC {report['ood'][ood_set][s]['auroc']:.3f})" for s in scores]
    wrong = [f"{s} vs {ood_set} (AUROC {other['report']['ood'][ood_set][s]['auroc']:.3f})"
             for s in tables.score_names(other["scores"])[:2]]
    assert set(legend) != set(wrong)  # otherwise a mix-up would go unnoticed

    ctx_a = browser.new_context(viewport={"width": 1400, "height": 1200})
    ctx_b = browser.new_context(viewport={"width": 1400, "height": 1200})
    a, b = ctx_a.new_page(), ctx_b.new_page()
    try:
        # A: its own checkpoint, then a toy2d run from the Models page
        a.goto(base + "/models", wait_until="domcontentloaded")
        _settle(a)
        _pick_checkpoint(a, A_CHECKPOINT)
        _settle(a)
        fill_training_form(a, epochs=TRAIN_EPOCHS, out_name="session_a.pt")
        a.wait_for_timeout(500)
        a.get_by_role("button", name="Start training").click()
        _wait_for_text(a, "Cancel training", 60)  # the job panel of A

        # B, meanwhile: another checkpoint, ROC & metrics
        b.goto(base + "/roc", wait_until="domcontentloaded")
        _settle(b)
        assert a.get_by_text("Training finished").count() == 0, "A's run ended before B started: no overlap"
        _pick_checkpoint(b, B_CHECKPOINT)
        for text in legend:
            _settle(b, text)
        for text in wrong:
            assert b.get_by_text(text, exact=False).count() == 0, f"B shows A's model: {text}"
        _assert_no_error(b, "session B, ROC page")
        assert B_CHECKPOINT in _sidebar_checkpoint(b)
        # B's Models page has no job panel: the job is A's alone
        b.locator('[data-testid="stSidebarNav"]').get_by_text("Models", exact=True).click()
        _settle(b)
        b.get_by_role("tab", name="Train a new model").click()
        b.get_by_role("button", name="Start training").wait_for()  # the tab runs when opened
        b.wait_for_timeout(1500)
        for text in ("Cancel training", "Training finished", "session_a.pt →"):
            assert b.get_by_text(text, exact=False).count() == 0, f"B sees A's job: {text!r}"
        assert B_CHECKPOINT in _sidebar_checkpoint(b)
        _assert_no_error(b, "session B, Models page")

        # A's run finishes and saves; A still looks at its own checkpoint
        _wait_for_text(a, "Training finished", 180)
        assert (folder / "session_a.pt").is_file()
        time.sleep(1.5)  # the app's one rerun after the job ends (the sidebar lists the new file)
        assert A_CHECKPOINT in _sidebar_checkpoint(a)
        _assert_no_error(a, "session A after training")
        # and B, rerun after A's save, still shows B's checkpoint and numbers
        b.locator('[data-testid="stSidebarNav"]').get_by_text("ROC & metrics", exact=True).click()
        for text in legend:
            _settle(b, text)
        assert B_CHECKPOINT in _sidebar_checkpoint(b)
        _assert_no_error(b, "session B at the end")
    finally:
        ctx_a.close()
        ctx_b.close()


def test_a_second_session_can_train_too_without_touching_the_first(server, browser):  # noqa: F811
    """Both sessions start a run: the second waits ("Queued") for the first (one run per
    process), each panel shows only its own run, and both files are saved."""
    base, folder = server
    pages, contexts = [], []
    try:
        for who in ("x", "y"):
            ctx = browser.new_context(viewport={"width": 1400, "height": 1200})
            contexts.append(ctx)
            page = ctx.new_page()
            pages.append(page)
            page.goto(base + "/models", wait_until="domcontentloaded")
            _settle(page)
            fill_training_form(page, epochs=4, out_name=f"parallel_{who}.pt")
            page.wait_for_timeout(500)
            page.get_by_role("button", name="Start training").click()
            _wait_for_text(page, f"parallel_{who}.pt", 60)
        for page, who, other in zip(pages, "xy", "yx"):
            _wait_for_text(page, "Training finished", 180)
            assert page.get_by_text(f"parallel_{other}.pt`", exact=False).count() == 0
            _assert_no_error(page, f"session {who}")
        assert (folder / "parallel_x.pt").is_file() and (folder / "parallel_y.pt").is_file()
    finally:
        for ctx in contexts:
            ctx.close()
