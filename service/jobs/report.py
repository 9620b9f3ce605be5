"""The HTML report of a job: one self-contained page (inline SVG and PNG, no requests)."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from html import escape
from typing import Any

import numpy as np

from service.jobs.charts import Series, bar_chart, line_chart
from service.jobs.images import perturbation_pixels, png_bytes, to_pixels
from service.jobs.results import AuditResult, TrainResult, TransferResult
from service.jobs.schemas import JobRead
from service.jobs.transfer_report import transfer_sections

GALLERY_SIZE = 8

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;
text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.pass{color:#116611;font-weight:bold}.fail{color:#aa1111;font-weight:bold}
.verdict{font-size:1.6em;padding:.4em .8em;border-radius:6px;display:inline-block}
.verdict.pass{background:#e3f5e3}.verdict.fail{background:#fbe3e3}
.warn{background:#fff6dd;border-left:4px solid #e0a800;padding:6px 10px;margin:6px 0}
.note{background:#e8f0fb;border-left:4px solid #3b6fb6;padding:6px 10px;margin:6px 0}
.warn-text{color:#8a6d00;font-weight:bold}
.gallery{display:flex;flex-wrap:wrap;gap:18px}.sample{text-align:center;font-size:12px}
.sample img{width:84px;height:84px;image-rendering:pixelated;border:1px solid #999;margin:2px}
.confusion td{min-width:2.2em;text-align:center}
"""


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _table(headers: list[str], rows: list[list[str]], css_class: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='{css_class}'><tr>{head}</tr>{body}</table>"


def _png_tag(pixels: np.ndarray, alt: str) -> str:
    data = base64.b64encode(png_bytes(pixels)).decode()
    return f"<img alt='{escape(alt)}' src='data:image/png;base64,{data}'>"


def _gate(gate: Mapping[str, Any]) -> str:
    passed = gate["passed"]
    rows = []
    for c in gate["checks"]:
        if c.get("kind") == "validity":
            threshold, value = "none fired", "fired" if c["value"] else "did not fire"
        else:
            threshold, value = _pct(c["threshold"]), _pct(c["value"])
            if c.get("worst_case") is not None:
                value += f" <small>(worst case {_pct(c['worst_case'])})</small>"
        if c.get("waived"):
            verdict = "<span class='warn-text'>waived</span>"
        elif c["passed"]:
            verdict = "<span class='pass'>pass</span>"
        else:
            verdict = "<span class='fail'>fail</span>"
        rows.append([escape(c["name"]), threshold, value, verdict])
    return (
        f"<h2>Gate: <span class='verdict {'pass' if passed else 'fail'}'>"
        f"{'PASSED' if passed else 'FAILED'}</span></h2>"
        + _table(["check", "threshold", "value", "result"], rows)
    )


def _curves(result: Mapping[str, Any]) -> str:
    parts = []
    for norm in sorted({c["norm"] for c in result.get("curves", [])}):
        series = [
            Series(f"{c['attack']}", c["eps"], c["robust_accuracy"])
            for c in result["curves"]
            if c["norm"] == norm
        ]
        worst = [w for w in result["worst_case"] if w["norm"] == norm]
        if len(series) > 1:
            series.append(
                Series(
                    "worst case",
                    [w["eps"] for w in worst],
                    [w["robust_accuracy"] for w in worst],
                    band=True,
                )
            )
        noise = [n for n in result.get("noise_baseline", []) if n["norm"] == norm]
        if noise:
            series.append(
                Series(
                    "random noise",
                    [n["eps"] for n in noise],
                    [n["accuracy"] for n in noise],
                    dashed=True,
                )
            )
        parts.append(f"<h3>{escape(norm)}</h3>")
        parts.append(
            line_chart(
                f"robust accuracy against {norm} eps", series, f"eps ({norm})", "robust accuracy"
            )
        )
    return "<h2>Robustness curves</h2>" + "".join(parts) if parts else ""


def _per_class(result: Mapping[str, Any]) -> str:
    clean = result["per_class_clean_accuracy"]
    # The most telling attack for per-class bars: robust accuracy nearest half the clean one
    # (at 0% or at the clean accuracy every class looks the same).
    strongest = min(
        result["attacks"],
        key=lambda a: (
            abs(a["robust_accuracy"] - result["clean_accuracy"] / 2),
            a["robust_accuracy"],
        ),
        default=None,
    )
    if strongest is None:
        return ""
    categories = [str(i) for i in range(len(clean))]
    chart = bar_chart(
        "per-class accuracy",
        categories,
        [
            Series("clean", list(range(len(clean))), clean),
            Series(
                f"{strongest['name']} {strongest['norm']} {strongest['eps']:.3g}",
                list(range(len(clean))),
                strongest["per_class_accuracy"],
            ),
        ],
    )
    parts = ["<h2>Per-class accuracy</h2>", chart]
    confusion = strongest.get("confusion")
    if confusion and len(confusion) <= 20:
        largest = max(max(row) for row in confusion) or 1
        rows = []
        for true_class, row in enumerate(confusion):
            cells = [str(true_class)]
            for count in row:
                shade = int(255 - 180 * count / largest)
                cells.append(
                    f"<span style='display:block;background:rgb({shade},{shade},255)'>"
                    f"{count}</span>"
                )
            rows.append(cells)
        parts.append(
            f"<h3>Adversarial predictions ({escape(strongest['name'])}, eps "
            f"{strongest['eps']:.3g}): true class (rows) against predicted</h3>"
        )
        parts.append(
            _table(["true \\ predicted", *map(str, range(len(confusion)))], rows, "confusion")
        )
    return "".join(parts)


def _gallery(per_sample: Mapping[str, np.ndarray], input_range: tuple[float, float]) -> str:
    norms = [key.removeprefix("fell_at_") for key in per_sample if key.startswith("fell_at_")]
    if not norms:
        return ""
    norm = "linf" if "linf" in norms else norms[0]
    fell_at = per_sample[f"fell_at_{norm}"]
    labels = per_sample["labels"]
    candidates = [i for i in np.argsort(fell_at, kind="stable") if 0 < fell_at[i] < np.inf]
    chosen: list[int] = []
    for index in candidates:  # one per class first, then the rest
        if labels[index] not in {labels[c] for c in chosen}:
            chosen.append(int(index))
        if len(chosen) == GALLERY_SIZE:
            break
    for index in candidates:
        if len(chosen) >= GALLERY_SIZE:
            break
        if int(index) not in chosen:
            chosen.append(int(index))
    if not chosen:
        return ""
    lower, upper = input_range
    clean_inputs = per_sample.get("clean_inputs")
    adversarial = per_sample[f"adversarial_{norm}"]
    items = []
    for index in chosen:
        adv = adversarial[index]
        clean = clean_inputs[index] if clean_inputs is not None else None
        delta_tag = ""
        clean_tag = ""
        if clean is not None:
            clean_tag = _png_tag(to_pixels(clean, lower, upper), "clean")
            delta_tag = _png_tag(perturbation_pixels(adv - clean), "perturbation")
        items.append(
            "<div class='sample'>"
            f"{clean_tag}{delta_tag}{_png_tag(to_pixels(adv, lower, upper), 'adversarial')}"
            f"<br>#{int(per_sample['indices'][index])}: label {int(labels[index])}, "
            f"clean {int(per_sample['clean_predictions'][index])} "
            f"({_pct(float(per_sample['clean_confidences'][index]))})<br>"
            f"eps {float(fell_at[index]):.3g}: predicted "
            f"{int(per_sample[f'predictions_{norm}'][index])} "
            f"({_pct(float(per_sample[f'confidences_{norm}'][index]))})</div>"
        )
    return (
        "<h2>Adversarial examples</h2><p>clean | perturbation (amplified) | adversarial, "
        f"at the smallest {escape(norm)} eps that fooled the model</p>"
        f"<div class='gallery'>{''.join(items)}</div>"
    )


def _audit_sections(
    result: Mapping[str, Any],
    per_sample: Mapping[str, np.ndarray] | None,
    input_range: tuple[float, float],
) -> str:
    parts = [
        f"<p>Model <code>{escape(result['model_id'])}</code> on "
        f"<code>{escape(result['dataset_id'])}</code> ({escape(result['split'])}, "
        f"{result['num_examples']} examples, seed {result['seed']}, device "
        f"{escape(result['device'])}, {result['seconds']:.1f} s).</p>",
    ]
    if result.get("gate"):
        parts.append(_gate(result["gate"]))
    parts.append(f"<h2>Clean accuracy: {_pct(result['clean_accuracy'])}</h2>")
    for note in result.get("notes", []):
        parts.append(
            f"<div class='note'><b>{escape(note['code'])}</b>: {escape(note['message'])}</div>"
        )
    warnings = result.get("warnings", [])
    if result.get("checks", True):
        parts.append(f"<h2>Validity checks: {len(warnings)} warning(s)</h2>")
    else:
        parts.append("<h2>Validity checks: off</h2>")
    for warning in warnings:
        parts.append(
            f"<div class='warn'><b>{escape(warning['code'])}</b>: "
            f"{escape(warning['message'])}</div>"
        )
    if not warnings and result.get("checks", True):
        parts.append("<p>No sign of gradient masking or a failing attack.</p>")
    elif not result.get("checks", True):
        parts.append(
            "<p>The validity checks did not run: these numbers were not checked for "
            "gradient masking or failing attacks.</p>"
        )
    parts.append(_curves(result))
    if result.get("corruptions"):
        parts.append(
            f"<h2>Natural corruptions: {_pct(result.get('corruption_accuracy'))} on average</h2>"
        )
        parts.append(
            _table(
                ["corruption", "severity", "parameter", "accuracy"],
                [
                    [
                        escape(c["corruption"]),
                        str(c["severity"]),
                        f"{c['parameter']:g}",
                        _pct(c["accuracy"]),
                    ]
                    for c in result["corruptions"]
                ],
            )
        )
    parts.append("<h2>Attacks</h2>")
    rows = []
    for a in result["attacks"]:
        name = escape(a["name"])
        if a.get("components"):
            name += (
                "<br><small>"
                + " &rarr; ".join(
                    f"{escape(c['name'])} {_pct(c['robust_accuracy'])}" for c in a["components"]
                )
                + "</small>"
            )
        rows.append(
            [
                name,
                escape(a["norm"]),
                _num(a["eps"]),
                _pct(a["robust_accuracy"]),
                _pct(a["success_rate"]),
                _pct(a["mean_wrong_confidence"]),
                _num(a["mean_perturbation_norm"]),
                _num(a["max_perturbation_norm"]),
                f"{a['seconds']:.2f}",
            ]
        )
    parts.append(
        _table(
            [
                "attack",
                "norm",
                "eps",
                "robust accuracy",
                "success rate",
                "wrong confidence",
                "mean ||delta||",
                "max ||delta||",
                "seconds",
            ],
            rows,
        )
    )
    parts.append("<h2>Worst case per eps</h2>")
    parts.append(
        _table(
            ["norm", "eps", "robust accuracy", "random noise"],
            [
                [
                    escape(w["norm"]),
                    _num(w["eps"]),
                    _pct(w["robust_accuracy"]),
                    _pct(
                        next(
                            (
                                n["accuracy"]
                                for n in result.get("noise_baseline", [])
                                if n["norm"] == w["norm"] and n["eps"] == w["eps"]
                            ),
                            None,
                        )
                    ),
                ]
                for w in result["worst_case"]
            ],
        )
    )
    parts.append(_per_class(result))
    if per_sample is not None:
        parts.append(_gallery(per_sample, input_range))
    return "".join(parts)


def _training_sections(result: Mapping[str, Any]) -> str:
    epochs = result.get("epochs", [])
    parts = [
        f"<p>Method <b>{escape(result['method'])}</b> on <code>{escape(result['dataset_id'])}"
        f"</code>: {len(epochs)} epoch(s), {result['gradient_computations']:,} gradient "
        f"computations, {result['seconds']:.1f} s. Registered model "
        f"<code>{escape(result['model_id'])}</code>"
        + (
            f", fine-tuned from <code>{escape(result['parent_model_id'])}</code>"
            if result.get("parent_model_id")
            else ""
        )
        + (
            f"; audit job <code>{escape(result['audit_job_id'])}</code>"
            if result.get("audit_job_id")
            else ""
        )
        + ".</p>"
    ]
    for warning in result.get("warnings", []):
        parts.append(
            f"<div class='warn'><b>{escape(warning['code'])}</b>: "
            f"{escape(warning['message'])}</div>"
        )
    if result.get("resumed_from_epoch") is not None:
        parts.append(
            f"<div class='note'>Resumed from the checkpoint after epoch "
            f"{result['resumed_from_epoch']} (an earlier run of this job stopped).</div>"
        )
    scores = result.get("scores", [])
    if scores:
        parts.append(
            "<h2>What the training bought</h2><p>On the validation split: accuracy on clean "
            "inputs, under natural corruptions (noise, blur, rotation, contrast) and under "
            "PGD-20. Adversarial training buys the last, not the middle one.</p>"
        )
        parts.append(
            _table(
                ["model", "clean", "corruptions", "PGD-20"],
                [
                    [
                        f"{escape(s['role'])} <code>{escape(s.get('model_id') or '')}</code>",
                        _pct(s["clean_accuracy"]),
                        _pct(s.get("corruption_accuracy")),
                        _pct(s.get("robust_accuracy")),
                    ]
                    for s in scores
                ],
            )
        )
    if epochs:
        xs = [float(e["epoch"]) + 1 for e in epochs]
        series = [
            Series("clean", xs, [e["clean_accuracy"] for e in epochs]),
            Series("PGD", xs, [e["robust_accuracy"] for e in epochs]),
        ]
        if any(e.get("fgsm_accuracy") is not None for e in epochs):
            series.append(Series("FGSM", xs, [e.get("fgsm_accuracy") for e in epochs], True))
        parts.append("<h2>Training curves</h2>")
        parts.append(line_chart("validation accuracy per epoch", series, "epoch"))
        parts.append(
            _table(
                ["epoch", "loss", "clean", "PGD", "lr", "seconds", "gradient computations"],
                [
                    [
                        str(e["epoch"] + 1),
                        "n/a" if e["loss"] is None else f"{e['loss']:.4f}",
                        _pct(e["clean_accuracy"]),
                        _pct(e["robust_accuracy"]),
                        f"{e['lr']:.3g}",
                        f"{e['seconds']:.2f}",
                        f"{e['gradient_computations']:,}",
                    ]
                    for e in epochs
                ],
            )
        )
    return "".join(parts)


def render_report(
    job: JobRead,
    *,
    per_sample: Mapping[str, np.ndarray] | None = None,
    input_range: tuple[float, float] = (0.0, 1.0),
) -> str:
    """The report page of ``job``: an audit's verdict, checks, curves, classes and gallery;
    status and error for other jobs."""
    title = f"Gauntlet {escape(job.kind)} {escape(job.id)}"
    parts = [f"<h1>{title}</h1>", f"<p>Status: <b>{escape(job.status)}</b></p>"]
    if job.error:
        parts.append(f"<p class='fail'>{escape(job.error.code)}: {escape(job.error.message)}</p>")
    if isinstance(job.result, AuditResult):
        parts.append(_audit_sections(job.result.model_dump(mode="json"), per_sample, input_range))
    elif isinstance(job.result, TrainResult):
        parts.append(_training_sections(job.result.model_dump(mode="json")))
    elif isinstance(job.result, TransferResult):
        parts.append(transfer_sections(job.result.model_dump(mode="json")))
    elif job.status in ("queued", "running"):
        parts.append(f"<p>{_pct(job.progress.fraction)} done: {escape(job.progress.message)}</p>")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>"
    )
