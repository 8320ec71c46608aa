"""The tour: a boto3 script written from AWS's documentation performs all 27 write actions against the sandbox,
started here as a child process (`python -m sandbox`), with every response checked against botocore's shapes."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from examples.sandbox_tour import tour
from tests.conftest import check_response_shape

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sandbox_child() -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "--port", "0", "--seed", "1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"listening on (http://\S+)", line)
    assert match, line
    yield match.group(1)
    process.terminate()
    process.wait(timeout=10)


def test_tour_performs_all_27_write_actions(sandbox_child: str, capsys: pytest.CaptureFixture[str]) -> None:
    session = boto3.DEFAULT_SESSION or boto3.setup_default_session() or boto3.DEFAULT_SESSION
    assert session is not None
    checked: list[str] = []

    def check(http_response: object, parsed: dict, model: object, **kwargs: object) -> None:
        check_response_shape(http_response, parsed, model, **kwargs)
        checked.append(str(getattr(model, "name", "")))

    session.events.register("after-call", check)
    try:
        exit_code = tour.main([sandbox_child])
    finally:
        session.events.unregister("after-call", check)
    out = capsys.readouterr().out
    assert exit_code == 0, out
    assert "27 of 27 write actions performed" in out
    assert len(checked) > 50 and "PurchaseReservedInstancesOffering" in checked
    for action in tour.ALL_ACTIONS:
        assert action in out
