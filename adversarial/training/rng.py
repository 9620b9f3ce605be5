"""Random streams of a training run, all derived from its seed, and their saved states.

Every random draw of the loop comes from an explicit ``torch.Generator``: the data order,
the augmentation, the method's perturbations, and a fresh validation stream per epoch. The
global RNG is never read by our code; a model that draws from it (dropout) gets a forked,
seeded copy for the run, so its draws are reproducible and resumable too. Streams are
independent: the validation stream of an epoch does not depend on how much the training
streams drew, so switching validation on or off never changes the trained weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch

# Seeds are kept below 2**63 so that every generator (CPU and CUDA) accepts them.
_SEED_MASK = (1 << 63) - 1


def derive_seed(seed: int, *labels: object) -> int:
    """A 63-bit seed for the stream named ``labels`` of run ``seed`` (SHA-256, not Python's
    ``hash``, so it is the same in every process)."""
    text = ":".join([str(int(seed)), *(str(label) for label in labels)])
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "little") & _SEED_MASK


def make_generator(seed: int, device: torch.device, *labels: object) -> torch.Generator:
    """A generator on ``device`` seeded for the stream ``labels`` of run ``seed``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(seed, *labels))
    return generator


class RandomStreams:
    """The training run's generators, and the state of the model's (forked) global RNG.

    Attributes:
        shuffle: the order of training examples each epoch (CPU).
        augmentation: per-example augmentation parameters (CPU, so that augmentation draws
            the same numbers on every device).
        method: the method's perturbations (random starts, VAT directions), on ``device``.
    """

    def __init__(self, seed: int, device: torch.device) -> None:
        self.seed = seed
        self.device = device
        cpu = torch.device("cpu")
        self.shuffle = make_generator(seed, cpu, "shuffle")
        self.augmentation = make_generator(seed, cpu, "augmentation")
        self.method = make_generator(seed, device, "method")

    def validation(self, epoch: int) -> torch.Generator:
        """A fresh generator for the validation attacks after loop epoch ``epoch``."""
        return make_generator(self.seed, self.device, "validation", epoch)

    def seed_global(self) -> None:
        """Seed the global RNG(s) that model code (dropout) may draw from, for this run."""
        torch.default_generator.manual_seed(derive_seed(self.seed, "global"))
        if self.device.type == "cuda":
            torch.cuda.manual_seed(derive_seed(self.seed, "global"))

    def state(self) -> dict[str, torch.Tensor]:
        """Every stream's state as uint8 tensors (what a checkpoint stores)."""
        states = {
            "shuffle": self.shuffle.get_state(),
            "augmentation": self.augmentation.get_state(),
            "method": self.method.get_state(),
            "global_cpu": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            states["global_cuda"] = torch.cuda.get_rng_state(self.device)
        return {name: value.clone() for name, value in states.items()}

    def load_state(self, states: dict[str, torch.Tensor]) -> None:
        """Restore the states saved by :meth:`state`.

        Raises:
            KeyError: a stream's state is missing.
        """
        self.shuffle.set_state(states["shuffle"])
        self.augmentation.set_state(states["augmentation"])
        self.method.set_state(states["method"])
        torch.set_rng_state(states["global_cpu"])
        if self.device.type == "cuda" and "global_cuda" in states:
            torch.cuda.set_rng_state(states["global_cuda"], self.device)


@contextmanager
def forked_global_rng(device: torch.device) -> Iterator[None]:
    """Run the body with the global RNG(s) of ``device`` saved and restored afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


@contextmanager
def seeded_initialization(seed: int) -> Iterator[None]:
    """Seed the global CPU RNG for building a model (zoo builders draw their initial weights
    from it), restoring the caller's RNG afterwards.

    Example::

        with seeded_initialization(seed):
            model = build_architecture("small_cnn", {}, (1, 8, 8), 10)
    """
    with torch.random.fork_rng(devices=[]):
        # Only the CPU generator: torch.manual_seed would also reseed CUDA, unrestored.
        torch.default_generator.manual_seed(derive_seed(seed, "initialization"))
        yield
