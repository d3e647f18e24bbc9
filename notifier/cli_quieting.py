"""Quieting from the command line: ``silence add|list|expire``, and the dry runs
``route-test`` and ``replay``, which send nothing and write nothing."""

from __future__ import annotations

import argparse
import getpass
import math
import os
import secrets
import sys
import time
from collections import Counter
from typing import Any

import msgspec
from sqlalchemy.exc import SQLAlchemyError

from notifier.cli_common import (
    EPOCH_RANGE,
    Usage,
    config_for,
    instant,
    local_and_utc,
    printable,
    read_store,
)
from notifier.config import Config, Credentials, load_config, resolve_path
from notifier.durations import parse_duration
from notifier.model import Event, event_document, iso, parse_iso
from notifier.store import Store, StoreError, error_reason


def cmd_silence_add(args: argparse.Namespace) -> int:
    from notifier.quiet import new_silence

    now = time.time()
    author = (args.author or "").strip() or os.environ.get("SUDO_USER") or getpass.getuser()
    try:
        starts = instant(args.starts, "--starts") if args.starts else now
        if args.duration:
            try:
                ends = starts + parse_duration(args.duration)
            except ValueError as exc:
                raise Usage(f"--for: {exc}") from None
        else:
            ends = instant(args.until, "--until")
        silence = new_silence(f"sil_{secrets.token_hex(6)}", args.matchers, starts, ends, args.comment, author, now)
    except (ValueError, Usage) as exc:
        reason = str(exc)
        print(f"notifier: silence add: {'--' if reason.startswith('comment:') else ''}{reason}", file=sys.stderr)
        return 2
    store = read_store(args)
    try:
        store.add_silence(silence, [str(m) for m in silence.matchers])
    finally:
        store.close()
    print(silence.id)
    print(
        printable(f"silences {' and '.join(str(m) for m in silence.matchers)} until {local_and_utc(silence.ends_at)}"),
        file=sys.stderr,
    )
    return 0


def cmd_silence_list(args: argparse.Namespace) -> int:
    from notifier.views import silence_state, silence_view

    now = time.time()
    store = read_store(args)
    try:
        found = store.silences(None if args.all else now)
    finally:
        store.close()
    if args.json:
        sys.stdout.write(msgspec.json.encode([silence_view(s, now) for s in found]).decode() + "\n")
        return 0
    if not found:
        print("no silences" if args.all else "no active or pending silences (--all shows expired ones)")
        return 0
    for silence in found:
        state = silence_state(silence, now)
        span = f"until {local_and_utc(silence.ends_at)}"
        if state == "pending":
            span = f"from {local_and_utc(silence.starts_at)} " + span
        print(printable(f"{silence.id}  {state:<7}  {' and '.join(str(m) for m in silence.matchers)}"))
        print(printable(f"    {span}; by {silence.author}: {silence.comment}"))
    return 0


def cmd_silence_expire(args: argparse.Namespace) -> int:
    store = read_store(args)
    try:
        expired = store.expire_silence(args.id, time.time())
    finally:
        store.close()
    if not expired:
        print(printable(f"notifier: no active or pending silence {args.id!r}"), file=sys.stderr)
        return 1
    print(f"expired {args.id}")
    return 0


def _store_silences(config: Config, source: str = "default") -> tuple[list[Any], Any, str | None]:
    """Every silence in the store (route-test and replay judge at other instants) and
    the source's committed conditions, or a note saying why they are not considered."""
    from notifier.model import ConditionState

    try:
        store = Store(config.storage.url, create=False)
    except StoreError as exc:
        return [], ConditionState(), f"silences and conditions not considered: {exc}"
    try:
        store.require_schema()
        return store.silences(), store.conditions_of(source), None
    except (StoreError, SQLAlchemyError) as exc:
        why = error_reason(exc) if isinstance(exc, SQLAlchemyError) else exc
        return [], ConditionState(), f"silences and conditions not considered: {why}"
    finally:
        store.close()


def _sample(event_type: str, overrides: list[str], at: float) -> Event:
    """A sample event of ``event_type`` with FIELD=VALUE overrides, as routing sees fields."""
    from notifier.route import CALL_FIELDS, fields_of
    from notifier.templates import sample_event

    event = sample_event(event_type)
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in event.data.items()}
    known = fields_of(event_type)
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep or name not in known or name == "type":
            raise Usage(
                f"{item!r}: expected FIELD=VALUE with FIELD one of {', '.join(f for f in known if f != 'type')}"
            )
        sample = data["call"].get(name) if name in CALL_FIELDS else data.get(name)
        typed: Any = value
        if isinstance(sample, bool) or name == "international":
            if value not in ("true", "false"):
                raise Usage(f"{item!r}: {name} is true or false")
            typed = value == "true"
        elif isinstance(sample, (int, float)):
            try:
                typed = float(value)
            except ValueError:
                typed = math.nan
            if not math.isfinite(typed) or typed < 0:
                raise Usage(f"{item!r}: {name} is a number, 0 or more") from None
            typed = int(typed) if isinstance(sample, int) and typed.is_integer() else typed
        if name in CALL_FIELDS:
            data["call"][name] = typed
        else:
            data[name] = typed
    call_id = data["call"]["call_id"] if "call" in data else None
    return Event(id="evt_route_test_0000000001", type=event_type, detected_at=at, data=data, call_id=call_id)


