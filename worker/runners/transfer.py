"""The transfer runners: a transfer job fans out into crafting and scoring parts on the job
core, and merges their numbers into the matrix.

A ``transfer`` job runs up to three times, each run short, and waits for its parts between
runs (``running`` without a lease, woken by its last part; the reconciler wakes it if that
was lost):

1. it computes every crafted set's key (:func:`adversarial.transfer.crafted_key`: the source
   models' files and settings, the examples, the attack, the seed and the engine version),
   reuses the sets a job of the tenant already stored under that key, and stages one
   ``transfer_craft`` part per (source, eps) still missing;
2. once every set exists, it stages one ``transfer_score`` part per target: a part loads
   its target once, makes its clean pass once and scores every crafted set (per target
   rather than per cell: one jail start and one model load per target, not per source and
   eps);
3. once they have finished, it writes the result.

Untrusted models run only in the jail (``transfer_craft``, ``transfer_score`` in
``worker.jail.tasks``); these runners move rows and files.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sqlalchemy.orm import Session

from adversarial.errors import EngineInputError
from adversarial.evaluation import AttackConfig
from adversarial.transfer import crafted_key
from service.database import session_scope
from service.datasets import repository as datasets
from service.engine import engine_version
from service.jobs import repository
from service.jobs.results import (
    TransferCraftResult,
    TransferResult,
    TransferScoreResult,
)
from service.jobs.service import create_job
from service.jobs.transfer_specs import (
    CraftedRef,
    TransferCraftSpec,
    TransferScoreSpec,
    TransferSpec,
)
from service.models import repository as models
from service.settings import Settings, get_settings
from service.storage import ArtifactStore, get_store
from service.tables import Dataset, Job, JobStatus, Model
from worker.jail import JailError, run_in_jail
from worker.jail.config import jail_limits, jail_mode, jail_pool
from worker.jail.errors import SANDBOX_VIOLATION
from worker.lease import Lease
from worker.loading import load_examples, model_spec, subset, write_examples
from worker.runners.audit import store_artifact
from worker.runners.base import WaitForParts, jailed_model, lease_stopper, record_artifacts

CRAFTED_CONTENT_TYPE = "application/octet-stream"


def crafted_artifact_name(key: str) -> str:
    """The artifact a crafted set is stored as: named by its key, so a later job finds it."""
    return f"crafted-{key}.npz"


def attack_config(spec: TransferSpec, eps: float) -> AttackConfig:
    """The engine's configuration of the transfer's attack at one eps."""
    return AttackConfig(spec.attack.name, spec.attack.norm, float(eps), spec.attack.params())


def model_digest(row: Model) -> str:
    """What identifies a model's function: its file and the settings it is loaded with."""
    document = {
        "file_sha256": row.file_sha256,
        "spec": model_spec(row).to_json(),
        "black_box": bool(row.black_box),
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def examples_digest(x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor) -> str:
    """The exact examples, in order, with their ids (which key their random streams)."""
    digest = hashlib.sha256()
    for array in (x.float().contiguous(), y.long().contiguous(), ids.long().contiguous()):
        digest.update(str(tuple(array.shape)).encode())
        digest.update(array.numpy().tobytes())
    return digest.hexdigest()


def unique_names(names: list[str]) -> list[str]:
    """``names`` with ``#2``, ``#3``, ... added to repeats, so every entry has its own."""
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return unique


@dataclass
class _Examples:
    x: torch.Tensor
    y: torch.Tensor
    ids: torch.Tensor

    def write(self, folder: Path) -> Path:
        return write_examples(folder / "examples.npz", self.x, self.y, self.ids)


class _Transfer:
    """What every transfer runner reads first: the spec, the model rows, the examples."""

    def __init__(self, spec: TransferSpec, lease: Lease) -> None:
        self.spec = spec
        self.settings: Settings = get_settings()
        self.store: ArtifactStore = get_store()
        ids = sorted({model_id for _, model_id in spec.named_models()})

        def rows() -> tuple[dict[str, Model], Dataset | None]:
            with session_scope() as session:
                found = {i: row for i in ids if (row := models.get_any(session, i)) is not None}
                dataset = None
                if not spec.dataset_id.startswith("builtin:"):
                    dataset = datasets.get_any(session, spec.dataset_id)
                return found, dataset

        self.models, self.dataset_row = lease.retry(rows)
        missing = sorted(set(ids) - set(self.models))
        if missing:
            raise LookupError(f"models {missing} are gone")
        self.lease = lease

    def examples(self) -> _Examples:
        self.lease.report(0.0, "loading", "loading the data", force=True)
        x, y = load_examples(
            self.spec.dataset_id, self.spec.split, self.dataset_row, self.store, self.settings
        )
        x, y, indices = subset(x, y, self.spec.limit, self.spec.seed)
        return _Examples(x, y, torch.from_numpy(indices))

    @property
    def input_range(self) -> tuple[float, float]:
        first = self.models[self.spec.source_members()[0][0]]
        return (float(first.input_range[0]), float(first.input_range[1]))

    def jail(
        self,
        task: str,
        payload: dict[str, Any],
        files: dict[str, str],
        folder: Path,
        examples: _Examples,
    ) -> tuple[dict[str, Any], Path]:
        """Run ``task`` in the jail with the stored blobs ``files`` (input name -> sha256)
        and the examples as inputs."""
        inputs: dict[str, Path] = {"examples": examples.write(folder)}
        outputs = folder / "outputs"
        with _stored_files(self.store, files) as paths:
            inputs.update(paths)
            result = run_in_jail(
                task,
                payload,
                inputs,
                limits=jail_limits(self.settings),
                mode=jail_mode(self.settings),
                on_progress=self.lease.report,
                should_stop=lease_stopper(self.lease),
                output_dir=outputs,
                pool=jail_pool(self.settings),
            )
        return result, outputs


@contextmanager
def _stored_files(store: ArtifactStore, files: dict[str, str]) -> Iterator[dict[str, Path]]:
    """Several stored blobs as local files at once (input name -> sha256)."""
    with ExitStack() as stack:
        yield {name: stack.enter_context(store.local_file(sha)) for name, sha in files.items()}


def _ref(
    source: int, eps: float, key: str, result: TransferCraftResult, *, reused: bool
) -> CraftedRef:
    return CraftedRef(
        source=source,
        eps=eps,
        key=key,
        sha256=result.crafted.sha256,
        size=result.crafted.size,
        examples=result.examples,
        source_clean_accuracy=result.source_clean_accuracy,
        source_success_rate=result.source_success_rate,
        reused=reused,
    )


def _stored(
    tenant_id: str, transfer: _Transfer, source: int, eps: float, key: str
) -> CraftedRef | None:
    """A crafted set of this key another job of the tenant stored, if its bytes are there."""

    def find() -> tuple[Any, dict[str, Any] | None] | None:
        with session_scope() as session:
            found = repository.find_crafted(session, tenant_id, crafted_artifact_name(key))
            return None if found is None else (found[0], found[1].result)

    found = transfer.lease.retry(find)
    if found is None or found[1] is None:
        return None
    artifact, document = found
    if not transfer.store.exists(artifact.sha256):
        return None
    result = TransferCraftResult.model_validate(document)
    if result.key != key or result.crafted.sha256 != artifact.sha256:
        return None
    return _ref(source, eps, key, result, reused=True)


def _failed(part: Job, what: str) -> EngineInputError:
    error = part.error or {}
    return EngineInputError(
        "part_failed",
        f"part {part.id} ({what}) {part.status}: [{error.get('code')}] {error.get('message')}",
    )


class TransferRunner:
    """The ``transfer`` job: stages its crafting parts, then its scoring parts, then merges
    (see the module docstring)."""

    def run(self, job: Job, lease: Lease) -> dict[str, Any]:
        started = time.perf_counter()
        spec = TransferSpec.model_validate(job.spec)

        def parts() -> list[Job]:
            with session_scope() as session:
                return repository.children(session, job.id)

        children = lease.retry(parts)
        scores = [part for part in children if part.kind == "transfer_score"]
        if scores:
            return self._merge(job, spec, scores, lease, started)
        crafts = [part for part in children if part.kind == "transfer_craft"]
        transfer = _Transfer(spec, lease)
        examples = transfer.examples()
        refs = self._crafted_sets(job, transfer, examples, crafts)
        missing = [(source, eps, key) for (source, eps, key), ref in refs.items() if ref is None]
        if missing:
            if crafts:
                # Every set was made by a part or found stored when the parts were staged: a
                # stored one has gone since (deleted from the store).
                raise EngineInputError(
                    "crafted_set_gone",
                    f"{len(missing)} crafted set(s) this job reuses are no longer stored; "
                    "submit the transfer again to craft them afresh",
                )

            def stage_crafts(session: Session) -> None:
                for source, eps, key in missing:
                    create_job(
                        session,
                        tenant_id=job.tenant_id,
                        kind="transfer_craft",
                        spec=TransferCraftSpec(
                            kind="transfer_craft", transfer=spec, source=source, eps=eps, key=key
                        ).model_dump(mode="json"),
                        model_id=spec.source_members()[source][0],
                        dataset_id=spec.dataset_id,
                        engine=job.engine_version,
                        settings=transfer.settings,
                        parent_id=job.id,
                    )

            raise WaitForParts(stage_crafts, f"crafting {len(missing)} adversarial set(s)")
        crafted = [ref for ref in refs.values() if ref is not None]

        def stage_scores(session: Session) -> None:
            for index, target in enumerate(spec.targets):
                create_job(
                    session,
                    tenant_id=job.tenant_id,
                    kind="transfer_score",
                    spec=TransferScoreSpec(
                        kind="transfer_score", transfer=spec, target=index, crafted=crafted
                    ).model_dump(mode="json"),
                    model_id=target,
                    dataset_id=spec.dataset_id,
                    engine=job.engine_version,
                    settings=transfer.settings,
                    parent_id=job.id,
                )

        raise WaitForParts(stage_scores, f"scoring {len(spec.targets)} target(s)")

    def _crafted_sets(
        self, job: Job, transfer: _Transfer, examples: _Examples, crafts: list[Job]
    ) -> dict[tuple[int, float, str], CraftedRef | None]:
        """Every (source, eps, key) and its crafted set: made by this job's crafting parts,
        stored earlier by another job of the tenant (reused), or ``None`` (to craft)."""
        spec = transfer.spec
        data = examples_digest(examples.x, examples.y, examples.ids)
        engine = job.engine_version or engine_version()
        made = {}
        for part in crafts:
            if part.status != JobStatus.SUCCEEDED or part.result is None:
                raise _failed(part, f"crafting on sources[{part.spec['source']}]")
            made[part.spec["key"]] = part.result
        refs: dict[tuple[int, float, str], CraftedRef | None] = {}
        for source, members in enumerate(spec.source_members()):
            digests = [model_digest(transfer.models[member]) for member in members]
            for eps in spec.attack.radii():
                key = crafted_key(
                    digests,
                    data,
                    attack_config(spec, eps),
                    spec.seed,
                    input_range=transfer.input_range,
                    engine_version=engine,
                )
                if key in made:
                    result = TransferCraftResult.model_validate(made[key])
                    refs[(source, eps, key)] = _ref(source, eps, key, result, reused=False)
                else:
                    refs[(source, eps, key)] = _stored(job.tenant_id, transfer, source, eps, key)
        return refs

    def _merge(
        self, job: Job, spec: TransferSpec, scores: list[Job], lease: Lease, started: float
    ) -> dict[str, Any]:
        for part in scores:
            if part.status != JobStatus.SUCCEEDED or part.result is None:
                raise _failed(part, f"scoring targets[{part.spec['target']}]")

        def rows() -> dict[str, Model]:
            with session_scope() as session:
                ids = {model_id for _, model_id in spec.named_models()}
                return {i: row for i in ids if (row := models.get_any(session, i)) is not None}

        found = lease.retry(rows)
        names = {model_id: row.name for model_id, row in found.items()}
        members = spec.source_members()
        source_names = unique_names(
            [
                names.get(m[0], m[0])
                if len(m) == 1
                else "ensemble(" + "+".join(names.get(i, i) for i in m) + ")"
                for m in members
            ]
        )
        target_names = unique_names([names.get(t, t) for t in spec.targets])
        crafted = [
            CraftedRef.model_validate(ref)
            for ref in sorted(scores, key=lambda p: p.spec["target"])[0].spec["crafted"]
        ]
        by_target = {
            part.spec["target"]: TransferScoreResult.model_validate(part.result) for part in scores
        }
        black_boxes = {model_id: bool(row.black_box) for model_id, row in found.items()}
        cells = []
        radii = spec.attack.radii()
        for source in range(len(members)):
            for eps in radii:
                position, ref = next(
                    (i, r) for i, r in enumerate(crafted) if r.source == source and r.eps == eps
                )
                for target in range(len(spec.targets)):
                    cell = by_target[target].cells[position]
                    if cell.source != source or cell.eps != eps:
                        raise JailError(
                            SANDBOX_VIOLATION, "A scoring part's cells are out of order."
                        )
                    cells.append(
                        {
                            **cell.model_dump(exclude={"source", "eps"}),
                            "source": source_names[source],
                            "target": target_names[target],
                            "eps": eps,
                            "reused": ref.reused,
                        }
                    )
        result = TransferResult.model_validate(
            {
                "kind": "transfer",
                "engine_version": job.engine_version or engine_version(),
                "examples": crafted[0].examples if crafted else 0,
                "attack": {
                    "name": spec.attack.name,
                    "norm": spec.attack.norm,
                    "eps": radii,
                    "steps": spec.attack.resolved_steps(),
                },
                "seed": spec.seed,
                "sources": [
                    {"name": name, "model_ids": ids}
                    for name, ids in zip(source_names, members, strict=True)
                ],
                "targets": [
                    {
                        "name": name,
                        "model_id": target,
                        "black_box": black_boxes.get(target, False),
                        "clean_accuracy": by_target[index].clean_accuracy,
                    }
                    for index, (name, target) in enumerate(
                        zip(target_names, spec.targets, strict=True)
                    )
                ],
                "crafted": [
                    {
                        "source": source_names[ref.source],
                        "eps": ref.eps,
                        "source_clean_accuracy": ref.source_clean_accuracy,
                        "source_success_rate": ref.source_success_rate,
                        "reused": ref.reused,
                        "artifact": crafted_artifact_name(ref.key),
                    }
                    for ref in crafted
                ],
                "cells": cells,
                "seconds": round(time.perf_counter() - started, 4),
            }
        )
        return result.model_dump(mode="json")

    def on_success(self, session: Session, job: Job, result: dict[str, Any]) -> None:
        # The job lists its crafted sets (made or reused) as its own artifacts too: the same
        # stored bytes, downloadable from the job that shows them.
        scores = [p for p in repository.children(session, job.id) if p.kind == "transfer_score"]
        if not scores:
            return
        record_artifacts(
            session,
            job,
            [
                {
                    "name": crafted_artifact_name(ref["key"]),
                    "sha256": ref["sha256"],
                    "size": ref["size"],
                    "content_type": CRAFTED_CONTENT_TYPE,
                }
                for ref in scores[0].spec["crafted"]
            ],
        )

    def on_failure(self, session: Session, job: Job, error: dict[str, Any]) -> None:
        return None


class TransferCraftRunner:
    """One ``transfer_craft`` part: crafts on its source at its eps for every example, in
    the jail; the crafted set is stored (named by its key) when the part succeeds."""

    def run(self, job: Job, lease: Lease) -> dict[str, Any]:
        started = time.perf_counter()
        spec = TransferCraftSpec.model_validate(job.spec)
        transfer = _Transfer(spec.transfer, lease)
        examples = transfer.examples()
        members = [transfer.models[m] for m in spec.transfer.source_members()[spec.source]]
        payloads = [jailed_model(row, transfer.settings) for row in members]
        config = attack_config(spec.transfer, spec.eps)
        payload = {
            "models": payloads,
            "attack": {
                "name": config.name,
                "norm": config.norm,
                "eps": config.eps,
                "params": dict(config.params),
            },
            "seed": spec.transfer.seed,
            "input_range": list(transfer.input_range),
            "batch_size": spec.transfer.batch_size or transfer.settings.eval_batch_size,
            "device": payloads[0]["device"],
        }
        files = {f"model{index}": row.file_sha256 for index, row in enumerate(members)}
        with tempfile.TemporaryDirectory(prefix="gauntlet-craft-") as name:
            measured, outputs = transfer.jail(
                "transfer_craft", payload, files, Path(name), examples
            )
            crafted = outputs / "crafted.npz"
            if not crafted.is_file():
                raise JailError(SANDBOX_VIOLATION, "The jail's craft wrote no crafted set.")
            reference = store_artifact(
                transfer.store,
                crafted_artifact_name(spec.key),
                crafted.read_bytes(),
                CRAFTED_CONTENT_TYPE,
            )
        try:
            return TransferCraftResult(
                source=spec.source,
                eps=spec.eps,
                key=spec.key,
                examples=int(measured["examples"]),
                source_clean_accuracy=float(measured["source_clean_accuracy"]),
                source_success_rate=measured["source_success_rate"],
                crafted=reference,
                seconds=round(time.perf_counter() - started, 4),
            ).model_dump(mode="json")
        except (KeyError, TypeError, ValueError) as error:
            raise JailError(
                SANDBOX_VIOLATION, f"The jail's craft result is malformed: {error}"[:500]
            ) from None

    def on_success(self, session: Session, job: Job, result: dict[str, Any]) -> None:
        record_artifacts(session, job, [result["crafted"]])

    def on_failure(self, session: Session, job: Job, error: dict[str, Any]) -> None:
        return None


class TransferScoreRunner:
    """One ``transfer_score`` part: scores its target against every crafted set of the
    transfer, in the jail."""

    def run(self, job: Job, lease: Lease) -> dict[str, Any]:
        started = time.perf_counter()
        spec = TransferScoreSpec.model_validate(job.spec)
        transfer = _Transfer(spec.transfer, lease)
        examples = transfer.examples()
        row = transfer.models[spec.transfer.targets[spec.target]]
        payload = {
            **jailed_model(row, transfer.settings),
            "crafted": len(spec.crafted),
            "batch_size": spec.transfer.batch_size or transfer.settings.eval_batch_size,
        }
        files = {"model": row.file_sha256}
        files.update({f"crafted{index}": ref.sha256 for index, ref in enumerate(spec.crafted)})
        with tempfile.TemporaryDirectory(prefix="gauntlet-score-") as name:
            measured, _ = transfer.jail("transfer_score", payload, files, Path(name), examples)
        try:
            cells = measured["cells"]
            if len(cells) != len(spec.crafted):
                raise ValueError(f"{len(cells)} cells for {len(spec.crafted)} crafted sets")
            return TransferScoreResult.model_validate(
                {
                    "target": spec.target,
                    "clean_accuracy": float(measured["clean_accuracy"]),
                    "cells": [
                        {**cell, "source": ref.source, "eps": ref.eps}
                        for cell, ref in zip(cells, spec.crafted, strict=True)
                    ],
                    "seconds": round(time.perf_counter() - started, 4),
                }
            ).model_dump(mode="json")
        except (KeyError, TypeError, ValueError) as error:
            raise JailError(
                SANDBOX_VIOLATION, f"The jail's score result is malformed: {error}"[:500]
            ) from None

    def on_success(self, session: Session, job: Job, result: dict[str, Any]) -> None:
        return None

    def on_failure(self, session: Session, job: Job, error: dict[str, Any]) -> None:
        return None
