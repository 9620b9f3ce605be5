"""The leaderboard, rendered by a real headless Chromium from the running service.

Three versions of one model, each audited by the real worker; the page opened through its
signed link shows a row per version and a trend chart with a point per version. Like the
report's browser test, it fails (never skips) without a browser when CI requires one.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.e2e.conftest import LiveService
from tests.e2e.test_report_browser import SERIES_COLOURS, _browser, _pixels_near
from tests.e2e.test_service import FINAL, upload_model
from tests.model_files import meta, onnx_bytes
from tests.trained import trained_digits_cnn

# artifacts: CI runs these again with the S3 store (GAUNTLET_TEST_ARTIFACT_STORE=s3).
pytestmark = [pytest.mark.e2e, pytest.mark.artifacts]


def _version(noise: float) -> bytes:
    """The trained digits CNN with its weights perturbed (0: as trained), as ONNX."""
    model = copy.deepcopy(trained_digits_cnn())
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(noise * torch.randn(parameter.shape, generator=generator))
    return onnx_bytes(model, torch.rand(2, 1, 8, 8))


def test_leaderboard_shows_three_versions_and_their_trend_in_chromium(
    live_service: LiveService, tmp_path: Path
) -> None:
    name = "digits-leaderboard"
    models = [
        upload_model(live_service, _version(noise), meta("onnx", name=name), "digits.onnx")
        for noise in (0.0, 0.05, 0.1)
    ]
    assert [m["version"] for m in models] == [1, 2, 3]
    assert all(m["status"] == "ready" for m in models), models
    spec = {
        "kind": "audit",
        "limit": 60,
        "attacks": [
            {"name": "fgsm", "eps": [0.1]},
            {"name": "pgd", "eps": [0.1], "steps": 3, "step_size": 0.05},
        ],
    }
    with live_service.client() as client:
        jobs = [
            client.post("/v1/jobs", json={**spec, "model_id": m["id"]}).json()["id"] for m in models
        ]
    for job_id in jobs:
        job = live_service.wait_for(f"/v1/jobs/{job_id}", lambda j: j["status"] in FINAL)
        assert job["status"] == "succeeded", job
    with live_service.client() as client:
        link = client.post("/v1/leaderboard-link").json()
        versions = client.get("/v1/models", params={"name": name}).json()["items"]
    assert [m["version"] for m in versions] == [3, 2, 1]

    driver = _browser(tmp_path)
    try:
        driver.get(link["url"])
        assert "leaderboard" in driver.title
        rows = driver.find_elements("css selector", "table.leaderboard tr[data-model]")
        named = [r for r in rows if r.find_element("css selector", "td.name").text == name]
        assert len(named) == 3
        assert {r.get_attribute("data-model") for r in named} == {m["id"] for m in models}
        assert all(any(job_id in r.text for job_id in jobs) for r in named)
        chart = driver.find_element(
            "css selector", f"section.trend[data-name='{name}'] svg.line-chart"
        )
        assert len(chart.find_elements("css selector", "circle")) == 3
        picture = Image.open(io.BytesIO(chart.screenshot_as_png))
        # A report link from the table opens that version's report in the same browser.
        named[0].find_element("css selector", "a").click()
        assert jobs[0] in driver.title
    finally:
        driver.quit()
    # The trend line is drawn: many pixels of the first series colour inside the chart.
    assert _pixels_near(picture, SERIES_COLOURS[0]) > 100
