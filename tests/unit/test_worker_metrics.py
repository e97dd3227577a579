"""The worker's batched histogram writes give what one observe per value gives."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Histogram

from worker.metrics import observe_all

BOUNDS = (0.001, 0.01, 0.1, 1.0)
# On a bound, between bounds, below the first, above the last, negative, two labels.
OBSERVED = [("a", 0.001), ("a", 0.005), ("a", 0.0), ("b", 7.0), ("a", 0.1), ("b", -1.0),
            ("a", 0.1000001), ("b", 1.0), ("a", 0.0005)]  # fmt: skip


def samples(record) -> dict[tuple, float]:
    registry = CollectorRegistry()
    histogram = Histogram("h", "test", ["label"], buckets=BOUNDS, registry=registry)
    record(histogram)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if not sample.name.endswith("_created")
    }


def test_observe_all_matches_one_observe_per_value():
    one_by_one = samples(lambda h: [h.labels(label).observe(v) for label, v in OBSERVED])
    batched = samples(lambda h: observe_all(h, iter(OBSERVED)))
    assert one_by_one.keys() == batched.keys()
    for key, value in one_by_one.items():
        assert math.isclose(batched[key], value), key
    assert batched[("h_count", (("label", "a"),))] == 6
