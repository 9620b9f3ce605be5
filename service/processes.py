"""The commands that start Gauntlet's processes, in one place.

``make serve``, the Makefile, ``docker-compose.yml``, the Dockerfile, the README and the
end-to-end tests all start the API and workers with these (plus where they listen, which
queue and which name); ``tests/test_processes.py`` fails when one of them drifts.

Workers run without Celery's worker-to-worker chatter (heartbeat events, gossip, mingle):
a job's liveness is its lease in Postgres and the reconciler, not Celery's events.
"""

from __future__ import annotations

API = ("uvicorn", "service.main:app")
WORKER = (
    "celery",
    "-A",
    "worker.celery_app",
    "worker",
    "--concurrency",
    "1",
    "--loglevel",
    "INFO",
    "--without-heartbeat",
    "--without-gossip",
    "--without-mingle",
)
MIGRATE = ("gauntlet-admin", "migrate")
# What a deployment adds to each: where the API listens, and a worker's queue and name.
API_OPTIONS = frozenset({"--host", "--port", "--workers", "--log-level"})
WORKER_OPTIONS = frozenset({"--queues", "--hostname", "-n"})
