"""The artifact stores: the local folder and S3 (against moto's real S3-protocol server)."""

from __future__ import annotations

import hashlib
import io
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.settings import Settings
from service.storage import (
    ArtifactStore,
    LocalArtifactStore,
    S3ArtifactStore,
    StoredObjectTooLarge,
    get_store,
)
from tests.conftest import S3Server

MiB = 2**20


class CountingStream(io.RawIOBase):
    """``size`` pseudo-random bytes produced as they are read (never held whole)."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.left = size
        self.block = hashlib.sha256(str(seed).encode()).digest() * (MiB // 32)
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self.left, len(self.block))
        buffer[:count] = self.block[:count]
        self.digest.update(self.block[:count])
        self.left -= count
        return count


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    bucket = s3_server.create_bucket()
    yield bucket
    s3_server.empty_bucket(bucket)


@pytest.fixture(params=["local", "s3"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, s3_server: S3Server, s3_bucket: str
) -> ArtifactStore:
    if request.param == "local":
        return LocalArtifactStore(tmp_path / "artifacts")
    return S3ArtifactStore(s3_server.client(), s3_bucket, "blobs/")


def object_keys(server: S3Server, bucket: str) -> list[str]:
    listing = server.client().list_objects_v2(Bucket=bucket)
    return [item["Key"] for item in listing.get("Contents", [])]


def test_put_read_exists_delete(store: ArtifactStore) -> None:
    data = b"weights" * 1000
    sha256, size = store.put_bytes(data)
    assert (sha256, size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert store.exists(sha256)
    assert store.read_bytes(sha256) == data
    with store.open(sha256) as handle:
        handle.seek(7)  # dataset readers seek
        assert handle.read(7) == b"weights"
    assert b"".join(store.iter_chunks(sha256, chunk_size=1000)) == data
    with store.local_file(sha256) as path:
        assert path.read_bytes() == data
    # Content-addressed: the same bytes again are the same blob.
    assert store.put_stream(io.BytesIO(data)) == (sha256, size)
    store.delete(sha256)
    assert not store.exists(sha256)
    store.delete(sha256)  # deleting what is gone is fine


def test_missing_blobs_are_file_not_found(store: ArtifactStore) -> None:
    missing = hashlib.sha256(b"never stored").hexdigest()
    assert not store.exists(missing)
    with pytest.raises(FileNotFoundError):
        store.open(missing)
    with pytest.raises(FileNotFoundError):
        store.read_bytes(missing)
    with pytest.raises(FileNotFoundError):
        store.iter_chunks(missing)
    with pytest.raises(FileNotFoundError), store.local_file(missing):
        pass
    with pytest.raises(ValueError, match="sha256"):
        store.exists("../../etc/passwd")


def test_size_cap_leaves_nothing(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(StoredObjectTooLarge):
        store.put_stream(io.BytesIO(b"x" * (3 * MiB + 1)), max_bytes=3 * MiB)
    assert not store.exists(hashlib.sha256(b"x" * (3 * MiB + 1)).hexdigest())
    if isinstance(store, S3ArtifactStore):
        assert store.client.list_objects_v2(Bucket=store.bucket).get("KeyCount") == 0
    else:
        assert list((tmp_path / "artifacts").rglob("*")) == [tmp_path / "artifacts" / "tmp"]
    assert store.put_stream(io.BytesIO(b"x" * 3 * MiB), max_bytes=3 * MiB)[1] == 3 * MiB


def test_s3_keys_are_prefix_and_digest(s3_server: S3Server, s3_bucket: str) -> None:
    store = S3ArtifactStore(s3_server.client(), s3_bucket, "tenant-a/blobs/")
    sha256, _ = store.put_bytes(b"abc")
    assert object_keys(s3_server, s3_bucket) == [f"tenant-a/blobs/{sha256}"]
    other = S3ArtifactStore(s3_server.client(), s3_bucket, "elsewhere/")
    assert not other.exists(sha256)


def test_s3_big_upload_streams_in_parts(s3_server: S3Server, s3_bucket: str) -> None:
    """A 40 MiB upload goes up in 8 MiB parts, and the process never holds it whole."""
    store = S3ArtifactStore(s3_server.client(), s3_bucket)
    size = 40 * MiB
    stream = io.BufferedReader(CountingStream(size), buffer_size=MiB)
    tracemalloc.start()
    try:
        sha256, stored = store.put_stream(stream, max_bytes=size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (sha256, stored) == (stream.raw.digest.hexdigest(), size)  # type: ignore[attr-defined]
    assert peak < size / 2, f"peak {peak / MiB:.1f} MiB for a {size / MiB:.0f} MiB upload"
    head = store.client.head_object(Bucket=s3_bucket, Key=sha256)
    assert head["ContentLength"] == size
    # A multipart upload's ETag is '"<md5 of the part md5s>-<parts>"'.
    assert head["ETag"].strip('"').endswith("-5"), head["ETag"]
    digest = hashlib.sha256()
    for chunk in store.iter_chunks(sha256):
        digest.update(chunk)
    assert digest.hexdigest() == sha256
    with store.local_file(sha256) as path:
        assert os.path.getsize(path) == size


def test_get_store_follows_the_settings(
    settings: Settings, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from service.settings import get_settings

    bucket = s3_server.create_bucket()
    for name, value in {
        "GAUNTLET_ARTIFACT_STORE": "s3",
        "GAUNTLET_S3_BUCKET": bucket,
        "GAUNTLET_S3_PREFIX": "p/",
        "GAUNTLET_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "GAUNTLET_S3_REGION": "us-east-1",
        "GAUNTLET_S3_ACCESS_KEY_ID": "testing",
        "GAUNTLET_S3_SECRET_ACCESS_KEY": "testing",
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    store = get_store()
    assert isinstance(store, S3ArtifactStore)
    sha256, _ = store.put_bytes(b"through the settings")
    assert object_keys(s3_server, bucket) == [f"p/{sha256}"]
    monkeypatch.setenv("GAUNTLET_ARTIFACT_STORE", "local")
    monkeypatch.setenv("GAUNTLET_ARTIFACT_DIR", str(tmp_path / "local"))
    get_settings.cache_clear()
    local = get_store()
    assert isinstance(local, LocalArtifactStore)
    assert local.root == tmp_path / "local"


def test_s3_store_needs_a_bucket() -> None:
    with pytest.raises(ValueError, match="GAUNTLET_S3_BUCKET"):
        Settings(artifact_store="s3", s3_bucket="")
