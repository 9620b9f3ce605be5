"""Reading uploaded datasets (``.npz`` or ``.safetensors`` holding ``x`` and ``y``) safely.

numpy only, never pickle. Every size is known and capped before anything is inflated or
allocated: the zip's end record and central directory (at most two entries, a small
directory), each entry's declared size, the ``.npy`` or safetensors header's shape and dtype,
and the data length those imply, against :class:`DatasetLimits`. Data is then streamed in
chunks, counting what really comes out (headers can lie), and checked as it goes: finite
values, whole labels in range.

The API checks an upload with :func:`inspect_dataset` (its memory is one chunk, whatever the
file holds); workers load one with :func:`read_dataset` (the same checks, then the arrays).
Every refusal is a :class:`DatasetFileError` with a stable ``code``.
"""

from __future__ import annotations

import io
import math
import shutil
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.lib import format as npy_format

from service.untrusted_json import UntrustedJsonError, load_untrusted_json

if TYPE_CHECKING:
    from service.settings import Settings

DATASET_FORMATS = ("npz", "safetensors")

# Labels must be below this whatever the settings say: num_classes is an Integer column.
LABEL_LIMIT = 2**31 - 1
# np.savez writes one entry per array: x.npy and y.npy.
NPZ_ENTRIES = {"x.npy": "x", "y.npy": "y"}
MAX_ZIP_DIRECTORY_BYTES = 64 * 1024
MAX_NPY_HEADER_BYTES = 10_000  # numpy's own default
MAX_SAFETENSORS_HEADER_BYTES = 64 * 1024
# Deflate compresses up to ~1000:1; real images rarely pass 60:1 (binary sparse ones, as
# float32). Past this ratio, and past the floor, the upload is called a deflate bomb;
# ``np.savez`` (uncompressed) is always accepted up to the upload cap.
MAX_INFLATION_RATIO = 100
INFLATION_FLOOR_BYTES = 64 * 2**20
_CHUNK_BYTES = 4 * 2**20

_SAFETENSORS_DTYPES = {
    "F16": "<f2",
    "F32": "<f4",
    "F64": "<f8",
    "I8": "i1",
    "I16": "<i2",
    "I32": "<i4",
    "I64": "<i8",
    "U8": "u1",
    "U16": "<u2",
    "U32": "<u4",
    "U64": "<u8",
}

_EOCD = struct.Struct("<4s4H2LH")
_EOCD_SIGNATURE = b"PK\x05\x06"
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_ZIP64_EOCD_SIGNATURE = b"PK\x06\x06"


class DatasetFileError(ValueError):
    """An uploaded dataset that cannot be used: ``field`` names the part, ``reason`` why,
    ``code`` is stable and ``status`` is the HTTP status (413 for sizes, else 422)."""

    def __init__(
        self, field: str, reason: str, *, code: str = "invalid_dataset", status: int = 422
    ) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.code = code
        self.status = status


@dataclass(frozen=True)
class DatasetLimits:
    """What a dataset may hold.

    ``max_decoded_bytes`` bounds both the inflated entries and the arrays as a worker holds
    them (``x`` as float32, ``y`` as int64); ``max_example_values`` bounds C*H*W of one
    example; labels must be below ``max_num_classes`` (and below 2^31 - 1).
    """

    max_decoded_bytes: int
    max_example_values: int
    max_num_classes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> DatasetLimits:
        """The limits the settings configure."""
        return cls(
            max_decoded_bytes=settings.max_dataset_decoded_bytes,
            max_example_values=settings.max_input_values,
            max_num_classes=settings.max_num_classes,
        )

    @property
    def label_bound(self) -> int:
        """Labels must be below this."""
        return min(self.max_num_classes, LABEL_LIMIT)


@dataclass(frozen=True)
class DatasetSummary:
    """What validation learned about a dataset."""

    num_examples: int
    example_shape: list[int]
    num_classes: int
    value_range: list[float]


