"""``gauntlet``: audit a model against a Gauntlet server and gate a CI pipeline on it.

Exit codes: 0 the gate passed, 1 the gate failed (a check did not hold, or a validity
warning fired), 2 anything else (bad usage, an invalid model, a failed or cancelled job, an
HTTP error, an unreachable server, a timeout, a verdict without the checks asked for). An
error is never 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
import traceback
import webbrowser
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from gauntlet_client import __version__
from gauntlet_client.audit import AuditPlan, report_link, run_audit, wait_jobs
from gauntlet_client.http import ApiError, GauntletClient, GauntletError, RetryPolicy
from gauntlet_client.outputs import (
    format_table,
    pct,
    summary_text,
    write_json,
    write_junit,
    write_markdown,
)
from gauntlet_client.progress import Progress
from gauntlet_client.sdk import Gauntlet, Job, resolve_model
from gauntlet_client.spec import (
    SpecError,
    build_attacks,
    build_gate,
    parse_attack,
    parse_eps_list,
    parse_gate,
    parse_norm,
)
from gauntlet_client.transfer import summary_text as transfer_summary
from gauntlet_client.transfer import write_json as write_transfer_json
from gauntlet_client.transfer import write_markdown as write_transfer_markdown
from gauntlet_client.verdict import EXIT_ERROR, Outcome, gate_checks

DEFAULT_SERVER = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_SECONDS = 3600.0
DEFAULT_RETRIES = 5

DESCRIPTION = """\
Audit a classifier's adversarial robustness on a Gauntlet server and gate a CI pipeline
on the verdict. The server comes from --server or GAUNTLET_SERVER (default
http://127.0.0.1:8000), the API key from GAUNTLET_API_KEY."""

EPILOG = """\
examples:
  gauntlet audit model.onnx --meta model.meta.json --eps 8/255 \\
      --gate 'clean>=0.9' --gate 'robust@8/255>=0.40' --junit gauntlet.xml
      (AutoAttack, the server's default; robust@EPS is the worst case over every attack)
  gauntlet audit model.onnx --meta model.meta.json --preset quick --eps 8/255 \\
      --gate 'pgd@8/255>=0.40' --baseline m_0123abcd --max-drop 0.02 --markdown comment.md
      (quick: FGSM + PGD-10, a fast look whose numbers are an upper bound)
  gauntlet transfer --source m_a --source m_a,m_b --target m_c --eps 0.05,0.1 \\
      --json transfer.json --markdown transfer.md
      (m_a,m_b: an ensemble source; each cell is error rate and wrong-class agreement)
  gauntlet presets
  gauntlet report j_0123abcd --open

exit codes: 0 gate passed; 1 gate failed (a check did not hold, or a validity warning
such as zero_gradients fired: --allow-warning CODE waives one); 2 bad usage, invalid
model, failed or cancelled job, HTTP error, unreachable server, timeout, or a verdict
without the checks asked for.
"""


class UsageError(GauntletError):
    """A mistake on the command line found after parsing (a missing file, a bad meta)."""


def _argument_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` whose SpecError becomes a usage error (exit 2)."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except SpecError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = parse.__name__.removeprefix("parse_")
    return convert


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def _fraction_type(text: str) -> float:
    try:
        value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 1")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _add_connection_options(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    # Accepted before and after the command; the command's copy only sets what is given.
    default: Any = None if top_level else argparse.SUPPRESS
    parser.add_argument(
        "--server",
        default=default,
        metavar="URL",
        help=f"the Gauntlet API (default: $GAUNTLET_SERVER, else {DEFAULT_SERVER})",
    )
    parser.add_argument(
        "--retries",
        type=_positive_int,
        default=default,
        metavar="N",
        help=f"tries per request on 429/502/503/504 and dropped connections "
        f"(default {DEFAULT_RETRIES})",
    )


def _add_wait_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=DEFAULT_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help="give up (exit 2) after this long; the job keeps running (default %(default)g)",
    )
    parser.add_argument(
        "--progress",
        choices=("auto", "bar", "lines", "none"),
        default="auto",
        help="a bar on a terminal, plain lines otherwise (auto, the default)",
    )
    parser.add_argument("--junit", type=Path, metavar="FILE", help="write JUnit XML here")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the full result here")
    parser.add_argument(
        "--markdown", type=Path, metavar="FILE", help="write a pull-request comment here"
    )
    parser.add_argument(
        "--report-link",
        action="store_true",
        help="put a signed link that opens the report in a browser without the API key in "
        "the outputs (anyone holding it can open the report until it expires, about an hour; "
        "servers that offer POST /v1/jobs/ID/report-link)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(
        prog="gauntlet",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"gauntlet {__version__}")
    _add_connection_options(parser, top_level=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_text: str, **kwargs: Any) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text, **kwargs)
        _add_connection_options(sub, top_level=False)
        return sub

    audit = command(
        "audit",
        "upload a model, audit it, wait, print the verdict; exit 0 pass, 1 fail, 2 error",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    audit.add_argument(
        "model_file", type=Path, metavar="MODEL_FILE", help=".onnx, .safetensors, .pt"
    )
    audit.add_argument(
        "--meta",
        type=Path,
        required=True,
        metavar="META.json",
        help="the model's metadata: name, format, input_shape, num_classes, ...",
    )
    audit.add_argument(
        "--dataset",
        default="builtin:digits",
        metavar="FILE|ID",
        help="a .npz/.safetensors file (x, y) to upload, builtin:NAME or a dataset id "
        "(default %(default)s)",
    )
    audit.add_argument("--split", choices=("test", "train"), default="test")
    audit.add_argument(
        "--limit", type=_positive_int, metavar="N", help="audit a seeded subset of N examples"
    )
    audit.add_argument("--seed", type=int, default=0)
    audit.add_argument("--batch-size", type=_positive_int, metavar="N")
    audit.add_argument(
        "--preset",
        metavar="NAME",
        help="a named set of attacks the server defines (gauntlet presets lists them): "
        "autoattack (the default unless --attack is given), standard (PGD-50, 3 restarts) "
        "or quick (FGSM + PGD-10, an upper bound); --attack entries run after it",
    )
    audit.add_argument(
        "--attack",
        action="append",
        default=[],
        type=_argument_type(parse_attack),
        metavar="SPEC",
        help="NAME[:key=value,...], e.g. 'pgd:eps=8/255,steps=10' or "
        "'fgsm:eps=2/255,4/255,norm=linf' (repeatable)",
    )
    audit.add_argument(
        "--eps",
        type=_argument_type(parse_eps_list),
        metavar="EPS[,EPS...]",
        help="radius for the preset and attacks without eps (server default: 8/255 for "
        "linf, 0.5 for l2)",
    )
    audit.add_argument(
        "--norm",
        type=_argument_type(parse_norm),
        help="linf (the server's default) or l2, for the preset and attacks without norm",
    )
    audit.add_argument(
        "--gate",
        action="append",
        default=[],
        type=_argument_type(parse_gate),
        metavar="CHECK",
        help="'robust@8/255>=0.40' (the per-example worst case over every attack), "
        "'clean>=0.9', or one attack: 'pgd@8/255>=0.40', 'pgd@l2:0.5>=40%%' (an attack the "
        "audit does not run is added). Repeatable. The validity checks always gate too",
    )
    audit.add_argument(
        "--allow-warning",
        action="append",
        default=[],
        metavar="CODE",
        help="do not fail the gate on this validity warning (e.g. randomized_model); the "
        "outputs show the waiver (repeatable; gauntlet presets lists the codes)",
    )
    audit.add_argument(
        "--no-checks",
        action="store_true",
        help="skip the validity checks (the gate then cannot see gradient masking; the "
        "outputs say the checks were off)",
    )
    audit.add_argument(
        "--baseline",
        metavar="MODEL",
        help="audit this model on the same spec and compare (see --max-drop): a model id, "
        "NAME@latest or NAME@VERSION",
    )
    audit.add_argument(
        "--name", metavar="NAME", help="upload the model under this name (the meta's name)"
    )
    audit.add_argument(
        "--shards",
        type=_positive_int,
        metavar="N",
        help="split the audit's examples into N parts run by any free workers",
    )
    audit.add_argument(
        "--max-drop",
        type=_fraction_type,
        metavar="D",
        help="fail when an accuracy is more than D below the baseline's (0.02 = 2 points)",
    )
    audit.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="instead of the key derived from the content (e.g. the CI run id); one per audit",
    )
    audit.add_argument(
        "--no-reuse",
        action="store_true",
        help="upload the model even when the server has it already (same sha256 and meta)",
    )
    _add_wait_options(audit)
    audit.set_defaults(handler=command_audit)

    train = command("train", "submit a training job (README: Training robust models), wait")
    train.add_argument(
        "spec_file", type=Path, metavar="SPEC.json", help="the train spec (kind may be left out)"
    )
    train.add_argument("--name", help="the trained model's name (replaces the spec's)")
    train.add_argument("--dataset", metavar="FILE|ID", help="replaces the spec's dataset_id")
    train.add_argument("--epochs", type=_positive_int, help="replaces the spec's epochs")
    train.add_argument("--seed", type=int, help="replaces the spec's seed")
    _add_wait_options(train)
    train.set_defaults(handler=command_train)

    transfer = command(
        "transfer",
        "craft adversarial examples on source models, try them on target models; print the matrix",
    )
    transfer.add_argument(
        "--source",
        action="append",
        required=True,
        metavar="ID[,ID...]",
        help="a source model (id or NAME@latest); a comma list is an ensemble (repeatable)",
    )
    transfer.add_argument(
        "--target", action="append", required=True, metavar="ID", help="a target (repeatable)"
    )
    transfer.add_argument("--dataset", default="builtin:digits", metavar="FILE|ID")
    transfer.add_argument(
        "--attack", default="pgd", choices=("pgd", "fgsm", "mifgsm"), help="(default pgd)"
    )
    transfer.add_argument(
        "--limit", type=_positive_int, metavar="N", help="a seeded subset of N examples"
    )
    transfer.add_argument(
        "--norm", type=_argument_type(parse_norm), default="linf", help="linf or l2"
    )
    transfer.add_argument(
        "--eps", type=_argument_type(parse_eps_list), required=True, metavar="EPS[,EPS...]"
    )
    transfer.add_argument("--steps", type=_positive_int, default=10)
    transfer.add_argument("--seed", type=int, default=0)
    _add_wait_options(transfer)
    transfer.set_defaults(handler=command_transfer)

    wait = command("wait", "wait for a job; for an audit, print the verdict and exit 0/1/2")
    wait.add_argument("job_id", metavar="JOB")
    _add_wait_options(wait)
    wait.set_defaults(handler=command_wait)

    report = command("report", "download a job's HTML report")
    report.add_argument("job_id", metavar="JOB")
    report.add_argument("--open", action="store_true", help="open it in a web browser")
    report.add_argument(
        "--link",
        action="store_true",
        help="print a signed link that opens it in a browser without the API key, instead",
    )
    report.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="FILE",
        help="where to write it (default gauntlet-report-JOB.html; a temporary file with --open)",
    )
    report.set_defaults(handler=command_report)

    presets = command("presets", "list the server's attack presets and validity warnings")
    presets.add_argument("--format", choices=("table", "json"), default="table")
    presets.set_defaults(handler=command_presets)

    cancel = command("cancel", "cancel a job (a running one stops at its next heartbeat)")
    cancel.add_argument("job_id", metavar="JOB")
    cancel.set_defaults(handler=command_cancel)

    for noun, filters in (("models", False), ("datasets", False), ("jobs", True)):
        group = command(noun, f"list or show {noun}")
        actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)
        listing = actions.add_parser("list", help=f"list {noun}, newest first")
        _add_connection_options(listing, top_level=False)
        listing.add_argument(
            "--limit", type=_positive_int, default=20, metavar="N", help="how many (at most 200)"
        )
        listing.add_argument("--cursor", help="the next page (printed after a full page)")
        listing.add_argument("--format", choices=("table", "json"), default="table")
        if filters:
            listing.add_argument(
                "--status", choices=("queued", "running", "succeeded", "failed", "cancelled")
            )
            listing.add_argument("--kind", help="audit, validate_model, ...")
            listing.add_argument("--model", metavar="MODEL_ID", help="jobs of this model")
        listing.set_defaults(handler=command_list, noun=noun)
        show = actions.add_parser("show", help=f"show one of the {noun}")
        _add_connection_options(show, top_level=False)
        show.add_argument("object_id", metavar="ID")
        show.add_argument("--format", choices=("table", "json"), default="table")
        show.set_defaults(handler=command_show, noun=noun)
    return parser


# ---------------------------------------------------------------------------- helpers


def _err(text: str) -> None:
    sys.stderr.write(f"gauntlet: {text}\n")
    sys.stderr.flush()


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def server_url(args: argparse.Namespace) -> str:
    """--server, else $GAUNTLET_SERVER, else the local default; checked for a scheme."""
    url = (args.server or os.environ.get("GAUNTLET_SERVER") or DEFAULT_SERVER).strip()
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"the server URL {url!r} must start with http:// or https://")
    return url.rstrip("/")


def api_key() -> str:
    """The API key from $GAUNTLET_API_KEY."""
    key = os.environ.get("GAUNTLET_API_KEY", "").strip()
    if not key:
        raise UsageError(
            "set GAUNTLET_API_KEY to your API key (`make serve` writes one to .gauntlet/api-key; "
            "`gauntlet-admin create-key NAME` makes one)"
        )
    return key


def make_progress(args: argparse.Namespace) -> Progress:
    """The progress display --progress asks for (stderr)."""
    mode = getattr(args, "progress", "auto")
    tty = {"bar": True, "lines": False}.get(mode)
    return Progress(sys.stderr, tty=tty, enabled=mode != "none")


def make_client(
    args: argparse.Namespace, progress: Progress | None = None, timeout: float | None = None
) -> GauntletClient:
    """A client for the chosen server, retrying as --retries says, logging to stderr."""
    retries = getattr(args, "retries", None) or DEFAULT_RETRIES
    log = progress.message if progress is not None else (lambda line: _err(line))
    return GauntletClient(
        server_url(args),
        api_key(),
        retry=RetryPolicy(attempts=retries),
        log=log,
        deadline=None if timeout is None else time.monotonic() + timeout,
    )


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Treat SIGTERM (a CI runner cancelling the step) like Ctrl-C."""

    def _raise(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, _raise)
    except ValueError:  # not the main thread (tests calling main())
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def write_outputs(args: argparse.Namespace, outcome: Outcome) -> bool:
    """Write --junit, --json and --markdown; ``False`` if one could not be written."""
    ok = True
    for path, write in (
        (args.junit, write_junit),
        (args.json, write_json),
        (args.markdown, write_markdown),
    ):
        if path is None:
            continue
        try:
            write(outcome, path)
        except OSError as error:
            _err(f"could not write {path}: {error}")
            ok = False
    return ok


def attach_report_link(
    args: argparse.Namespace, client: GauntletClient, outcome: Outcome, progress: Progress
) -> None:
    """With --report-link, fetch a signed browser link to the report for the outputs."""
    if not args.report_link or outcome.job is None:
        return
    outcome.report_link = report_link(client, str(outcome.job["id"]))
    if outcome.report_link is None:
        progress.message("this server offers no report links; the outputs link the API URL")


def finish(args: argparse.Namespace, outcome: Outcome, progress: Progress) -> int:
    """Print the summary, write the files, and return the exit code."""
    progress.finish()
    _out(summary_text(outcome))
    sys.stdout.flush()
    written = write_outputs(args, outcome)
    problem = outcome.problem()
    if problem is not None:
        _err(f"error: {problem}")
    return outcome.exit_code if written else EXIT_ERROR


# ---------------------------------------------------------------------------- commands


def plan_audit(args: argparse.Namespace) -> AuditPlan:
    """Check what ``audit`` was given, before anything is sent."""
    if args.max_drop is not None and args.baseline is None:
        raise UsageError("--max-drop needs --baseline MODEL_ID")
    if args.idempotency_key is not None and not 1 <= len(args.idempotency_key) <= 200:
        raise UsageError("--idempotency-key must be 1 to 200 characters")
    try:
        attacks = build_attacks(args.attack)
        gate = build_gate(
            args.gate, allow_warnings=args.allow_warning, allow_unchecked=args.no_checks
        )
    except SpecError as error:
        raise UsageError(str(error)) from None
    if not args.model_file.is_file():
        raise UsageError(f"MODEL_FILE {str(args.model_file)!r}: no such file")
    try:
        meta = json.loads(args.meta.read_text(encoding="utf-8"))
    except OSError as error:
        raise UsageError(f"--meta {str(args.meta)!r}: {error.strerror or error}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"--meta {str(args.meta)!r} is not valid JSON: {error}") from None
    if not isinstance(meta, dict):
        raise UsageError(f"--meta {str(args.meta)!r} must hold a JSON object")
    if args.name is not None:
        meta["name"] = args.name
    return AuditPlan(
        model_path=args.model_file,
        model_bytes=args.model_file.read_bytes(),
        meta=meta,
        dataset=args.dataset,
        attacks=attacks,
        gate=gate,
        preset=args.preset,
        norm=args.norm,
        eps=args.eps,
        checks=not args.no_checks,
        split=args.split,
        limit=args.limit,
        seed=args.seed,
        batch_size=args.batch_size,
        baseline_model_id=args.baseline,
        max_drop=args.max_drop,
        idempotency_key=args.idempotency_key,
        reuse=not args.no_reuse,
        shards=args.shards,
    )


def command_audit(args: argparse.Namespace) -> int:
    """``gauntlet audit``."""
    progress = make_progress(args)
    outcome = Outcome(server=(args.server or os.environ.get("GAUNTLET_SERVER") or DEFAULT_SERVER))
    try:
        outcome.server = server_url(args)
        plan = plan_audit(args)
        with sigterm_interrupts(), make_client(args, progress, args.timeout) as client:
            if plan.baseline_model_id is not None and "@" in plan.baseline_model_id:
                baseline = resolve_model(client, plan.baseline_model_id)
                progress.message(
                    f"baseline {plan.baseline_model_id} is model {baseline['id']} "
                    f"(version {baseline.get('version')})"
                )
                plan.baseline_model_id = str(baseline["id"])
            run_audit(client, plan, progress, outcome)
            attach_report_link(args, client, outcome, progress)
    except KeyboardInterrupt:
        outcome.error = "interrupted"
    except GauntletError as error:
        outcome.error = str(error)
    return finish(args, outcome, progress)


def command_wait(args: argparse.Namespace) -> int:
    """``gauntlet wait JOB``."""
    progress = make_progress(args)
    outcome = Outcome(server=(args.server or os.environ.get("GAUNTLET_SERVER") or DEFAULT_SERVER))
    try:
        outcome.server = server_url(args)
        with sigterm_interrupts(), make_client(args, progress, args.timeout) as client:
            outcome.job = client.get_json(f"/v1/jobs/{args.job_id}")
            # What the job itself asked for is what its verdict must contain.
            outcome.expected_gate = (outcome.job.get("spec") or {}).get("gate")
            outcome.job = wait_jobs(client, [(args.job_id, "job")], progress)[args.job_id]
            if outcome.job.get("model_id"):
                try:
                    outcome.model = client.get_json(f"/v1/models/{outcome.job['model_id']}")
                except ApiError:
                    pass  # deleted since: the summary shows the id alone
            attach_report_link(args, client, outcome, progress)
        outcome.checks = gate_checks(outcome.job) if outcome.succeeded else []
    except KeyboardInterrupt:
        outcome.error = "interrupted (the job keeps running)"
    except GauntletError as error:
        outcome.error = str(error)
    return finish(args, outcome, progress)


def _wait_and_write(
    args: argparse.Namespace, make_job: Callable[[Gauntlet], Job]
) -> tuple[Job, int]:
    """Submit (``make_job``), wait with progress on stderr; the job and an exit code."""
    progress = make_progress(args)
    with sigterm_interrupts(), make_client(args, progress, args.timeout) as client:
        g = Gauntlet(client.server, "", client=client)
        job = make_job(g)
        progress.message(f"{job.data.get('kind')} job {job.id}: {job.status}")
        try:
            job.data = wait_jobs(client, [(job.id, str(job.data.get("kind")))], progress)[job.id]
        except KeyboardInterrupt:
            progress.finish()
            if job.created:
                job.cancel()
                raise GauntletError(f"interrupted; cancelled {job.id}") from None
            raise GauntletError(f"interrupted; {job.id} keeps running") from None
    if job.status != "succeeded":
        error = job.data.get("error") or {}
        _err(f"error: job {job.id} {job.status}: [{error.get('code')}] {error.get('message')}")
        return job, EXIT_ERROR
    return job, 0


def command_train(args: argparse.Namespace) -> int:
    """``gauntlet train SPEC.json``."""
    try:
        spec = json.loads(args.spec_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{str(args.spec_file)!r}: {error}") from None
    if not isinstance(spec, dict):
        raise UsageError(f"{str(args.spec_file)!r} must hold a JSON object")
    spec.pop("kind", None)
    for option, key in (("name", "name"), ("epochs", "epochs"), ("seed", "seed")):
        if getattr(args, option) is not None:
            spec[key] = getattr(args, option)
    if args.dataset is not None:
        spec.pop("dataset_id", None)
        spec["dataset"] = args.dataset
    job, code = _wait_and_write(args, lambda g: g.train(spec))
    if code == 0:
        result = job.data.get("result") or {}
        _out(f"trained model {result.get('model_id')} (job {job.id})")
        if result.get("audit_job_id"):
            _out(f"its audit: job {result['audit_job_id']} ('gauntlet wait' it for the verdict)")
    if args.json is not None:
        args.json.write_text(json.dumps(job.data, indent=2) + "\n", encoding="utf-8")
    return code


def command_transfer(args: argparse.Namespace) -> int:
    """``gauntlet transfer --source A[,B] --target C ...``."""
    sources: list[str | list[str]] = []
    for text in args.source:
        ids = [part.strip() for part in text.split(",") if part.strip()]
        if not ids:
            raise UsageError(f"--source {text!r}: give a model id or a comma list of them")
        sources.append(ids[0] if len(ids) == 1 else ids)
    job, code = _wait_and_write(
        args,
        lambda g: g.transfer(
            sources,
            args.target,
            args.dataset,
            args.attack,
            args.eps,
            args.steps,
            args.seed,
            norm=args.norm,
            limit=args.limit,
        ),
    )
    if code != 0:
        return code
    result = job.data.get("result") or {}
    _out(transfer_summary(result))
    try:
        if args.json is not None:
            write_transfer_json(result, job.data, args.json)
        if args.markdown is not None:
            write_transfer_markdown(result, args.markdown)
    except OSError as error:
        _err(f"could not write an output file: {error}")
        return EXIT_ERROR
    return 0


def command_report(args: argparse.Namespace) -> int:
    """``gauntlet report JOB [--open] [-o FILE]``."""
    with make_client(args) as client:
        if args.link:
            link = report_link(client, args.job_id)
            if link is None:
                client.get_json(f"/v1/jobs/{args.job_id}")  # a missing job says so (404)
                raise GauntletError(
                    "this server offers no report links (POST /v1/jobs/ID/report-link); "
                    f"'gauntlet report {args.job_id} --open' downloads and opens it"
                )
            _out(link["url"])
            _err(f"valid until {link['expires_at']}; anyone with the link can open the report")
            return 0
        response = client.request(
            "GET", f"/v1/jobs/{args.job_id}/report", headers={"Accept": "text/html"}
        )
    if args.output is not None:
        path: Path = args.output
    elif args.open:
        folder = Path(tempfile.mkdtemp(prefix="gauntlet-report-"))
        path = folder / f"{args.job_id}.html"
    else:
        path = Path(f"gauntlet-report-{args.job_id}.html")
    try:
        path.write_text(response.text, encoding="utf-8")
    except OSError as error:
        raise UsageError(f"could not write {path}: {error}") from None
    _out(str(path))
    if args.open and not webbrowser.open(path.resolve().as_uri()):
        _err(f"no web browser could be opened; the report is at {path}")
    return 0


def command_presets(args: argparse.Namespace) -> int:
    """``gauntlet presets``."""
    with make_client(args) as client:
        listing = client.get_json("/v1/presets")
    if args.format == "json":
        _out(json.dumps(listing, indent=2))
        return 0
    rows = []
    for preset in listing.get("items", []):
        default = " (default)" if preset.get("name") == listing.get("default") else ""
        rows.append(
            [
                f"{preset.get('name')}{default}",
                str(preset.get("strength")),
                preset.get("description"),
            ]
        )
    _out(format_table(["preset", "strength", "attacks"], rows, indent=""))
    eps = listing.get("default_eps") or {}
    _out(
        "\ndefault eps: "
        + ", ".join(f"{n} {', '.join(f'{e:g}' for e in v)}" for n, v in eps.items())
    )
    _out("\nvalidity warnings:")
    _out(
        format_table(
            ["code", "fails the gate", "meaning"],
            [
                [w.get("code"), "yes" if w.get("fails_gate") else "no", w.get("description")]
                for w in listing.get("warnings", [])
            ],
            indent="  ",
        )
    )
    _out(f"\nengine {listing.get('engine_version')}")
    return 0


def command_cancel(args: argparse.Namespace) -> int:
    """``gauntlet cancel JOB``."""
    with make_client(args) as client:
        job, _ = client.post_json(f"/v1/jobs/{args.job_id}/cancel", replayable=True)
    if job.get("status") == "cancelled":
        _out(f"job {job['id']}: cancelled")
    else:
        _out(
            f"job {job['id']}: {job.get('status')}, cancel requested (its worker stops at the "
            "next heartbeat)"
        )
    return 0


def _rows(noun: str, items: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    if noun == "models":
        return ["id", "name", "format", "status", "created"], [
            [
                str(m.get("id")),
                str(m.get("name")),
                str(m.get("format")),
                str(m.get("status")),
                str(m.get("created_at", ""))[:19],
            ]
            for m in items
        ]
    if noun == "datasets":
        return ["id", "name", "examples", "shape", "classes"], [
            [
                str(d.get("id")),
                str(d.get("name")),
                str(d.get("num_examples")),
                "x".join(str(v) for v in d.get("example_shape") or []),
                str(d.get("num_classes")),
            ]
            for d in items
        ]
    return ["id", "kind", "status", "progress", "model", "created"], [
        [
            str(j.get("id")),
            str(j.get("kind")),
            str(j.get("status")),
            pct((j.get("progress") or {}).get("fraction")),
            str(j.get("model_id") or ""),
            str(j.get("created_at", ""))[:19],
        ]
        for j in items
    ]


def command_list(args: argparse.Namespace) -> int:
    """``gauntlet models|datasets|jobs list``."""
    params: dict[str, Any] = {"limit": min(args.limit, 200), "cursor": args.cursor}
    if args.noun == "jobs":
        params.update(status=args.status, kind=args.kind, model_id=args.model)
    with make_client(args) as client:
        page = client.get_json(f"/v1/{args.noun}", params)
    items = [item for item in page.get("items", []) if isinstance(item, dict)]
    if args.format == "json":
        _out(json.dumps(page, indent=2))
        return 0
    headers, rows = _rows(args.noun, items)
    _out(format_table(headers, rows, indent="") if rows else f"no {args.noun}")
    if page.get("next_cursor"):
        _err(f"more: gauntlet {args.noun} list --cursor {page['next_cursor']}")
    return 0


def command_show(args: argparse.Namespace) -> int:
    """``gauntlet models|datasets|jobs show ID``."""
    with make_client(args) as client:
        item = client.get_json(f"/v1/{args.noun}/{args.object_id}")
    if args.format == "json":
        _out(json.dumps(item, indent=2))
        return 0
    lines = []
    for key, value in item.items():
        if key in ("result", "spec") or value is None:
            continue
        if isinstance(value, dict) and {"code", "message"} <= set(value):
            value = f"[{value['code']}] {value['message']}"
        elif isinstance(value, dict | list):
            value = json.dumps(value)
        lines.append(f"{key}: {value}")
    _out("\n".join(lines))
    if args.noun == "jobs":
        _out("spec: " + json.dumps(item.get("spec")))
        if item.get("kind") == "audit" and item.get("status") == "succeeded":
            outcome = Outcome(server=server_url(args), job=item, checks=gate_checks(item))
            _out("")
            _out(summary_text(outcome))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the return value is the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version (0) or a usage error (2)
        return exit_.code if isinstance(exit_.code, int) else EXIT_ERROR
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_ERROR
    except GauntletError as error:
        _err(f"error: {error}")
        return EXIT_ERROR
    except Exception:  # never let a bug exit 1, which reads as "the gate failed"
        _err("internal error (please report it):\n" + traceback.format_exc())
        return EXIT_ERROR
    return code


if __name__ == "__main__":
    raise SystemExit(main())
