"""`commitd sandbox` as a child process: flags for the IAM policy, the ExternalId, the catalogue and bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

ROOT = Path(__file__).resolve().parents[2]


def start(*args: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "sandbox", "--port", "0", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"listening on (http://\S+)", line)
    if not match:
        process.kill()
        raise AssertionError(line + process.stdout.read())
    return process, match.group(1)


@pytest.fixture
def stop_after() -> Iterator[list[subprocess.Popen[str]]]:
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        process.terminate()
        process.wait(timeout=10)


def test_iam_policy_and_external_id_flags_are_enforced(tmp_path: Path, stop_after: list) -> None:
    policy = tmp_path / "role.json"
    policy.write_text(json.dumps({"Statement": [{"Effect": "Allow", "Action": "ec2:Describe*", "Resource": "*"}]}))
    secret = tmp_path / "external-id"
    secret.write_text("the-customers-external-id\n")
    process, url = start("--iam-policy", str(policy), "--external-id-file", str(secret))
    stop_after.append(process)
    sts = boto3.client("sts", region_name="us-east-1", endpoint_url=url, aws_access_key_id="a",
                       aws_secret_access_key="b")
    role = "arn:aws:iam::111122223333:role/commitd"
    with pytest.raises(ClientError) as refused:
        sts.assume_role(RoleArn=role, RoleSessionName="cli-test", ExternalId="somebody-elses")
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    creds = sts.assume_role(RoleArn=role, RoleSessionName="cli-test", ExternalId="the-customers-external-id")
    c = creds["Credentials"]
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=url, aws_access_key_id=c["AccessKeyId"],
                       aws_secret_access_key=c["SecretAccessKey"], aws_session_token=c["SessionToken"])
    offering = ec2.describe_reserved_instances_offerings(InstanceType="m5.large")["ReservedInstancesOfferings"][0]
    with pytest.raises(ClientError) as denied:
        ec2.purchase_reserved_instances_offering(
            ReservedInstancesOfferingId=offering["ReservedInstancesOfferingId"], InstanceCount=1
        )
    assert denied.value.response["Error"]["Code"] == "UnauthorizedOperation"


def test_bad_catalogue_stops_with_a_clear_message(tmp_path: Path) -> None:
    bad = tmp_path / "catalogue.json"
    bad.write_text("{ nope")
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", "sandbox", "--port", "0", "--catalogue", str(bad)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "cannot read catalogue" in result.stderr