@dataclass(frozen=True)
class _ArraySpec:
    """An array as its header declares it, before any of its data is read."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    fortran_order: bool

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.count * self.dtype.itemsize


def detect_format(filename: str | None, head: bytes) -> str:
    """``npz`` (a zip) or ``safetensors`` (a little-endian header length, then JSON)."""
    if head.startswith(b"PK\x03\x04") or (filename or "").endswith(".npz"):
        return "npz"
    if (filename or "").endswith(".safetensors") or head[8:9] == b"{":
        return "safetensors"
    raise DatasetFileError("file", "expected an .npz or .safetensors file with arrays 'x' and 'y'")


# --- reading exactly, counting what comes out -----------------------------------------------


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _read_exact(stream: _Readable, size: int, what: str) -> bytes:
    parts = []
    left = size
    while left > 0:
        part = stream.read(min(left, _CHUNK_BYTES))
        if not part:
            raise DatasetFileError("file", f"{what} is truncated")
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


class _CountingReader:
    """Reads from ``stream``, refusing to yield more than ``limit`` bytes in all."""

    def __init__(self, stream: IO[bytes], limit: int, what: str) -> None:
        self.stream = stream
        self.limit = limit
        self.what = what
        self.count = 0

    def read(self, size: int = -1, /) -> bytes:
        # One byte past the limit is asked for, so a lying size shows.
        room = self.limit - self.count + 1
        data = self.stream.read(room if size < 0 else min(size, room))
        self.count += len(data)
        if self.count > self.limit:
            raise DatasetFileError(
                "file",
                f"{self.what} inflates past its declared {self.limit} bytes",
                code="dataset_too_large",
                status=413,
            )
        return data


def _chunks(stream: _Readable, spec: _ArraySpec) -> Iterator[np.ndarray]:
    """The array's data as flat arrays of at most ``_CHUNK_BYTES``, exactly ``spec.nbytes``."""
    itemsize = spec.dtype.itemsize
    step = max(1, _CHUNK_BYTES // itemsize) * itemsize
    left = spec.nbytes
    while left > 0:
        want = min(step, left)
        data = stream.read(want)
        while len(data) < want:
            more = stream.read(want - len(data))
            if not more:
                raise DatasetFileError(spec.name, "the array's data is truncated")
            data += more
        left -= want
        yield np.frombuffer(data, dtype=spec.dtype)


# --- npz ---------------------------------------------------------------------------------


def _zip_directory_size(stream: IO[bytes], size: int) -> tuple[int, int]:
    """``(entries, central directory bytes)`` from the end record, found as zipfile finds it,
    so the directory zipfile then parses is known to be small."""
    if size < _EOCD.size:
        raise DatasetFileError("file", "not a valid .npz (zip) file")
    stream.seek(size - _EOCD.size)
    record = stream.read(_EOCD.size)
    if record[:4] == _EOCD_SIGNATURE and record[-2:] == b"\x00\x00":
        position = size - _EOCD.size
    else:
        start = max(size - (1 << 16) - _EOCD.size, 0)
        stream.seek(start)
        found = stream.read(size - start).rfind(_EOCD_SIGNATURE)
        if found < 0 or start + found + _EOCD.size > size:
            raise DatasetFileError("file", "not a valid .npz (zip) file")
        position = start + found
        stream.seek(position)
        record = stream.read(_EOCD.size)
    fields = _EOCD.unpack(record)
    entries, directory_bytes = int(fields[4]), int(fields[5])
    # zipfile takes the zip64 record's numbers whenever its locator precedes the end record.
    if position >= _ZIP64_LOCATOR.size:
        stream.seek(position - _ZIP64_LOCATOR.size)
        locator = stream.read(_ZIP64_LOCATOR.size)
        if locator[:4] == _ZIP64_LOCATOR_SIGNATURE:
            start64 = position - _ZIP64_LOCATOR.size - _ZIP64_EOCD.size
            if start64 >= 0:
                stream.seek(start64)
                record64 = stream.read(_ZIP64_EOCD.size)
                if record64[:4] == _ZIP64_EOCD_SIGNATURE:
                    fields64 = _ZIP64_EOCD.unpack(record64)
                    entries, directory_bytes = int(fields64[7]), int(fields64[8])
    return entries, directory_bytes


class _NpzFile:
    """An ``.npz`` whose directory was checked; ``specs`` from the ``.npy`` headers."""

    def __init__(self, stream: IO[bytes], size: int, limits: DatasetLimits) -> None:
        entries, directory_bytes = _zip_directory_size(stream, size)
        if entries > len(NPZ_ENTRIES) or directory_bytes > MAX_ZIP_DIRECTORY_BYTES:
            raise DatasetFileError(
                "file",
                f"the archive's directory lists {entries} entries in {directory_bytes} bytes; "
                "only x.npy and y.npy are allowed",
                code="dataset_entries",
            )
        stream.seek(0)
        try:
            self.archive = zipfile.ZipFile(stream)
        except (
            zipfile.BadZipFile,
            NotImplementedError,
            ValueError,
            OSError,
            EOFError,
            struct.error,
        ):
            raise DatasetFileError("file", "not a valid .npz (zip) file") from None
        self.infos: dict[str, zipfile.ZipInfo] = {}
        for info in self.archive.infolist():
            name = NPZ_ENTRIES.get(info.filename)
            if name is None or name in self.infos:
                raise DatasetFileError(
                    "file",
                    f"unexpected entry {info.filename[:100]!r}; only x.npy and y.npy are allowed",
                    code="dataset_entries",
                )
            if info.flag_bits & 0x1:
                raise DatasetFileError("file", f"{info.filename} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise DatasetFileError(
                    "file", f"{info.filename} uses an unsupported compression (stored or deflate)"
                )
            if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
                raise DatasetFileError("file", f"{info.filename}'s stored sizes disagree")
            self.infos[name] = info
        for name in ("x", "y"):
            if name not in self.infos:
                raise DatasetFileError(
                    name, f"the file has no array named '{name}'", code="dataset_entries"
                )
        inflated = sum(info.file_size for info in self.infos.values())
        if inflated > limits.max_decoded_bytes:
            raise DatasetFileError(
                "file",
                f"the arrays inflate to {inflated} bytes, over the cap of "
                f"{limits.max_decoded_bytes}",
                code="dataset_too_large",
                status=413,
            )
        if inflated > INFLATION_FLOOR_BYTES and inflated > MAX_INFLATION_RATIO * size:
            raise DatasetFileError(
                "file",
                f"{size} bytes inflate to {inflated} (over {MAX_INFLATION_RATIO}:1): a deflate "
                "bomb; save with numpy.savez (uncompressed) instead",
                code="deflate_bomb",
                status=413,
            )
        self.specs: dict[str, _ArraySpec] = {}
        self.header_bytes: dict[str, int] = {}
        for name in ("x", "y"):
            self.specs[name], self.header_bytes[name] = self._header(name)

    def close(self) -> None:
        """Close the archive (not the stream it reads)."""
        self.archive.close()

    @contextmanager
    def _entry(self, name: str) -> Iterator[_CountingReader]:
        info = self.infos[name]
        try:
            with self.archive.open(info) as entry:
                yield _CountingReader(entry, info.file_size, info.filename)
        except DatasetFileError:
            raise
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
            raise DatasetFileError("file", f"corrupt entry {info.filename} ({exc})") from None

    def _header(self, name: str) -> tuple[_ArraySpec, int]:
        info = self.infos[name]
        with self._entry(name) as entry:
            try:
                version = npy_format.read_magic(entry)
                if version == (1, 0):
                    shape, fortran_order, dtype = npy_format.read_array_header_1_0(
                        entry,
                        max_header_size=MAX_NPY_HEADER_BYTES,
                    )
                elif version == (2, 0):
                    shape, fortran_order, dtype = npy_format.read_array_header_2_0(
                        entry,
                        max_header_size=MAX_NPY_HEADER_BYTES,
                    )
                else:
                    raise DatasetFileError(name, f"unsupported .npy version {version}")
            except DatasetFileError:
                raise
            except (ValueError, SyntaxError, RecursionError, MemoryError, TypeError) as exc:
                raise DatasetFileError(name, f"unreadable .npy header ({exc})") from None
            header_bytes = entry.count
        spec = _ArraySpec(name, dtype, tuple(int(d) for d in shape), bool(fortran_order))
        _check_spec(spec)
        if header_bytes + spec.nbytes != info.file_size:
            raise DatasetFileError(
                name,
                f"the header declares shape {list(spec.shape)} of {spec.dtype} "
                f"({spec.nbytes} bytes) but the entry holds {info.file_size - header_bytes}",
            )
        return spec, header_bytes

    @contextmanager
    def data(self, name: str) -> Iterator[Iterator[np.ndarray]]:
        """The array's data as chunks; at the end, the entry must be exhausted (CRC)."""
        spec, header_bytes = self.specs[name], self.header_bytes[name]
        with self._entry(name) as entry:
            _read_exact(entry, header_bytes, f"{name}.npy")

            def chunks() -> Iterator[np.ndarray]:
                yield from _chunks(entry, spec)
                if entry.read(1):  # also makes zipfile check the CRC
                    raise DatasetFileError(name, "trailing bytes after the array's data")

            yield chunks()


# --- safetensors -------------------------------------------------------------------------


class _SafetensorsFile:
    """A ``.safetensors`` file whose header was checked against its data length."""

    def __init__(self, stream: IO[bytes], size: int) -> None:
        self.stream = stream
        stream.seek(0)
        prefix = stream.read(8)
        if len(prefix) < 8:
            raise DatasetFileError("file", "not a valid .safetensors file (too short)")
        header_bytes = int.from_bytes(prefix, "little")
        if header_bytes > MAX_SAFETENSORS_HEADER_BYTES:
            raise DatasetFileError(
                "file",
                f"the safetensors header is {header_bytes} bytes, over the cap of "
                f"{MAX_SAFETENSORS_HEADER_BYTES}",
            )
        if 8 + header_bytes > size:
            raise DatasetFileError("file", "the safetensors header runs past the end of the file")
        raw = stream.read(header_bytes)
        try:
            header = load_untrusted_json(raw.decode("utf-8"), max_depth=4)
        except (UnicodeDecodeError, UntrustedJsonError, ValueError) as exc:
            raise DatasetFileError("file", f"unreadable safetensors header ({exc})") from None
        if not isinstance(header, dict):
            raise DatasetFileError("file", "the safetensors header is not an object")
        self.data_start = 8 + header_bytes
        data_bytes = size - self.data_start
        self.offsets: dict[str, int] = {}
        self.specs: dict[str, _ArraySpec] = {}
        spans = []
        for key, entry in header.items():
            if key == "__metadata__":
                if not isinstance(entry, dict) or not all(
                    isinstance(v, str) for v in entry.values()
                ):
                    raise DatasetFileError("file", "__metadata__ must map strings to strings")
                continue
            if key not in ("x", "y"):
                raise DatasetFileError(
                    "file",
                    f"unexpected tensor {key[:100]!r}; only x and y are allowed",
                    code="dataset_entries",
                )
            spec, begin, end = self._tensor(key, entry, data_bytes)
            self.specs[key] = spec
            self.offsets[key] = begin
            spans.append((begin, end))
        for name in ("x", "y"):
            if name not in self.specs:
                raise DatasetFileError(
                    name, f"the file has no array named '{name}'", code="dataset_entries"
                )
        # The format's own rule: the tensors tile the data buffer, no gaps, no overlaps.
        position = 0
        for begin, end in sorted(spans):
            if begin != position:
                raise DatasetFileError("file", "the tensors' data_offsets leave gaps or overlap")
            position = end
        if position != data_bytes:
            raise DatasetFileError("file", f"{data_bytes - position} bytes after the tensors' data")

    @staticmethod
    def _tensor(name: str, entry: object, data_bytes: int) -> tuple[_ArraySpec, int, int]:
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise DatasetFileError(name, "needs exactly dtype, shape and data_offsets")
        dtype_name, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype_name, str) or dtype_name not in _SAFETENSORS_DTYPES:
            kind = "numeric" if name == "x" else "integer"
            raise DatasetFileError(
                name,
                f"must be {kind} (F16, F32, F64, I8..I64, U8..U64), got dtype {dtype_name!r}",
                code="dataset_dtype",
            )
        if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
            raise DatasetFileError(name, "shape must be a list of integers", code="dataset_shape")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_bytes
        ):
            raise DatasetFileError(
                name, f"data_offsets must lie within the {data_bytes} data bytes"
            )
        spec = _ArraySpec(name, np.dtype(_SAFETENSORS_DTYPES[dtype_name]), tuple(shape), False)
        _check_spec(spec)
        begin, end = int(offsets[0]), int(offsets[1])
        if end - begin != spec.nbytes:
            raise DatasetFileError(
                name,
                f"shape {list(spec.shape)} of {dtype_name} needs {spec.nbytes} bytes, "
                f"data_offsets give {end - begin}",
            )
        return spec, begin, end

    def close(self) -> None:
        """Nothing to close: the caller owns the stream."""

    @contextmanager
    def data(self, name: str) -> Iterator[Iterator[np.ndarray]]:
        """The array's data as chunks."""
        self.stream.seek(self.data_start + self.offsets[name])
        yield _chunks(self.stream, self.specs[name])


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- the checks both formats share --------------------------------------------------------