def cmd_route_test(args: argparse.Namespace) -> int:
    from notifier.channels import make_channel
    from notifier.channels.webhook import webhook_body
    from notifier.conditions import inhibited_by
    from notifier.model import EVENT_TYPES
    from notifier.quiet import judge
    from notifier.route import event_fields, route
    from notifier.templates import TEXT, render

    config = config_for(args, Credentials(lenient=True))  # it sends nothing: credentials are not needed
    try:
        if args.type not in EVENT_TYPES:
            raise Usage(f"{args.type!r} is not an event type; types: {', '.join(EVENT_TYPES)}")
        at = instant(args.at, "--at") if args.at else time.time()
        if not EPOCH_RANGE[0] <= at <= EPOCH_RANGE[1]:
            raise Usage(f"--at: {args.at!r} is outside the years 1970 to 9000")
        event = _sample(args.type, args.fields, at)
    except Usage as exc:
        print(f"notifier: route-test: {exc}", file=sys.stderr)
        return 2
    silences, conditions, note = _store_silences(config, event.data.get("source", "default"))
    inhibitor = inhibited_by(conditions, config.conditions, event)
    hops = {hop.target: hop for hop in route(event, config.rules)}
    fields = event_fields(event)
    results = []
    for name, target in config.targets.items():
        hop = hops.get(name)
        if hop is None:
            results.append({"target": name, "rule": None, "outcome": "no rule"})
            continue
        verdict = judge(hop.rule, name, fields, at, silences, inhibitor)
        row: dict[str, Any] = {"target": name, "rule": hop.rule.name, "outcome": verdict.action}
        if verdict.reason:
            row["by"] = verdict.reason
        if verdict.until is not None or verdict.action == "muted":
            until = hop.rule.muting.until(at)
            row["until"] = iso(until) if until is not None else None
        if verdict.sends:
            if target.kind == "webhook":
                row["body"] = msgspec.json.decode(webhook_body(event))
            else:
                channel = make_channel(target)
                row["title"], row["body"] = render(hop.rule, event, getattr(channel, "escape", TEXT))
        results.append(row)
    sending = any(r["outcome"] == "send" for r in results)
    if args.json:
        report = {"type": args.type, "at": iso(at), "event": event_document(event), "targets": results, "note": note}
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
        return 0 if sending else 1
    overrides = f" with {' '.join(args.fields)}" if args.fields else ""
    print(printable(f"{args.type}{overrides} at {local_and_utc(at)}"))
    if note:
        print(f"({note})")
    for row in results:
        outcome = row["outcome"]
        if outcome in ("silenced", "inhibited", "muted", "deferred"):
            outcome += f" ({row['by']})"
            if "until" in row:
                until = row["until"]
                outcome += f" until {local_and_utc(parse_iso(until)) if until else 'no end within 400 days'}"
        print(printable(f"  {row['target']:<16} {row['rule'] or '-':<28} {outcome}"))
    for row in results:
        if row["outcome"] != "send":
            continue
        print(f"\n{row['target']}:")
        if "title" in row:
            print(printable(f"  {row['title']}"))
            print("\n".join(printable(f"  | {line}") for line in row["body"].splitlines()))
        else:
            print(printable("  " + msgspec.json.encode(row["body"]).decode()))
    return 0 if sending else 1


def cmd_replay(args: argparse.Namespace) -> int:
    from notifier.quiet import judge_hops
    from notifier.route import plan_deliveries

    try:
        since = max(0.0, time.time() - parse_duration(args.since))
    except ValueError as exc:
        print(f"notifier: replay: --since: {exc}", file=sys.stderr)
        return 2
    # It sends nothing: a credential it cannot read is no reason to refuse.
    config = load_config(resolve_path(args.other or args.config), os.environ, Credentials(lenient=True))
    silences, _, note = _store_silences(config)
    store = read_store(args)
    try:
        found = store.events(since=since, limit=None)
        was = store.deliveries(since=since)
    finally:
        store.close()
    # Events of one poll share their detection time: planned together, as the daemon did.
    polls: dict[tuple[str, float], list[Event]] = {}
    for event in found:
        polls.setdefault((event.data.get("source", "default"), event.detected_at), []).append(event)
    would: dict[tuple[str, str], Counter[str]] = {}
    for (_, at), batch in polls.items():
        for plan in plan_deliveries(batch, config.rules, config.digestible, judge_hops(at, silences)):
            counts = would.setdefault((plan.rule, plan.target), Counter())
            kind = "deferred" if plan.status == "pending" and plan.quieted_by else plan.status
            counts["messages" if kind == "pending" else kind] += 1
            counts["events"] += len(plan.event_ids)
            if plan.is_digest:
                counts["digests"] += 1
    did: dict[tuple[str, str], Counter[str]] = {}
    for delivery in was:
        did.setdefault((delivery.rule, delivery.target), Counter())[delivery.status] += 1
    rows = [
        {
            "rule": rule,
            "target": target,
            "would": dict(would.get((rule, target), {})),
            "was": dict(did.get((rule, target), {})),
        }
        for rule, target in sorted(set(would) | set(did))
    ]
    if args.json:
        report = {"since": iso(since), "events": len(found), "config": str(config.path), "rows": rows, "note": note}
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
        return 0
    print(f"{len(found)} events since {local_and_utc(since)} through {config.path} (nothing is sent or written)")
    if note:
        print(f"({note})")
    if not rows:
        print("no deliveries either way")
        return 0
    print(f"{'rule':<28} {'target':<14} {'would deliver':<44} was delivered")
    for row in rows:
        w, d = row["would"], row["was"]
        would_text = f"{w.get('messages', 0)} messages ({w.get('events', 0)} events, {w.get('digests', 0)} digests)"
        for kind in ("silenced", "muted", "deferred"):
            if w.get(kind):
                would_text += f", {w[kind]} {kind}"
        was_text = ", ".join(f"{n} {status}" for status, n in sorted(d.items())) or "nothing"
        print(printable(f"{row['rule']:<28} {row['target']:<14} {would_text:<44} {was_text}"))
    return 0
