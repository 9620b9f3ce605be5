"""The Python SDK: a typed, synchronous client of the Gauntlet API.

>>> from gauntlet_client import Gauntlet
>>> g = Gauntlet("http://127.0.0.1:8000", api_key)
>>> model = g.upload_model("digits_cnn.onnx", meta)
>>> audit = g.audit(model, preset="quick", eps=[0.1], gate=["clean>=0.9"])
>>> audit.wait(progress=True).verdict.passed

It does what the ``gauntlet`` command does, which is a thin layer over it: retries on
network errors (see :mod:`gauntlet_client.http`), model reuse by ``file_sha256`` and meta,
Idempotency-Keys derived from the content and the server's engine version (a re-run gets
the job that exists), and long-polled waits.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gauntlet_client.audit import (
    AuditPlan,
    canonical,
    derive_key,
    report_link,
    require_ready,
    resolve_dataset,
    server_engine_version,
    submit_audit,
    upload_model,
    wait_jobs,
    wait_model,
)
from gauntlet_client.http import (
    ApiError,
    GauntletClient,
    GauntletError,
    RetryPolicy,
)
from gauntlet_client.progress import Progress
from gauntlet_client.spec import SpecError, build_attacks, build_gate, parse_attack, parse_gate
from gauntlet_client.verdict import Check, Outcome, gate_checks

JSON = dict[str, Any]
ProgressArg = bool | Callable[[JSON], None] | None


class _Silent(io.StringIO):
    def isatty(self) -> bool:
        return False


def _progress_display(progress: ProgressArg) -> Progress:
    """``True``: lines (or a bar on a terminal) on stderr; otherwise a silent display."""
    if progress is True:
        return Progress(sys.stderr)
    return Progress(_Silent(), enabled=False)


@dataclass
class Model:
    """A model of the tenant (``GET /v1/models/{id}``); ``reused``: found, not uploaded."""

    data: JSON
    reused: bool = False

    @property
    def id(self) -> str:
        return str(self.data["id"])

    @property
    def name(self) -> str:
        return str(self.data.get("name"))

    @property
    def version(self) -> int | None:
        version = self.data.get("version")
        return version if isinstance(version, int) else None

    @property
    def status(self) -> str:
        return str(self.data.get("status"))

    @property
    def file_sha256(self) -> str:
        return str(self.data.get("file_sha256"))


@dataclass(frozen=True)
class Verdict:
    """The audit's verdict as the client trusts it: ``passed`` only when the server's gate
    passed and every check asked for is present and passed (``problem`` says otherwise)."""

    outcome: str  # passed, failed or error
    checks: list[Check]
    problem: str | None

    @property
    def passed(self) -> bool:
        return self.outcome == "passed"

    def __bool__(self) -> bool:
        return self.passed


class Job:
    """A job (``GET /v1/jobs/{id}``): ``wait()`` until it ends, then read ``result``."""

    def __init__(self, gauntlet: Gauntlet, data: JSON, *, created: bool = True) -> None:
        self._g = gauntlet
        self.data = data
        self.created = created

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r}, status={self.status!r})"

    @property
    def id(self) -> str:
        return str(self.data["id"])

    @property
    def status(self) -> str:
        return str(self.data.get("status"))

    @property
    def done(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")

    def refresh(self) -> Job:
        """Read the job again."""
        self.data = self._g.client.get_json(f"/v1/jobs/{self.id}")
        return self

    def wait(self, progress: ProgressArg = None, timeout: float | None = None) -> Job:
        """Wait until the job ends (long polls; see :func:`gauntlet_client.audit.wait_jobs`).

        ``progress``: ``True`` shows it on stderr; a callable gets each job state read.
        ``timeout`` (seconds) raises :class:`DeadlineExceeded`; the job keeps running.
        """
        client = self._g.client
        saved = client.deadline
        if timeout is not None:
            client.deadline = client.clock() + timeout
        display = _progress_display(progress)
        on_job = progress if callable(progress) else None
        try:
            self.data = wait_jobs(
                client, [(self.id, str(self.data.get("kind") or "job"))], display, on_job=on_job
            )[self.id]
        finally:
            client.deadline = saved
        return self

    def cancel(self) -> Job:
        """Cancel the job (a running one stops at its next heartbeat)."""
        self.data, _ = self._g.client.post_json(f"/v1/jobs/{self.id}/cancel", replayable=True)
        return self

    @property
    def result(self) -> JSON:
        """The result of a succeeded job; waits for it first if it has not ended."""
        if not self.done:
            self.wait()
        if self.status != "succeeded":
            error = self.data.get("error") or {}
            raise GauntletError(
                f"job {self.id} {self.status}: [{error.get('code')}] {error.get('message')}"
            )
        result = self.data.get("result")
        if not isinstance(result, dict):
            raise GauntletError(f"job {self.id} succeeded without a result")
        return result

    def report_url(self, *, signed: bool = True) -> str:
        """The job's HTML report: a signed link that opens in a browser without the API key
        (``signed``, where the server offers them), else the API URL (needs the key)."""
        if signed:
            link = report_link(self._g.client, self.id)
            if link is not None:
                return link["url"]
        return self._g.client.url(f"/v1/jobs/{self.id}/report")


class Audit(Job):
    """An audit job; ``verdict`` is what the ``gauntlet`` command's exit code says."""

    def __init__(
        self,
        gauntlet: Gauntlet,
        data: JSON,
        *,
        created: bool = True,
        gate: JSON | None = None,
        model: Model | None = None,
    ) -> None:
        super().__init__(gauntlet, data, created=created)
        self.gate = gate if gate is not None else (data.get("spec") or {}).get("gate")
        self.model = model

    def outcome(self) -> Outcome:
        """The run as the command's outputs see it (JUnit, Markdown, JSON writers take it)."""
        outcome = Outcome(
            server=self._g.server,
            job=self.data,
            model=self.model.data if self.model else None,
            expected_gate=self.gate,
        )
        outcome.checks = gate_checks(self.data) if outcome.succeeded else []
        return outcome

    @property
    def verdict(self) -> Verdict:
        """Waits for the audit, then judges it as the command does."""
        if not self.done:
            self.wait()
        outcome = self.outcome()
        return Verdict(outcome.verdict, outcome.checks, outcome.problem())


