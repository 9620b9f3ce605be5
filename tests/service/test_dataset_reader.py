"""The bounded dataset reader: every size is checked before anything is inflated or allocated."""

from __future__ import annotations

import io
import struct
import tracemalloc
import warnings
import zipfile
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save as save_safetensors

from service.datasets.reader import (
    DatasetFileError,
    DatasetLimits,
    inspect_dataset,
    read_dataset,
)
from tests.factories import deflate_bomb, npz_bytes

LIMITS = DatasetLimits(
    max_decoded_bytes=2 * 2**30, max_example_values=3 * 512 * 512, max_num_classes=100_000
)
RNG = np.random.default_rng(0)
X = RNG.random((20, 1, 8, 8)).astype(np.float32)
Y = RNG.integers(0, 10, 20)


def refusal(data: bytes, fmt: str = "npz", limits: DatasetLimits = LIMITS) -> DatasetFileError:
    with pytest.raises(DatasetFileError) as caught:
        inspect_dataset(io.BytesIO(data), fmt, limits)
    return caught.value


def npy(array: np.ndarray, *, shape: tuple[int, ...] | None = None, descr: Any = None) -> bytes:
    """An .npy file for ``array``, its header optionally lying about the shape or dtype."""
    header = np.lib.format.header_data_from_array_1_0(array)
    if shape is not None:
        header["shape"] = shape
    if descr is not None:
        header["descr"] = descr
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    buffer.write(array.tobytes())
    return buffer.getvalue()


def zip_of(entries: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_summary_and_arrays_agree_with_numpy() -> None:
    data = npz_bytes(x=X, y=Y)
    summary = inspect_dataset(io.BytesIO(data), "npz", LIMITS)
    assert summary.num_examples == 20
    assert summary.example_shape == [1, 8, 8]
    assert summary.num_classes == int(Y.max()) + 1
    assert summary.value_range == [float(X.min()), float(X.max())]
    x, y = read_dataset(io.BytesIO(data), "npz", LIMITS)
    np.testing.assert_array_equal(x, X)
    np.testing.assert_array_equal(y, Y)
    assert x.dtype == np.float32
    assert y.dtype == np.int64


def test_fortran_order_big_endian_and_three_dimensional_x_load_correctly() -> None:
    images = RNG.integers(0, 256, (6, 5, 7)).astype(">u2")
    fortran = np.asfortranarray(images)
    labels = np.array([0, 1, 2, 3, 4, 5], dtype=np.float64)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=fortran, y=labels)
    x, y = read_dataset(io.BytesIO(buffer.getvalue()), "npz", LIMITS)
    assert x.shape == (6, 1, 5, 7)
    np.testing.assert_array_equal(x[:, 0], images.astype(np.float32))
    np.testing.assert_array_equal(y, labels.astype(np.int64))
    assert x.flags.c_contiguous


def test_safetensors_loads_like_npz() -> None:
    data = save_safetensors({"x": X, "y": Y.astype(np.int64)})
    x, y = read_dataset(io.BytesIO(data), "safetensors", LIMITS)
    np.testing.assert_array_equal(x, X)
    np.testing.assert_array_equal(y, Y)


def test_a_deflate_bomb_is_refused_from_the_directory() -> None:
    """A ~100 KB file of zeros that inflates to 96 MiB: refused before inflating."""
    data = deflate_bomb()
    assert len(data) < 200_000
    error = refusal(data)
    assert (error.code, error.status) == ("deflate_bomb", 413)
    assert "numpy.savez" in error.reason


def test_decoded_size_over_the_cap_is_413() -> None:
    small = DatasetLimits(max_decoded_bytes=4000, max_example_values=10**6, max_num_classes=10)
    error = refusal(npz_bytes(x=X, y=Y), limits=small)
    assert (error.code, error.status) == ("dataset_too_large", 413)


def test_uint8_x_is_capped_as_the_float32_a_worker_holds() -> None:
    """1,000 bytes of uint8 become 4,000 of float32 in a worker: that is what is capped."""
    x = np.zeros((10, 1, 10, 10), np.uint8)
    y = np.zeros(10, np.uint8)
    limits = DatasetLimits(max_decoded_bytes=3000, max_example_values=10**6, max_num_classes=10)
    error = refusal(npz_bytes(x=x, y=y), limits=limits)
    assert error.code == "dataset_too_large"


def test_a_header_that_lies_about_the_shape_allocates_nothing() -> None:
    """The .npy header claims 4 GB of float32; the entry holds 256 bytes."""
    lying = npy(X, shape=(10**9, 1, 8, 8))
    tracemalloc.start()
    error = refusal(zip_of({"x.npy": lying, "y.npy": npy(Y)}, zipfile.ZIP_DEFLATED))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert error.code == "invalid_dataset"
    assert "declares shape" in error.reason
    assert peak < 8 * 2**20


