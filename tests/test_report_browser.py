"""The reports in a real browser: Debian's Chromium, driven by Playwright."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.report import main as report_main
from tests.test_report import SECTION_IDS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module", autouse=True)
def chromium_is_installed() -> None:
    # Not a skip: a browser test that skips itself passes CI without testing anything (.ci/run installs it).
    assert CHROMIUM is not None, "Debian's chromium is not installed: apt-get install chromium (.ci/run does)"


def open_in_chromium(page_path: Path, screenshot: Path, width: int = 1280) -> tuple[list[int], list[str], list[str]]:
    """The natural widths of the page's images, its section ids and the console errors it raised;
    the page is opened ``width`` pixels wide, and must not scroll sideways there."""
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
        page = browser.new_page(viewport={"width": width, "height": 900})
        page.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: console_errors.append(str(error)))
        page.goto(page_path.resolve().as_uri())
        page.wait_for_load_state("load")
        widths = page.eval_on_selector_all("img", "images => images.map(i => i.complete ? i.naturalWidth : 0)")
        headings = page.eval_on_selector_all("section", "sections => sections.map(s => s.id)")
        overflowing = page.eval_on_selector_all(
            "table.leaderboard",
            "tables => tables.filter(t => t.parentElement.scrollWidth > t.parentElement.clientWidth)",
        )
        assert overflowing == [], "the leaderboard scrolls sideways"
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    assert screenshot.stat().st_size > 10_000
    return widths, headings, console_errors


def test_report_renders_in_headless_chromium(analyzed_run, tmp_path):
    widths, headings, errors = open_in_chromium(analyzed_run / "report.html", tmp_path / "report.png")
    assert widths and all(w > 0 for w in widths), widths
    assert headings == SECTION_IDS
    assert errors == []


def test_comparison_renders_in_headless_chromium(analyzed_run, tmp_path):
    twin = tmp_path / "twin"
    shutil.copytree(analyzed_run, twin)
    (twin / "config.yaml").chmod(0o644)
    (twin / "config.yaml").write_text((twin / "config.yaml").read_text().replace("seed: 0", "seed: 1"))
    out = tmp_path / "compare.html"
    assert report_main([str(analyzed_run), str(twin), "--out", str(out)]) == 0
    widths, headings, errors = open_in_chromium(out, tmp_path / "compare.png", width=1400)
    assert len(widths) >= 5 and all(w > 0 for w in widths), widths
    assert headings == ["leaderboard", "spread", "curves", "target", "per-class", "cam-methods", "runs"]
    assert errors == []
