"""Numbers for the report: percentiles from histogram buckets, medians of spans."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from opentelemetry.sdk.metrics.export import HistogramDataPoint, MetricsData

DELAY_METRIC = "asyncio.eventloop.delay"


@dataclass(frozen=True)
class Distribution:
    """A summary of one histogram over one collection interval (seconds)."""

    count: int
    p50: float
    p99: float
    max: float


def histogram_points(data: MetricsData | None, name: str) -> list[HistogramDataPoint]:
    """All data points of the histogram ``name`` in one collection."""
    if data is None:
        return []
    return [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
        if isinstance(point, HistogramDataPoint)
    ]


def summarize(points: Sequence[HistogramDataPoint]) -> Distribution | None:
    """Merge points with the same buckets and summarize them; ``None`` if empty."""
    points = [point for point in points if point.count]
    if not points:
        return None
    bounds = points[0].explicit_bounds
    buckets = (point.bucket_counts for point in points)
    counts = [sum(column) for column in zip(*buckets, strict=True)]
    low = min(point.min for point in points)
    high = max(point.max for point in points)
    return Distribution(
        count=sum(counts),
        p50=quantile(0.5, bounds, counts, low, high),
        p99=quantile(0.99, bounds, counts, low, high),
        max=high,
    )


def quantile(
    q: float, bounds: Sequence[float], counts: Sequence[int], low: float, high: float
) -> float:
    """The ``q`` quantile, interpolated linearly inside its bucket.

    ``counts[i]`` counts values in ``(bounds[i-1], bounds[i]]``; the first and last
    buckets are closed by the observed ``low`` and ``high``.
    """
    rank = q * sum(counts)
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            lower = max(bounds[index - 1] if index > 0 else low, low)
            upper = min(bounds[index] if index < len(bounds) else high, high)
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
    return high


def median(values: Iterable[float]) -> float | None:
    """The median, or ``None`` for no values."""
    values = list(values)
    return statistics.median(values) if values else None
