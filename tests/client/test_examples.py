"""The CI examples in examples/ci/ run commands that the client accepts."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from gauntlet_client.cli import build_parser
from gauntlet_client.spec import build_attacks, build_gate

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "ci"


def gauntlet_commands(path: Path) -> list[str]:
    """Every shell command line of a workflow that runs ``gauntlet``."""
    document = yaml.safe_load(path.read_text())
    scripts: list[str] = []

    def collect(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("run", "script", "before_script") and isinstance(value, str):
                    scripts.append(value)
                elif key in ("script", "before_script") and isinstance(value, list):
                    scripts.extend(str(line) for line in value)
                else:
                    collect(value)
        elif isinstance(node, list):
            for item in node:
                collect(item)

    collect(document)
    lines = [" ".join(script.replace("\\\n", " ").split()) for script in scripts]
    return [line for script in lines for line in script.split("||") if "gauntlet " in line]


@pytest.mark.parametrize("name", ["github-actions.yml", "gitlab-ci.yml"])
def test_the_example_audit_command_parses(name: str) -> None:
    (audit,) = [c for c in gauntlet_commands(EXAMPLES / name) if "gauntlet audit" in c]
    # The optional baseline, as the shell expands it when GAUNTLET_BASELINE is set.
    expanded = re.sub(
        r"\$\{GAUNTLET_BASELINE:\+(.*?)\}",
        lambda m: m.group(1).replace('"$GAUNTLET_BASELINE"', "m_0123"),
        audit,
    )
    argv = shlex.split(expanded)
    assert argv[0] == "gauntlet"
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.baseline, args.max_drop) == ("audit", "m_0123", 0.02)
    assert str(args.junit) == "gauntlet.xml"
    assert build_attacks(args.attack) is not None
    assert build_gate(args.gate)["min_robust_accuracy"]
