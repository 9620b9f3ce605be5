"""Progress: a bar redrawn in place on a terminal, throttled plain lines otherwise."""

from __future__ import annotations

import io

from gauntlet_client.progress import Progress, bar


def test_bar() -> None:
    assert bar(0.0, 10) == "[----------]"
    assert bar(0.5, 10) == "[#####-----]"
    assert bar(1.5, 10) == "[##########]"


def test_terminal_redraws_one_line() -> None:
    stream = io.StringIO()
    progress = Progress(stream, tty=True)
    progress.update("running", 0.25, "audit j_1: running 25%")
    progress.update("running", 0.5, "audit j_1: running 50%")
    progress.finish()
    text = stream.getvalue()
    assert text.count("\r") == 2
    assert text.count("\n") == 1
    assert "[######------------------] audit j_1: running 25%" in text
    assert text.endswith("audit j_1: running 50%\n")


def test_plain_lines_on_change_at_most_every_interval() -> None:
    now = [0.0]
    stream = io.StringIO()
    progress = Progress(stream, tty=False, interval=5.0, clock=lambda: now[0])
    progress.update("queued", 0.0, "queued")
    progress.update("queued", 0.0, "queued")  # unchanged: not repeated
    progress.update("running", 0.1, "running 10%")  # a new state: at once
    now[0] = 1.0
    progress.update("running", 0.2, "running 20%")  # too soon
    now[0] = 6.5
    progress.update("running", 0.3, "running 30%")
    progress.update("succeeded", 1.0, "succeeded")  # a new state: at once
    assert stream.getvalue().splitlines() == ["queued", "running 10%", "running 30%", "succeeded"]
    assert "\r" not in stream.getvalue()


def test_disabled_shows_only_messages() -> None:
    stream = io.StringIO()
    progress = Progress(stream, tty=False, enabled=False)
    progress.update("running", 0.5, "running")
    progress.message("submitted audit job j_1")
    assert stream.getvalue() == "submitted audit job j_1\n"
