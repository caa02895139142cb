"""The dashboard and the report in a real headless browser (Debian chromium + chromedriver).

Skipped when chromium is missing, unless ``CI`` is set (then it fails: ``.ci/browser`` installs it).
With ``AUTOTRANSFER_SCREENSHOT_DIR`` set, the dashboard screenshot is saved there as
``dashboard.png`` (the README's picture: ``AUTOTRANSFER_SCREENSHOT_DIR=benchmarks``).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from autotransfer.report.style import TITLE_PREFIX

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
DASHBOARD_VIEWS = (
    "excess divergence by depth",
    "protocol against accuracy",
    "controls against the best protocol",
    "prior against found protocol",
)


@pytest.fixture
def browser(tmp_path):
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]
    if missing:
        message = f"{', '.join(missing)} missing: run .ci/browser (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.add_argument("--window-size=1400,2300")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """GET from the dashboard this test started on 127.0.0.1 (loopback only, never the network)."""
    assert url.startswith("http://127.0.0.1:"), url
    # the dashboard's /static/bundle.js answers 500 without Accept-Encoding (docs/design.md); a browser sends one
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip, deflate"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, response.read()


@pytest.fixture
def dashboard(made_study, tmp_path):
    """``autotransfer dashboard`` on a copy of the study, served on 127.0.0.1 (no network)."""
    db = tmp_path / "studies.db"
    shutil.copy(made_study.workdir / "studies.db", db)
    url, port = f"sqlite:///{db}", _free_port()
    cmd = [
        sys.executable,
        "-m",
        "autotransfer.cli",
        "dashboard",
        "--storage",
        url,
        "--port",
        str(port),
        "--study",
        made_study.name,
    ]
    log_path = tmp_path / "dashboard.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the dashboard exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                status, body = _get(f"{base}/api/studies", timeout=5)
            except OSError:  # the server is not listening yet: poll again
                status = None
            if status == 200:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the dashboard did not answer within 180 s:\n{log_path.read_text()}")
            time.sleep(0.5)
        studies = json.loads(body)["study_summaries"]
        study_id = next(s["study_id"] for s in studies if s["study_name"] == made_study.name)
        yield base, study_id, log_path
    finally:
        os.kill(proc.pid, signal.SIGTERM)  # stop the dashboard by its PID
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def _wait_for(driver, script: str, ok, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script)
        if ok(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


_TITLES = "return Array.from(document.querySelectorAll('.gtitle')).map(e => e.textContent)"


def _screenshot_stats(png: bytes) -> tuple[tuple[int, int], float, int]:
    """``(size, grey-level standard deviation, number of distinct colours)`` of a PNG screenshot."""
    from PIL import Image, ImageStat

    image = Image.open(io.BytesIO(png)).convert("RGB")
    stddev = ImageStat.Stat(image.convert("L")).stddev[0]
    colours = len(image.getcolors(maxcolors=1 << 20) or [])
    return image.size, stddev, colours


def _save_small_png(png: bytes, path: Path) -> None:
    """Save a screenshot as a palette PNG (a few hundred kB at most) for the README."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def test_dashboard_renders_the_study_and_autotransfer_figures(dashboard, browser, made_study):
    base, study_id, log_path = dashboard
    status, bundle = _get(f"{base}/static/bundle.js", timeout=30)
    assert status == 200 and len(bundle) > 100_000

    browser.get(f"{base}/dashboard/studies/{study_id}")
    titles = _wait_for(browser, _TITLES, lambda ts: sum(t.startswith(TITLE_PREFIX) for t in ts) >= len(DASHBOARD_VIEWS))
    ours = [t for t in titles if t.startswith(TITLE_PREFIX)]
    for view in DASHBOARD_VIEWS:
        assert any(view in t for t in ours), (view, titles, log_path.read_text()[-2000:])
    assert browser.execute_script("return document.querySelectorAll('.js-plotly-plot').length") >= len(DASHBOARD_VIEWS)
    assert made_study.name in browser.find_element("tag name", "body").text

    browser.execute_script("window.scrollTo(0, 0)")
    time.sleep(1.0)
    png = browser.get_screenshot_as_png()
    size, stddev, colours = _screenshot_stats(png)
    assert size[0] >= 1000 and stddev > 10 and colours > 50, (size, stddev, colours)
    if os.environ.get("AUTOTRANSFER_SCREENSHOT_DIR"):
        _save_small_png(png, Path(os.environ["AUTOTRANSFER_SCREENSHOT_DIR"]) / "dashboard.png")

    # the study note (the dashboard's Note page) renders the task profile and the prior as markdown
    browser.get(f"{base}/dashboard/studies/{study_id}/note")
    headings = _wait_for(
        browser,
        "return Array.from(document.querySelectorAll('h2, h3')).map(e => e.textContent)",
        lambda hs: "Task profile" in hs,
    )
    assert "Task profile" in headings and any(h.startswith("Prior (quadrant") for h in headings), headings
    cells = browser.execute_script("return Array.from(document.querySelectorAll('td')).map(e => e.textContent)")
    assert "similarity (0-1)" in cells and "log10_elr" in cells


def test_report_renders_offline(made_study, browser, tmp_path):
    from autotransfer.report.html import write_study_report

    path = write_study_report(made_study.name, tmp_path / "report.html", made_study.storage_url)
    browser.get(path.resolve().as_uri())
    count = _wait_for(browser, "return document.querySelectorAll('.js-plotly-plot').length", lambda n: n >= 7)
    assert count == 7  # with the anytime curve (issue 27)
    titles = browser.execute_script(_TITLES)
    assert any("excess divergence by depth" in t for t in titles) and any("parameter importances" in t for t in titles)
    # plotly drew the data: the divergence figure has its line, the controls figure its bars
    assert browser.execute_script("return document.querySelectorAll('.js-plotly-plot .scatterlayer .trace').length") > 0
    assert browser.execute_script("return document.querySelectorAll('.js-plotly-plot .barlayer .point').length") >= 3
    # nothing was fetched from anywhere but the file itself
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(name.startswith(("file:", "data:", "blob:")) for name in fetched), fetched
    body = browser.find_element("tag name", "body").text
    assert f"autotransfer report: {made_study.name}" in body and "Held-out test score" in body
    size, stddev, colours = _screenshot_stats(browser.get_screenshot_as_png())
    assert stddev > 10 and colours > 50, (size, stddev, colours)
