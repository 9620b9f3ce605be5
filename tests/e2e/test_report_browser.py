"""The HTML report, rendered by a real headless Chromium from the running service.

CI installs Debian's chromium and chromium-driver and sets GAUNTLET_TEST_REQUIRE_BROWSER=1,
so there this test fails (never skips) without a browser.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.e2e.conftest import LiveService
from tests.e2e.test_service import FINAL, upload_model
from tests.model_files import digits_onnx, meta

# artifacts: CI runs these again with the S3 store (GAUNTLET_TEST_ARTIFACT_STORE=s3).
pytestmark = [pytest.mark.e2e, pytest.mark.artifacts]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
REQUIRED = os.environ.get("GAUNTLET_TEST_REQUIRE_BROWSER") == "1"
# The first two series colours of service/jobs/charts.py.
SERIES_COLOURS = ((0x1F, 0x77, 0xB4), (0xD6, 0x27, 0x28))


def _browser(tmp_path: Path):  # type: ignore[no-untyped-def]
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        if REQUIRED:
            pytest.fail(f"no browser: {CHROMIUM} and {CHROMEDRIVER} are required here")
        pytest.skip("chromium and chromedriver are not installed (CI installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,4000",
        f"--user-data-dir={tmp_path / 'chrome-profile'}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _pixels_near(image: Image.Image, colour: tuple[int, int, int], tolerance: int = 40) -> int:
    rgb = image.convert("RGB")
    return sum(
        1
        for pixel in rgb.get_flattened_data()
        if all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=True))
    )


def test_report_renders_plots_and_gallery_in_chromium(
    live_service: LiveService, tmp_path: Path
) -> None:
    model = upload_model(live_service, digits_onnx(), meta("onnx"), "digits.onnx")
    spec = {
        "kind": "audit",
        "model_id": model["id"],
        "limit": 120,
        "attacks": [
            {"name": "fgsm", "eps": [0.05, 0.1, 0.2]},
            {"name": "pgd", "eps": [0.05, 0.1, 0.2], "steps": 10},
        ],
        "gate": {"min_robust_accuracy": [{"attack": "pgd", "eps": 0.1, "value": 0.9}]},
    }
    with live_service.client() as client:
        job_id = client.post("/v1/jobs", json=spec).json()["id"]
    job = live_service.wait_for(f"/v1/jobs/{job_id}", lambda j: j["status"] in FINAL)
    assert job["status"] == "succeeded", job
    with live_service.client() as client:
        link = client.post(f"/v1/jobs/{job_id}/report-link").json()

    driver = _browser(tmp_path)
    try:
        driver.get(link["url"])
        assert job_id in driver.title
        page = driver.page_source
        assert "FAILED" in page  # the gate asked for 90% at eps 0.1
        charts = driver.find_elements("css selector", "svg.line-chart")
        bars = driver.find_elements("css selector", "svg.bar-chart")
        assert charts
        assert bars
        decoded = driver.execute_script(
            "return [...document.querySelectorAll('.gallery img')]"
            ".filter(i => i.complete && i.naturalWidth > 0).length"
        )
        assert decoded >= 9  # at least three examples: clean, perturbation, adversarial

        screenshot = Image.open(io.BytesIO(driver.get_screenshot_as_png()))
        chart = Image.open(io.BytesIO(charts[0].screenshot_as_png))
        gallery = Image.open(
            io.BytesIO(driver.find_element("css selector", ".gallery").screenshot_as_png)
        )
    finally:
        driver.quit()

    saved = os.environ.get("GAUNTLET_TEST_SCREENSHOT")
    if saved:
        screenshot.save(saved)
    # The curves are drawn: many pixels of both series colours inside the chart.
    for colour in SERIES_COLOURS:
        assert _pixels_near(chart, colour) > 150, colour
    # The gallery shows images, not blank boxes: many distinct grey levels.
    assert len(set(gallery.convert("L").get_flattened_data())) > 20
