"""Job metrics for Prometheus, read from the database when ``/metrics`` is scraped.

Workers are separate processes (and, in production, separate machines), and a Celery task
runs in a pool child that may die at any moment, so nothing a worker holds in memory is
what ``/metrics`` should report. Postgres already records every job's life, so:

- job durations (``started_at`` -> ``finished_at``) and queue waits (``enqueued_at`` ->
  ``started_at``, the last claim) are histograms computed from the jobs table at scrape time,
  by kind and status; jail failures are the failed jobs whose error is one of the jail's
  verdicts, by kind and code;
- events that leave no row behind (a lease that expired, what the reconciler did about it)
  are counters in the ``metric_counters`` table, incremented in the same transaction as the
  change they count, so they count each event exactly once whichever process made it.

Any number of API processes report the same numbers; none is lost when a worker dies.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import ColumnElement, Float, case, cast, func, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from service.database import session_scope
from service.tables import Job, JobStatus, MetricCounter

# Upper bounds (seconds) of the histograms' buckets; +Inf is added.
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 24 * 3600)
QUEUE_WAIT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 15, 30, 60, 300, 900, 3600)

# The jail's own verdicts (worker/jail/errors.py): a job that failed with one of these failed
# in its jail (the API never imports the worker, hence the copy; a test keeps them in step).
JAIL_FAILURE_CODES = ("resource_limit", "sandbox_violation", "model_crashed", "sandbox_unavailable")

LEASE_EXPIRIES = "lease_expiries"
RECONCILER_ACTIONS = "reconciler_actions"


def _seconds_between(session: Session, start: Any, end: Any) -> ColumnElement[float]:
    """``end - start`` in seconds, in SQL (SQLite stores naive UTC text, Postgres timestamps)."""
    if session.get_bind().dialect.name == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return cast(func.extract("epoch", end - start), Float)


def _histograms(
    session: Session,
    seconds: ColumnElement[float],
    bounds: Sequence[float],
    where: Sequence[ColumnElement[bool]],
) -> list[tuple[str, str, list[int], float]]:
    """Per (kind, status): cumulative bucket counts (the last is the total) and the sum."""
    buckets = [func.sum(case((seconds <= bound, 1), else_=0)) for bound in bounds]
    statement = (
        select(Job.kind, Job.status, func.count(), func.coalesce(func.sum(seconds), 0.0), *buckets)
        .where(*where)
        .group_by(Job.kind, Job.status)
    )
    rows = []
    for kind, status, total, total_seconds, *counts in session.execute(statement):
        rows.append((kind, status, [int(c or 0) for c in counts] + [int(total)], total_seconds))
    return rows


def job_duration_histograms(session: Session) -> list[tuple[str, str, list[int], float]]:
    """Run time of finished jobs (last claim to finish), by kind and final status."""
    seconds = _seconds_between(session, Job.started_at, Job.finished_at)
    return _histograms(
        session,
        seconds,
        DURATION_BUCKETS,
        [
            Job.status.in_(JobStatus.FINAL),
            Job.started_at.is_not(None),
            Job.finished_at.is_not(None),
        ],
    )


def queue_wait_histograms(session: Session) -> list[tuple[str, str, list[int], float]]:
    """Time from handing a job to the broker to a worker claiming it, by kind and status."""
    seconds = _seconds_between(session, Job.enqueued_at, Job.started_at)
    return _histograms(
        session,
        seconds,
        QUEUE_WAIT_BUCKETS,
        [Job.enqueued_at.is_not(None), Job.started_at.is_not(None)],
    )


def jail_failures(session: Session) -> list[tuple[str, str, int]]:
    """Failed jobs whose error is a jail verdict: (kind, code, count)."""
    code = Job.error["code"].as_string()
    statement = (
        select(Job.kind, code, func.count())
        .where(Job.status == JobStatus.FAILED, code.in_(JAIL_FAILURE_CODES))
        .group_by(Job.kind, code)
    )
    return [
        (kind, str(error_code), int(count))
        for kind, error_code, count in session.execute(statement)
    ]


def _labels_key(labels: dict[str, str]) -> str:
    return json.dumps(labels, sort_keys=True, separators=(",", ":"))


def increment(session: Session, name: str, amount: int = 1, **labels: str) -> None:
    """Add ``amount`` to the counter ``name{labels}`` in the caller's transaction."""
    key = _labels_key(labels)
    insert = sqlite_insert if session.get_bind().dialect.name == "sqlite" else postgresql_insert
    statement = insert(MetricCounter).values(name=name, labels=key, value=amount)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[MetricCounter.name, MetricCounter.labels],
            set_={"value": MetricCounter.value + amount},
        )
    )


def counters(session: Session) -> list[tuple[str, dict[str, str], int]]:
    """Every counter: (name, labels, value)."""
    rows = session.execute(select(MetricCounter.name, MetricCounter.labels, MetricCounter.value))
    return [(name, json.loads(labels), int(value)) for name, labels, value in rows]


def _histogram_family(
    name: str, documentation: str, bounds: Sequence[float], rows: Iterable[Any]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=["kind", "status"])
    for kind, status, cumulative, total_seconds in rows:
        buckets = [(_bound(b), float(c)) for b, c in zip(bounds, cumulative, strict=False)]
        buckets.append(("+Inf", float(cumulative[-1])))
        family.add_metric([kind, status], buckets, float(total_seconds))
    return family


def _bound(value: float) -> str:
    return f"{float(value):g}" if float(value) != int(value) else f"{float(value):.1f}"


class JobTableCollector(Collector):
    """Reads the job histograms and the event counters from the database on each scrape."""

    def collect(self) -> Iterator[Metric]:
        try:
            with session_scope() as session:
                durations = job_duration_histograms(session)
                waits = queue_wait_histograms(session)
                failures = jail_failures(session)
                events = counters(session)
        except Exception:
            return  # metrics must answer even when the database does not
        yield _histogram_family(
            "gauntlet_job_duration_seconds",
            "Run time of finished jobs, from their last claim to their end, by kind and status.",
            DURATION_BUCKETS,
            durations,
        )
        yield _histogram_family(
            "gauntlet_job_queue_wait_seconds",
            "Time from handing a job to the broker to a worker claiming it (its last claim).",
            QUEUE_WAIT_BUCKETS,
            waits,
        )
        jail = CounterMetricFamily(
            "gauntlet_jail_failures",
            "Jobs that failed in their model jail, by kind and the jail's verdict.",
            labels=["kind", "code"],
        )
        for kind, code, count in failures:
            jail.add_metric([kind, code], count)
        yield jail
        expiries = CounterMetricFamily(
            "gauntlet_lease_expiries",
            "Running jobs whose lease expired (their worker died or hung), by kind.",
            labels=["kind"],
        )
        actions = CounterMetricFamily(
            "gauntlet_reconciler_actions",
            "What reconcilers did: requeued, failed, cancelled (expired leases), resent "
            "(queued jobs the broker lost), woken (parents whose parts had finished).",
            labels=["action", "kind"],
        )
        for name, labels, value in events:
            if name == LEASE_EXPIRIES:
                expiries.add_metric([labels.get("kind", "")], value)
            elif name == RECONCILER_ACTIONS:
                actions.add_metric([labels.get("action", ""), labels.get("kind", "")], value)
        yield expiries
        yield actions
