"""Content-addressed artifact storage: bytes are stored once under their SHA-256.

:class:`LocalArtifactStore` keeps the bytes in a folder, :class:`S3ArtifactStore` in a bucket
of an S3-compatible object store (AWS, MinIO, Ceph); ``GAUNTLET_ARTIFACT_STORE`` picks one.
Callers go through :class:`ArtifactStore` only: :meth:`ArtifactStore.local_file` when they
need a file on disk (a jail's input), :meth:`ArtifactStore.iter_chunks` to stream a download.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from service.settings import Settings, get_settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client  # pragma: no cover
else:
    S3Client = Any

try:  # boto3 is the 's3' extra: a local store needs none of it.
    from botocore.exceptions import ClientError
except ImportError:  # pragma: no cover

    class ClientError(Exception):  # type: ignore[no-redef]
        """Never raised: without botocore there is no S3 client to raise it."""


_CHUNK = 1 << 20
# Uploads are spooled (memory up to this, then a temporary file) while hashed, since the key
# is their digest; a file that size or larger goes up in parts of this size.
_SPOOL_MEMORY_BYTES = 8 * _CHUNK
_PART_BYTES = 8 * _CHUNK


def check_digest(sha256: str) -> str:
    """``sha256`` if it is a lowercase hex SHA-256 digest; ``ValueError`` otherwise."""
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError("not a sha256 hex digest")
    return sha256


class StoredObjectTooLarge(Exception):
    """The stream was longer than the caller's limit; nothing was stored."""


class ArtifactStore(ABC):
    """Stores immutable blobs addressed by their SHA-256 hex digest."""

    @abstractmethod
    def put_stream(self, stream: BinaryIO, *, max_bytes: int | None = None) -> tuple[str, int]:
        """Store everything ``stream`` yields; return ``(sha256, size)``.

        Raises :class:`StoredObjectTooLarge` past ``max_bytes``, leaving nothing behind.
        """

    @abstractmethod
    def open(self, sha256: str) -> BinaryIO:
        """Open a stored blob for reading; ``FileNotFoundError`` when absent."""

    @abstractmethod
    def exists(self, sha256: str) -> bool:
        """Whether a blob is stored."""

    @abstractmethod
    def delete(self, sha256: str) -> None:
        """Remove a blob if present."""

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        """Store ``data``; return ``(sha256, size)``."""
        return self.put_stream(io.BytesIO(data))

    def read_bytes(self, sha256: str) -> bytes:
        """A stored blob's bytes."""
        with self.open(sha256) as handle:
            return handle.read()

    def iter_chunks(self, sha256: str, chunk_size: int = _CHUNK) -> Iterator[bytes]:
        """A stored blob's bytes in chunks (an HTTP download); ``FileNotFoundError`` when
        absent, raised before the first chunk is asked for."""
        handle = self.open(sha256)

        def chunks() -> Iterator[bytes]:
            with handle:
                while chunk := handle.read(chunk_size):
                    yield chunk

        return chunks()

    @contextmanager
    def local_file(self, sha256: str) -> Iterator[Path]:
        """A stored blob as a file on this machine for the duration of the block (a jail's
        input): a temporary copy, removed afterwards. Read it, never write to it."""
        with tempfile.TemporaryDirectory(prefix="gauntlet-blob-") as folder:
            path = Path(folder) / check_digest(sha256)
            with self.open(sha256) as source, path.open("wb") as target:
                shutil.copyfileobj(source, target, _CHUNK)
            yield path


class LocalArtifactStore(ArtifactStore):
    """Blobs as files ``<root>/ab/cdef...``, written to a temporary file then renamed."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)

    def _path(self, sha256: str) -> Path:
        check_digest(sha256)
        return self.root / sha256[:2] / sha256[2:]

    def put_stream(self, stream: BinaryIO, *, max_bytes: int | None = None) -> tuple[str, int]:
        digest = hashlib.sha256()
        size = 0
        handle, temp_name = tempfile.mkstemp(dir=self.root / "tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                while chunk := stream.read(_CHUNK):
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise StoredObjectTooLarge(f"more than {max_bytes} bytes")
                    digest.update(chunk)
                    out.write(chunk)
            sha256 = digest.hexdigest()
            target = self._path(sha256)
            target.parent.mkdir(exist_ok=True)
            # Same digest, same bytes: an existing blob is already right.
            os.replace(temp_name, target)
            return sha256, size
        finally:
            if os.path.exists(temp_name):
                os.unlink(temp_name)

    def open(self, sha256: str) -> BinaryIO:
        return self._path(sha256).open("rb")

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).is_file()

    def delete(self, sha256: str) -> None:
        self._path(sha256).unlink(missing_ok=True)

    def local_path(self, sha256: str) -> Path:
        """The file holding a blob (local stores only)."""
        return self._path(sha256)

    @contextmanager
    def local_file(self, sha256: str) -> Iterator[Path]:
        """The blob's own file: no copy."""
        path = self._path(sha256)
        if not path.is_file():
            raise FileNotFoundError(sha256)
        yield path

    def clear(self) -> None:
        """Remove every blob (tests)."""
        shutil.rmtree(self.root, ignore_errors=True)


