"""Structural checks on a ``torch.save`` zip archive, run before torch reads a byte of it.

Standard library only: this module must be importable, and its verdict reached, without
handing attacker-controlled bytes to torch's zip reader or unpickler.
"""

from __future__ import annotations

import io
import struct
import zipfile
from typing import Literal

from adversarial.errors import ModelFormatError

# Shared by every refusal of a format that carries code, so users always get the same way out.
EXPORT_ADVICE = (
    "Save the weights instead: torch.save(model.state_dict(), path), or preferably "
    "safetensors.torch.save_file(model.state_dict(), path), and upload them with the matching "
    "built-in architecture; or export the model to ONNX with "
    "torch.onnx.export(model, example_input, path)."
)

# EXPORT_ADVICE, lower-cased to follow "or".
_ADVICE_TAIL = EXPORT_ADVICE[0].lower() + EXPORT_ADVICE[1:]

_LOCAL_HEADER_SIGNATURE = b"PK\x03\x04"
_CENTRAL_RECORD_SIGNATURE = b"PK\x01\x02"
_LOCAL_HEADER_SIZE = 30

# Entries (relative to the archive's top-level folder) that only TorchScript archives have.
_TORCHSCRIPT_FILES = frozenset({"constants.pkl"})
_TORCHSCRIPT_FOLDERS = ("code/",)
# Entries that only ``torch.export`` / AOTInductor ``.pt2`` packages have (current and older
# layouts): they unpickle constants and may ship compiled code.
_PT2_FILES = frozenset({"archive_format", "archive_version", "serialized_exported_program.json"})
_PT2_PREFIXES = ("models/", "serialized_")


ArchiveKind = Literal["state_dict", "torchscript", "pt2"]


def check_torch_zip(
    data: bytes,
    *,
    max_total_bytes: int,
    max_entries: int = 10000,
    expected: ArchiveKind = "state_dict",
) -> list[str]:
    """Validate a zip archive written by torch and return its entry names.

    Checks, in order: the bytes are a zip that starts with a local file header (torch
    treats anything else as a legacy pickle stream); there are at most ``max_entries``
    entries; entry names are relative, free of ``..``, backslashes and NUL, unique, and all
    under one top-level folder; the archive is of the ``expected`` kind (a ``torch.save``
    state_dict archive is neither TorchScript nor a ``torch.export`` ``.pt2`` package, both
    of which carry code; a ``torchscript`` or ``pt2`` archive is that kind and not the
    other); every entry is stored, not compressed, in both its central-directory record and
    its local header (torch writes stored entries, and a 1 MB deflate bomb would otherwise
    load as 1.2 GB; code formats may deflate entries, as ``torch.jit.save`` does, because
    they only load in the jail); the declared uncompressed sizes sum to at most
    ``max_total_bytes``
    (overlapping entries can multiply the data); each stored entry's sizes agree.

    Raises:
        ModelFormatError: with code ``not_a_zip``, ``zip_corrupt``, ``zip_too_many_entries``,
            ``zip_bad_entry_name``, ``torchscript_refused``, ``pt2_refused`` (a state_dict
            was expected), ``not_torchscript``, ``not_pt2`` (a code format was expected),
            ``zip_compressed_entry`` or ``zip_too_large``.
    """
    if not data.startswith(_LOCAL_HEADER_SIGNATURE) or not zipfile.is_zipfile(io.BytesIO(data)):
        written_by = {
            "state_dict": "torch.save with a state_dict",
            "torchscript": "torch.jit.save",
            "pt2": "torch.export.save",
        }[expected]
        raise ModelFormatError(
            "not_a_zip",
            f"The file is not a zip archive. Only zip archives written by {written_by} are "
            "accepted; legacy (non-zip) torch.save files are not accepted; re-save with a "
            "current torch or export to safetensors.",
        )
    # Every central-directory record starts with this signature, so the count bounds the
    # number of entries before zipfile builds one Python object per entry.
    if data.count(_CENTRAL_RECORD_SIGNATURE) > max_entries:
        raise ModelFormatError(
            "zip_too_many_entries", f"The archive has more than {max_entries} entries."
        )
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, ValueError, NotImplementedError, EOFError) as error:
        raise ModelFormatError("zip_corrupt", f"The zip archive is corrupt: {error}.") from error
    if not entries:
        raise ModelFormatError("zip_corrupt", "The zip archive is empty.")
    if len(entries) > max_entries:
        raise ModelFormatError(
            "zip_too_many_entries", f"The archive has more than {max_entries} entries."
        )

    names = [entry.filename for entry in entries]
    relative_names = _check_entry_names(names)
    if expected == "state_dict":
        _refuse_code_formats(relative_names)
    else:
        _require_kind(relative_names, expected)

    for entry in entries:
        method = _local_method(data, entry)
        if expected != "state_dict" and entry.compress_type == method == zipfile.ZIP_DEFLATED:
            # torch.jit.save deflates its code entries. These archives load only in the jail,
            # whose address-space limit bounds what a lying size could cost.
            continue
        if entry.compress_type != zipfile.ZIP_STORED or method != 0:
            raise ModelFormatError(
                "zip_compressed_entry",
                f"Entry {entry.filename!r} is compressed. torch.save writes uncompressed "
                "(stored) entries; a re-compressed archive is refused because compression "
                "hides how much memory loading it takes. Upload the file torch.save wrote.",
            )
    total_bytes = sum(entry.file_size for entry in entries)
    if total_bytes > max_total_bytes:
        raise ModelFormatError(
            "zip_too_large",
            f"The archive's entries add up to {total_bytes} bytes uncompressed; "
            f"the limit is {max_total_bytes}.",
        )
    for entry in entries:
        if entry.compress_type == zipfile.ZIP_STORED and entry.file_size != entry.compress_size:
            raise ModelFormatError(
                "zip_corrupt",
                f"Entry {entry.filename!r} is stored but declares {entry.compress_size} bytes "
                f"in the archive and {entry.file_size} bytes uncompressed.",
            )
    return names


