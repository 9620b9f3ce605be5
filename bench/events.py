"""Waiting on running jobs: 2 s polling against long polls and server-sent events.

    .venv/bin/python -m bench.events [--clients 200] [--jobs 50] [--window 30]
        [--progress-seconds 1] [--database-url postgresql+psycopg://postgres@127.0.0.1/postgres]

Creates a scratch database on the Postgres server (dropped afterwards), migrates it, starts
the real API (uvicorn, one process) on it, and inserts ``--jobs`` jobs in ``running`` state
held by a driver process that writes their progress every ``--progress-seconds`` through
the workers' own ``write_progress`` (the message carries the write's time). Then
``--clients`` concurrent clients (spread over the jobs) wait on them for ``--window``
seconds, one mode after the other in the same run: (a) GET every 2 s, (b) GET ``?wait=30``
in a loop, (c) one ``/events`` stream each. Prints, per mode, HTTP requests per second
against the API, the ratio to polling, the API's and the clients' CPU seconds, database
commits per second (the driver's included), and the delay from a progress write to a
client seeing it (median, p99).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
OWNER = "bench-driver"


@dataclass
class Tally:
    requests: int = 0
    errors: int = 0
    delays: list[float] = field(default_factory=list)
    seen: dict[int, str] = field(default_factory=dict)

    def saw(self, client: int, message: str) -> None:
        # Each new progress message a client sees: how long after its write.
        if self.seen.get(client) == message or not message.startswith("written "):
            return
        first = client not in self.seen
        self.seen[client] = message
        if first:
            return  # the state when the client arrived: no change delivered yet
        self.delays.append(time.time() - float(message.removeprefix("written ")))


def drive(database_url: str, job_ids: list[str], stop_at: float, period: float) -> None:
    """Write each job's progress every ``period`` seconds, as a worker's lease does."""
    os.environ["GAUNTLET_DATABASE_URL"] = database_url
    from service.database import session_scope, utcnow
    from service.jobs import repository

    step = 0
    while time.time() < stop_at:
        tick = time.monotonic()
        step += 1
        for job_id in job_ids:
            progress = {
                "fraction": min(step / 10_000, 1.0),
                "stage": "attack",
                "message": f"written {time.time():.6f}",
            }
            with session_scope() as session:
                repository.write_progress(session, job_id, OWNER, progress, utcnow())
        time.sleep(max(0.0, period - (time.monotonic() - tick)))


async def poll_client(
    http: httpx.AsyncClient, index: int, job_id: str, tally: Tally, period: float
) -> None:
    await asyncio.sleep(random.uniform(0, period))
    while True:
        tally.requests += 1
        response = await http.get(f"/v1/jobs/{job_id}")
        if response.status_code == 200:
            tally.saw(index, response.json()["progress"]["message"])
        else:
            tally.errors += 1
        await asyncio.sleep(period)


async def long_poll_client(http: httpx.AsyncClient, index: int, job_id: str, tally: Tally) -> None:
    await asyncio.sleep(random.uniform(0, 1))
    while True:
        tally.requests += 1
        response = await http.get(f"/v1/jobs/{job_id}", params={"wait": 30})
        if response.status_code == 200:
            tally.saw(index, response.json()["progress"]["message"])
        else:
            tally.errors += 1
            await asyncio.sleep(1)


async def sse_client(http: httpx.AsyncClient, index: int, job_id: str, tally: Tally) -> None:
    await asyncio.sleep(random.uniform(0, 1))
    while True:
        tally.requests += 1
        async with http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
            if response.status_code != 200:
                tally.errors += 1
                await asyncio.sleep(1)
                continue
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    data = json.loads(line.removeprefix("data: "))
                    if "message" in data:
                        tally.saw(index, data["message"])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def commits(admin_url: str, name: str) -> int:
    engine = create_engine(admin_url)
    with engine.connect() as connection:
        value = connection.execute(
            text("SELECT xact_commit FROM pg_stat_database WHERE datname = :name"),
            {"name": name},
        ).scalar_one()
    engine.dispose()
    return int(value)


async def run_mode(
    mode: str, url: str, key: str, job_ids: list[str], clients: int, window: float
) -> Tally:
    tally = Tally()
    # A connection pool per client, as separate CI jobs or browsers would have.
    https = [
        httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=70)
        for _ in range(clients)
    ]
    tasks = []
    for index, http in enumerate(https):
        job_id = job_ids[index % len(job_ids)]
        if mode == "poll":
            coroutine = poll_client(http, index, job_id, tally, 2.0)
        elif mode == "long-poll":
            coroutine = long_poll_client(http, index, job_id, tally)
        else:
            coroutine = sse_client(http, index, job_id, tally)
        tasks.append(asyncio.create_task(coroutine))
    await asyncio.sleep(window)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for http in https:
        await http.aclose()
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--progress-seconds", type=float, default=1.0)
    parser.add_argument(
        "--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    args = parser.parse_args()

    server = make_url(args.database_url)
    name = f"gauntlet_bench_{secrets.token_hex(4)}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    database_url = server.set(database=name).render_as_string(hide_password=False)
    admin_url = args.database_url
    data_dir = Path(tempfile.mkdtemp(prefix="gauntlet-bench-events-"))
    environment = {
        **os.environ,
        "GAUNTLET_DATA_DIR": str(data_dir),
        "GAUNTLET_DATABASE_URL": database_url,
        "GAUNTLET_BROKER_URL": "filesystem://",
        "OMP_NUM_THREADS": "1",
    }
    os.environ.update(environment)
    api = None
    driver = None
    try:
        from service.admin import create_key, migrate
        from service.database import session_scope, utcnow
        from service.tables import Job, JobStatus, new_id

        migrate(database_url)
        key = create_key("bench")
        with session_scope() as session:
            principal_tenant = session.execute(text("SELECT id FROM tenants")).scalar_one()
            job_ids = [new_id("j") for _ in range(args.jobs)]
            for job_id in job_ids:
                session.add(
                    Job(
                        id=job_id,
                        tenant_id=principal_tenant,
                        kind="audit",
                        spec={},
                        status=JobStatus.RUNNING,
                        progress={"fraction": 0.0, "stage": "attack", "message": "started"},
                        lease_owner=OWNER,
                        lease_expires_at=utcnow() + dt.timedelta(hours=2),
                        started_at=utcnow(),
                    )
                )
        port = 18000 + random.randrange(1000)
        url = f"http://127.0.0.1:{port}"
        log = (data_dir / "api.log").open("ab")
        api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "service.main:app", "--port", str(port)],
            cwd=ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or api.poll() is not None:
                raise SystemExit("the API did not start; see " + str(data_dir / "api.log"))
            time.sleep(0.2)

        modes = ("poll", "long-poll", "sse")
        stop_at = time.time() + len(modes) * (args.window + 3) + 10
        driver = multiprocessing.get_context("spawn").Process(
            target=drive,
            args=(database_url, job_ids, stop_at, args.progress_seconds),
            daemon=True,
        )
        driver.start()
        time.sleep(2)

        rows = []
        for mode in modes:
            cpu_before, commits_before = cpu_seconds(api.pid), commits(admin_url, name)
            started, client_cpu = time.monotonic(), time.process_time()
            tally = asyncio.run(run_mode(mode, url, key, job_ids, args.clients, args.window))
            elapsed = time.monotonic() - started
            client_cpu = time.process_time() - client_cpu
            cpu = cpu_seconds(api.pid) - cpu_before
            commit_rate = (commits(admin_url, name) - commits_before) / elapsed
            rows.append((mode, tally, elapsed, cpu, client_cpu, commit_rate))
            time.sleep(2)

        sys.stdout.write(
            f"{args.clients} clients on {args.jobs} running jobs (progress written every "
            f"{args.progress_seconds:g} s), "
            f"{args.window:.0f} s per mode, one uvicorn process, Postgres\n\n"
        )
        sys.stdout.write(
            f"{'mode':<10} {'requests/s':>10} {'vs poll':>8} {'errors':>6} {'API cpu s':>9} "
            f"{'client cpu s':>12} {'db commits/s':>12} {'updates seen':>12} "
            f"{'delay p50':>9} {'delay p99':>9}\n"
        )
        poll_rate = rows[0][1].requests / rows[0][2]
        for mode, tally, elapsed, cpu, client_cpu, commit_rate in rows:
            rate = tally.requests / elapsed
            delays = sorted(tally.delays)
            p50 = statistics.median(delays) if delays else float("nan")
            p99 = delays[int(0.99 * (len(delays) - 1))] if delays else float("nan")
            sys.stdout.write(
                f"{mode:<10} {rate:>10.1f} {poll_rate / rate:>7.1f}x {tally.errors:>6} "
                f"{cpu:>9.1f} {client_cpu:>12.1f} {commit_rate:>12.1f} {len(delays):>12} "
                f"{p50:>8.2f}s {p99:>8.2f}s\n"
            )
    finally:
        if driver is not None:
            driver.terminate()
            driver.join(timeout=10)
        if api is not None:
            api.terminate()
            api.wait(timeout=30)
        from service.database import reset_engine

        reset_engine()
        with admin.connect() as connection:
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


if __name__ == "__main__":
    main()
