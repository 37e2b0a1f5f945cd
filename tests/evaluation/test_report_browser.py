"""The report in a real headless browser: Chromium loads report.html from disk, lays it out, and
its screenshot and serialised DOM show the tables and the embedded charts.

Chromium comes from Debian's packages (``apt-get install -y chromium``). Without it the test is
skipped, saying how to install it, unless ``RECSYS_REQUIRE_BROWSER=1`` (CI), where it fails.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from recsys.evaluation.report import build_report, draw_charts, write_report_files
from tests.evaluation.report_pages import PNG_MAGIC, read_page, synthetic_inputs

pytestmark = pytest.mark.slow  # a headless Chromium subprocess

INSTALL = "sudo apt-get install -y chromium  (Debian/Ubuntu; as root: apt-get install -y chromium)"
WINDOW = (1200, 2000)
TIMEOUT_SECONDS = 120


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    message = f"no chromium or chromium-browser on PATH; install it with: {INSTALL}"
    if os.environ.get("RECSYS_REQUIRE_BROWSER") == "1":
        pytest.fail(f"RECSYS_REQUIRE_BROWSER=1 but {message}")
    pytest.skip(message)


def _run(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            browser,
            "--headless",
            # Root in a container has no user namespace for the sandbox; the page is our own file.
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-extensions",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )


@pytest.fixture(scope="module")
def report_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("report")
    report = build_report(synthetic_inputs())
    charts = draw_charts(report)
    _, html_path = write_report_files(directory, report, {**charts, "learning_curves": charts["segments"]})
    return html_path


def test_chromium_renders_the_report(report_page: Path, tmp_path: Path) -> None:
    browser = _chromium()
    screenshot = tmp_path / "report.png"

    shot = _run(
        browser,
        tmp_path / "profile-shot",
        f"--screenshot={screenshot}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        report_page.as_uri(),
    )
    dom = _run(browser, tmp_path / "profile-dom", "--dump-dom", report_page.as_uri())

    assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-3000:]
    png = screenshot.read_bytes()
    assert png[:8] == PNG_MAGIC
    from PIL import Image  # matplotlib's own dependency: present wherever the report is drawn

    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.size == WINDOW
    # A page that failed to lay out is blank: a real one has text, tables and charts in many colours.
    assert len(image.getcolors(maxcolors=1 << 20) or []) > 200
    assert dom.returncode == 0, dom.stderr[-3000:]
    page = read_page(dom.stdout)
    assert {"metrics", "beyond-accuracy", "segments", "popularity", "epochs"} <= set(page.tables)
    assert len(page.tables["segments"].rows) == 4 and len(page.tables["popularity"].rows) == 10
    assert len(page.images) == 3 and all(i["src"].startswith("data:image/png;base64,") for i in page.images)
