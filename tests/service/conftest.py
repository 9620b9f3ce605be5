"""API test fixtures: an HTTP client (httpx, via Starlette's TestClient) on the ASGI app."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A client of a freshly built app using the test settings."""
    with TestClient(create_app(), raise_server_exceptions=False) as test_client:
        yield test_client
