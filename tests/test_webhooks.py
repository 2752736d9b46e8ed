"""Webhooks, the pure parts: the spec field, the journal records, which
callbacks a job owes and what they say, backoff, destinations, signatures
(checked with the standardwebhooks package's own verifier)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from cmdd.callbacks import OUTPUT_CAP, body_of, callbacks_of, next_pending, webhook_id
from cmdd.codec import decode, encode, job_events
from cmdd.destinations import DestinationRules, parse_networks
from cmdd.jobs import (
    CallbackDone,
    Created,
    Ended,
    InvalidTransitionError,
    Job,
    Outcome,
    Started,
    State,
    apply_event,
)
from cmdd.retrypolicy import RETRY_AFTER_CAP, RetryPolicy, parse_retry_after
from cmdd.signing import UserSecret, new_secret, sign
from cmdd.spec import parse_spec

HOOKS = {
    "begun": "http://workflow/v1/callbacks/shell-command/begun?execution_identifier=42",
    "ended": "http://workflow/v1/callbacks/shell-command/ended?execution_identifier=42",
    "cancelled": "http://workflow/v1/callbacks/shell-command/cancelled?execution_identifier=42",
    "error": "http://workflow/v1/callbacks/shell-command/error?execution_identifier=42",
}


def job_with(hooks: dict[str, str], *events: Any) -> Job:
    job = apply_event(None, Created(7, 100.0, parse_spec({"command": "x", "webhooks": hooks})))
    for event in events:
        job = apply_event(job, event)
    assert job is not None
    return job


def test_seed_003_sample_webhooks_are_accepted_and_shown() -> None:
    """The seed's sample spec is a valid job; its URLs are kept and shown."""
    spec = parse_spec({"command_line": ["joinx", "-h"], "webhooks": HOOKS})
    assert dict(spec.webhooks) == HOOKS
    assert spec.to_json()["webhooks"] == HOOKS


def test_webhooks_survive_the_journal_and_compaction() -> None:
    """The spec's URLs, the host and every callback outcome replay from the
    journal and from a compacted one."""
    job = job_with(
        HOOKS,
        Started(7, 101.0, "node-1"),
        CallbackDone(7, 101.5, 1, True, 1, 204),
        Ended(7, 102.0, Outcome(State.SUCCEEDED, exit_code=0)),
        CallbackDone(7, 200.0, 2, False, 30, None, "ConnectionRefusedError: refused"),
    )
    replayed = None
    for seq, event in enumerate(job_events(job), 1):
        record = decode(encode(seq, event).rstrip(b"\n"))
        replayed = apply_event(replayed, record.item)  # type: ignore[arg-type]
    assert replayed == job
    assert replayed.host == "node-1" and dict(replayed.spec.webhooks) == HOOKS


def test_old_started_lines_without_a_host_still_replay() -> None:
    """A journal written before hosts were kept replays (host unknown)."""
    line = encode(3, Started(7, 101.0)).rstrip(b"\n")
    assert b"host" not in line
    assert decode(line).item == Started(7, 101.0, None)


def test_callback_outcomes_are_accepted_only_in_order() -> None:
    """The journal can never hold callback 2's outcome before callback 1's."""
    job = job_with(HOOKS, Started(7, 101.0))
    with pytest.raises(InvalidTransitionError):
        apply_event(job, CallbackDone(7, 102.0, 2, True, 1, 200))


@pytest.mark.parametrize(
    ("state", "kind"),
    [
        (State.SUCCEEDED, "ended"),
        (State.FAILED, "ended"),
        (State.CANCELLED, "cancelled"),
        (State.LOST, "error"),
        (State.NOT_EXECUTED, "error"),
    ],
)
def test_each_end_makes_its_callback_type(state: State, kind: str) -> None:
    """ended for an exit or timeout, cancelled for a cancel, error when cmdd
    failed its promise; numbered after begun."""
    job = job_with(HOOKS, Started(7, 101.0), Ended(7, 102.0, Outcome(state)))
    assert [(c.sequence, c.type) for c in callbacks_of(job)] == [(1, "begun"), (2, kind)]


