"""Webhook notifications: a JSON POST with a Slack-compatible ``text`` for plans that need attention, failed, wait
for an approval, or committed money (succeeded, not a dry run).

The notifier is a consumer group (``commitd-notify``) on the results stream, run as a thread of the intake
(``start_notifier``). Reading the stream instead of being called from the executor means:
- a plan never waits for a webhook: the plan's transition only adds the stream entry (worker.results);
- nothing is lost across restarts: an entry is acknowledged only once its webhook answered 2xx (or refused it
  with a 4xx, which no retry fixes), so a notifier that dies mid-send leaves it pending, and the next one (or
  another intake's, after ``COMMITD_NOTIFY_RECLAIM_SECONDS``) claims it again;
- several intakes share the work: each entry goes to one consumer of the group.

Each send is retried with exponential backoff (tenacity: ``COMMITD_NOTIFY_ATTEMPTS`` tries from
``COMMITD_NOTIFY_BACKOFF_SECONDS``) on a connection error, a timeout, a 429 or a 5xx; an entry still failing is
left pending and tried again later, and after ``COMMITD_NOTIFY_MAX_DELIVERIES`` deliveries it is dropped with an
error log and a count (``commitd_notifications_total{outcome="dropped"}``). Delivery is at least once: a receiver
that must not repeat itself deduplicates on ``commitd.plan_id`` and ``commitd.version``. The webhook URL (Slack's
hold a token) is never logged.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import redis
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from worker.logs import get_logger
from worker.prometheus import count
from worker.results import ObservabilitySettings, results_stream

log = get_logger("commitd.notify")
GROUP = "commitd-notify"


class WebhookRetry(Exception):
    """The webhook did not take the message, and trying again may help (connection, timeout, 429, 5xx)."""


class WebhookRefused(Exception):
    """The webhook answered 4xx (other than 429): the same message would be refused again."""


def event_of(data: dict[str, Any]) -> str | None:
    """The notification a result entry is, if any: its state, with ``succeeded`` only for real commitments."""
    state = data.get("state")
    if state == "succeeded":
        return None if data.get("dry_run") else "succeeded"
    return state if state in ("needs_attention", "failed", "awaiting_approval") else None


def _usd(value: Any) -> str:
    return f"{float(value):,.2f}" if value is not None else "?"


def message_text(event: str, data: dict[str, Any]) -> str:
    """The Slack-compatible line: what happened, to which plan, and what to do."""
    plan_id = data.get("plan_id")
    where = f"{data.get('action')} in {data.get('account_id')} {data.get('region')}"
    error = data.get("error") or {}
    reason = f"{error.get('code')}: {error.get('message')}" if error else str(data.get("note", ""))
    if event == "succeeded":
        figures = data.get("commitment") or {}
        spent = ""
        if figures:
            hourly = figures.get("hourly_usd")
            spent = (f" committed {_usd(figures.get('total_usd'))} USD (upfront {_usd(figures.get('upfront_usd'))}"
                     + (f", {float(hourly):,.4f} USD/hour" if hourly is not None else "") + ")")
        resources = ", ".join((data.get("result") or {}).get("resource_ids") or [])
        return f"commitd: plan {plan_id} succeeded:{spent} {where}" + (f" ({resources})" if resources else "")
    if event == "needs_attention":
        return (f"commitd: plan {plan_id} NEEDS ATTENTION ({where}): {reason}. Check AWS, then settle it: "
                f"commitd plans resolve {plan_id}")
    if event == "awaiting_approval":
        return f"commitd: plan {plan_id} awaits approval ({where}): {reason}"
    return f"commitd: plan {plan_id} failed ({where}): {reason}"


def payload(event: str, data: dict[str, Any]) -> dict[str, Any]:
    """``text`` for Slack (and anything that shows text); ``commitd`` with the whole result entry for machines."""
    return {"text": message_text(event, data), "commitd": {"event": event, **data}}


@dataclass
class Notifier:
    client: redis.Redis
    prefix: str
    settings: ObservabilitySettings

    @property
    def stream(self) -> str:
        return results_stream(self.prefix)

    def ensure_group(self) -> None:
        """Created at the stream's end the first time: outcomes from before notifications were set up are not
        sent (a backlog of old alerts helps nobody); from then on nothing is skipped, across restarts."""
        try:
            self.client.xgroup_create(self.stream, GROUP, id="$", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def post(self, body: dict[str, Any]) -> None:
        """One POST, retried with backoff while the webhook may take it later."""
        url = self.settings.notify_webhook_url
        assert url is not None
        data = json.dumps(body, default=str).encode()
        retrying = Retrying(
            stop=stop_after_attempt(self.settings.notify_attempts),
            wait=wait_exponential(multiplier=self.settings.notify_backoff_seconds, max=30),
            retry=retry_if_exception_type(WebhookRetry),
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    count(self.client, self.prefix, "commitd_notifications_total",
                          {"event": body["commitd"]["event"], "outcome": "retried"})
                self._post_once(url, data)

    def _post_once(self, url: str, data: bytes) -> None:
        request = urllib.request.Request(url, data=data, method="POST",
                                         headers={"Content-Type": "application/json", "User-Agent": "commitd"})
        try:
            with urllib.request.urlopen(request, timeout=self.settings.notify_timeout_seconds) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            # The error's text names the status, never the URL.
            if exc.code == 429 or exc.code >= 500:
                raise WebhookRetry(f"HTTP {exc.code}") from None
            raise WebhookRefused(f"HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:  # connection refused, DNS, timeout
            reason = getattr(exc, "reason", exc)
            raise WebhookRetry(type(reason).__name__ if not isinstance(reason, str) else reason) from None

    def handle(self, entry_id: str, fields: dict[Any, Any], deliveries: int) -> bool:
        """Notify about one entry. True: done with it (acknowledge); False: leave it pending for a later try."""
        raw = fields.get(b"data", fields.get("data"))
        try:
            data = json.loads(raw) if raw is not None else {}
        except ValueError:
            log.error("notification_unreadable_entry", entry_id=entry_id)
            return True
        event = event_of(data)
        if event is None or event not in self.settings.notify_events:
            return True
        labels = {"event": event}
        try:
            self.post(payload(event, data))
        except WebhookRefused as exc:
            log.error("notification_refused", plan_id=data.get("plan_id"), notify_event=event, error=str(exc))
            count(self.client, self.prefix, "commitd_notifications_total", {**labels, "outcome": "rejected"})
            return True
        except WebhookRetry as exc:
            if deliveries >= self.settings.notify_max_deliveries:
                log.error("notification_dropped", plan_id=data.get("plan_id"), notify_event=event, error=str(exc),
                          deliveries=deliveries)
                count(self.client, self.prefix, "commitd_notifications_total", {**labels, "outcome": "dropped"})
                return True
            log.warning("notification_deferred", plan_id=data.get("plan_id"), notify_event=event, error=str(exc),
                        deliveries=deliveries)
            return False
        log.info("notification_sent", plan_id=data.get("plan_id"), notify_event=event, entry_id=entry_id)
        count(self.client, self.prefix, "commitd_notifications_total", {**labels, "outcome": "sent"})
        return True

    def run_once(self, consumer: str, block_ms: int = 1000, count_: int = 20) -> int:
        """Entries left pending long enough (by this or a dead consumer), then new ones. Returns those handled."""
        self.ensure_group()
        reclaim_ms = int(self.settings.notify_reclaim_seconds * 1000)
        _, claimed, _ = self.client.xautoclaim(self.stream, GROUP, consumer, min_idle_time=reclaim_ms,
                                               count=count_)
        batches: list[tuple[list[Any], bool]] = [(claimed, True)] if claimed else []
        response = self.client.xreadgroup(GROUP, consumer, {self.stream: ">"}, count=count_,
                                          block=None if claimed else block_ms)
        batches += [(entries, False) for _, entries in response or []]
        handled = 0
        for entries, reclaimed in batches:
            for entry_id, fields in entries:
                eid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                if fields is None:  # trimmed from the stream while pending: nothing left to send
                    self.client.xack(self.stream, GROUP, eid)
                    continue
                if self.handle(eid, fields, self._deliveries(eid) if reclaimed else 1):
                    self.client.xack(self.stream, GROUP, eid)
                handled += 1
        return handled

    def _deliveries(self, entry_id: str) -> int:
        rows = self.client.xpending_range(self.stream, GROUP, min=entry_id, max=entry_id, count=1)
        return int(rows[0]["times_delivered"]) if rows else 1

    def run_forever(self, stop: threading.Event, consumer: str | None = None) -> None:
        consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        while not stop.is_set():
            try:
                self.run_once(consumer, block_ms=500)
            except redis.RedisError as exc:
                log.error("notify_redis_error", error=str(exc))
                stop.wait(1.0)
            except Exception:
                log.exception("notify_error")  # never let one entry stop the notifier
                stop.wait(1.0)


def start_notifier(runtime: Any, stop: threading.Event) -> threading.Thread | None:
    """Start the notifier thread when a webhook is configured (``COMMITD_NOTIFY_WEBHOOK_URL``); None otherwise."""
    settings = ObservabilitySettings.load(runtime.settings)
    if not settings.notify_webhook_url:
        return None
    notifier = Notifier(runtime.redis, runtime.settings.key_prefix, settings)
    thread = threading.Thread(target=notifier.run_forever, args=(stop,), name="commitd-notify", daemon=True)
    thread.start()
    log.info("notifier_started", events=sorted(settings.notify_events))
    return thread