class Gauntlet:
    """One server and one API key. ``retries``: tries per request on network errors and
    429/502/503/504. ``timeout``: seconds after which every wait gives up."""

    def __init__(
        self,
        server: str,
        api_key: str,
        *,
        retries: int = 5,
        timeout: float | None = None,
        log: Callable[[str], None] | None = None,
        client: GauntletClient | None = None,
    ) -> None:
        if client is None:
            if not server.startswith(("http://", "https://")):
                raise GauntletError(f"the server URL {server!r} must start with http(s)://")
            client = GauntletClient(server, api_key, retry=RetryPolicy(attempts=retries), log=log)
        self.client = client
        if timeout is not None:
            client.deadline = client.clock() + timeout
        self._engine: str | None = None
        self._log = log

    @property
    def server(self) -> str:
        return self.client.server

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Gauntlet:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _progress(self) -> Progress:
        if self._log is None:
            return _progress_display(None)
        log = self._log

        class _Log(io.StringIO):
            def isatty(self) -> bool:
                return False

            def write(self, text: str) -> int:
                if text.strip():
                    log(text.rstrip("\n"))
                return len(text)

        return Progress(_Log(), tty=False, interval=0)

    def engine_version(self) -> str:
        """The server's engine version (part of every derived Idempotency-Key)."""
        if self._engine is None:
            self._engine = server_engine_version(self.client)
        return self._engine

    # ------------------------------------------------------------------ models

    def upload_model(
        self,
        path: str | Path,
        meta: Mapping[str, Any] | str | Path,
        name: str | None = None,
        *,
        reuse: bool = True,
        wait: bool = True,
    ) -> Model:
        """Upload a model file with its meta (a dict or a JSON file), or reuse the tenant's
        model with the same bytes and meta; wait until it validated (``wait``) and raise
        unless it is ready. ``name`` replaces the meta's name."""
        path = Path(path)
        if isinstance(meta, str | Path):
            meta = json.loads(Path(meta).read_text(encoding="utf-8"))
        if not isinstance(meta, Mapping):
            raise GauntletError("meta must be a JSON object")
        meta = dict(meta)
        if name is not None:
            meta["name"] = name
        progress = self._progress()
        data, reused = upload_model(
            self.client, path, path.read_bytes(), meta, progress, reuse=reuse
        )
        model = Model(data, reused)
        if wait and model.status == "validating":
            model.data = wait_model(self.client, model.id, progress)
        if wait:
            require_ready(model.data)
        return model

    def model(self, ref: str | Model) -> Model:
        """A model by id, ``NAME@latest`` or ``NAME@VERSION``."""
        if isinstance(ref, Model):
            return ref
        return Model(resolve_model(self.client, ref))

    def _model_id(self, ref: str | Model) -> str:
        """An id as it is (the server checks it), a name resolved, a Model's id."""
        if isinstance(ref, Model):
            return ref.id
        return ref if "@" not in ref else self.model(ref).id

    def models(self, name: str | None = None) -> list[Model]:
        """The tenant's models, newest first (of one name, newest version first)."""
        params = {"name": name} if name is not None else None
        return [Model(m) for m in self.client.list_all("/v1/models", params)]

    # ------------------------------------------------------------------ jobs

    def job(self, job_id: str) -> Job:
        """A job by id (an :class:`Audit` for audits)."""
        data = self.client.get_json(f"/v1/jobs/{job_id}")
        if data.get("kind") == "audit":
            return Audit(self, data, created=False)
        return Job(self, data, created=False)

    def _submit(self, spec: JSON, key: str, label: str) -> tuple[JSON, bool]:
        return submit_audit(self.client, spec, key, self._progress(), label)

    def audit(
        self,
        model: Model | str,
        dataset: str = "builtin:digits",
        attacks: Sequence[str | Mapping[str, Any]] | None = None,
        *,
        preset: str | None = None,
        eps: float | Sequence[float] | None = None,
        norm: str | None = None,
        gate: Sequence[str] | Mapping[str, Any] | None = None,
        allow_warnings: Sequence[str] = (),
        checks: bool = True,
        shards: int | None = None,
        split: str = "test",
        limit: int | None = None,
        seed: int = 0,
        batch_size: int | None = None,
        idempotency_key: str | None = None,
    ) -> Audit:
        """Submit an audit of ``model`` (a :class:`Model`, an id or ``NAME@latest``).

        ``attacks``: ``"pgd:eps=0.1,steps=10"`` strings (as ``--attack``) or spec dicts;
        without attacks or preset the server runs its default preset (autoattack).
        ``gate``: ``"robust@8/255>=0.4"`` strings (as ``--gate``) or a gate dict; there is
        always a gate (the validity checks gate alone without one). A re-run of the same
        audit gets the job that exists (its key is derived from the content).
        """
        model = self.model(model)
        try:
            attack_specs = [
                build_attacks([parse_attack(a)])[0] if isinstance(a, str) else dict(a)
                for a in attacks or []
            ]
            if gate is None or not isinstance(gate, Mapping):
                gate_spec = build_gate(
                    [parse_gate(g) for g in gate or []],
                    allow_warnings=allow_warnings,
                    allow_unchecked=not checks,
                )
            else:
                gate_spec = dict(gate)
        except SpecError as error:
            raise GauntletError(str(error)) from None
        eps_list = (
            None if eps is None else [float(eps)] if isinstance(eps, int | float) else list(eps)
        )
        dataset_id, identity = resolve_dataset(self.client, dataset, self._progress())
        plan = AuditPlan(
            model_path=Path(model.name),
            model_bytes=b"",
            meta=model.data,
            dataset=dataset,
            attacks=attack_specs,
            gate=gate_spec,
            preset=preset,
            norm=norm,
            eps=eps_list,
            checks=checks,
            split=split,
            limit=limit,
            seed=seed,
            batch_size=batch_size,
            shards=shards,
        )
        spec = plan.spec(model.id, dataset_id)
        key = idempotency_key or audit_key_for(model, spec, identity, self.engine_version())
        data, created = self._submit(spec, key, "audit")
        return Audit(self, data, created=created, gate=gate_spec, model=model)

    def train(self, spec: Mapping[str, Any] | None = None, **fields: Any) -> Job:
        """Submit a training job: the spec of README "Training robust models" (without
        ``kind``), as a dict and/or keywords (``dataset`` stands for ``dataset_id``)."""
        body: JSON = {**(spec or {}), **fields}
        if "dataset" in body:
            body["dataset_id"] = resolve_dataset(
                self.client, str(body.pop("dataset")), self._progress()
            )[0]
        body["kind"] = "train"
        key = derive_key("train-v1", canonical(body), self.engine_version())
        data, created = self._submit(body, key, "train")
        return Job(self, data, created=created)

    def transfer(
        self,
        sources: Sequence[str | Model | Sequence[str | Model]],
        targets: Sequence[str | Model],
        dataset: str = "builtin:digits",
        attack: str = "pgd",
        eps: float | Sequence[float] = 0.1,
        steps: int = 10,
        seed: int = 0,
        *,
        norm: str = "linf",
        limit: int | None = None,
    ) -> Job:
        """Submit a transfer job: adversarial examples crafted on each source (a model, or a
        list of models: an ensemble) tried on each target; ``.result`` is the matrix."""
        spec = transfer_spec(
            [
                self._model_id(s) if isinstance(s, str | Model) else [self._model_id(m) for m in s]
                for s in sources
            ],
            [self._model_id(t) for t in targets],
            resolve_dataset(self.client, dataset, self._progress())[0],
            attack,
            [float(eps)] if isinstance(eps, int | float) else [float(e) for e in eps],
            steps,
            seed,
            norm,
            limit,
        )
        key = derive_key("transfer-v1", canonical(spec), self.engine_version())
        data, created = self._submit(spec, key, "transfer")
        return Job(self, data, created=created)


