"""Fan-out across workers: a transfer matrix and a 2-shard AutoAttack audit, 1 vs 2 workers.

    .venv/bin/python -m bench.fan_out [--limit 360] [--workers 1 2]

For each worker count, starts the service as a deployment does (Postgres, Redis, uvicorn and
N Celery worker processes of concurrency 1, each in a fresh database and queue), uploads the
issue's models (two digits CNNs of different seeds, an MLP, scikit-learn's logistic
regression, SVM, decision tree and kNN), and times from POST to ``succeeded``:

* the transfer job: sources cnn-a, cnn-b and their ensemble; targets all seven; PGD-20 at
  eps 0.1 and 0.2 (3 craft parts per eps, 7 score parts);
* an AutoAttack audit of cnn-a with ``shards: 2``.

Prints the wall times side by side and checks that the numbers are equal either way.
Needs the machine's Postgres (127.0.0.1:5432) and Redis (127.0.0.1:6379), as CI has.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg

from service import processes
from tests.e2e.test_transfer_report import model_files

ROOT = Path(__file__).resolve().parents[1]
POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
TIMING = {"seconds", "verification_seconds", "batch_size", "final_batch_size"}


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two results differ, timings and ids (each deployment has its own) aside."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = (set(a) | set(b)) - TIMING
        return [d for k in sorted(keys) for d in differences(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in differences(x, y, f"{path}[{i}]")
        ]
    if isinstance(a, str) and isinstance(b, str) and a[:2] in ("m_", "j_", "d_") and a[:2] == b[:2]:
        return []
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


class Deployment:
    def __init__(self, workers: int, folder: Path) -> None:
        self.database = f"bench_fan_out_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(POSTGRES, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{self.database}"')
        port = 8790 + workers
        self.url = f"http://127.0.0.1:{port}"
        self.environment = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "GAUNTLET_DATA_DIR": str(folder),
            "GAUNTLET_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.database}",
            "GAUNTLET_BROKER_URL": "redis://127.0.0.1:6379/0",
            "GAUNTLET_WORKER_QUEUE": f"bench-{self.database}",
        }
        self.run([sys.executable, "-m", "service.admin", "migrate"])
        key = self.run([sys.executable, "-m", "service.admin", "create-key", "bench"]).strip()
        self.processes = [
            self.spawn([sys.executable, "-m", *processes.API, "--port", str(port)], folder, "api")
        ]
        for index in range(workers):
            command = [sys.executable, "-m", *processes.WORKER]
            command += ["--queues", self.environment["GAUNTLET_WORKER_QUEUE"]]
            command += ["--hostname", f"bench{index}@%h"]
            self.processes.append(self.spawn(command, folder, f"worker{index}"))
        self.client = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.client.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the API did not start")
            time.sleep(0.2)

    def run(self, command: list[str]) -> str:
        return subprocess.run(
            command, cwd=ROOT, env=self.environment, check=True, capture_output=True, text=True
        ).stdout

    def spawn(self, command: list[str], folder: Path, name: str) -> subprocess.Popen[bytes]:
        log = (folder / f"{name}.log").open("ab")
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=self.environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def upload(self, name: str, data: bytes) -> str:
        meta = {"name": name, "format": "onnx", "input_shape": [1, 8, 8], "num_classes": 10}
        response = self.client.post(
            "/v1/models", files={"file": (f"{name}.onnx", data)}, data={"meta": json.dumps(meta)}
        )
        response.raise_for_status()
        return str(response.json()["id"])

    def wait_model(self, model_id: str) -> None:
        while (body := self.client.get(f"/v1/models/{model_id}").json())["status"] == "validating":
            time.sleep(0.1)
        assert body["status"] == "ready", body

    def timed(self, spec: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        started = time.perf_counter()
        response = self.client.post("/v1/jobs", json=spec)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        while (body := self.client.get(f"/v1/jobs/{job_id}").json())["status"] in (
            "queued",
            "running",
        ):
            time.sleep(0.1)
        assert body["status"] == "succeeded", body
        return time.perf_counter() - started, body["result"]

    def close(self) -> None:
        for process in self.processes:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
        self.client.close()
        with psycopg.connect(POSTGRES, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


def measure(workers: int, files: dict[str, bytes], limit: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        deployment = Deployment(workers, Path(folder))
        try:
            ids = {name: deployment.upload(name, data) for name, data in files.items()}
            for model_id in ids.values():
                deployment.wait_model(model_id)
            transfer = {
                "kind": "transfer",
                "sources": [ids["cnn-a"], ids["cnn-b"], [ids["cnn-a"], ids["cnn-b"]]],
                "targets": list(ids.values()),
                "limit": limit,
                "attack": {"name": "pgd", "norm": "linf", "eps": [0.1, 0.2], "steps": 20},
                "seed": 0,
            }
            audit = {
                "kind": "audit",
                "model_id": ids["cnn-a"],
                "limit": limit,
                "preset": "autoattack",
                "eps": [0.1],
                "shards": 2,
                "seed": 0,
            }
            transfer_seconds, transfer_result = deployment.timed(transfer)
            audit_seconds, audit_result = deployment.timed(audit)
        finally:
            deployment.close()
    return {
        "transfer": (transfer_seconds, transfer_result),
        "audit": (audit_seconds, audit_result),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=360)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    files = model_files()
    runs = {workers: measure(workers, files, args.limit) for workers in args.workers}

    print(f"{args.limit} digits; wall time POST to succeeded (s)")
    print(f"{'job':<34}" + "".join(f"{f'{w} worker(s)':>14}" for w in args.workers))
    for job, label in (
        ("transfer", "transfer 3 sources x 7 targets x 2 eps"),
        ("audit", "autoattack audit, 2 shards"),
    ):
        times = [runs[w][job][0] for w in args.workers]
        print(f"{label:<34}" + "".join(f"{t:>14.1f}" for t in times), end="")
        if len(times) > 1:
            print(f"   ratio {times[0] / times[-1]:.2f}x", end="")
        print()
    first = runs[args.workers[0]]
    for workers in args.workers[1:]:
        for job in ("transfer", "audit"):
            found = differences(runs[workers][job][1], first[job][1])
            same = not found
            print(f"{job}: numbers with {workers} workers equal to {args.workers[0]}: {same}")
            for line in found[:20]:
                print("   ", line)
    audit = first["audit"][1]
    worst = [(w["eps"], w["robust_accuracy"]) for w in audit["worst_case"]]
    print(f"audit clean {audit['clean_accuracy']:.4f}, worst case {worst}")


if __name__ == "__main__":
    main()
