"""``commitd plans list`` reads only what it prints: pages of plans from the index, by state, with a cursor."""

from __future__ import annotations

import json
from typing import Any

from tests.spine.conftest import ri_plan
from tests.spine.test_cli import commitd
from worker.ledger_views import plans_page
from worker.plans import PlanState
from worker.runtime import Runtime


def test_pages_by_state_walk_every_plan_once_newest_first(runtime: Runtime, intake: Any, env: dict[str, str],
                                                          monkeypatch: Any) -> None:
    for i in range(23):
        plan = ri_plan(f"page-{i:02d}", instance_count=0 if i % 3 == 0 else 1)  # every third one is rejected
        intake.submit_raw(json.dumps(plan), "test")
    rejected = [f"page-{i:02d}" for i in range(23) if i % 3 == 0]

    # Only the records printed are read.
    reads: list[str] = []
    original = runtime.redis.pipeline

    def counting_pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = original(*args, **kwargs)
        real_hget = pipe.hget

        def hget(key: str, field: str) -> Any:
            reads.append(key)
            return real_hget(key, field)

        pipe.hget = hget
        return pipe

    monkeypatch.setattr(runtime.redis, "pipeline", counting_pipeline)
    import worker.ledger_views

    # Both ways to a page: walking the received-time index (a common state), the state's own index (a rare one).
    for share in (1, 100):
        monkeypatch.setattr(worker.ledger_views, "RARE_STATE_SHARE", share)
        reads.clear()
        seen: list[str] = []
        cursor = None
        while True:
            page = plans_page(runtime.ledger, PlanState.REJECTED, 3, cursor)
            assert len(page.records) <= 3
            seen += [r.plan_id for r in page.records]
            if page.cursor is None:
                break
            cursor = page.cursor
        assert seen == list(reversed(rejected)), f"each rejected plan once, newest first (share {share})"
        assert len(reads) == len(rejected), "no record read that was not printed"

    first = commitd(env, "plans", "list", "--limit", "5")
    rows = [line.split("\t") for line in first.stdout.splitlines()][1:]
    assert [r[0] for r in rows] == [f"page-{i:02d}" for i in range(22, 17, -1)]
    assert "more: commitd plans list --limit 5 --cursor " in first.stderr
    cursor = first.stderr.strip().rsplit(" ", 1)[-1]
    second = commitd(env, "plans", "list", "--limit", "5", "--cursor", cursor)
    assert [line.split("\t")[0] for line in second.stdout.splitlines()][1:] == \
        [f"page-{i:02d}" for i in range(17, 12, -1)]
    bad = commitd(env, "plans", "list", "--cursor", "nonsense")
    assert bad.returncode != 0 and "a cursor printed by a previous page" in bad.stderr
