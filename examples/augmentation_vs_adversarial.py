"""Augmentation alone against FGSM, PGD and Free adversarial training, through the API.

With ``make serve`` running (or any Gauntlet server)::

    export GAUNTLET_API_KEY=$(cat .gauntlet/api-key)
    .venv/bin/python examples/augmentation_vs_adversarial.py

Trains the built-in ``small_cnn`` on the digits five ways (natural training for
reference), waits for the jobs, and prints each trained model's accuracy on the held-out
validation split: clean, under natural corruptions (noise, blur, rotation, contrast) and
under PGD-20 at eps 0.1. Needs httpx only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import httpx

EPS = 0.1
RUNS = {
    "natural": {"method": {"name": "natural"}},
    "augmentation": {
        "method": {"name": "natural"},
        "augmentation": {"rotation_degrees": 8},
    },
    "FGSM-AT": {"method": {"name": "fgsm", "eps": EPS}},
    "PGD-7-AT": {"method": {"name": "pgd", "eps": EPS, "steps": 7}},
    "Free-AT (m=4)": {"method": {"name": "free", "eps": EPS, "replays": 4}},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--server", default=os.environ.get("GAUNTLET_SERVER", "http://127.0.0.1:8000")
    )
    parser.add_argument("--epochs", type=int, default=10)
    arguments = parser.parse_args()
    headers = {"Authorization": f"Bearer {os.environ['GAUNTLET_API_KEY']}"}
    with httpx.Client(base_url=arguments.server, headers=headers, timeout=60) as client:
        jobs = {}
        for label, settings in RUNS.items():
            spec = {
                "kind": "train",
                "name": f"digits {label}",
                "architecture": {"name": "small_cnn"},
                "epochs": arguments.epochs,
                "seed": 0,
                **settings,
            }
            response = client.post("/v1/jobs", json=spec)
            response.raise_for_status()
            jobs[label] = response.json()["id"]
            print(f"submitted {label}: {jobs[label]}", file=sys.stderr)
        results = {}
        while len(results) < len(jobs):
            for label, job_id in jobs.items():
                if label in results:
                    continue
                job = client.get(f"/v1/jobs/{job_id}").json()
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    if job["status"] != "succeeded":
                        sys.exit(f"{label}: {job['status']}: {job['error']}")
                    results[label] = job["result"]
            time.sleep(2)
    print(f"| training | clean | corruptions | PGD-20 at eps {EPS} | gradient computations |")
    print("|---|---:|---:|---:|---:|")
    for label, result in results.items():
        (trained,) = [s for s in result["scores"] if s["role"] == "trained"]
        print(
            f"| {label} | {100 * trained['clean_accuracy']:.1f}% | "
            f"{100 * trained['corruption_accuracy']:.1f}% | "
            f"{100 * trained['robust_accuracy']:.1f}% | {result['gradient_computations']:,} |"
        )


if __name__ == "__main__":
    main()