def _check_spec(spec: _ArraySpec) -> None:
    """Dtype and rank of one array, from its header alone."""
    dtype = spec.dtype
    numeric = (
        dtype.kind in "iuf"
        and dtype.fields is None
        and dtype.subdtype is None
        and not dtype.hasobject
        and dtype.itemsize <= 8
    )
    if spec.name == "x":
        if not numeric:
            raise DatasetFileError("x", f"must be numeric, got dtype {dtype}", code="dataset_dtype")
        if len(spec.shape) not in (3, 4):
            raise DatasetFileError(
                "x",
                f"must be [N, C, H, W] or [N, H, W], got shape {list(spec.shape)}",
                code="dataset_shape",
            )
    else:
        if not numeric:
            raise DatasetFileError(
                "y", f"labels must be integers, got dtype {dtype}", code="dataset_dtype"
            )
        if len(spec.shape) != 1:
            raise DatasetFileError(
                "y", f"must be [N], got shape {list(spec.shape)}", code="dataset_shape"
            )
    if any(d < 1 for d in spec.shape):
        raise DatasetFileError(
            spec.name,
            f"every dimension must be at least 1, got shape {list(spec.shape)}",
            code="dataset_shape",
        )


def _check_pair(x: _ArraySpec, y: _ArraySpec, limits: DatasetLimits) -> None:
    """What ``x`` and ``y`` must agree on, and the sizes they imply."""
    examples = x.shape[0]
    if y.shape[0] != examples:
        raise DatasetFileError(
            "y", f"must be [N] with N={examples}, got shape {list(y.shape)}", code="dataset_shape"
        )
    if examples > LABEL_LIMIT:
        raise DatasetFileError("x", f"at most {LABEL_LIMIT} examples", code="dataset_shape")
    values = math.prod(x.shape[1:])
    if values > limits.max_example_values:
        raise DatasetFileError(
            "x",
            f"each example has C*H*W = {values} values, over the cap of "
            f"{limits.max_example_values}",
            code="dataset_shape",
        )
    decoded = max(x.nbytes + y.nbytes, x.count * 4 + y.count * 8)
    if decoded > limits.max_decoded_bytes:
        raise DatasetFileError(
            "file",
            f"the arrays take {decoded} bytes decoded, over the cap of {limits.max_decoded_bytes}",
            code="dataset_too_large",
            status=413,
        )