def test_only_configured_callbacks_are_owed_and_numbered_from_1() -> None:
    """A job with only an ended URL owes one callback, sequence 1; a job
    cancelled while queued never sends begun."""
    job = job_with({"ended": HOOKS["ended"]}, Started(7, 101.0))
    assert callbacks_of(job) == []
    job = apply_event(job, Ended(7, 102.0, Outcome(State.SUCCEEDED, exit_code=0)))
    assert job is not None
    assert [(c.sequence, c.type, c.at) for c in callbacks_of(job)] == [(1, "ended", 102.0)]
    queued = job_with(HOOKS, Ended(7, 101.0, Outcome(State.CANCELLED)))
    assert [c.type for c in callbacks_of(queued)] == ["cancelled"]


def test_the_next_pending_callback_follows_the_recorded_outcomes() -> None:
    """What is still owed is derived: past the last journaled outcome."""
    job = job_with(HOOKS, Started(7, 101.0), Ended(7, 102.0, Outcome(State.SUCCEEDED)))
    first = next_pending(job)
    assert first is not None and first.type == "begun"
    job = apply_event(job, CallbackDone(7, 103.0, 1, False, 9))
    assert job is not None
    second = next_pending(job)
    assert second is not None and second.type == "ended"
    job = apply_event(job, CallbackDone(7, 104.0, 2, True, 1))
    assert job is not None and next_pending(job) is None


def test_webhook_ids_are_stable_and_distinct() -> None:
    """Every attempt of one callback has one id; no two callbacks share one."""
    job = job_with(HOOKS, Started(7, 101.0), Ended(7, 102.0, Outcome(State.SUCCEEDED)))
    begun, ended = callbacks_of(job)
    assert webhook_id("abc", begun) == webhook_id("abc", callbacks_of(job)[0])
    assert len({webhook_id("abc", begun), webhook_id("abc", ended), webhook_id("xyz", begun)}) == 3


def test_bodies_have_the_seed_fields_and_capped_output() -> None:
    """A receiver written against seed 003's samples finds its fields; output
    is capped at 64 KiB per stream with a truncation flag."""
    job = job_with(
        HOOKS,
        Started(7, 101.0, "exec-host"),
        Ended(7, 102.0, Outcome(State.FAILED, exit_code=3, stdout_bytes=OUTPUT_CAP + 10)),
    )
    begun, ended = callbacks_of(job)
    body = body_of(job, begun)
    assert {k: body[k] for k in ("callback_type", "job_id", "host", "sequence")} == {
        "callback_type": "begun", "job_id": 7, "host": "exec-host", "sequence": 1,
    }  # fmt: skip
    assert body["begin"] == "1970-01-01T00:01:41.000Z" and body["end"] is None
    body = body_of(job, ended, b"x" * (OUTPUT_CAP + 10), b"err")
    assert body["callback_type"] == "ended" and body["exit_code"] == 3
    assert body["end"] == "1970-01-01T00:01:42.000Z" and body["state"] == "failed"
    assert len(body["stdout"]) == OUTPUT_CAP and body["stdout_truncated"] is True
    assert body["stderr"] == "err" and body["stderr_truncated"] is False
    assert body["job"] == "/api/jobs/7"


def test_backoff_doubles_with_jitter_from_about_a_second_to_the_cap() -> None:
    """First retry within a second, then doubling, never past the cap."""
    policy = RetryPolicy(first=1.0, cap=600.0)
    low = [policy.delay(n, uniform=lambda a, b: a) for n in range(1, 15)]
    high = [policy.delay(n, uniform=lambda a, b: b) for n in range(1, 15)]
    assert high[0] == 1.0 and low[0] == 0.5
    assert high[:5] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert max(high) == 600.0 and high[-1] == 600.0
    assert 0.5 <= policy.delay(1) <= 1.0


