"""An in-memory stand-in for the Gauntlet API, served through httpx.MockTransport.

For the client's unit tests only (logic that is hard to provoke in the real service: a
job that failed earlier, a model still validating at submission, an upload whose answer is
lost). The tests that run against the real service are in test_live.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.client.samples import attack_result, audit_result, validity_check
from tests.client.samples import check as sample_check


@dataclass
class FakeServer:
    """Models validate after ``validation_polls`` reads; jobs finish after ``job_polls``."""

    validation_polls: int = 1
    job_polls: int = 1
    model_status: str = "ready"  # what a model becomes after validating
    job_outcomes: list[str] = field(default_factory=list)  # statuses of new jobs, in order
    accuracy: Callable[[str], float] = lambda _model_id: 0.9
    report_links: bool = True
    engine_version: str = "0.1.0+fake0000"
    warnings: list[str] = field(default_factory=list)  # validity warnings every audit fires
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys: dict[str, tuple[str, str]] = field(default_factory=dict)
    polls: dict[str, int] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    # Models can be looked up by name (GET /v1/models?name=), as newer servers do.
    names: bool = True
    # The ``wait`` of each job read (None: none given); ``hold`` is called with it, as a
    # long-polling server holds the question (a test's clock advances).
    waits: list[float | None] = field(default_factory=list)
    hold: Callable[[float], None] | None = None
    # Called with each request before it is handled; may raise (a dropped connection) or
    # return a response to answer instead.
    before: Callable[[httpx.Request], httpx.Response | None] | None = None
    # Called after a request was handled; may raise to lose the answer.
    after: Callable[[httpx.Request, httpx.Response], None] | None = None

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        if self.before is not None:
            early = self.before(request)
            if early is not None:
                return early
        response = self.route(request)
        if self.after is not None:
            self.after(request, response)
        return response

    def route(self, request: httpx.Request) -> httpx.Response:
        method, parts = request.method, request.url.path.strip("/").split("/")[1:]
        if parts == ["version"] and method == "GET":
            return httpx.Response(
                200, json={"version": "0.1.0", "engine_version": self.engine_version}
            )
        if parts == ["models"] and method == "GET":
            name = request.url.params.get("name")
            models = list(reversed(self.models.values()))
            if name is not None and self.names:
                models = sorted(
                    (m for m in models if m["name"] == name), key=lambda m: -m["version"]
                )
            return page(models)
        if parts == ["models"] and method == "POST":
            return self.upload_model(request)
        if parts[:1] == ["models"] and len(parts) == 2:
            return self.read_model(parts[1])
        if parts == ["datasets"] and method == "GET":
            builtin = {"id": "builtin:digits", "name": "digits", "builtin": True}
            return page([builtin, *reversed(self.datasets.values())])
        if parts == ["datasets"] and method == "POST":
            content = multipart_file(request)
            dataset = {
                "id": f"d_{len(self.datasets) + 1}",
                "name": "upload",
                "builtin": False,
                "num_examples": 10,
                "file_sha256": hashlib.sha256(content).hexdigest(),
            }
            self.datasets[dataset["id"]] = dataset
            return httpx.Response(201, json=dataset)
        if parts == ["jobs"] and method == "POST":
            return self.create_job(request)
        if parts == ["jobs"] and method == "GET":
            return page(list(reversed(self.jobs.values())))
        if parts[:1] == ["jobs"] and len(parts) == 2:
            return self.read_job(parts[1], request)
        if parts[:1] == ["jobs"] and parts[2:] == ["cancel"]:
            job = self.jobs[parts[1]]
            job["status"] = "cancelled"
            return httpx.Response(202, json=job)
        if parts[:1] == ["jobs"] and parts[2:] == ["report-link"] and self.report_links:
            return httpx.Response(
                200, json={"url": f"http://fake/r/{parts[1]}?token=t", "expires_at": "soon"}
            )
        return problem(404, "not_found", f"{request.url.path} not found")

    def upload_model(self, request: httpx.Request) -> httpx.Response:
        content = multipart_file(request)
        meta = json.loads(multipart_field(request, "meta"))
        model = {
            "id": f"m_{len(self.models) + 1}",
            "name": meta["name"],
            "format": meta["format"],
            "input_shape": meta["input_shape"],
            "num_classes": meta["num_classes"],
            "input_range": [float(v) for v in meta.get("input_range", [0, 1])],
            "normalization": meta.get("normalization"),
            "architecture": meta.get("architecture"),
            "status": "validating",
            "error": None,
            "file_sha256": hashlib.sha256(content).hexdigest(),
            "version": 1 + sum(m["name"] == meta["name"] for m in self.models.values()),
        }
        self.models[model["id"]] = model
        return httpx.Response(202, json=model)

    def read_model(self, model_id: str) -> httpx.Response:
        model = self.models.get(model_id)
        if model is None:
            return problem(404, "not_found", f"model {model_id!r} not found")
        if model["status"] == "validating":
            self.polls[model_id] = self.polls.get(model_id, 0) + 1
            if self.polls[model_id] >= self.validation_polls:
                model["status"] = self.model_status
                if self.model_status == "invalid":
                    model["error"] = {"code": "bad_output_shape", "message": "outputs [2, 10]"}
        return httpx.Response(200, json=model)

    def create_job(self, request: httpx.Request) -> httpx.Response:
        spec = json.loads(request.content)
        key = request.headers.get("Idempotency-Key")
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
        if key in self.keys:
            job_id, known_digest = self.keys[key]
            if known_digest != digest:
                return problem(422, "idempotency_key_reused", "this Idempotency-Key was used")
            return httpx.Response(
                200, json=self.jobs[job_id], headers={"Idempotent-Replayed": "true"}
            )
        model = self.models.get(spec.get("model_id", ""))
        if spec.get("kind") in ("transfer", "train"):
            model = {"status": "ready"}
        if model is None:
            return problem(404, "not_found", "model not found")
        if model["status"] == "validating":
            return problem(409, "model_not_ready", "still validating", {"Retry-After": "2"})
        job = {
            "id": f"j_{len(self.jobs) + 1}",
            "kind": spec.get("kind", "audit"),
            "status": "queued",
            "spec": spec,
            "progress": {"fraction": 0.0, "stage": "queued", "message": "waiting for a worker"},
            "result": None,
            "error": None,
            "model_id": spec.get("model_id"),
            "dataset_id": spec.get("dataset_id"),
        }
        self.jobs[job["id"]] = job
        if key is not None:
            self.keys[key] = (job["id"], digest)
        return httpx.Response(202, json=job)

    def read_job(self, job_id: str, request: httpx.Request | None = None) -> httpx.Response:
        job = self.jobs.get(job_id)
        if job is None:
            return problem(404, "not_found", f"job {job_id!r} not found")
        wait = request.url.params.get("wait") if request is not None else None
        self.waits.append(None if wait is None else float(wait))
        if wait is not None and self.hold is not None:
            self.hold(float(wait))
        if job["status"] in ("queued", "running"):
            self.polls[job_id] = self.polls.get(job_id, 0) + 1
            job["status"] = "running"
            job["progress"] = {"fraction": 0.5, "stage": "attacking", "message": "pgd eps=0.1"}
            if self.polls[job_id] >= self.job_polls:
                self.finish(job)
        return httpx.Response(200, json=job)

    def finish(self, job: dict[str, Any]) -> None:
        status = self.job_outcomes.pop(0) if self.job_outcomes else "succeeded"
        job["status"] = status
        job["progress"] = {"fraction": 1.0, "stage": "done", "message": "finished"}
        if status == "failed":
            job["error"] = {"code": "worker_lost", "message": "the worker died"}
            return
        if job["kind"] == "transfer":
            job["result"] = transfer_result(job["spec"])
            return
        if job["kind"] == "train":
            job["result"] = {"model_id": "m_trained", "audit_job_id": None}
            return
        accuracy = self.accuracy(job["model_id"])
        spec = job["spec"]
        entries = list(spec.get("attacks") or [])
        if spec.get("preset") or not entries:
            entries = [{"name": "autoattack"}] + entries  # the server's default preset
        attacks = [
            attack_result(a["name"], eps, accuracy / 2, a.get("norm", "linf"))
            for a in entries
            for eps in a.get("eps") or spec.get("eps") or [8 / 255]
        ]
        gate = spec.get("gate")
        checks = None
        fired = [{"code": code, "message": f"{code} fired"} for code in self.warnings]
        if gate is not None:
            checks = []
            if gate.get("min_clean_accuracy") is not None:
                checks.append(sample_check("clean_accuracy", gate["min_clean_accuracy"], accuracy))
            for check in gate.get("min_robust_accuracy", []):
                checks.append(
                    sample_check(
                        f"{check['attack']}@linf:{check['eps']:g}",
                        check["value"],
                        accuracy / 2,
                        attack=check["attack"],
                        eps=check["eps"],
                    )
                )
            if spec.get("checks", True):
                allowed = set(gate.get("allow_warnings") or [])
                for code in ("zero_gradients", "not_broken_at_large_eps", "randomized_model"):
                    count = self.warnings.count(code)
                    checks.append(validity_check(code, count, waived=code in allowed))
        job["result"] = audit_result(
            clean=accuracy,
            attacks=attacks,
            checks=checks,
            warnings=fired,
            waived=sorted(set(self.warnings) & set((gate or {}).get("allow_warnings") or [])),
            validity_checks=spec.get("checks", True),
        )

    def count(self, method: str, path: str) -> int:
        return sum(1 for m, p in self.requests if (m, p) == (method, path))


def page(items: list[dict[str, Any]]) -> httpx.Response:
    return httpx.Response(200, json={"items": items, "next_cursor": None})


def problem(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    body = {"title": "Error", "status": status, "detail": detail, "code": code}
    return httpx.Response(
        status, json=body, headers={**(headers or {}), "Content-Type": "application/problem+json"}
    )


def _multipart_parts(request: httpx.Request) -> list[tuple[str, bytes]]:
    boundary = request.headers["Content-Type"].split("boundary=")[1].encode()
    parts = []
    for chunk in request.content.split(b"--" + boundary)[1:-1]:
        head, _, body = chunk.partition(b"\r\n\r\n")
        name = head.split(b'name="')[1].split(b'"')[0].decode()
        parts.append((name, body[:-2]))  # the CRLF before the next boundary
    return parts


def multipart_file(request: httpx.Request) -> bytes:
    return dict(_multipart_parts(request))["file"]


def multipart_field(request: httpx.Request, name: str) -> str:
    return dict(_multipart_parts(request))[name].decode()


def transfer_result(spec: dict[str, Any]) -> dict[str, Any]:
    """A transfer matrix for the spec: error rates that differ by cell, so a table that
    mixes up rows, columns or eps shows it."""
    sources = [
        {
            "name": s if isinstance(s, str) else "+".join(s),
            "model_ids": [s] if isinstance(s, str) else s,
        }
        for s in spec["sources"]
    ]
    targets = [
        {"name": t, "model_id": t, "black_box": i == 1, "clean_accuracy": 0.9 + i / 100}
        for i, t in enumerate(spec["targets"])
    ]
    cells = [
        {
            "source": s["name"],
            "target": t["name"],
            "eps": eps,
            "error_rate": round(0.1 * (i + 1) + 0.01 * (j + 1) + eps, 4),
            "accuracy": round(1 - (0.1 * (i + 1) + 0.01 * (j + 1) + eps), 4),
            "wrong_class_agreement": round(0.5 + 0.1 * i - 0.05 * j, 4),
            "fooled": 10,
            "agreeing": 5,
            "target_clean_correct": 90,
            "examples": 100,
            "reused": False,
        }
        for eps in spec["attack"]["eps"]
        for i, s in enumerate(sources)
        for j, t in enumerate(targets)
    ]
    return {"kind": "transfer", "sources": sources, "targets": targets, "cells": cells}
