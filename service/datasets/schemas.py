"""HTTP shapes of datasets."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, Field

from service.tables import Dataset


class DatasetRead(BaseModel):
    """A dataset: uploaded (id ``d_...``) or built in (id ``builtin:<name>``)."""

    id: str
    name: str
    builtin: bool = False
    description: str = ""
    format: str
    num_examples: int
    splits: dict[str, int] = Field(description="Examples per split usable in a job's 'split'.")
    example_shape: list[int]
    num_classes: int = Field(description="Largest label + 1.")
    value_range: list[float] = Field(description="[min, max] of the example values.")
    file_size: int | None = None
    file_sha256: str | None = None
    created_at: dt.datetime | None = None

    @classmethod
    def from_row(cls, row: Dataset) -> DatasetRead:
        """Build from a table row. An uploaded dataset is one 'test' split."""
        return cls(
            id=row.id,
            name=row.name,
            format=row.format,
            num_examples=row.num_examples,
            splits={"test": row.num_examples},
            example_shape=row.example_shape,
            num_classes=row.num_classes,
            value_range=row.value_range,
            file_size=row.file_size,
            file_sha256=row.file_sha256,
            created_at=row.created_at,
        )


class DatasetList(BaseModel):
    """Built-in datasets, then a page of uploaded ones, newest first."""

    items: list[DatasetRead]
    next_cursor: str | None
