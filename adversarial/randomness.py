"""Random numbers for attacks: per-example streams, or one shared ``torch.Generator``.

An audit must give the same numbers for the same spec and seed whatever the batch size,
an out-of-memory halving, a shard or the device. A shared generator cannot promise that:
the noise an example gets depends on how many numbers the examples before it in its batch
consumed. :class:`ExampleStreams` gives every example its own stream instead, a
counter-based hash (SplitMix64) of ``(seed, example id, draw)``: an example's draws depend
only on its id and on the sequence of draws made for it, never on its neighbours, and the
same integer arithmetic gives the same bits on the CPU and on a GPU.

:class:`GeneratorSource` keeps the classic behaviour (one ``torch.Generator`` for the whole
batch) for callers that pass a generator, such as comparisons with torchattacks.

Both implement :class:`RandomSource`. Attacks call :meth:`~RandomSource.subset` when they
continue on some of the examples, and :meth:`~RandomSource.child` to start a stream of
their own (a restart, an iteration), so that the draws of example ``i`` never depend on
which other examples are still active.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

_MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    """A 64-bit pattern as the signed integer torch's int64 holds."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX_1 = _signed(0xBF58476D1CE4E5B9)
_MIX_2 = _signed(0x94D049BB133111EB)


def _shift_right(value: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 patterns (torch's ``>>`` is arithmetic)."""
    return (value >> bits) & ((1 << (64 - bits)) - 1)


def _mix(value: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finalizer: a bijection of 64-bit patterns that scatters every bit."""
    value = value + _GOLDEN
    value = (value ^ _shift_right(value, 30)) * _MIX_1
    value = (value ^ _shift_right(value, 27)) * _MIX_2
    return value ^ _shift_right(value, 31)


def label_key(*labels: int | str | float) -> int:
    """A stable 64-bit key for a tuple of labels (such as ``("restart", 2)``)."""
    text = "\x1f".join(repr(label) for label in labels).encode()
    return _signed(int.from_bytes(hashlib.sha256(text).digest()[:8], "little"))


class RandomSource(ABC):
    """Random draws for a batch of examples; every draw has a leading example dimension."""

    @property
    @abstractmethod
    def count(self) -> int:
        """How many examples this source draws for."""

    @abstractmethod
    def uniform(
        self, shape: Sequence[int], *, dtype: torch.dtype, device: torch.device | str
    ) -> torch.Tensor:
        """``[count, *shape]`` values uniform in ``[0, 1)``."""

    @abstractmethod
    def normal(
        self, shape: Sequence[int], *, dtype: torch.dtype, device: torch.device | str
    ) -> torch.Tensor:
        """``[count, *shape]`` standard normal values."""

    @abstractmethod
    def integers(
        self, low: int, high: int, shape: Sequence[int], *, device: torch.device | str
    ) -> torch.Tensor:
        """``[count, *shape]`` int64 values uniform in ``[low, high)``."""

    @abstractmethod
    def subset(self, positions: torch.Tensor) -> RandomSource:
        """The source of the examples at ``positions`` (indices into this batch)."""

    @abstractmethod
    def child(self, *labels: int | str | float) -> RandomSource:
        """A source for a part of the work named by ``labels`` (a restart, an iteration)."""

    def signs(
        self, shape: Sequence[int], *, dtype: torch.dtype, device: torch.device | str
    ) -> torch.Tensor:
        """``[count, *shape]`` values that are +1 or -1 with equal probability."""
        return (2 * self.integers(0, 2, shape, device=device) - 1).to(dtype)


class ExampleStreams(RandomSource):
    """One independent stream per example: draws depend on (seed, example id, draw) only.

    ``keys`` holds one 64-bit key per example. Each call of a drawing method advances this
    object's draw counter; two objects with the same keys and the same sequence of calls
    draw the same numbers, whatever other examples their batches hold.
    """

    def __init__(self, keys: torch.Tensor) -> None:
        if keys.dtype != torch.int64 or keys.dim() != 1:
            raise ValueError("keys must be a 1-d int64 tensor")
        self.keys = keys
        self._draws = 0

    @classmethod
    def for_examples(
        cls, seed: int, example_ids: torch.Tensor, *labels: int | str | float
    ) -> ExampleStreams:
        """Streams for the examples ``example_ids`` (e.g. their dataset indices) of a run
        seeded with ``seed``; ``labels`` name the run's purpose (an attack's name)."""
        ids = example_ids.to(torch.int64).flatten()
        return cls(_mix(_mix(ids + label_key("seed", seed, *labels))))

    @property
    def count(self) -> int:
        return int(self.keys.numel())

    def _bits(self, shape: Sequence[int], device: torch.device | str) -> torch.Tensor:
        """``[count, *shape]`` random 64-bit patterns for the next draw."""
        self._draws += 1
        per_example = 1
        for size in shape:
            per_example *= int(size)
        keys = _mix(self.keys.to(device) + label_key("draw", self._draws))
        positions = torch.arange(1, per_example + 1, dtype=torch.int64, device=device)
        bits = _mix(keys.view(-1, 1) ^ (positions * _GOLDEN).view(1, -1))
        return bits.view(self.count, *[int(size) for size in shape])

    def uniform(
        self, shape: Sequence[int], *, dtype: torch.dtype, device: torch.device | str
    ) -> torch.Tensor:
        # 53 random bits make a double in [0, 1) exactly; the cast rounds alike everywhere.
        top = _shift_right(self._bits(shape, device), 11)
        return (top.to(torch.float64) * 2.0**-53).to(dtype).clamp_max(_below_one(dtype))

    def normal(
        self, shape: Sequence[int], *, dtype: torch.dtype, device: torch.device | str
    ) -> torch.Tensor:
        # Box-Muller from two uniform draws; 1 - u lies in (0, 1], so the log is finite.
        first = self.uniform(shape, dtype=torch.float64, device=device)
        second = self.uniform(shape, dtype=torch.float64, device=device)
        radius = torch.sqrt(-2.0 * torch.log1p(-first))
        return (radius * torch.cos(2 * torch.pi * second)).to(dtype)

    def integers(
        self, low: int, high: int, shape: Sequence[int], *, device: torch.device | str
    ) -> torch.Tensor:
        if high <= low:
            raise ValueError(f"empty range [{low}, {high})")
        fraction = self.uniform(shape, dtype=torch.float64, device=device)
        return (fraction * (high - low)).floor().to(torch.int64).clamp_max(high - low - 1) + low

    def subset(self, positions: torch.Tensor) -> ExampleStreams:
        streams = ExampleStreams(self.keys[positions.to(self.keys.device)])
        streams._draws = self._draws
        return streams

    def child(self, *labels: int | str | float) -> ExampleStreams:
        return ExampleStreams(_mix(self.keys + label_key("child", self._draws, *labels)))


def _below_one(dtype: torch.dtype) -> float:
    """The largest value of ``dtype`` below 1 (a double's 53 bits can round up to 1.0)."""
    return float(1.0 - torch.finfo(dtype).eps / 2)


class GeneratorSource(RandomSource):
    """Draws from one shared ``torch.Generator`` (``None``: torch's global generator).

    Numbers depend on the batch: this is how torchattacks and most libraries behave, kept
    for comparisons with them. :meth:`subset` and :meth:`child` share the generator.
    """

    def __init__(self, count: int, generator: torch.Generator | None = None) -> None:
        self._count = count
        self.generator = generator

    @property
    def count(self) -> int:
        return self._count

    def uniform(
        self, shape: Sequence[int], *, dtype: torch.dtype, device: torch.device | str
    ) -> torch.Tensor:
        return torch.rand(
            (self._count, *shape), generator=self.generator, dtype=dtype, device=device
        )

    def normal(
        self, shape: Sequence[int], *, dtype: torch.dtype, device: torch.device | str
    ) -> torch.Tensor:
        return torch.randn(
            (self._count, *shape), generator=self.generator, dtype=dtype, device=device
        )

    def integers(
        self, low: int, high: int, shape: Sequence[int], *, device: torch.device | str
    ) -> torch.Tensor:
        return torch.randint(
            low, high, (self._count, *shape), generator=self.generator, device=device
        )

    def subset(self, positions: torch.Tensor) -> GeneratorSource:
        count = int(positions.sum()) if positions.dtype == torch.bool else int(positions.numel())
        return GeneratorSource(count, self.generator)

    def child(self, *labels: int | str | float) -> GeneratorSource:
        return self
