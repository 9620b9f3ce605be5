"""openapi.yaml is generated from the app; this fails when the two drift apart."""

from __future__ import annotations

from pathlib import Path

import yaml

from service.admin import openapi_yaml

ROOT = Path(__file__).resolve().parents[2]


def test_openapi_yaml_matches_app() -> None:
    committed = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    generated = yaml.safe_load(openapi_yaml())
    assert committed == generated, "openapi.yaml is stale: run `make openapi` and commit it"


def test_openapi_documents_the_core_routes() -> None:
    paths = yaml.safe_load(openapi_yaml())["paths"]
    for path in (
        "/v1/models",
        "/v1/datasets",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/architectures",
        "/healthz",
        "/readyz",
    ):
        assert path in paths
