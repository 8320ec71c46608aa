"""Catalogue files: the example of pre-existing commitments loads, and each kind shows up in the describes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandbox.catalogue import Catalogue
from sandbox.control import SandboxControl

EXAMPLE = Path(__file__).resolve().parents[2] / "sandbox" / "data" / "example-commitments.json"


def test_example_commitments_seed_every_kind(sandbox: SandboxControl, aws) -> None:
    entries = json.loads(EXAMPLE.read_text())["existing_commitments"]
    sandbox.seed(entries)
    kinds = {(r["service"], r["type"]) for r in sandbox.resources(account_id="111122223333")}
    assert ("ec2", "reserved-instances") in kinds
    assert len(kinds) >= 8
    ec2 = aws("ec2", account_id="111122223333")
    ris = ec2.describe_reserved_instances()["ReservedInstances"]
    assert {ri["OfferingClass"] for ri in ris} == {"standard", "convertible"}
    assert all(ri["State"] == "active" for ri in ris)
    rds = aws("rds", account_id="111122223333")
    assert rds.describe_reserved_db_instances(ReservedDBInstanceId="legacy-ri")["ReservedDBInstances"]


def test_catalogue_file_replaces_named_sections_and_rejects_unknown_ones(tmp_path: Path) -> None:
    default = Catalogue.load()
    offering = dict(default.section("ec2_ri_offerings")[0])
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps({"ec2_ri_offerings": [offering]}))
    loaded = Catalogue.load(path)
    assert loaded.section("ec2_ri_offerings") == [offering]
    assert loaded.section("rds_offerings") == default.section("rds_offerings")
    path.write_text(json.dumps({"ec2_offerings_typo": []}))
    with pytest.raises(ValueError, match="unknown sections"):
        Catalogue.load(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read catalogue"):
        Catalogue.load(path)
