"""The service's overhead: one audit through HTTP + worker against the same attacks in a script.

    .venv/bin/python -m bench.service_overhead [--repeats 3] [--steps 50]

Starts the embedded service (``python -m service.serve``) in a temporary folder, uploads the
digits CNN as ONNX, and times an audit from POST to ``succeeded``; then times the engine
alone (load the same ONNX, ``evaluate`` the same configs) in this process. Prints both and
their ratio, measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from adversarial.datasets import load_builtin
from adversarial.evaluation import AttackConfig, evaluate
from adversarial.models.loading import ModelSpec, load_model
from tests.model_files import digits_onnx, meta

ROOT = Path(__file__).resolve().parents[1]


def spec(model_id: str, steps: int, seed: int) -> dict[str, object]:
    return {
        "kind": "audit",
        "model_id": model_id,
        "dataset_id": "builtin:digits",
        "seed": seed,
        "attacks": [
            {"name": "fgsm", "eps": [0.05, 0.1, 0.2]},
            {"name": "pgd", "eps": [0.1], "steps": steps, "step_size": 0.01},
        ],
    }


def configs(steps: int) -> list[AttackConfig]:
    pgd = {
        "steps": steps,
        "step_size": 0.01,
        "random_start": True,
        "restarts": 1,
        "early_stop": True,
    }
    return [AttackConfig("fgsm", "linf", eps) for eps in (0.05, 0.1, 0.2)] + [
        AttackConfig("pgd", "linf", 0.1, pgd)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        environment = {**os.environ, "GAUNTLET_DATA_DIR": folder, "GAUNTLET_PORT": str(args.port)}
        started = time.perf_counter()
        server = subprocess.Popen(
            [sys.executable, "-m", "service.serve"],
            cwd=ROOT,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{args.port}"
        try:
            key_file = Path(folder) / "api-key"
            while True:
                try:
                    if key_file.exists() and httpx.get(f"{url}/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            print(
                f"service up in {time.perf_counter() - started:.2f} s (migrate, key, API, worker)"
            )
            client = httpx.Client(
                base_url=url,
                timeout=60,
                headers={"Authorization": f"Bearer {key_file.read_text().strip()}"},
            )
            model = client.post(
                "/v1/models",
                files={"file": ("m.onnx", digits_onnx())},
                data={"meta": json.dumps(meta("onnx"))},
            ).json()
            while client.get(f"/v1/models/{model['id']}").json()["status"] == "validating":
                time.sleep(0.05)

            service_times, results = [], []
            for repeat in range(args.repeats + 1):  # the first run warms the worker up
                begin = time.perf_counter()
                job = client.post("/v1/jobs", json=spec(model["id"], args.steps, repeat)).json()
                while (body := client.get(f"/v1/jobs/{job['id']}").json())["status"] in (
                    "queued",
                    "running",
                ):
                    time.sleep(0.02)
                assert body["status"] == "succeeded", body
                if repeat:
                    service_times.append(time.perf_counter() - begin)
                    results.append([a["robust_accuracy"] for a in body["result"]["attacks"]])
        finally:
            os.killpg(server.pid, 15)
            server.wait()

    x, y = load_builtin("digits", "test")
    script_times, script_results = [], []
    for repeat in range(args.repeats + 1):
        begin = time.perf_counter()
        engine_model = load_model(digits_onnx(), ModelSpec("onnx", (1, 8, 8), 10))
        outcome = evaluate(engine_model, x, y, configs(args.steps), num_classes=10, seed=repeat)
        if repeat:
            script_times.append(time.perf_counter() - begin)
            script_results.append([o.robust_accuracy for o in outcome.outcomes])

    assert results == script_results, (results, script_results)
    service_median = statistics.median(service_times)
    script_median = statistics.median(script_times)
    print(f"audit (FGSM x3 eps + PGD-{args.steps}, 360 digits), median of {args.repeats}:")
    print(f"  through the service (POST to succeeded): {service_median:.3f} s")
    print(f"  plain script (load ONNX + evaluate):      {script_median:.3f} s")
    print(
        f"  overhead: {service_median - script_median:+.3f} s, "
        f"ratio {service_median / script_median:.2f}x; same robust accuracies: "
        f"{results[0]}"
    )


if __name__ == "__main__":
    main()