class _XScan:
    """Finite values and their range, over chunks of ``x``; optionally the float32 array."""

    def __init__(self, spec: _ArraySpec, keep: bool) -> None:
        self.minimum = math.inf
        self.maximum = -math.inf
        self.array = np.empty(spec.count, dtype=np.float32) if keep else None
        self.position = 0

    def add(self, chunk: np.ndarray) -> None:
        with np.errstate(over="ignore", invalid="ignore"):
            values = chunk.astype(np.float32)
        if not np.isfinite(values).all():
            raise DatasetFileError(
                "x",
                "contains NaN or infinite values (or values beyond float32)",
                code="dataset_values",
            )
        self.minimum = min(self.minimum, float(values.min()))
        self.maximum = max(self.maximum, float(values.max()))
        if self.array is not None:
            self.array[self.position : self.position + values.size] = values
        self.position += values.size


class _YScan:
    """Whole labels in ``[0, bound)``, over chunks of ``y``; optionally the int64 array."""

    def __init__(self, spec: _ArraySpec, bound: int, keep: bool) -> None:
        self.bound = bound
        self.largest = -1
        self.array = np.empty(spec.count, dtype=np.int64) if keep else None
        self.position = 0

    def add(self, chunk: np.ndarray) -> None:
        if chunk.dtype.kind == "f":
            if not np.isfinite(chunk).all() or not np.all(chunk == np.round(chunk)):
                raise DatasetFileError("y", "labels must be whole numbers", code="dataset_values")
        smallest, largest = chunk.min(), chunk.max()
        if smallest < 0:
            raise DatasetFileError(
                "y", f"labels must be >= 0, got {smallest}", code="dataset_values"
            )
        if largest >= self.bound:
            raise DatasetFileError(
                "y",
                f"labels must be below {self.bound} (the class cap), got {largest}",
                code="dataset_values",
            )
        self.largest = max(self.largest, int(largest))
        if self.array is not None:
            self.array[self.position : self.position + chunk.size] = chunk
        self.position += chunk.size


