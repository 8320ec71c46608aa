"""The tour: a boto3 script written from AWS's documentation performs all 27 write actions against the sandbox,
started here as a child process (`python -m sandbox`), with every response checked against botocore's shapes.

An action counts as performed only when a call of its API answered 2xx with the documented response shape; a
refusal (even one the tour shows on purpose) never counts. The test keeps its own record of every call's answer
besides the tour's, so a tour that claims an action without a successful call fails here too."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from examples.sandbox_tour import tour
from tests.conftest import check_response_shape
from tests.production_role import production_role_actions

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


def test_the_tour_covers_the_27_write_actions_of_the_production_role() -> None:
    assert sorted(tour.ALL_ACTIONS) == sorted(production_role_actions())


def test_tour_performs_all_27_write_actions(sandbox_child: str, capsys: pytest.CaptureFixture[str]) -> None:
    session = boto3.DEFAULT_SESSION or boto3.setup_default_session() or boto3.DEFAULT_SESSION
    assert session is not None
    answered: list[tuple[str, int]] = []  # ("prefix:operation" in lower case, HTTP status) of every call

    def check(http_response: Any, parsed: dict[str, Any], model: Any, **kwargs: Any) -> None:
        check_response_shape(http_response, parsed, model, **kwargs)  # a 2xx of another shape fails the call
        answered.append((f"{model.service_model.signing_name}:{model.name}".lower(), http_response.status_code))

    session.events.register("after-call", check)
    try:
        walk = tour.run(sandbox_child)
        exit_code = tour.report(walk)
    finally:
        session.events.unregister("after-call", check)
    out = capsys.readouterr().out

    # The tour's own count: every action performed, none only refused or claimed without a successful call.
    # Every action performed, except those AWS itself retired, which must get exactly AWS's documented refusal.
    not_performed = walk.not_performed()
    assert set(not_performed) == set(tour.RETIRED_BY_AWS), "not performed with a success:\n" + "\n".join(
        f"  {action}: {reason}" for action, reason in not_performed.items()
    ) + f"\nrefused: {walk.refusals or 'none'}\n{out}"
    assert walk.retired_as_aws_answers() == list(tour.RETIRED_BY_AWS)
    assert sorted(walk.done) == sorted(set(tour.ALL_ACTIONS) - set(tour.RETIRED_BY_AWS))
    assert exit_code == 0, out
    assert f"{27 - len(tour.RETIRED_BY_AWS)} of 27 write actions performed" in out
    assert "refused as AWS refuses it (AWS no longer performs it): ec2:PurchaseScheduledInstances" in out

    # This test's own record: the API of every action answered 2xx (with its documented shape) at least once.
    succeeded = {api for api, status in answered if 200 <= status < 300}
    unanswered = [a for a in tour.ALL_ACTIONS if tour.API_OF.get(a, a).lower() not in succeeded
                  and a not in tour.RETIRED_BY_AWS]
    assert not unanswered, f"no 2xx answer to the API of: {unanswered}"


def test_only_a_2xx_of_the_documented_shape_counts_as_a_success() -> None:
    model = boto3.session.Session().client("ec2", region_name="us-east-1").meta.service_model
    purchase = model.operation_model("PurchaseReservedInstancesOffering")

    class Answer:
        def __init__(self, status_code: int) -> None:
            self.status_code = status_code

    ok = tour.observed_call(Answer(200), {"ReservedInstancesId": "ri-1"}, purchase)
    assert ok == tour.Call("ec2:PurchaseReservedInstancesOffering", 200, None)
    refused = tour.observed_call(Answer(400), {"Error": {"Code": "InvalidParameterValue"}}, purchase)
    assert refused.problem == "refused: HTTP 400 InvalidParameterValue"
    misshapen = tour.observed_call(Answer(200), {"ReservedInstancesId": 7}, purchase)
    assert misshapen.problem is not None and "not the documented shape" in misshapen.problem