def test_a_directory_that_understates_the_inflated_size_is_refused() -> None:
    """The central directory says x.npy inflates to fewer bytes than its deflate stream holds."""
    data = bytearray(zip_of({"x.npy": npy(X), "y.npy": npy(Y)}, zipfile.ZIP_DEFLATED))
    directory = data.index(b"PK\x01\x02")  # the first central directory entry: x.npy
    (real,) = struct.unpack_from("<L", data, directory + 24)
    struct.pack_into("<L", data, directory + 24, real - 64)
    local = data.index(b"PK\x03\x04")
    struct.pack_into("<L", data, local + 22, real - 64)
    error = refusal(bytes(data))
    assert error.code == "invalid_dataset"


def test_a_corrupt_deflate_stream_is_invalid() -> None:
    data = bytearray(zip_of({"x.npy": npy(X), "y.npy": npy(Y)}, zipfile.ZIP_DEFLATED))
    start = data.index(b"x.npy") + len(b"x.npy")
    data[start + 40 : start + 80] = bytes(range(40))
    error = refusal(bytes(data))
    assert error.code == "invalid_dataset"


def test_memory_stays_at_one_chunk_whatever_the_arrays_hold() -> None:
    """48 MiB of float32 examples are checked holding a few MiB at a time."""
    x = RNG.random((3072, 1, 64, 64), dtype=np.float32)
    data = npz_bytes(x=x, y=np.zeros(3072, np.int64))
    del x
    tracemalloc.start()
    summary = inspect_dataset(io.BytesIO(data), "npz", LIMITS)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert summary.num_examples == 3072
    assert peak < 24 * 2**20


def test_thousands_of_entries_are_refused_before_the_directory_is_parsed() -> None:
    entries = {f"e{i}.npy": b"" for i in range(5000)}
    error = refusal(zip_of({"x.npy": npy(X), "y.npy": npy(Y), **entries}))
    assert error.code == "dataset_entries"
    assert "lists 5002 entries" in error.reason


@pytest.mark.parametrize(
    "entries",
    [
        {"x.npy": npy(X), "y.npy": npy(Y), "z.npy": npy(Y)},
        {"x.npy": npy(X), "../y.npy": npy(Y)},
        {"x.npy": npy(X), "y": npy(Y)},
        {"x.npy": npy(X), "y.npy/": b""},
    ],
    ids=["extra", "path", "no-suffix", "directory"],
)
def test_odd_or_extra_entries_are_refused(entries: dict[str, bytes]) -> None:
    error = refusal(zip_of(entries))
    assert error.code == "dataset_entries"


def test_duplicate_entries_are_refused() -> None:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w") as archive:
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate it writes
        archive.writestr("x.npy", npy(X))
        archive.writestr("x.npy", npy(X))
    assert refusal(buffer.getvalue()).code == "dataset_entries"


def test_bzip2_entries_are_refused() -> None:
    error = refusal(zip_of({"x.npy": npy(X), "y.npy": npy(Y)}, zipfile.ZIP_BZIP2))
    assert error.code == "invalid_dataset"
    assert "compression" in error.reason


@pytest.mark.parametrize(
    ("x", "y", "field", "code"),
    [
        (X.astype(bool), Y, "x", "dataset_dtype"),
        (X.astype(np.complex64), Y, "x", "dataset_dtype"),
        (np.zeros(20, dtype=[("a", "f4"), ("b", "f4")]), Y, "x", "dataset_dtype"),
        (X.astype(np.longdouble), Y, "x", "dataset_dtype"),
        (X, Y.astype("datetime64[s]"), "y", "dataset_dtype"),
        (X, Y.astype(object), "y", "dataset_dtype"),
        (X[:, :, :, :, None], Y, "x", "dataset_shape"),
        (X[:, 0, 0, 0], Y, "x", "dataset_shape"),
        (X, Y[:, None], "y", "dataset_shape"),
        (np.zeros((2, 0, 4, 4), np.float32), np.zeros(2, np.int64), "x", "dataset_shape"),
        (np.zeros((0, 1, 4, 4), np.float32), np.zeros(0, np.int64), "x", "dataset_shape"),
        (np.zeros((1, 4, 512, 512), np.uint8), np.zeros(1, np.int64), "x", "dataset_shape"),
        (X, np.full(20, 2**63 - 1), "y", "dataset_values"),
        (X, np.full(20, 2**31), "y", "dataset_values"),
        (X, np.full(20, 2**64 - 1, np.uint64), "y", "dataset_values"),
        (X, np.full(20, 1e300), "y", "dataset_values"),
        (X, np.full(20, np.nan), "y", "dataset_values"),
        (X.astype(np.float64) * 1e300, Y, "x", "dataset_values"),
    ],
    ids=[
        "bool-x",
        "complex-x",
        "structured-x",
        "longdouble-x",
        "datetime-y",
        "object-y",
        "rank-5-x",
        "rank-1-x",
        "rank-2-y",
        "zero-channels",
        "zero-examples",
        "example-over-value-cap",
        "label-2^63-1",
        "label-2^31",
        "label-2^64-1",
        "label-1e300",
        "label-nan",
        "x-beyond-float32",
    ],
)
def test_bad_arrays_are_refused_from_headers_or_values(x, y, field, code) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y)
    error = refusal(buffer.getvalue())
    assert (error.field, error.code, error.status) == (field, code, 422), error


