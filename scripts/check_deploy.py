"""Check the shipped deploy files without a Docker engine: hadolint on the Dockerfile, yamllint on compose,
build args declared, example configuration valid."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def main() -> int:
    problems: list[str] = []
    dockerfile = DEPLOY / "Dockerfile"
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    if result.returncode != 0:
        problems.append(f"hadolint:\n{result.stdout}{result.stderr}")
    lint = subprocess.run(
        [sys.executable, "-m", "yamllint", "-d", "{extends: default, rules: {line-length: {max: 120}, "
         "document-start: disable, truthy: disable}}", str(DEPLOY / "compose.yaml")],
        capture_output=True,
        text=True,
    )
    if lint.returncode != 0:
        problems.append(f"yamllint:\n{lint.stdout}{lint.stderr}")
    declared = set(re.findall(r"^ARG\s+(\w+)", dockerfile.read_text(), re.M))
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        for arg in (service.get("build") or {}).get("args", {}):
            if arg not in declared:
                problems.append(f"compose service {name}: build arg {arg} is not an ARG of deploy/Dockerfile")
    from config.accounts import AccountRegistry

    AccountRegistry.model_validate(json.loads((DEPLOY / "accounts.example.json").read_text()))
    for problem in problems:
        print(problem, file=sys.stderr)
    print("deploy files: ok" if not problems else f"deploy files: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
