"""The report in a real browser: Debian's Chromium, driven by Playwright."""

from __future__ import annotations

import shutil

import pytest

from tests.test_report import SECTION_IDS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")


def test_report_renders_in_headless_chromium(analyzed_run, tmp_path):
    from playwright.sync_api import sync_playwright

    console_errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: console_errors.append(str(error)))
        page.goto((analyzed_run / "report.html").resolve().as_uri())
        page.wait_for_load_state("load")
        widths = page.eval_on_selector_all("img", "images => images.map(i => i.complete ? i.naturalWidth : 0)")
        headings = page.eval_on_selector_all("section", "sections => sections.map(s => s.id)")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert widths and all(w > 0 for w in widths), widths
    assert headings == SECTION_IDS
    assert console_errors == []
    assert (tmp_path / "report.png").stat().st_size > 10_000