def test_labels_below_the_num_classes_cap_only() -> None:
    limits = DatasetLimits(
        max_decoded_bytes=2**30, max_example_values=1000, max_num_classes=2**31 - 1
    )
    highest = inspect_dataset(io.BytesIO(npz_bytes(x=X, y=np.full(20, 2**31 - 2))), "npz", limits)
    assert highest.num_classes == 2**31 - 1
    assert refusal(npz_bytes(x=X, y=np.full(20, 2**31 - 1)), limits=limits).code == (
        "dataset_values"
    )


def safetensors_file(header: dict[str, Any], data: bytes) -> bytes:
    import json

    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


GOOD_HEADER = {
    "x": {"dtype": "F32", "shape": [20, 1, 8, 8], "data_offsets": [0, X.nbytes]},
    "y": {"dtype": "I64", "shape": [20], "data_offsets": [X.nbytes, X.nbytes + 160]},
}
GOOD_DATA = X.tobytes() + Y.astype(np.int64).tobytes()


def test_a_handmade_safetensors_file_is_accepted() -> None:
    summary = inspect_dataset(
        io.BytesIO(safetensors_file(GOOD_HEADER, GOOD_DATA)), "safetensors", LIMITS
    )
    assert summary.num_examples == 20


@pytest.mark.parametrize(
    ("header", "data", "code", "needle"),
    [
        (
            {**GOOD_HEADER, "x": {**GOOD_HEADER["x"], "shape": [10**9, 1, 8, 8]}},
            GOOD_DATA,
            "invalid_dataset",
            "data_offsets give",
        ),
        (GOOD_HEADER, GOOD_DATA[:-8], "invalid_dataset", "within"),
        (GOOD_HEADER, GOOD_DATA + b"\0" * 8, "invalid_dataset", "after the tensors"),
        (
            {**GOOD_HEADER, "y": {**GOOD_HEADER["y"], "data_offsets": [0, 160]}},
            GOOD_DATA,
            "invalid_dataset",
            "gaps or overlap",
        ),
        ({**GOOD_HEADER, "z": GOOD_HEADER["y"]}, GOOD_DATA, "dataset_entries", "only x and y"),
        ({"x": GOOD_HEADER["x"]}, X.tobytes(), "dataset_entries", "no array named 'y'"),
        (
            {**GOOD_HEADER, "x": {**GOOD_HEADER["x"], "dtype": "BF16"}},
            GOOD_DATA,
            "dataset_dtype",
            "BF16",
        ),
        (
            {**GOOD_HEADER, "x": {**GOOD_HEADER["x"], "shape": [20, 0, 8, 8]}},
            GOOD_DATA,
            "dataset_shape",
            "at least 1",
        ),
        (
            {**GOOD_HEADER, "x": {**GOOD_HEADER["x"], "shape": [20, True, 8, 8]}},
            GOOD_DATA,
            "dataset_shape",
            "list of integers",
        ),
        ({**GOOD_HEADER, "__metadata__": {"a": 1}}, GOOD_DATA, "invalid_dataset", "strings"),
    ],
)
def test_bad_safetensors_are_refused(header, data, code, needle) -> None:
    error = refusal(safetensors_file(header, data), "safetensors")
    assert error.code == code, error
    assert needle in error.reason, error


def test_safetensors_header_size_is_capped() -> None:
    huge = struct.pack("<Q", 2**40) + b"{}"
    assert "over the cap" in refusal(huge, "safetensors").reason
    nested = b"[" * 60_000
    deep = struct.pack("<Q", len(nested)) + nested
    assert "unreadable safetensors header" in refusal(deep, "safetensors").reason
    past_the_end = struct.pack("<Q", 1000) + b"{}"
    assert "past the end" in refusal(past_the_end, "safetensors").reason
