"""Cursor pagination shared by every list endpoint."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

Limit = Annotated[int, Query(ge=1, le=200, description="Items per page.")]
Cursor = Annotated[
    str | None,
    Query(max_length=80, description="'next_cursor' of the previous page."),
]


def next_cursor(ids: list[str], limit: int) -> str | None:
    """The cursor of the page after one holding ``ids`` (``None`` on the last page)."""
    return ids[-1] if len(ids) == limit else None
