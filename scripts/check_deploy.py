"""Check what deploy/ ships, without a Docker engine or a cluster, with tools from the package registries:

- Dockerfile: hadolint; build args of compose declared as ARGs;
- compose: Debian's docker-compose (`config -q`) where installed, the compose-spec JSON schema always, yamllint;
- Kubernetes: every overlay rendered offline (`kubectl kustomize`), each object validated strictly against
  Kubernetes' schemas (kubernetes-validate), failing on any kind it has no schema for;
- IAM: deploy/iam/ is what the code builds (`commitd policy write deploy/iam`), cfn-lint on the role template;
- checkov on the Dockerfile, the rendered overlays and the template: every failed check is a problem (a skip is
  made in the file, by id, with its reason);
- systemd: `systemd-analyze verify` where available; the example account registries validate.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
BIN = Path(sys.executable).parent
CHECKOV = ROOT / ".venv" / "checkov" / "bin" / "checkov"
NODE_TOOLS = ROOT / ".venv" / "node"  # scripts/bootstrap: npm ci of requirements/node/
# prometheus-operator's ServiceMonitor schema (generated from its API types), read from JSON documents on stdin.
SERVICE_MONITOR_CHECK = """
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
let input = "";
for await (const chunk of process.stdin) input += chunk;
for (const document of JSON.parse(input)) {
  try { new ServiceMonitor(document).validate(); }
  catch (error) { console.log(`${document.metadata.name}: ${error.message}`); process.exitCode = 1; }
}
"""
KUBERNETES_VERSION = "1.33.0"  # the oldest minor still supported by EKS and GKE at the time of writing
YAMLLINT = ("{extends: default, rules: {line-length: {max: 120}, document-start: disable, truthy: disable, "
            "comments: {min-spaces-from-content: 1}, indentation: {indent-sequences: whatever}}}")


def tool(name: str) -> str:
    """A tool of this venv (the lint tools are development dependencies), else one on the PATH."""
    local = BIN / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def run(args: list[str], cwd: Path = ROOT) -> tuple[int, str]:
    try:
        result = subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=600)
    except FileNotFoundError:
        return 127, f"{args[0]}: not installed (scripts/bootstrap installs it)"
    return result.returncode, result.stdout + result.stderr


def overlays() -> list[Path]:
    return sorted(p for p in (KUBERNETES / "overlays").iterdir() if (p / "kustomization.yaml").is_file())


def rendered(overlay: Path) -> str:
    code, out = run([tool("kubectl"), "kustomize", str(overlay)])
    if code != 0:
        raise RuntimeError(f"kubectl kustomize {overlay.relative_to(ROOT)}:\n{out}")
    return out


def check_dockerfile() -> list[str]:
    problems = []
    code, out = run([tool("hadolint"), str(DEPLOY / "Dockerfile")])
    if code != 0:
        problems.append(f"hadolint:\n{out}")
    declared = set(re.findall(r"^ARG\s+(\w+)", (DEPLOY / "Dockerfile").read_text(), re.M))
    targets = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", (DEPLOY / "Dockerfile").read_text(), re.M | re.I))
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        build = service.get("build") or {}
        for arg in build.get("args", {}):
            if arg not in declared:
                problems.append(f"compose service {name}: build arg {arg} is not an ARG of deploy/Dockerfile")
        if build.get("target") and build["target"] not in targets:
            problems.append(f"compose service {name}: build target {build['target']} is not a stage of the Dockerfile")
    return problems


def check_compose() -> list[str]:
    problems = []
    compose = str(DEPLOY / "compose.yaml")
    if shutil.which("docker-compose"):
        code, out = run(["docker-compose", "-f", compose, "--profile", "demo", "--profile", "cli",
                         "--profile", "flower", "config", "-q"])
        if code != 0:
            problems.append(f"docker-compose config:\n{out}")
    else:
        print("docker-compose is not installed: compose checked against the compose-spec schema only")
    code, out = run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", compose])
    if code != 0:
        problems.append(f"compose-spec schema:\n{out}")
    return problems


def check_yaml() -> list[str]:
    files = [str(p) for p in sorted(DEPLOY.rglob("*.yaml"))]
    code, out = run([sys.executable, "-m", "yamllint", "-d", YAMLLINT, *files])
    return [f"yamllint:\n{out}"] if code != 0 else []


def check_kubernetes(manifests: dict[str, str]) -> list[str]:
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    problems = []
    monitors: list[dict[str, object]] = []
    for name, text in manifests.items():
        for document in yaml.safe_load_all(text):
            if not document:
                continue
            where = f"{name}: {document.get('kind')} {document.get('metadata', {}).get('name')}"
            if (document.get("apiVersion"), document.get("kind")) == ("monitoring.coreos.com/v1", "ServiceMonitor"):
                monitors.append(document)  # a CRD: validated against the prometheus-operator's schema below
                continue
            try:
                kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
            except SchemaNotFoundError:
                problems.append(f"{where}: no schema for this kind (apiVersion {document.get('apiVersion')})")
            except Exception as exc:  # a validation error of any kind is a problem to print
                problems.append(f"{where}: {str(exc).splitlines()[0]}")
    if monitors:
        problems += check_service_monitors(monitors)
    return problems


def check_service_monitors(monitors: list[dict[str, object]]) -> list[str]:
    if not (NODE_TOOLS / "node_modules" / "@kubernetes-models" / "prometheus-operator").is_dir():
        return [f"the ServiceMonitor schema is not installed in {NODE_TOOLS.relative_to(ROOT)} (scripts/bootstrap)"]
    try:
        result = subprocess.run(["node", "--input-type=module", "-e", SERVICE_MONITOR_CHECK], cwd=NODE_TOOLS,
                                input=json.dumps(monitors), capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        return ["node is not installed: the ServiceMonitor cannot be validated"]
    if result.returncode != 0:
        return [f"ServiceMonitor {line}" for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    return []


def check_iam() -> list[str]:
    from worker.policy import rendered_files

    problems = [f"deploy/iam/{name} is stale: run `commitd policy write deploy/iam`"
                for name, text in rendered_files().items()
                if not (DEPLOY / "iam" / name).is_file() or (DEPLOY / "iam" / name).read_text() != text]
    code, out = run([tool("cfn-lint"), str(DEPLOY / "iam" / "customer-role.yaml")])
    if code != 0:
        problems.append(f"cfn-lint:\n{out}")
    return problems


def check_checkov(manifests: dict[str, str]) -> list[str]:
    if not CHECKOV.exists():
        return [f"checkov is not installed at {CHECKOV.relative_to(ROOT)} (scripts/bootstrap installs it)"]
    problems = []
    with tempfile.TemporaryDirectory(prefix="commitd-checkov-") as scratch:
        # One run over copies of everything: checkov's start-up is most of its time.
        shutil.copy(DEPLOY / "Dockerfile", Path(scratch) / "Dockerfile")
        shutil.copy(DEPLOY / "iam" / "customer-role.yaml", Path(scratch) / "customer-role.yaml")
        for name, text in manifests.items():
            (Path(scratch) / f"{name}.yaml").write_text(text)
        # --skip-download: no call to the vendor's platform; the checks are the ones the package ships.
        code, out = run([str(CHECKOV), "-d", scratch, "--framework", "dockerfile", "kubernetes", "cloudformation",
                         "--skip-download", "--quiet", "--compact", "-o", "json"])
        try:
            report = json.loads(out)
        except ValueError:
            return [f"checkov: no report (exit {code}):\n{out[-2000:]}"]
        for result in report if isinstance(report, list) else [report]:
            for check in (result.get("results") or {}).get("failed_checks", []):
                problems.append(f"checkov {result.get('check_type')}: {check['check_id']} {check['check_name']} "
                                f"({check.get('resource')}, {check.get('file_path')})")
    return problems


def check_systemd() -> list[str]:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        print("systemd-analyze is not installed: the units are not verified")
        return []
    problems = []
    with tempfile.TemporaryDirectory(prefix="commitd-units-") as scratch:
        units = []
        for unit in sorted((DEPLOY / "systemd").glob("*.service")):
            name = unit.name.replace("@.", "@ec2.")  # a template is verified through one instance
            shutil.copy(unit, Path(scratch) / name)
            units.append(str(Path(scratch) / name))
        code, out = run([analyze, "verify", "--man=no", *units])
        # The units name the install's paths (/opt/commitd), which this machine does not have.
        lines = [line for line in out.splitlines() if line.strip() and "is not executable" not in line]
        if lines:
            problems.append("systemd-analyze verify:\n" + "\n".join(lines))
    return problems


def check_registries() -> list[str]:
    from config.accounts import AccountRegistry

    problems = []
    for path in [DEPLOY / "accounts.example.json", *sorted(KUBERNETES.rglob("accounts.json"))]:
        try:
            AccountRegistry.model_validate(json.loads(path.read_text()))
        except ValueError as exc:
            problems.append(f"{path.relative_to(ROOT)}: {exc}")
    return problems


def main() -> int:
    problems: list[str] = []
    manifests: dict[str, str] = {}
    for overlay in overlays():
        try:
            manifests[f"kubernetes-{overlay.name}"] = rendered(overlay)
        except RuntimeError as exc:
            problems.append(str(exc))
    for check in (check_dockerfile, check_compose, check_yaml, check_iam, check_systemd, check_registries):
        problems += check()
    problems += check_kubernetes(manifests)
    problems += check_checkov(manifests)
    for problem in problems:
        print(problem, file=sys.stderr)
    print("deploy files: ok" if not problems else f"deploy files: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
