"""The audit workflow: upload (or reuse) the model and data, submit, wait, compare.

Nothing here is created twice by a retry:

- the model: before uploading, the tenant's models are searched for a ``ready`` (or still
  ``validating``) one with the same ``file_sha256`` and identical meta, which is reused;
  an upload whose answer was lost is followed by the same search before uploading again
  (uploads have no Idempotency-Key on the server: two first runs racing can still make two
  rows; the oldest is the one reused from then on, so the job keys stay stable);
- the job: ``POST /v1/jobs`` carries an Idempotency-Key derived from the content (model
  bytes, meta, spec, dataset) and the server's engine version, or the one given, so the
  HTTP retries of one run and a re-run of the whole command get the job that already
  exists, and a run after the server's engine changed audits afresh. A job found that way that
  had failed or been cancelled is submitted again under a key derived from its id;
- the baseline's audit: its key is the one an audit of the baseline model on the same spec
  has anyway, so it runs once per spec however many candidates are compared with it.

An interrupt cancels only the jobs this run created, never one it found by its key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gauntlet_client.http import (
    ApiError,
    ConnectionDropped,
    DeadlineExceeded,
    GauntletClient,
    GauntletError,
    ServerUnreachable,
)
from gauntlet_client.progress import Progress
from gauntlet_client.spec import build_audit_spec
from gauntlet_client.verdict import Outcome, baseline_checks, gate_checks

FINAL_STATUSES = ("succeeded", "failed", "cancelled")
# How long the wait tolerates a server that does not answer (a redeploy of the API) before
# giving up; each failed poll has already been retried by the HTTP client.
UNREACHABLE_GRACE_SECONDS = 120.0
MAX_RERUNS = 5
MAX_UPLOAD_TRIES = 3
KEY_PREFIX = "gauntlet-"


def poll_interval(elapsed: float) -> float:
    """Poll quickly at first (small audits finish in seconds), then every 2 seconds."""
    return 0.5 if elapsed < 10 else 2.0


def sha256_hex(data: bytes) -> str:
    """The hex SHA-256 of ``data`` (the server's ``file_sha256``)."""
    return hashlib.sha256(data).hexdigest()


def canonical(document: Any) -> str:
    """Stable JSON: the same document always gives the same text."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def derive_key(*parts: str) -> str:
    """A deterministic Idempotency-Key from ``parts``."""
    return KEY_PREFIX + hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:48]


def audit_key(
    model_sha256: str,
    meta: dict[str, Any],
    spec: dict[str, Any],
    dataset: str,
    engine_version: str,
) -> str:
    """The content-derived Idempotency-Key of an audit: the model's bytes and meta (as the
    server stores it), the spec, the dataset's identity and the server's engine version
    (a verdict never outlives the engine that made it)."""
    return derive_key(
        "audit-v2",
        model_sha256,
        canonical(comparable_meta(meta) or meta),
        canonical(spec),
        dataset,
        engine_version,
    )


def baseline_audit_key(
    baseline_model: dict[str, Any],
    spec: dict[str, Any],
    dataset: str,
    given_key: str | None,
    engine_version: str,
) -> str:
    """The baseline's key: derived from the given key; else the key an audit of the
    baseline model on this spec has anyway, so the baseline is audited once per spec
    (by its own pipeline or by the first candidate compared with it), not once per run."""
    if given_key is not None:
        return derive_key("baseline", given_key, str(spec["model_id"]))
    return audit_key(
        str(baseline_model.get("file_sha256")), baseline_model, spec, dataset, engine_version
    )


def server_engine_version(client: GauntletClient) -> str:
    """The engine version the server runs (``GET /v1/version``); ``unknown`` from a server
    that does not say (its keys then do not change across its upgrades)."""
    try:
        version = client.get_json("/v1/version").get("engine_version")
    except ApiError as error:
        if error.status != 404:
            raise
        return "unknown"
    return str(version) if version else "unknown"


def comparable_meta(meta: dict[str, Any]) -> dict[str, Any] | None:
    """A model's meta as the server returns it (defaults filled, numbers as floats), to tell
    whether an existing model was uploaded with the same meta; ``None`` if it is malformed."""
    try:
        normalization = meta.get("normalization")
        architecture = meta.get("architecture")
        return {
            "name": str(meta["name"]),
            "format": str(meta["format"]),
            "input_shape": [int(d) for d in meta["input_shape"]],
            "num_classes": int(meta["num_classes"]),
            "input_range": [float(v) for v in meta.get("input_range") or (0.0, 1.0)],
            "normalization": None
            if not normalization
            else {
                "mean": [float(v) for v in normalization["mean"]],
                "std": [float(v) for v in normalization["std"]],
            },
            "architecture": None
            if not architecture
            else {
                "name": str(architecture["name"]),
                "kwargs": dict(architecture.get("kwargs") or {}),
            },
        }
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def find_model(client: GauntletClient, sha256: str, meta: dict[str, Any]) -> dict[str, Any] | None:
    """The oldest ready (else validating) model with this file and meta, if any: always
    the same one, so audits of it keep one Idempotency-Key."""
    wanted = comparable_meta(meta)
    if wanted is None:
        return None
    candidates = [
        model
        for model in client.list_all("/v1/models")
        if model.get("file_sha256") == sha256
        and model.get("status") in ("ready", "validating")
        and comparable_meta(model) == wanted
    ]
    ready = [m for m in candidates if m["status"] == "ready"]
    chosen = ready or candidates  # newest first
    return chosen[-1] if chosen else None


def upload_model(
    client: GauntletClient,
    path: Path,
    data: bytes,
    meta: dict[str, Any],
    progress: Progress,
    *,
    reuse: bool = True,
) -> tuple[dict[str, Any], bool]:
    """The model to audit, and whether an existing one was reused."""
    sha256 = sha256_hex(data)
    for attempt in range(1, MAX_UPLOAD_TRIES + 1):
        if reuse or attempt > 1:
            existing = find_model(client, sha256, meta)
            if existing is not None:
                progress.message(
                    f"reusing model {existing['id']} ({existing['status']}): same file "
                    f"(sha256 {sha256[:12]}) and meta"
                )
                return existing, True
        try:
            response = client.request(
                "POST",
                "/v1/models",
                files={"file": (path.name, data, "application/octet-stream")},
                data={"meta": json.dumps(meta)},
                replayable=False,
            )
        except ConnectionDropped as error:
            if attempt == MAX_UPLOAD_TRIES:
                raise
            progress.message(f"{error}; looking for the model before uploading again")
            continue
        model: dict[str, Any] = response.json()
        progress.message(f"uploaded {path.name} as model {model['id']} ({model['status']})")
        return model, False
    raise AssertionError("unreachable")  # pragma: no cover


def wait_model(client: GauntletClient, model_id: str, progress: Progress) -> dict[str, Any]:
    """Poll a model until it is no longer ``validating``."""
    start = client.clock()
    while True:
        model = client.get_json(f"/v1/models/{model_id}")
        if model.get("status") != "validating":
            return model
        progress.update("validating", None, f"model {model_id}: validating (a worker loads it)")
        _sleep_before_deadline(client, poll_interval(client.clock() - start), f"model {model_id}")


def require_ready(model: dict[str, Any], role: str = "model") -> None:
    """Raise unless the model validated; the message carries the server's error code."""
    if model.get("status") == "ready":
        return
    error = model.get("error") or {}
    raise GauntletError(
        f"{role} {model.get('id')} is {model.get('status')}: "
        f"[{error.get('code', 'unknown')}] {error.get('message', 'no reason given')}"
    )


