"""The review page in a real headless Chromium (Debian's ``chromium``, driven by Playwright; nothing is
downloaded): thumbnails load, filters change the count, the detail view and its 3D view open, a decision
persists across a reload and lands in the sidecar Parquet, the keyboard moves the selection, the quarantine
and stats tabs show, and no request leaves the server.

With ``PEARL_SCREENSHOTS=DIR`` the test saves the page as ``DIR/review-grid.png``, ``review-detail.png``
and ``review-stats.png`` (the README's screenshots come from here).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        executable = None
    if executable is None:
        message = "needs Debian's chromium and the playwright package (.ci/run installs both)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def server(run_copy, kit_dir):
    from pipelines.review.app import ReviewServer, open_review

    state = open_review(str(run_copy), body_models=str(kit_dir), reviewer="tester")
    server = ReviewServer(state, "127.0.0.1", 0).start()
    yield server
    server.shutdown()
    state.run.close()


def _all_thumbnails_loaded(page) -> None:
    page.wait_for_function(
        "() => { const imgs = [...document.querySelectorAll('.card img')];"
        " return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }", timeout=TIMEOUT_MS)


def _selected_key(page) -> str:
    return page.eval_on_selector(".card.selected", "c => c.dataset.key")


@pytest.mark.slow
def test_review_page_in_chromium(browser, server, run_copy, sample_run):
    shots = os.environ.get("PEARL_SCREENSHOTS")
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    requests, errors = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url)
    page.wait_for_selector("body[data-ready='1']", timeout=TIMEOUT_MS)

    # thumbnails: every image loaded, shown at a non-zero size
    _all_thumbnails_loaded(page)
    cards = page.query_selector_all(".card")
    assert len(cards) == 12
    for card in cards:
        box = card.query_selector("img").bounding_box()
        assert box["width"] > 50 and box["height"] > 50
    assert page.inner_text("#total") == "12"
    if shots:
        Path(shots).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=f"{shots}/review-grid.png")

    # filters change the count: a condition, then a split
    page.select_option("#cond-field", "has_face")
    page.select_option("#cond-op", "false")
    page.click("#cond-add")
    no_face = sum(1 for k in sample_run.keys if not _has_face(run_copy, k))
    page.wait_for_function(f"document.getElementById('total').textContent === '{no_face}'", timeout=TIMEOUT_MS)
    assert len(page.query_selector_all(".card")) == no_face < 12
    page.click(".chip button")
    page.wait_for_function("document.getElementById('total').textContent === '12'", timeout=TIMEOUT_MS)
    page.check(".split-box[value='val']")
    page.wait_for_function("document.getElementById('total').textContent === '6'", timeout=TIMEOUT_MS)
    page.uncheck(".split-box[value='val']")
    page.wait_for_function("document.getElementById('total').textContent === '12'", timeout=TIMEOUT_MS)
    _all_thumbnails_loaded(page)

    # keyboard navigation moves the selection
    first = _selected_key(page)
    page.keyboard.press("ArrowRight")
    second = _selected_key(page)
    assert second != first and second == page.query_selector_all(".card")[1].get_attribute("data-key")
    page.keyboard.press("j")
    page.keyboard.press("k")
    assert _selected_key(page) == second

    # the detail view: overlay image, figures, 3D mesh
    page.keyboard.press("Enter")
    page.wait_for_selector("#detail:not(.hidden)")
    page.wait_for_function("() => { const i = document.getElementById('d-image');"
                           " return i.complete && i.naturalWidth === 384; }", timeout=TIMEOUT_MS)
    assert page.inner_text("#d-key") == second
    page.wait_for_selector("#viewer[data-state='ready']", timeout=TIMEOUT_MS)
    assert int(page.get_attribute("#viewer", "data-faces")) > 1000
    assert "quality_reproj_px_body" in page.inner_text("#d-figures")

    # a decision with a note, then a reload: it persists and is in the sidecar Parquet
    page.fill("#d-note", "left hand looks off")
    page.keyboard.press("Escape")  # leaves the note field
    page.keyboard.press("r")
    page.wait_for_function("document.getElementById('d-decision').textContent.startsWith('reject')", timeout=TIMEOUT_MS)
    if shots:
        page.screenshot(path=f"{shots}/review-detail.png")
    page.keyboard.press("Escape")
    page.wait_for_function("document.getElementById('decision-counts').textContent.includes('reject 1')",
                           timeout=TIMEOUT_MS)
    page.reload()
    page.wait_for_selector("body[data-ready='1']", timeout=TIMEOUT_MS)
    badge = page.query_selector(f".card[data-key='{second}'] .dec")
    assert badge is not None and badge.inner_text() == "reject"
    assert "reject 1" in page.inner_text("#decision-counts")
    rows = pq.read_table(run_copy / "review" / "decisions.parquet").to_pylist()
    assert [(r["key"], r["decision"], r["note"], r["reviewer"]) for r in rows] == [
        (second, "reject", "left hand looks off", "tester")]
    page.select_option("#decision", "reject")
    page.wait_for_function("document.getElementById('total').textContent === '1'", timeout=TIMEOUT_MS)

    # the quarantined persons in their own view, with stage and reason
    page.click("[data-tab=quarantine]")
    page.wait_for_function("document.querySelectorAll('#q-table tbody tr').length === 2", timeout=TIMEOUT_MS)
    table = page.inner_text("#q-table")
    assert all(k in table for k in sample_run.quarantined) and "quality" in table and "reprojection" in table

    # the stats tab: tables and plots
    page.click("[data-tab=stats]")
    page.wait_for_selector("#stats[data-ready='1']", timeout=TIMEOUT_MS)
    page.wait_for_function("() => [...document.querySelectorAll('#stats img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)", timeout=TIMEOUT_MS)
    assert len(page.query_selector_all("#stats img")) == 5 and "Acceptance by source" in page.inner_text("#stats")
    if shots:
        page.screenshot(path=f"{shots}/review-stats.png")

    assert not errors, errors
    outside = [u for u in requests if not u.startswith(server.url) and not u.startswith("data:")]
    assert not outside, f"the page fetched from outside the server: {outside[:3]}"
    page.close()


def _has_face(run: Path, key: str) -> bool:
    table = pq.read_table(run / "parquet", columns=["key", "has_face"]).to_pylist()
    return next(r["has_face"] for r in table if r["key"] == key)
