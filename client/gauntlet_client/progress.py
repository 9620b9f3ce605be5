"""Progress while waiting: one updating bar on a terminal, plain lines in a CI log."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import TextIO

BAR_WIDTH = 24


def bar(fraction: float, width: int = BAR_WIDTH) -> str:
    """``[#########---------------]``."""
    fraction = min(1.0, max(0.0, fraction))
    filled = round(fraction * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


class Progress:
    """Shows one line of state per update.

    On a terminal the line is redrawn in place (``\\r``). Otherwise a line is written when
    the state changes, and at most every ``interval`` seconds for mere progress (a change of
    status, such as queued to running, is written at once).
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        tty: bool | None = None,
        interval: float = 5.0,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.interval = interval
        self.enabled = enabled
        self.clock = clock
        self._last_text = ""
        self._last_key = ""
        self._last_time = -float("inf")
        self._drawn = 0

    def update(self, key: str, fraction: float | None, text: str) -> None:
        """Show ``text``; ``key`` is the coarse state (a change is shown at once)."""
        if not self.enabled:
            return
        if self.tty:
            line = (bar(fraction) + " " if fraction is not None else "") + text
            columns = shutil.get_terminal_size((100, 20)).columns - 1
            line = line[:columns]
            self.stream.write("\r" + line.ljust(self._drawn))
            self.stream.flush()
            self._drawn = len(line)
            return
        now = self.clock()
        if text == self._last_text:
            return
        if key == self._last_key and now - self._last_time < self.interval:
            return
        self.stream.write(text + "\n")
        self.stream.flush()
        self._last_text, self._last_key, self._last_time = text, key, now

    def message(self, text: str) -> None:
        """A line of its own (ends the bar's line first on a terminal)."""
        self.finish()
        self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        """End the bar's line."""
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = 0