def _sleep_before_deadline(client: GauntletClient, seconds: float, waiting_for: str) -> None:
    remaining = client.remaining()
    if remaining is not None and remaining <= 0:
        raise DeadlineExceeded(f"timed out (--timeout) waiting for {waiting_for}")
    client.sleep(seconds if remaining is None else min(seconds, remaining))


def resolve_dataset(client: GauntletClient, dataset: str, progress: Progress) -> tuple[str, str]:
    """``(dataset_id, identity)``: a built-in or existing id as is; a file uploaded, or
    reused when the tenant already has one with the same bytes (identity: its sha256)."""
    path = Path(dataset)
    if not path.is_file():
        if dataset.startswith("builtin:") or dataset.startswith("d_"):
            return dataset, dataset
        raise GauntletError(
            f"--dataset {dataset!r}: no such file (give a .npz/.safetensors file, "
            "builtin:digits or a dataset id)"
        )
    data = path.read_bytes()
    sha256 = sha256_hex(data)
    for attempt in range(1, MAX_UPLOAD_TRIES + 1):
        uploads = [d for d in client.list_all("/v1/datasets") if not d.get("builtin")]
        same = [d for d in uploads if d.get("file_sha256") == sha256]
        if same:
            dataset_id = str(same[-1]["id"])  # the oldest: always the same one
            progress.message(f"reusing dataset {dataset_id}: same file (sha256 {sha256[:12]})")
            return dataset_id, sha256
        try:
            response = client.request(
                "POST",
                "/v1/datasets",
                files={"file": (path.name, data, "application/octet-stream")},
                data={"name": path.stem},
                replayable=False,
            )
        except ConnectionDropped as error:
            if attempt == MAX_UPLOAD_TRIES:
                raise
            progress.message(f"{error}; looking for the dataset before uploading again")
            continue
        break
    uploaded: dict[str, Any] = response.json()
    progress.message(
        f"uploaded {path.name} as dataset {uploaded['id']} ({uploaded.get('num_examples')} "
        "examples)"
    )
    return str(uploaded["id"]), sha256