def _check_entry_names(names: list[str]) -> list[str]:
    """Refuse odd names; return the names relative to the single top-level folder."""
    roots: set[str] = set()
    relative_names: list[str] = []
    for name in names:
        problem = _entry_name_problem(name)
        if problem is not None:
            raise ModelFormatError(
                "zip_bad_entry_name", f"Entry name {name!r} is refused: {problem}."
            )
        root, _, relative = name.partition("/")
        roots.add(root)
        relative_names.append(relative)
    if len(roots) != 1:
        raise ModelFormatError(
            "zip_bad_entry_name",
            "The archive's entries are not all under one top-level folder, as torch.save "
            f"writes them (found {len(roots)} folders).",
        )
    if len(set(names)) != len(names):
        # Zip readers disagree on which duplicate wins; what we check must be what torch reads.
        raise ModelFormatError("zip_bad_entry_name", "The archive has duplicate entry names.")
    return relative_names


def _entry_name_problem(name: str) -> str | None:
    """Why one entry name is unacceptable, or None."""
    if "\x00" in name:
        return "it contains a NUL character"
    if "\\" in name:
        return "it contains a backslash"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "it is an absolute path"
    parts = name.split("/")
    if ".." in parts:
        return "it contains '..'"
    if len(parts) < 2 or any(part in ("", ".") for part in parts):
        return "it is not a plain path under the archive's top-level folder"
    return None


def _is_torchscript(relative_names: list[str]) -> bool:
    return any(
        name in _TORCHSCRIPT_FILES or name.startswith(_TORCHSCRIPT_FOLDERS)
        for name in relative_names
    )


def _is_pt2(relative_names: list[str]) -> bool:
    return any(name in _PT2_FILES or name.startswith(_PT2_PREFIXES) for name in relative_names)


def _require_kind(relative_names: list[str], expected: ArchiveKind) -> None:
    """A code-carrying archive must be the kind its upload declared, and only that kind."""
    torchscript, pt2 = _is_torchscript(relative_names), _is_pt2(relative_names)
    if expected == "torchscript" and (pt2 or not torchscript):
        raise ModelFormatError(
            "not_torchscript",
            "The file is not a TorchScript archive (torch.jit.save writes one, with code/ and "
            "constants.pkl entries)"
            + (": it is a torch.export .pt2 package; upload it with format 'pt2'." if pt2 else "."),
        )
    if expected == "pt2" and (torchscript or not pt2):
        raise ModelFormatError(
            "not_pt2",
            "The file is not a torch.export .pt2 package (torch.export.save writes one)"
            + (": it is TorchScript; upload it with format 'torchscript'." if torchscript else "."),
        )


def _refuse_code_formats(relative_names: list[str]) -> None:
    """Refuse TorchScript and ``torch.export`` archives by their entry names alone."""
    if _is_torchscript(relative_names):
        raise ModelFormatError(
            "torchscript_refused",
            "This is a TorchScript archive (torch.jit.save). TorchScript carries code that "
            "runs when it is loaded, so it is not accepted as a 'pt' state_dict; upload it with "
            "format 'torchscript' (run in the sandbox), or " + _ADVICE_TAIL,
        )
    if _is_pt2(relative_names):
        raise ModelFormatError(
            "pt2_refused",
            "This is a torch.export .pt2 package (torch.export.save). Loading one unpickles "
            "data and can run code, so it is not accepted as a 'pt' state_dict; upload it with "
            "format 'pt2' (run in the sandbox), or " + _ADVICE_TAIL,
        )


def _local_method(data: bytes, entry: zipfile.ZipInfo) -> int:
    """The compression method in an entry's local header (the one a streaming reader uses)."""
    start = entry.header_offset
    header = data[start : start + _LOCAL_HEADER_SIZE]
    if len(header) != _LOCAL_HEADER_SIZE or not header.startswith(_LOCAL_HEADER_SIGNATURE):
        raise ModelFormatError(
            "zip_corrupt", f"Entry {entry.filename!r} has no valid local file header."
        )
    (method,) = struct.unpack_from("<H", header, 8)
    return int(method)
