"""bench/results/latest.{json,md,png} from one run of bench/throughput.py: every figure, the ratios to the baselines,
and issue 8's targets with how far each is from being met."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _run(results: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((r for r in results["runs"] if r["name"] == name), None)


def _rate(results: dict[str, Any], name: str) -> float | None:
    run = _run(results, name)
    return float(run["plans_per_s"]) if run else None


def _baseline(results: dict[str, Any], system: str, pool: str, concurrency: int, latency: int) -> float | None:
    for r in results["runs"]:
        if (r["system"], r["pool"], r["concurrency"], r["latency_ms"]) == (system, pool, concurrency, latency):
            return float(r["plans_per_s"])
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 8's targets: the figure, the target, met or by how much it is missed."""
    out: list[dict[str, Any]] = []

    def add(what: str, figure: float | None, target: float, higher_is_better: bool, unit: str = "") -> None:
        if figure is None:
            out.append({"target": what, "figure": None, "goal": target, "met": None})
            return
        met = figure >= target if higher_is_better else figure <= target
        gap = (target - figure) if higher_is_better else (figure - target)
        out.append({"target": what, "figure": figure, "goal": target, "unit": unit, "met": met,
                    "missed_by": None if met else round(gap, 3),
                    "missed_by_pct": None if met else round(abs(gap) / target * 100, 1)})

    add("end to end ÷ no-op Celery, prefork c=2, 0 ms", _ratio(_rate(results, "prefork-c2-0ms"),
                                                              _baseline(results, "noop", "prefork", 2, 0)), 0.35, True)
    add("end to end ÷ no-op Celery, threads c=2, 0 ms", _ratio(_rate(results, "threads-c2-0ms"),
                                                              _baseline(results, "noop", "threads", 2, 0)), 0.35, True)
    add("c=16 ÷ c=1 at 50 ms (threads)", _ratio(_rate(results, "threads-c16-50ms"), _rate(results, "threads-c1-50ms")),
        12, True, "×")
    add("c=16 ÷ c=1 at 50 ms (prefork 16 ÷ threads 1)", _ratio(_rate(results, "prefork-c16-50ms"),
                                                               _rate(results, "threads-c1-50ms")), 12, True, "×")
    c16 = _run(results, "threads-c16-0ms")
    add("Redis commands per plan at c=16 (INFO commandstats, scripts' commands included)",
        c16["redis_commands_per_plan"] if c16 else None, 40, False)
    big = _run(results, "threads-c16-0ms-1000x3")
    rss = max((w["rss_mb"] for w in big["workers"]), default=None) if big else None
    add("RSS per worker process after 1,000 accounts × 3 regions (MB)", round(rss, 1) if rss else None, 300, False,
        "MB")
    add("150 account-regions ÷ 1 (threads c=16, 0 ms)",
        _ratio(_rate(results, "threads-c16-0ms-150-account-regions"), _rate(results, "threads-c16-0ms")), 0.8, True)
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# bench/throughput.py: latest figures", "",
        f"{results['date']}, {m['cpu']}, {m['cpus']} CPUs, {m['memory_gb']} GB, Python {m['python']}, "
        f"boto3 {m['boto3']}; load average {results['load_average']['before']} before, "
        f"{results['load_average']['after']} after (the machine is shared); {results['seconds']} s"
        + (" (--quick: fewer plans, not figures to quote)" if results.get("quick") else ""), "",
        "## Targets (issue 8)", "", "| target | figure | goal | met | missed by |", "|---|---|---|---|---|",
    ]
    for t in targets(results):
        sign = "≤" if "RSS" in t["target"] or "commands" in t["target"] else "≥"
        missed = "" if t["met"] in (True, None) else f"{_fmt(t['missed_by'])} ({t['missed_by_pct']} %)"
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | {_fmt(t['figure'])} | {sign} "
                     f"{_fmt(t['goal'])} | {met} | {missed} |")
    lines += ["", "Audit append retries: bench/audit_append.py (the audit chain's own bench).", "",
              "## commitd, end to end", "",
              "| run | pool | c | AWS latency | account-regions | plans | plans/s | ÷ no-op | ÷ bare boto3 | "
              "XADD→succeeded p50 / p95 / p99 ms | daemon CPU ms/plan | sandbox / Redis CPU ms/plan | "
              "Redis commands/plan | RSS MB |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        if r["system"] != "commitd":
            continue
        noop = _baseline(results, "noop", r["pool"], r["concurrency"], 0) if r["latency_ms"] == 0 else None
        bare = _baseline(results, "bare_boto3", "threads", r["concurrency"], r["latency_ms"])
        lat = r["xadd_to_succeeded_ms"]
        lines.append(
            f"| {r['name']} | {r['pool']} | {r['concurrency']} | {r['latency_ms']} ms | {r['account_regions']} | "
            f"{r['plans']} | {r['plans_per_s']} | {_fmt(_ratio(r['plans_per_s'], noop))} | "
            f"{_fmt(_ratio(r['plans_per_s'], bare))} | {lat['p50']} / {lat['p95']} / {lat['p99']} | "
            f"{r['daemon_cpu_ms_per_plan']} | {r.get('sandbox_cpu_ms_per_plan', '–')} / {r['redis_cpu_ms_per_plan']} | "
            f"{r['redis_commands_per_plan']} | {r['rss_mb']} |")
    single = _run(results, "threads-c1-0ms")
    noop1 = _run(results, "noop-threads-c1")
    if single and "one_at_a_time_ms" in single:
        s = single["one_at_a_time_ms"]
        lines += ["", f"One plan at a time (threads c=1, 0 ms, 30 plans), XADD → succeeded: p50 {s['p50']} ms, "
                  f"p95 {s['p95']} ms, p99 {s['p99']} ms"
                  + (f"; a no-op task's round trip p50 {noop1['one_at_a_time_ms']['p50']} ms." if noop1 else ".")]
    lines += ["", "## Baselines", "", "| run | pool | c | AWS latency | plans/s (tasks/s) | Redis commands per task |",
              "|---|---|---|---|---|---|"]
    for r in results["runs"]:
        if r["system"] != "commitd":
            lines.append(f"| {r['name']} | {r['pool']} | {r['concurrency']} | {r['latency_ms']} ms | "
                         f"{r['plans_per_s']} | {_fmt(r.get('redis_commands_per_plan'))} |")
    mon = _run(results, "threads-c16-0ms-monitor")
    if mon and "monitor" in mon:
        mm = mon["monitor"]
        lines += ["", "## Redis per plan as deployed (threads c=16, 0 ms, MONITOR; the look-alike check included)", "",
                  f"Round trips: commitd {mm['round_trips_per_plan']['commitd']}, Celery "
                  f"{mm['round_trips_per_plan']['celery']}. Commands (inside scripts included): commitd "
                  f"{mm['commands_per_plan']['commitd']}, Celery {mm['commands_per_plan']['celery']}.", "",
                  "| who:command | per plan |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in mm["by_command_per_plan"].items() if v >= 0.05]
    if big := _run(results, "threads-c16-0ms-1000x3"):
        lines += ["", "## 1,000 accounts × 3 regions through one worker (threads c=16)", ""]
        for w in big["workers"]:
            aws = w.get("aws")
            if not aws:
                continue
            lookups = aws["client_hits"] + aws["client_misses"]
            cred = aws["credential_hits"] + aws["assume_role_calls"]
            lines.append(
                f"- worker pid {w['pid']}: RSS {w['rss_mb']:.0f} MB (peak {w['peak_rss_mb']:.0f} MB); "
                f"{aws['clients']} clients in the cache ({aws['client_bytes'] / 2**20:.1f} MB; sizes by service "
                f"{ {k: f'{v / 2**10:.0f} KB' for k, v in aws['client_size_by_service'].items()} }), client hit rate "
                f"{aws['client_hits'] / lookups:.4f} of {lookups} lookups, {aws['client_evictions']} evictions; "
                f"credentials: {aws['read_credentials']} read sessions kept, "
                f"hit rate {aws['credential_hits'] / cred:.3f}"
                f" ({aws['assume_role_calls']} AssumeRole calls, one per plan for its own session)")
    return "\n".join(lines) + "\n"


def chart(results: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, latency in zip(axes, (0, 50), strict=True):
        series = [("commitd (threads pool)", "commitd", "threads", "o-"),
                  ("bare boto3 (same AWS calls)", "bare_boto3", "threads", "s--")]
        if latency == 0:
            series.append(("no-op Celery task (threads pool)", "noop", "threads", "^:"))
        for label, system, pool, style in series:
            points = sorted((r["concurrency"], r["plans_per_s"]) for r in results["runs"]
                            if r["system"] == system and r["pool"] == pool and r["latency_ms"] == latency
                            and r.get("account_regions", 1) == 1 and "monitor" not in r)
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], style, label=label)
        for r in results["runs"]:
            if r["pool"] == "prefork" and r["latency_ms"] == latency:
                ax.plot([r["concurrency"]], [r["plans_per_s"]], "D" if r["system"] == "commitd" else "v",
                        label=f"{'commitd' if r['system'] == 'commitd' else 'no-op'} prefork c={r['concurrency']}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("concurrency (plans in flight per worker)")
        ax.set_ylabel("plans/s (tasks/s)")
        ax.set_title(f"AWS latency {latency} ms")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"commitd throughput, {results['date'][:10]}, {results['machine']['cpus']} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(results: dict[str, Any], out: Path) -> None:
    results["targets"] = targets(results)
    (out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "latest.md").write_text(markdown(results))
    if not chart(results, out / "latest.png"):
        print("matplotlib is not installed: no chart (pip install the bench extra)")
