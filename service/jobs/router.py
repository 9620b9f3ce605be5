"""HTTP routes of /v1/jobs."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import HTMLResponse, StreamingResponse

from service.deps import OptionalPrincipalDep, PrincipalDep, SessionDep, SettingsDep
from service.jobs import events, repository, service
from service.jobs.kinds import JobSpec
from service.jobs.report import render_report
from service.jobs.schemas import ArtifactRead, JobList, JobRead, ReportLink
from service.pages import html_page
from service.pagination import Cursor, Limit, next_cursor
from service.problems import ProblemError, not_found, problem_responses
from service.storage import get_store
from service.tables import JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

# What workers store artifacts as: per-sample exports and parts (npz), training checkpoints.
ARTIFACT_MEDIA_TYPES = (
    "application/octet-stream",
    "application/vnd.gauntlet.checkpoint+safetensors",
)

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Retrying with the same key and body returns the same job, never a second "
        "one; the same key with another body is a 422.",
    ),
]


@router.post(
    "",
    status_code=202,
    responses={
        200: {"model": JobRead, "description": "The job this Idempotency-Key created before."},
        **problem_responses(409, 429),
    },
)
def create_job(
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    spec: JobSpec,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> JobRead:
    """Submit a job; poll GET /v1/jobs/{id} until its status is final."""
    job, created = service.submit(
        session, principal, spec, idempotency_key=idempotency_key, settings=settings
    )
    if not created:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobRead.from_row(job)


@router.get("")
def list_jobs(
    principal: PrincipalDep,
    session: SessionDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    status: Annotated[
        Literal["queued", "running", "succeeded", "failed", "cancelled"] | None, Query()
    ] = None,
    kind: Annotated[str | None, Query(max_length=30)] = None,
    model_id: Annotated[str | None, Query(max_length=80)] = None,
) -> JobList:
    """List the tenant's jobs, newest first, optionally filtered."""
    rows = repository.list_page(
        session,
        principal.tenant_id,
        limit=limit,
        cursor=cursor,
        status=status,
        kind=kind,
        model_id=model_id,
    )
    return JobList(
        items=[JobRead.from_row(r) for r in rows],
        next_cursor=next_cursor([r.id for r in rows], limit),
    )


WaitSeconds = Annotated[
    float,
    Query(
        ge=0,
        le=60,
        description="Long poll: answer as soon as the job's status or progress differs from "
        "its state when the request arrived, or after this many seconds (0: at once). A final "
        "job is answered at once.",
    ),
]

EVENT_STREAM_DESCRIPTION = (
    'Server-sent events: `event: progress` with `data: {"fraction", "stage", "message", '
    '"status"}`, first for the job\'s state now, then whenever its status or progress '
    "changes; once the job is final, one `event: status` whose data is the job as "
    "`GET /v1/jobs/{id}` returns it, and the stream ends. A comment line (`: keep-alive`) "
    "every 15 seconds meanwhile."
)
# One event of the stream, as a client's parser sees it (the data is JSON text).
SERVER_SENT_EVENT = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "enum": ["progress", "status"]},
        "data": {"type": "string", "description": "JSON: the progress, or the job when final."},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
    "required": ["data"],
}


@router.get("/{job_id}", responses=problem_responses(503))
async def get_job(
    principal: PrincipalDep, request: Request, job_id: str, wait: WaitSeconds = 0
) -> JobRead:
    """Get a job: status, progress, timestamps, error, result; `wait` long-polls."""
    return await events.long_poll(request, principal, job_id, wait)


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": EVENT_STREAM_DESCRIPTION,
            "content": {"text/event-stream": {"schema": SERVER_SENT_EVENT}},
        },
        **problem_responses(503),
    },
)
async def job_events(
    principal: PrincipalDep, request: Request, settings: SettingsDep, job_id: str
) -> StreamingResponse:
    """Stream a job's progress as server-sent events until it is final."""
    job = await events.read_job(principal, job_id)
    subscription = None if job.status in JobStatus.FINAL else events.subscribe(request, job)
    return StreamingResponse(
        events.event_stream(principal, job, subscription, settings.event_heartbeat_seconds),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post("/{job_id}/cancel", status_code=202, responses=problem_responses(409))
def cancel_job(principal: PrincipalDep, session: SessionDep, job_id: str) -> JobRead:
    """Cancel a job: a queued one at once, a running one at its worker's next heartbeat."""
    return JobRead.from_row(service.cancel(session, principal, job_id, store=get_store()))


@router.get(
    "/{job_id}/report",
    response_class=HTMLResponse,
    name="job_report",
    responses=problem_responses(410),
)
def job_report(
    principal: OptionalPrincipalDep,
    session: SessionDep,
    job_id: str,
    token: Annotated[str | None, Query(max_length=200, description="From report-link.")] = None,
) -> HTMLResponse:
    """A self-contained HTML report of a job (the API key, or a signed link's token)."""
    if principal is not None:
        job = service.get_job(session, principal, job_id)
    elif token is not None:
        job = service.get_job_by_report_token(session, job_id, token)
    else:
        raise ProblemError(
            401,
            "unauthenticated",
            "send the API key or use a report link",
            headers={"WWW-Authenticate": "Bearer"},
        )
    per_sample, input_range = service.report_inputs(session, job, get_store())
    return html_page(
        render_report(JobRead.from_row(job), per_sample=per_sample, input_range=input_range)
    )


@router.post("/{job_id}/report-link")
def report_link(
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    job_id: str,
    request: Request,
) -> ReportLink:
    """A link that opens the job's report in a browser without the API key, until it
    expires (GAUNTLET_REPORT_LINK_SECONDS, 7 days by default)."""
    job = service.get_job(session, principal, job_id)
    token, expires_at = service.report_link(principal, job, seconds=settings.report_link_seconds)
    url = request.url_for("job_report", job_id=job.id).include_query_params(token=token)
    return ReportLink(url=str(url), expires_at=expires_at)


@router.get("/{job_id}/artifacts")
def list_artifacts(principal: PrincipalDep, session: SessionDep, job_id: str) -> list[ArtifactRead]:
    """List the files a job produced."""
    job = service.get_job(session, principal, job_id)
    return [ArtifactRead.from_row(a) for a in repository.list_artifacts(session, job.id)]


@router.get(
    "/{job_id}/artifacts/{name}",
    response_class=Response,
    responses={
        200: {
            "description": "The file, as the job stored it.",
            "content": {
                media_type: {"schema": {"type": "string", "format": "binary"}}
                for media_type in ARTIFACT_MEDIA_TYPES
            },
        }
    },
)
def get_artifact(principal: PrincipalDep, session: SessionDep, job_id: str, name: str) -> Response:
    """Download one file a job produced."""
    job = service.get_job(session, principal, job_id)
    artifact = repository.get_artifact(session, job.id, name)
    if artifact is None:
        raise not_found("artifact", name)
    # Streamed from the store: a checkpoint or an exported model can be large.
    return StreamingResponse(
        get_store().iter_chunks(artifact.sha256),
        media_type=artifact.content_type,
        headers={
            "Content-Disposition": f'attachment; filename="{artifact.name}"',
            "Content-Length": str(artifact.size),
        },
    )