def _shaped(flat: np.ndarray, spec: _ArraySpec) -> np.ndarray:
    return np.ascontiguousarray(flat.reshape(spec.shape, order="F" if spec.fortran_order else "C"))


@contextmanager
def _seekable(stream: IO[bytes]) -> Iterator[IO[bytes]]:
    if stream.seekable():
        yield stream
        return
    with tempfile.TemporaryFile() as copy:
        shutil.copyfileobj(stream, copy)
        yield copy


def _scan(
    stream: IO[bytes], fmt: str, limits: DatasetLimits, *, keep: bool
) -> tuple[DatasetSummary, np.ndarray | None, np.ndarray | None]:
    if fmt not in DATASET_FORMATS:
        raise DatasetFileError("file", f"unknown dataset format {fmt!r}")
    with _seekable(stream) as source:
        size = source.seek(0, io.SEEK_END)
        source.seek(0)
        container = (
            _NpzFile(source, size, limits) if fmt == "npz" else _SafetensorsFile(source, size)
        )
        with closing(container):
            x_spec, y_spec = container.specs["x"], container.specs["y"]
            _check_pair(x_spec, y_spec, limits)
            x_scan = _XScan(x_spec, keep)
            with container.data("x") as chunks:
                for chunk in chunks:
                    x_scan.add(chunk)
            y_scan = _YScan(y_spec, limits.label_bound, keep)
            with container.data("y") as chunks:
                for chunk in chunks:
                    y_scan.add(chunk)
    shape = list(x_spec.shape[1:]) if len(x_spec.shape) == 4 else [1, *x_spec.shape[1:]]
    summary = DatasetSummary(
        num_examples=x_spec.shape[0],
        example_shape=shape,
        num_classes=y_scan.largest + 1,
        value_range=[x_scan.minimum, x_scan.maximum],
    )
    x = None if x_scan.array is None else _shaped(x_scan.array, x_spec).reshape(-1, *shape)
    y = None if y_scan.array is None else _shaped(y_scan.array, y_spec)
    return summary, x, y


def inspect_dataset(stream: IO[bytes], fmt: str, limits: DatasetLimits) -> DatasetSummary:
    """Check a dataset file without holding its arrays (one chunk at a time) and summarize
    it: ``num_classes`` is the largest label + 1. Raises :class:`DatasetFileError`."""
    summary, _, _ = _scan(stream, fmt, limits, keep=False)
    return summary


def read_dataset(
    stream: IO[bytes], fmt: str, limits: DatasetLimits
) -> tuple[np.ndarray, np.ndarray]:
    """Check and load a dataset file: ``x`` float32 ``[N, C, H, W]``, ``y`` int64 ``[N]``.

    ``x`` may be stored as ``[N, H, W]`` (one channel is added). Raises
    :class:`DatasetFileError`.
    """
    _, x, y = _scan(stream, fmt, limits, keep=True)
    assert x is not None
    assert y is not None
    return x, y