def post_job(client: GauntletClient, spec: dict[str, Any], key: str) -> tuple[dict[str, Any], bool]:
    """``POST /v1/jobs`` with an Idempotency-Key: ``(job, replayed)``.

    Waits out a model that is still validating (409 with Retry-After).
    """
    while True:
        try:
            job, response = client.post_json("/v1/jobs", spec, headers={"Idempotency-Key": key})
        except ApiError as error:
            if error.status == 409 and error.code == "model_not_ready":
                _sleep_before_deadline(client, error.retry_after or 2.0, "the model to be ready")
                continue
            if error.code == "idempotency_key_reused":
                raise GauntletError(
                    f"{error.describe()}. The Idempotency-Key {key!r} was used for another "
                    "audit: give each audit its own --idempotency-key"
                ) from error
            raise
        replayed = (
            response.headers.get("Idempotent-Replayed", "").lower() == "true"
            or response.status_code == 200
        )
        return job, replayed


def submit_audit(
    client: GauntletClient, spec: dict[str, Any], key: str, progress: Progress, label: str
) -> tuple[dict[str, Any], bool]:
    """Submit an audit, or get the one this key already made (submitted again, under a
    derived key, if that one failed or was cancelled): ``(job, created by this call)``."""
    for _ in range(MAX_RERUNS + 1):
        job, replayed = post_job(client, spec, key)
        if not replayed:
            progress.message(f"submitted {label} job {job['id']}")
            return job, True
        if job["status"] not in ("failed", "cancelled"):
            progress.message(
                f"{label} job {job['id']} already exists for this audit ({job['status']}); using it"
            )
            return job, False
        ended = "failed" if job["status"] == "failed" else "was cancelled"
        progress.message(f"{label} job {job['id']} for this audit {ended}; submitting it again")
        key = derive_key("rerun", key, str(job["id"]))
    raise GauntletError(f"the {label} failed {MAX_RERUNS + 1} times; see gauntlet jobs list")


LONG_POLL_SECONDS = 30.0


def long_poll_seconds(pending: int) -> float:
    """How long one long poll may be held: 30 s for one job; shorter with several, so the
    progress of each is still shown while another is held."""
    return LONG_POLL_SECONDS if pending <= 1 else 2.0


def _job_line(job: dict[str, Any], label: str) -> str:
    progress = job.get("progress") or {}
    text = f"{label} {job['id']}: {job['status']}"
    if job["status"] not in FINAL_STATUSES:
        stage = progress.get("stage") or ""
        message = progress.get("message") or ""
        shown_stage = stage if stage not in (job["status"], "") and stage not in message else ""
        detail = f"{shown_stage}: {message}" if shown_stage and message else shown_stage or message
        text += f" {100 * float(progress.get('fraction') or 0):.0f}%"
        if detail:
            text += f" {detail}"
    return text


def _fraction(job: dict[str, Any]) -> float:
    if job["status"] in FINAL_STATUSES:
        return 1.0
    return float((job.get("progress") or {}).get("fraction") or 0.0)


