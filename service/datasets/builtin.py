"""Built-in datasets, described without loading them (the API loads no data libraries).

A test checks this against ``adversarial.datasets``, which loads them in workers.
"""

from __future__ import annotations

from service.datasets.schemas import DatasetRead

BUILTIN_PREFIX = "builtin:"

BUILTIN_DATASETS: dict[str, DatasetRead] = {
    "builtin:digits": DatasetRead(
        id="builtin:digits",
        name="digits",
        builtin=True,
        description=(
            "scikit-learn's 1,797 real 8x8 handwritten digits (UCI), pixels scaled from 0..16 "
            "to [0, 1], shape [1, 8, 8], 10 classes. Fixed split: a permutation seeded with 0 "
            "(numpy.random.default_rng(0).permutation(1797)); the first 1,437 are 'train', the "
            "last 360 'test'."
        ),
        format="builtin",
        num_examples=1797,
        splits={"train": 1437, "test": 360},
        example_shape=[1, 8, 8],
        num_classes=10,
        value_range=[0.0, 1.0],
    )
}
