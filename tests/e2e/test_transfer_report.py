"""The issue's transfer matrix through the real service, and its heat-map in a real browser.

Sources: two digits CNNs trained with different seeds and their ensemble. Targets: those
CNNs, an MLP, and scikit-learn's logistic regression, SVM, decision tree and kNN (ONNX
black boxes run in onnxruntime). The report's heat-map is rendered by headless Chromium:
one coloured cell per source and target, the names on the axes, the error rates in the cells.

``GAUNTLET_TEST_TRANSFER_RESULT=path`` saves the matrix's JSON (the closing note quotes it).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from adversarial.models.zoo import build_architecture
from tests.e2e.conftest import LiveService
from tests.e2e.test_report_browser import _browser, _pixels_near
from tests.e2e.test_transfer import FINAL, upload
from tests.model_files import digits_onnx, onnx_bytes
from tests.sklearn_models import sklearn_onnx
from tests.trained import digits_arrays, train, trained_digits_cnn

# artifacts: CI runs these again with the S3 store (GAUNTLET_TEST_ARTIFACT_STORE=s3).
pytestmark = [pytest.mark.e2e, pytest.mark.artifacts]

SKLEARN = {"logreg": "logistic_regression", "svm": "svc", "tree": "decision_tree", "knn": "knn"}
# The heat-map's most intense red (service/jobs/charts.py heat_colour(1.0) is #b2182b).
DEEP_RED = (0xC0, 0x40, 0x48)


def model_files() -> dict[str, bytes]:
    x_train, y_train, _, _ = digits_arrays()
    torch.manual_seed(0)
    mlp = train(build_architecture("mlp", {"hidden": [128]}, (1, 8, 8), 10), x_train, y_train)
    files = {
        "cnn-a": digits_onnx(),
        "cnn-b": onnx_bytes(trained_digits_cnn(1), torch.rand(2, 1, 8, 8)),
        "mlp": onnx_bytes(mlp, torch.rand(2, 1, 8, 8)),
    }
    files.update({name: sklearn_onnx(estimator) for name, estimator in SKLEARN.items()})
    return files


def test_the_transfer_matrix_of_the_issue_is_a_heat_map_in_chromium(
    live_service: LiveService, tmp_path: Path
) -> None:
    files = model_files()
    models = {name: upload(live_service, name, data) for name, data in files.items()}
    assert {m["status"] for m in models.values()} == {"ready"}, models
    ids = {name: m["id"] for name, m in models.items()}
    sources = [ids["cnn-a"], ids["cnn-b"], [ids["cnn-a"], ids["cnn-b"]]]
    targets = [ids[name] for name in files]
    spec = {
        "kind": "transfer",
        "sources": sources,
        "targets": targets,
        "limit": 300,
        "attack": {"name": "pgd", "norm": "linf", "eps": [0.1, 0.2], "steps": 20},
        "seed": 0,
    }
    with live_service.client() as client:
        response = client.post("/v1/jobs", json=spec)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
    job = live_service.wait_for(f"/v1/jobs/{job_id}", lambda j: j["status"] in FINAL, 600)
    assert job["status"] == "succeeded", job
    result = job["result"]
    saved = os.environ.get("GAUNTLET_TEST_TRANSFER_RESULT")
    if saved:
        Path(saved).write_text(json.dumps(result, indent=1))

    source_names = [s["name"] for s in result["sources"]]
    target_names = [t["name"] for t in result["targets"]]
    assert source_names == ["cnn-a", "cnn-b", "ensemble(cnn-a+cnn-b)"]
    assert target_names == list(files)
    assert [t["black_box"] for t in result["targets"]] == [False] * 3 + [True] * 4
    assert len(result["cells"]) == 3 * 7 * 2
    # White box beats transfer: each CNN fools itself more than the other CNN does.
    cells = {(c["source"], c["target"], c["eps"]): c for c in result["cells"]}
    for own, other in (("cnn-a", "cnn-b"), ("cnn-b", "cnn-a")):
        assert cells[(own, own, 0.1)]["error_rate"] > cells[(other, own, 0.1)]["error_rate"]

    with live_service.client() as client:
        link = client.post(f"/v1/jobs/{job_id}/report-link").json()
    driver = _browser(tmp_path)
    try:
        driver.get(link["url"])
        maps = driver.find_elements("css selector", "svg.heat-map")
        assert len(maps) == 2  # one per eps
        first = maps[0]
        assert len(first.find_elements("css selector", "rect.cell")) == 3 * 7
        rows = [e.text for e in first.find_elements("css selector", "text.row")]
        columns = [e.text for e in first.find_elements("css selector", "text.column")]
        picture = Image.open(io.BytesIO(first.screenshot_as_png))
    finally:
        driver.quit()
    assert rows == source_names
    assert columns == target_names
    # The white-box diagonal at eps 0.1 is deep red; many pixels of it are drawn.
    assert _pixels_near(picture, DEEP_RED, tolerance=60) > 500
    # Cells differ: the rendering carries the numbers, not one flat colour.
    assert len(set(picture.convert("RGB").get_flattened_data())) > 50
