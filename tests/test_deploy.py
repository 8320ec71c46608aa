"""What deploy/ ships, read against the code: every command, environment variable and port it names exists, every
family queue has a worker, the production install and image carry no sandbox, and the locks match pyproject.toml.
(scripts/check_deploy.py lints the same files with hadolint, docker-compose, kubernetes-validate, cfn-lint, checkov.)
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from packaging.requirements import Requirement

from config.settings import Settings
from tasks.families import FAMILIES

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
LOCKS = ROOT / "requirements"
QUEUES = {family.queue for family in FAMILIES}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Where each port deploy/ names is defined: a file of the code (or a locked package) and the text that sets it.
PORTS = {
    6379: ("config/settings.py", "redis://127.0.0.1:6379/0"),  # Redis, the default COMMITD_REDIS_URL
    26379: ("config/settings.py", "host1:26379"),  # Redis Sentinel (the sentinel:// URLs)
    5010: ("sandbox/__main__.py", 'p.add_argument("--port", type=int, default=5010'),  # the sandbox
    5555: ("requirements/flower.lock", "flower=="),  # Celery Flower's own default port
    9808: ("worker/prometheus.py", '@click.option("--port", default=9808'),  # commitd metrics serve
    443: ("config/settings.py", "aws_endpoint_url"),  # AWS's HTTPS APIs (botocore's endpoints)
    53: (None, None),  # DNS: the NetworkPolicy lets the pods resolve Redis's and AWS's names
}


def lock(name: str) -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", (LOCKS / f"{name}.lock").read_text(), re.M)
    return {package.lower().replace("_", "-"): version for package, version in pins}


OVERLAYS = sorted(p.name for p in (DEPLOY / "kubernetes" / "overlays").iterdir())


@cache
def overlay(name: str) -> list[dict[str, Any]]:
    out = subprocess.run([str(Path(sys.executable).parent / "kubectl"), "kustomize",
                          str(DEPLOY / "kubernetes" / "overlays" / name)], capture_output=True, text=True,
                         check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def rendered() -> list[dict[str, Any]]:
    return [d for name in OVERLAYS for d in overlay(name)]


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "compose.yaml").read_text()))


def dockerfile_stages() -> dict[str, str]:
    text = (DEPLOY / "Dockerfile").read_text()
    parts = re.split(r"^(FROM\s+\S+\s+AS\s+\S+)$", text, flags=re.M | re.I)
    return {header.split()[-1]: body for header, body in zip(parts[1::2], parts[2::2], strict=True)}


def _exec_form(instruction: str, text: str) -> list[list[str]]:
    return [yaml.safe_load(m) for m in re.findall(rf"^{instruction}\s+(?:--\S+\s+)*(?:CMD\s+)?(\[.*\])$", text,
                                                   re.M)]


# --- what commitd invocations deploy/ makes --------------------------------------------------------------------
def commitd_invocations() -> list[tuple[str, list[str]]]:
    """(where, argv after `commitd`) of every commitd command the shipped files run."""
    found: list[tuple[str, list[str]]] = []
    for stage, body in dockerfile_stages().items():
        entry = (_exec_form("ENTRYPOINT", body) or [["commitd"]])[-1]
        for argv in _exec_form("CMD", body):
            if entry == ["commitd"]:
                found.append((f"Dockerfile {stage} CMD", argv))
        for argv in _exec_form("HEALTHCHECK", body):
            if argv[0] == "commitd":
                found.append((f"Dockerfile {stage} HEALTHCHECK", argv[1:]))
    for name, service in compose()["services"].items():
        target = (service.get("build") or {}).get("target")  # no build: not commitd's image (Redis)
        if "command" in service and target in ("commitd", "sandbox"):
            found.append((f"compose {name}", list(service["command"])))
    for name, document in ((n, d) for n in OVERLAYS for d in overlay(n)):
        for container in document.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            where = f"kubernetes/{name} {document['metadata']['name']}"
            found.append((where, container["args"]))
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                if probe in container:
                    assert container[probe]["exec"]["command"][0] == "commitd"
                    found.append((f"{where} {probe}", container[probe]["exec"]["command"][1:]))
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        # A template runs once per group, with that group's variables (worker-<group>.env).
        groups = sorted((DEPLOY / "systemd").glob("worker-*.env")) if "@" in unit.name else [None]
        for group in groups:
            env = dict(line.split("=", 1) for line in group.read_text().splitlines() if "=" in line) if group else {}
            name = unit.name.replace("@.", f"@{group.stem.removeprefix('worker-')}.") if group else unit.name
            for line in re.findall(r"^Exec\w+=(.*)$", unit.read_text(), re.M):
                argv = shlex.split(re.sub(r"\$\{(\w+)\}", lambda m, env=env: env[m.group(1)], line))
                assert argv[0] == "/opt/commitd/bin/commitd", line
                found.append((name, argv[1:]))
    return found


def _resolve(argv: list[str]) -> None:
    """Parse argv as the commitd CLI would: unknown commands and options raise."""
    from worker.cli import main

    command: click.Command = main
    args = list(argv)
    while isinstance(command, click.Group) and args:
        name = args.pop(0)
        sub = command.get_command(click.Context(command), name)
        assert sub is not None, f"`commitd {' '.join(argv)}`: no command {name!r} (register it in worker/cli.py)"
        command = sub
    if command.name == "sandbox":  # its options are the sandbox's own parser's
        from sandbox.__main__ import parser

        parser().parse_args(args)
        return
    command.make_context(command.name, args)


def test_every_commitd_command_deploy_runs_exists() -> None:
    invocations = commitd_invocations()
    assert {argv[0] for _, argv in invocations} >= {"worker", "intake", "health", "sandbox", "beat", "metrics"}
    for where, argv in invocations:
        try:
            _resolve(argv)
        except (click.ClickException, SystemExit) as exc:
            pytest.fail(f"{where}: `commitd {' '.join(argv)}` does not parse: {exc}")


def test_flower_runs_the_apps_celery() -> None:
    assert "flower" in lock("flower")
    flower = dockerfile_stages()["flower"]
    assert _exec_form("ENTRYPOINT", flower) == [["celery", "--app", "worker.celery_app", "flower"]]
    import worker.celery_app

    assert worker.celery_app.app is not None


def test_every_environment_variable_is_a_setting() -> None:
    settings = {f"COMMITD_{name.upper()}" for name in Settings.model_fields}
    texts = [p.read_text() for p in DEPLOY.rglob("*") if p.is_file()]
    named = {name for text in texts for name in re.findall(r"\b(COMMITD_[A-Z0-9_]+)\b", text)}
    build_args = set(re.findall(r"^ARG\s+(\w+)", (DEPLOY / "Dockerfile").read_text(), re.M))
    assert named, "deploy/ names no setting at all?"
    assert sorted(named - settings - build_args) == []
    # The systemd template's own variables are defined by every group's file and used by the unit.
    template = (DEPLOY / "systemd" / "commitd-worker@.service").read_text()
    for example in (DEPLOY / "systemd").glob("worker-*.env"):
        for name in re.findall(r"^(\w+)=", example.read_text(), re.M):
            assert f"${{{name}}}" in template


def _ports() -> set[int]:
    found: set[int] = set()
    for path in DEPLOY.rglob("*"):
        scanned = path.suffix in (".yaml", ".yml", ".service", ".env", ".example", ".conf") or path.name == "Dockerfile"
        if not path.is_file() or not scanned:
            continue
        text = re.sub(r"^(USER|RUN useradd) .*$", "", path.read_text(), flags=re.M)  # a uid is not a port
        found |= {int(p) for p in re.findall(r"(?:--port[= ]\"?|:)(\d{2,5})\b(?!-)", text)
                  if not re.search(rf"\d{{12}}:{p}|:{p}:\d{{12}}", text)}
        found |= {int(p) for p in re.findall(r"^\s*(?:- )?(?:port|containerPort|targetPort):\s*(\d+)", text, re.M)}
    return found


def test_every_port_is_the_codes() -> None:
    named = _ports()
    assert {6379, 5010, 443} <= named
    assert sorted(named - set(PORTS)) == []
    for port, (path, text) in PORTS.items():
        if path is not None:
            assert text in (ROOT / path).read_text(), (port, path)


# --- queues, grace periods, Redis ----------------------------------------------------------------------------
def _queues(argv: list[str]) -> set[str]:
    return set(argv[argv.index("--queues") + 1].split(",")) if "--queues" in argv else set(QUEUES)


def test_every_family_queue_has_workers_everywhere() -> None:
    for kind in ("compose", *(f"kubernetes/{name}" for name in OVERLAYS), "commitd-worker@"):
        groups = [_queues(argv) for where, argv in commitd_invocations()
                  if where.startswith(kind) and argv[0] == "worker" and "Probe" not in where]
        assert groups, kind
        assert set().union(*groups) == QUEUES, kind
        assert sum(len(g) for g in groups) == len(QUEUES), f"{kind}: a queue in two groups"


def test_grace_periods_outlast_the_longest_task() -> None:
    defaults = Settings()
    longest = max(defaults.lease_seconds,
                  defaults.write_connect_timeout + defaults.write_read_timeout + defaults.send_margin_seconds)
    graces = [int(s["stop_grace_period"].rstrip("s")) for s in compose()["services"].values()
              if "stop_grace_period" in s]
    graces += [d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] for d in rendered()
               if d["kind"] == "Deployment"]
    worker_unit = (DEPLOY / "systemd" / "commitd-worker@.service").read_text()
    graces.append(int(re.search(r"^TimeoutStopSec=(\d+)s$", worker_unit, re.M)[1]))
    assert len(graces) >= 8 and min(graces) > longest


def test_redis_keeps_the_ledger() -> None:
    conf = dict(line.split(None, 1) for line in (DEPLOY / "redis" / "commitd.conf").read_text().splitlines()
                if line.strip() and not line.startswith("#"))
    assert conf["appendonly"] == "yes" and conf["appendfsync"] == "always"
    assert conf["maxmemory-policy"] == "noeviction"
    redis = compose()["services"]["redis"]
    assert redis["command"] == ["redis-server", "/usr/local/etc/redis/commitd.conf"]
    assert re.match(r"redis:7\.([2-9]|\d\d)\.\d+-alpine$", redis["image"]), "WAITAOF needs Redis 7.2+"


def test_kubernetes_objects() -> None:
    deployments = [d for d in rendered() if d["kind"] == "Deployment"]
    budgets = {(d["metadata"]["namespace"], d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"])
               for d in rendered() if d["kind"] == "PodDisruptionBudget"}
    assert len(deployments) == 6 * len(OVERLAYS)  # intake, beat, metrics, 3 worker groups
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        name = deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        assert (deployment["metadata"]["namespace"], name) in budgets
        assert pod["serviceAccountName"] == "commitd" and pod["securityContext"]["runAsNonRoot"] is True
        [container] = pod["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["COMMITD_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "commitd-redis", "key": "url"}
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    monitors = [d for d in rendered() if d["kind"] == "ServiceMonitor"]
    services = {d["metadata"]["name"]: d for d in rendered() if d["kind"] == "Service"}
    for monitor in monitors:  # each scrapes a Service port that exists, on a container port of that name
        [endpoint] = monitor["spec"]["endpoints"]
        [service] = [s for s in services.values()
                     if s["metadata"]["labels"].items() >= monitor["spec"]["selector"]["matchLabels"].items()]
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert len(monitors) == len(OVERLAYS)
    accounts = [d for d in rendered() if d["kind"] == "ServiceAccount"]
    assert all("eks.amazonaws.com/role-arn" in a["metadata"]["annotations"] for a in accounts)


# --- the production install and image carry no sandbox; the locks match pyproject.toml -----------------------------
def test_production_install_has_no_sandbox() -> None:
    production = lock("production")
    assert not {"moto", "werkzeug", "flask", "cfn-lint", "docker"} & set(production)
    assert {"moto", "werkzeug"} <= set(lock("sandbox"))
    dependencies = [Requirement(r).name.lower() for r in PYPROJECT["project"]["dependencies"]]
    assert "moto" not in dependencies and "werkzeug" not in dependencies
    stages = dockerfile_stages()
    final = list(stages)[-1]
    assert final == "commitd", "the production image is the Dockerfile's default (last) target"
    copies_sandbox = [stage for stage, body in stages.items() if re.search(r"^COPY\s+sandbox\b", body, re.M)]
    assert copies_sandbox == ["build-sandbox"]
    assert "COPY --from=build /opt/commitd" in stages[final] and "USER 10001" in stages[final]
    assert re.search(r"requirements/production\.lock", stages["build"])
    for stage in stages:
        assert not re.search(r"^FROM\s+\S+:latest", stage)
    assert not re.search(r"apt-get|gcc|build-essential", stages[final] + stages["base"])


@pytest.mark.parametrize("name,extras", [("production", []), ("sandbox", ["sandbox"]), ("flower", ["flower"]),
                                         ("dev", ["sandbox", "dev"])])
def test_locks_match_pyproject(name: str, extras: list[str]) -> None:
    pinned = lock(name)
    wanted = list(PYPROJECT["project"]["dependencies"])
    for extra in extras:
        wanted += PYPROJECT["project"]["optional-dependencies"][extra]
    for line in wanted:
        requirement = Requirement(line)
        key = requirement.name.lower().replace("_", "-")
        assert key in pinned, f"requirements/{name}.lock lacks {requirement.name}: regenerate it (docs/deploy.md)"
        assert requirement.specifier.contains(pinned[key], prereleases=True), (name, line, pinned[key])
    # Every lock agrees with the development lock on the versions they share: one resolution everywhere.
    shared = lock("dev")
    assert {k: v for k, v in pinned.items() if k in shared and shared[k] != v} == {}