def test_retry_after_is_honoured_in_seconds_and_as_a_date() -> None:
    """A receiver's Retry-After stretches the wait (up to a cap)."""
    now = 1_800_000_000.0
    assert parse_retry_after("120", now) == 120.0
    date = format_datetime(datetime.fromtimestamp(now + 30, UTC), usegmt=True)
    assert parse_retry_after(date, now) == 30.0
    assert parse_retry_after("soon", now) is None and parse_retry_after(None, now) is None
    policy = RetryPolicy()
    assert policy.delay(1, 120.0, uniform=lambda a, b: b) == 120.0
    assert policy.delay(1, 10**9, uniform=lambda a, b: b) == RETRY_AFTER_CAP


def test_give_up_counts_from_the_event_not_the_first_attempt() -> None:
    """After the maximum age a failing callback is given up."""
    policy = RetryPolicy(max_age=3600.0)
    assert not policy.gives_up(1000.0, 4599.0)
    assert policy.gives_up(1000.0, 4600.0)


def test_destination_rules_deny_wins_and_mapped_addresses_count() -> None:
    """The documented lock-down keeps loopback and the metadata address out."""
    rules = DestinationRules(deny=parse_networks(["127.0.0.0/8", "169.254.169.254", "::1"]))
    assert not rules.allows("127.0.0.1") and not rules.allows("169.254.169.254")
    assert not rules.allows("::ffff:127.0.0.1") and not rules.allows("::1")
    assert rules.allows("10.1.2.3") and not rules.allows("not-an-address")
    only = DestinationRules(
        allow=parse_networks(["10.0.0.0/8"]), deny=parse_networks(["10.9.0.0/16"])
    )
    assert only.allows("10.1.1.1") and not only.allows("10.9.1.1") and not only.allows("8.8.8.8")


def test_signatures_verify_with_the_standardwebhooks_verifier() -> None:
    """A receiver using the standardwebhooks package accepts cmdd's
    signature and rejects a changed body."""
    secret = new_secret()
    assert secret.startswith("whsec_")
    body = '{"callback_type": "ended", "job_id": 7}'
    now = int(time.time())
    headers = {
        "webhook-id": "msg_x_7_2",
        "webhook-timestamp": str(now),
        "webhook-signature": sign([secret], "msg_x_7_2", now, body),
    }
    assert Webhook(secret).verify(body, headers) == {"callback_type": "ended", "job_id": 7}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace("7", "8"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


def test_during_a_rotation_both_secrets_verify() -> None:
    """Receivers still on the old secret keep verifying for the overlap."""
    old, new = new_secret(), new_secret()
    record = UserSecret(new, 1000.0, previous=old, previous_until=2000.0)
    assert record.signing(1500.0) == [new, old] and record.signing(2000.0) == [new]
    assert old not in repr(record) and new not in repr(record)
    now = int(time.time())
    header = sign(record.signing(1500.0), "msg_1", now, "{}")
    assert len(header.split(" ")) == 2
    for key in (old, new):
        Webhook(key).verify("{}", {"webhook-id": "msg_1", "webhook-timestamp": str(now),
                                   "webhook-signature": header})  # fmt: skip


def test_destination_lists_and_webhook_limits_are_settings() -> None:
    """CIDR lists from TOML or the command line are checked at start."""
    from cmdd.config import ConfigError, build_settings

    settings = build_settings(
        {"webhook_deny": ["127.0.0.0/8", "169.254.169.254"], "webhook_max_age": 60},
        {"webhook_allow": ["10.0.0.0/8"], "webhook_timeout": "5"},
    )
    assert settings.webhook_deny == ("127.0.0.0/8", "169.254.169.254/32")
    assert settings.webhook_allow == ("10.0.0.0/8",)
    assert settings.webhook_max_age == 60.0 and settings.webhook_timeout == 5.0
    with pytest.raises(ConfigError, match="webhook_deny"):
        build_settings({"webhook_deny": ["not a network"]}, {})