def audit_key_for(model: Model, spec: JSON, dataset_identity: str, engine: str) -> str:
    """The audit's derived key: the one ``gauntlet audit`` uses for the same model and spec."""
    from gauntlet_client.audit import audit_key

    return audit_key(model.file_sha256, model.data, spec, dataset_identity, engine)


def transfer_spec(
    sources: Sequence[str | Sequence[str]],
    targets: Sequence[str],
    dataset_id: str,
    attack: str,
    eps: Sequence[float],
    steps: int,
    seed: int,
    norm: str = "linf",
    limit: int | None = None,
) -> JSON:
    """The body of ``POST /v1/jobs`` for a transfer job (fgsm is one step: no steps)."""
    attack_spec: JSON = {"name": attack, "norm": norm, "eps": list(eps)}
    if attack != "fgsm":
        attack_spec["steps"] = steps
    spec: JSON = {
        "kind": "transfer",
        "sources": [s if isinstance(s, str) else list(s) for s in sources],
        "targets": list(targets),
        "dataset_id": dataset_id,
        "attack": attack_spec,
        "seed": seed,
    }
    if limit is not None:
        spec["limit"] = limit
    return spec


def resolve_model(client: GauntletClient, ref: str) -> JSON:
    """A model by id, or ``NAME@latest`` / ``NAME@VERSION`` (``GET /v1/models?name=``)."""
    if "@" not in ref:
        try:
            return client.get_json(f"/v1/models/{ref}")
        except ApiError as error:
            raise GauntletError(f"model {ref}: {error.describe()}") from error
    name, _, version = ref.rpartition("@")
    if not name:
        raise GauntletError(f"{ref!r}: give NAME@latest, NAME@VERSION or a model id")
    if version != "latest" and not version.isdigit():
        raise GauntletError(f"{ref!r}: the version must be 'latest' or a whole number")
    try:
        models = client.list_all("/v1/models", {"name": name})
    except ApiError as error:
        raise GauntletError(
            f"{ref!r}: cannot look models up by name: {error.describe()}"
        ) from error
    if models and any(m.get("name") != name for m in models):
        raise GauntletError(
            f"{ref!r}: this server does not look models up by name (GET /v1/models?name= "
            "answered other names); give the model id"
        )
    if models and not all(isinstance(m.get("version"), int) for m in models):
        raise GauntletError(f"{ref!r}: this server's models have no versions; give the model id")
    if not models:
        raise GauntletError(f"{ref!r}: no model named {name!r}")
    if version == "latest":
        return max(models, key=lambda m: int(m["version"]))
    for model in models:
        if model["version"] == int(version):
            return model
    known = ", ".join(str(m["version"]) for m in models)
    raise GauntletError(f"{ref!r}: no version {version} of {name!r} (versions {known})")
