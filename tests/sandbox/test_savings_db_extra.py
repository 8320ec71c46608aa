"""The Savings Plans catalogue offers every plan type botocore's model names (SageMaker and Database included),
driven over HTTP with real boto3 clients."""

from __future__ import annotations

from typing import Any

import botocore.session

from sandbox.control import SandboxControl

ACCOUNT = "111122223333"
YEAR = 31_536_000


def plan_types() -> set[str]:
    model = botocore.session.get_session().get_service_model("savingsplans")
    return set(model.shape_for("SavingsPlanType").enum)


def test_every_plan_type_of_botocores_model_is_offered(sandbox: SandboxControl, aws: Any) -> None:
    sp = aws("savingsplans")
    every = sp.describe_savings_plans_offerings()["searchResults"]
    assert {o["planType"] for o in every} == plan_types()
    for plan_type in plan_types():
        offered = sp.describe_savings_plans_offerings(planTypes=[plan_type])["searchResults"]
        assert offered and all(o["planType"] == plan_type and o["currency"] == "USD" for o in offered)


def test_sagemaker_and_database_offerings_and_rates(sandbox: SandboxControl, aws: Any) -> None:
    sp = aws("savingsplans")
    sagemaker = sp.describe_savings_plans_offerings(planTypes=["SageMaker"])["searchResults"]
    assert {(o["durationSeconds"], o["paymentOption"]) for o in sagemaker} == {
        (years * YEAR, payment) for years in (1, 3) for payment in ("All Upfront", "Partial Upfront", "No Upfront")}
    assert all(o["productTypes"] == ["SageMaker"] and o["properties"] == [] for o in sagemaker)
    assert sp.describe_savings_plans_offerings(productType="SageMaker")["searchResults"] == sagemaker

    # Database plans: one year, no upfront payment only.
    [database] = sp.describe_savings_plans_offerings(planTypes=["Database"])["searchResults"]
    assert database["durationSeconds"] == YEAR and database["paymentOption"] == "No Upfront"
    assert {"RDS", "DynamoDB", "ElastiCache"} <= set(database["productTypes"])
    assert sp.describe_savings_plans_offerings(planTypes=["Database"], durations=[3 * YEAR])["searchResults"] == []
    # A region filter keeps plans that apply everywhere.
    assert sp.describe_savings_plans_offerings(
        planTypes=["Database"], filters=[{"name": "region", "values": ["eu-west-1"]}])["searchResults"] == [database]

    for offering, product in ((sagemaker[0], "SageMaker"), (database, "RDS")):
        rates = sp.describe_savings_plans_offering_rates(savingsPlanOfferingIds=[offering["offeringId"]])[
            "searchResults"]
        assert rates and {r["productType"] for r in rates} == {product}
        assert all(float(r["rate"]) > 0 and r["savingsPlanOffering"]["planType"] == offering["planType"]
                   for r in rates)


def test_a_database_plan_can_be_bought(sandbox: SandboxControl, aws: Any) -> None:
    sp = aws("savingsplans", account_id=ACCOUNT)
    [database] = sp.describe_savings_plans_offerings(planTypes=["Database"])["searchResults"]
    plan_id = sp.create_savings_plan(savingsPlanOfferingId=database["offeringId"], commitment="2.5",
                                     tags={"commitd:plan-id": "p-1"})["savingsPlanId"]
    [plan] = sp.describe_savings_plans(savingsPlanIds=[plan_id])["savingsPlans"]
    assert plan["savingsPlanType"] == "Database" and plan["commitment"] == "2.5"
    assert plan["upfrontPaymentAmount"] == "0" and plan["recurringPaymentAmount"] == "2.5"
    assert plan["tags"] == {"commitd:plan-id": "p-1"} and "region" not in plan
    assert sp.describe_savings_plans(filters=[{"name": "savings-plan-type", "values": ["Database"]}])[
        "savingsPlans"] == [plan]