class S3ArtifactStore(ArtifactStore):
    """Blobs as objects ``<prefix><sha256>`` in a bucket of an S3-compatible store.

    An upload is hashed while it is spooled (in memory up to 8 MiB, then a temporary file:
    never a big upload in memory), checked against the size cap, then sent, in parts when it
    is large, unless the bucket already holds that digest. Readers get a seekable temporary
    copy from :meth:`open` (dataset readers seek), the object's own stream from
    :meth:`iter_chunks` and :meth:`read_bytes`.
    """

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        prefix: str = "",
        *,
        spool_dir: str | None = None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.spool_dir = spool_dir

    def key(self, sha256: str) -> str:
        """The object key of a blob."""
        return self.prefix + check_digest(sha256)

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=_PART_BYTES, multipart_chunksize=_PART_BYTES, use_threads=False
        )

    def put_stream(self, stream: BinaryIO, *, max_bytes: int | None = None) -> tuple[str, int]:
        digest = hashlib.sha256()
        size = 0
        with tempfile.SpooledTemporaryFile(
            max_size=_SPOOL_MEMORY_BYTES, dir=self.spool_dir
        ) as spool:
            while chunk := stream.read(_CHUNK):
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise StoredObjectTooLarge(f"more than {max_bytes} bytes")
                digest.update(chunk)
                spool.write(chunk)
            sha256 = digest.hexdigest()
            # Same digest, same bytes: an object already there is already right.
            if not self.exists(sha256):
                spool.seek(0)
                self.client.upload_fileobj(
                    spool,
                    self.bucket,
                    self.key(sha256),
                    ExtraArgs={"ContentType": "application/octet-stream"},
                    Config=self._transfer_config(),
                )
        return sha256, size

    def _get(self, sha256: str) -> Any:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key(sha256))
        except ClientError as error:
            if _missing(error):
                raise FileNotFoundError(sha256) from None
            raise

    def open(self, sha256: str) -> BinaryIO:
        body = self._get(sha256)["Body"]
        copy = tempfile.SpooledTemporaryFile(max_size=_SPOOL_MEMORY_BYTES, dir=self.spool_dir)
        try:
            with body:
                for chunk in body.iter_chunks(_CHUNK):
                    copy.write(chunk)
            copy.seek(0)
        except BaseException:
            copy.close()
            raise
        return cast(BinaryIO, copy)

    def read_bytes(self, sha256: str) -> bytes:
        body = self._get(sha256)["Body"]
        with body:
            return cast(bytes, body.read())

    def iter_chunks(self, sha256: str, chunk_size: int = _CHUNK) -> Iterator[bytes]:
        body = self._get(sha256)["Body"]

        def chunks() -> Iterator[bytes]:
            with body:
                yield from body.iter_chunks(chunk_size)

        return chunks()

    @contextmanager
    def local_file(self, sha256: str) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="gauntlet-blob-", dir=self.spool_dir) as folder:
            path = Path(folder) / check_digest(sha256)
            try:
                self.client.download_file(
                    self.bucket, self.key(sha256), str(path), Config=self._transfer_config()
                )
            except ClientError as error:
                if _missing(error):
                    raise FileNotFoundError(sha256) from None
                raise
            yield path

    def exists(self, sha256: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(sha256))
        except ClientError as error:
            if _missing(error):
                return False
            raise
        return True

    def delete(self, sha256: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key(sha256))


def _missing(error: Exception) -> bool:
    """Whether a botocore ``ClientError`` says the object is not there."""
    code = getattr(error, "response", {}).get("Error", {}).get("Code")
    return code in {"NoSuchKey", "404", "NotFound"}


def s3_client(settings: Settings) -> S3Client:
    """A boto3 S3 client for the settings (boto3's own chain fills what they leave out)."""
    return _s3_client(
        os.getpid(),
        settings.s3_endpoint_url or None,
        settings.s3_region or None,
        settings.s3_access_key_id or None,
        settings.s3_secret_access_key.get_secret_value() or None,
    )


@lru_cache(maxsize=8)
def _s3_client(
    _pid: int,
    endpoint_url: str | None,
    region: str | None,
    access_key_id: str | None,
    secret_access_key: str | None,
) -> S3Client:
    # One client per process (keyed by pid: a forked worker must not share its parent's
    # connections) and configuration; boto3 clients are thread-safe.
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise RuntimeError(
            "GAUNTLET_ARTIFACT_STORE=s3 needs boto3: install the 's3' extra (pip install '.[s3]')"
        ) from None

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=Config(retries={"max_attempts": 5, "mode": "standard"}),
    )


def get_store() -> ArtifactStore:
    """The artifact store the settings describe."""
    settings = get_settings()
    if settings.artifact_store == "s3":
        return S3ArtifactStore(s3_client(settings), settings.s3_bucket, settings.s3_prefix)
    assert settings.artifact_dir is not None
    return LocalArtifactStore(settings.artifact_dir)