def wait_jobs(
    client: GauntletClient,
    jobs: Sequence[tuple[str, str]],
    progress: Progress,
    *,
    interval: Callable[[float], float] = poll_interval,
    on_job: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Poll ``(job_id, label)`` pairs until every job is final; show progress meanwhile."""
    done: dict[str, dict[str, Any]] = {}
    latest: dict[str, dict[str, Any]] = {}
    start = client.clock()
    unreachable_since: float | None = None
    # Long polls: ``?wait=S`` answers when the job's status or progress changes, or after S
    # seconds. A round of questions is never repeated sooner than the poll interval, so a
    # server that ignores ``wait`` (it answers at once) is polled as before, and one that
    # holds the question is asked again as soon as it answers.
    while True:
        round_start = client.clock()
        long_polled = False
        pending = [job_id for job_id, _ in jobs if job_id not in done]
        for job_id, _label in jobs:
            if job_id in done:
                continue
            wait = long_poll_seconds(len(pending)) if job_id in latest else None
            remaining = client.remaining()
            if wait is not None and remaining is not None:
                wait = max(0.0, min(wait, remaining - 1.0)) or None
            long_polled = long_polled or job_id in latest  # (asked again: not the first read)
            try:
                job = client.get_json(f"/v1/jobs/{job_id}", {"wait": wait} if wait else None)
            except (ServerUnreachable, ApiError) as error:
                if isinstance(error, ApiError) and error.status < 500:
                    raise
                now = client.clock()
                unreachable_since = unreachable_since if unreachable_since is not None else now
                if now - unreachable_since > UNREACHABLE_GRACE_SECONDS:
                    raise
                progress.message(f"{error}; still waiting for job {job_id}")
                break
            unreachable_since = None
            latest[job_id] = job
            if on_job is not None:
                on_job(job)
            if job["status"] in FINAL_STATUSES:
                done[job_id] = job
        shown = [_job_line(latest[i], label) for i, label in jobs if i in latest]
        fractions = [_fraction(latest[i]) for i, _ in jobs if i in latest]
        state = " ".join(
            f"{j['status']}:{(j.get('progress') or {}).get('stage')}" for j in latest.values()
        )
        progress.update(state, sum(fractions) / len(jobs) if fractions else None, " | ".join(shown))
        if len(done) == len(jobs):
            progress.finish()
            return done
        waiting = ", ".join(f"job {i}" for i, _ in jobs if i not in done)
        remaining = client.remaining()
        if remaining is not None and remaining <= 0:
            progress.finish()
            raise DeadlineExceeded(
                f"timed out (--timeout) waiting for {waiting}; it keeps running on the server: "
                f"'gauntlet wait {jobs[0][0]}' waits again, 'gauntlet cancel ID' stops it"
            )
        rest = interval(client.clock() - start) - (client.clock() - round_start)
        if long_polled and rest > 0:
            _sleep_before_deadline(client, rest, waiting)


def report_link(client: GauntletClient, job_id: str) -> dict[str, str] | None:
    """``{url, expires_at}``: a link that opens the report in a browser without the API key
    (``POST /v1/jobs/{id}/report-link``); ``None`` where the server has no such links."""
    try:
        body, _ = client.post_json(f"/v1/jobs/{job_id}/report-link", replayable=True)
    except GauntletError:  # no such endpoint, or no answer: the outputs do without the link
        return None
    url = body.get("url")
    if not isinstance(url, str):
        return None
    return {"url": url, "expires_at": str(body.get("expires_at") or "")}


def cancel_quietly(client: GauntletClient, job_ids: Sequence[str], progress: Progress) -> None:
    """Best-effort cancel (after an interrupt): one try each, errors only reported."""
    for job_id in job_ids:
        try:
            client.post_json(f"/v1/jobs/{job_id}/cancel", replayable=True)
            progress.message(f"cancelled job {job_id}")
        except GauntletError as error:
            progress.message(f"could not cancel job {job_id}: {error}")


@dataclass
class AuditPlan:
    """Everything ``gauntlet audit`` was asked to do, parsed and checked."""

    model_path: Path
    model_bytes: bytes
    meta: dict[str, Any]
    dataset: str
    attacks: list[dict[str, Any]]
    gate: dict[str, Any] | None
    preset: str | None = None
    norm: str | None = None
    eps: list[float] | None = None
    checks: bool = True
    split: str = "test"
    limit: int | None = None
    seed: int = 0
    batch_size: int | None = None
    baseline_model_id: str | None = None
    max_drop: float | None = None
    idempotency_key: str | None = None
    reuse: bool = True
    shards: int | None = None

    def spec(self, model_id: str, dataset_id: str) -> dict[str, Any]:
        """The audit spec for ``model_id``."""
        return build_audit_spec(
            model_id,
            dataset_id,
            self.attacks,
            self.gate,
            preset=self.preset,
            norm=self.norm,
            eps=self.eps,
            checks=self.checks,
            split=self.split,
            limit=self.limit,
            seed=self.seed,
            batch_size=self.batch_size,
            shards=self.shards,
        )


def run_audit(
    client: GauntletClient, plan: AuditPlan, progress: Progress, outcome: Outcome
) -> None:
    """Upload, submit, wait and judge; fills ``outcome`` as it goes (so an error still
    leaves what was learned) and raises :class:`GauntletError` on any failure."""
    outcome.baseline_model_id = plan.baseline_model_id
    outcome.max_drop = plan.max_drop
    outcome.expected_gate = plan.gate
    model, _reused = upload_model(
        client, plan.model_path, plan.model_bytes, plan.meta, progress, reuse=plan.reuse
    )
    outcome.model = model
    if model.get("status") == "validating":
        model = wait_model(client, model["id"], progress)
        progress.finish()
        outcome.model = model
    require_ready(model)

    baseline_model: dict[str, Any] | None = None
    if plan.baseline_model_id is not None and plan.baseline_model_id != model["id"]:
        try:
            baseline_model = client.get_json(f"/v1/models/{plan.baseline_model_id}")
        except ApiError as error:
            raise GauntletError(
                f"baseline model {plan.baseline_model_id}: {error.describe()}"
            ) from error
        if baseline_model.get("status") == "validating":
            baseline_model = wait_model(client, plan.baseline_model_id, progress)
        require_ready(baseline_model, "baseline model")

    dataset_id, dataset_identity = resolve_dataset(client, plan.dataset, progress)
    spec = plan.spec(model["id"], dataset_id)
    engine = server_engine_version(client)
    key = plan.idempotency_key or audit_key(
        str(model["file_sha256"]), plan.meta, spec, dataset_identity, engine
    )
    job, created = submit_audit(client, spec, key, progress, "audit")
    outcome.job = job
    to_wait = [(str(job["id"]), "audit")]
    # Only jobs this run created are cancelled on an interrupt: one found by its key may be
    # another pipeline's (the same commit built twice, a baseline many candidates share).
    ours = [str(job["id"])] if created else []
    baseline_job: dict[str, Any] | None = None
    if plan.baseline_model_id is not None:
        if baseline_model is None:
            progress.message("the baseline is the audited model itself; using the same job")
            baseline_job = job
        else:
            baseline_spec = plan.spec(plan.baseline_model_id, dataset_id)
            baseline_key = baseline_audit_key(
                baseline_model, baseline_spec, dataset_identity, plan.idempotency_key, engine
            )
            baseline_job, created = submit_audit(
                client, baseline_spec, baseline_key, progress, "baseline"
            )
            to_wait.append((str(baseline_job["id"]), "baseline"))
            ours += [str(baseline_job["id"])] if created else []
        outcome.baseline_job = baseline_job

    try:
        finished = wait_jobs(client, to_wait, progress)
    except KeyboardInterrupt:
        progress.finish()
        cancel_quietly(client, ours, progress)
        others = [job_id for job_id, _ in to_wait if job_id not in ours]
        raise GauntletError(
            "interrupted"
            + (f"; cancelled {', '.join(ours)}" if ours else "")
            + (
                f"; {', '.join(others)} (found, not submitted, by this run) keeps running"
                if others
                else ""
            )
        ) from None
    outcome.job = finished[str(job["id"])]
    if baseline_job is not None:
        outcome.baseline_job = finished[str(baseline_job["id"])]
    judge(outcome)


def judge(outcome: Outcome) -> None:
    """Set the outcome's checks: the server's gate, then the drops against the baseline."""
    outcome.checks = gate_checks(outcome.job) if outcome.succeeded else []
    if (
        outcome.succeeded
        and outcome.max_drop is not None
        and outcome.job is not None
        and outcome.baseline_job is not None
    ):
        outcome.checks += baseline_checks(
            outcome.job["result"], outcome.baseline_job["result"], outcome.max_drop
        )
