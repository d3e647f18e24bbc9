"""``notifier [--config PATH] [--log-level LEVEL] COMMAND``: the command line (SPEC)."""

from __future__ import annotations

import argparse
import errno
import getpass
import math
import os
import re
import secrets
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy.exc import SQLAlchemyError

from notifier import __version__
from notifier.config import (
    EX_CONFIG,
    PLACEHOLDER,
    Config,
    ConfigError,
    Credentials,
    StorageConfig,
    load_config,
    load_storage,
    resolve_path,
    storage_secrets,
)
from notifier.durations import format_duration, parse_duration
from notifier.lease import LeaseHeld
from notifier.listener import ListenerError
from notifier.logs import LEVELS, log, register_secrets, scrub, setup_logging
from notifier.model import Event, event_document, iso, parse_iso
from notifier.route import RuleError, expand_event_patterns
from notifier.store import Store, StoreError, StoreLocationError, display_url, error_reason

Handler = Callable[[argparse.Namespace], int]
EX_TEMPFAIL = 75
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: object) -> str:
    """Text from Bland (or a receiver) as a terminal shows it safely: control characters
    escaped, so that ``\x1b]0;...\x07`` is read, not obeyed."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def _limit(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError("a number of rows, 0 for all")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="notifier", description="Watch Bland AI's active calls and notify.")
    parser.add_argument("--version", action="version", version=f"bland-notifier {__version__}")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $NOTIFIER_CONFIG, ./notifier.toml, /etc/bland-notifier/notifier.toml)",
    )
    parser.add_argument("--log-level", choices=LEVELS, default=None, help="default: $NOTIFIER_LOG_LEVEL or info")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("run", help="the daemon: poll, detect, route, deliver until SIGTERM")
    commands.add_parser("once", help="one poll and one pass over due deliveries")
    check = commands.add_parser("check", help="validate the config and print targets and rules")
    check.add_argument("file", nargs="?", help="config file to check (overrides --config)")
    check.add_argument(
        "--strict", action="store_true", help="a credential that cannot be read here is an error, not a warning"
    )

    ev = commands.add_parser("events", help="list recorded events")
    ev.add_argument("--since", metavar="DURATION", help='only events newer than this, e.g. "1h"')
    ev.add_argument(
        "--type", action="append", default=[], metavar="TYPE", help="event type (repeatable; call.* allowed)"
    )
    ev.add_argument("--call-id", metavar="ID")
    ev.add_argument("--source", metavar="NAME", help="only events of this source ([[sources]] name)")
    ev.add_argument("--limit", type=_limit, default=100, help="newest N (default 100; 0 = all)")
    ev.add_argument("--json", action="store_true", help="machine-readable output")

    dl = commands.add_parser("deliveries", help="list deliveries")
    dl.add_argument("--status", choices=("pending", "sent", "dead", "silenced", "muted", "inhibited"))
    dl.add_argument("--limit", type=_limit, default=100, help="newest N (default 100; 0 = all)")
    dl.add_argument("--json", action="store_true", help="machine-readable output")

    rd = commands.add_parser("redeliver", help="re-queue dead deliveries")
    which = rd.add_mutually_exclusive_group(required=True)
    which.add_argument("--event", metavar="ID", help="the dead deliveries of this event")
    which.add_argument("--all-dead", action="store_true", help="every dead delivery")

    test = commands.add_parser("test", help="send a test notification to one target")
    test.add_argument("target", help="a name from [targets]")

    simulate = commands.add_parser("simulate", help="serve a simulated Bland API on 127.0.0.1")
    simulate.add_argument("--port", type=int, default=8765)
    simulate.add_argument("--seed", type=int, default=None, help="same seed, same traffic")
    simulate.add_argument("--api-key", help="key to accept (default: a random one, printed)")
    simulate.add_argument("--org-id", help="org id to accept (default: a random one, printed)")
    simulate.add_argument(
        "--time-scale", type=float, default=1.0, help="multiply every wait and call duration (0.1 = ten times faster)"
    )
    simulate.add_argument("--error-rate", type=float, default=0.0, help="share of polls answered with an error")
    simulate.add_argument("--latency", default="0s", help='added to every answer, e.g. "300ms"')
    simulate.add_argument("--outage", metavar="AFTER:FOR", help='an outage window, e.g. "2m:90s"')
    simulate.add_argument(
        "--backlog", metavar="AFTER:CALLS", help='a backlog episode on one pathway, e.g. "1m:40" (trips conditions)'
    )

    demo = commands.add_parser("demo", help="the daemon against the simulator, notifications in the terminal")
    demo.add_argument("--seed", type=int, default=None)
    demo.add_argument("--duration", default=None, help='stop by itself after this long, e.g. "30s"')

    st = commands.add_parser("status", help="who leads, each source's health, active calls, queue")
    st.add_argument("--json", action="store_true", help="machine-readable output")

    sil = commands.add_parser("silence", help="silences: quiet matching deliveries for a while")
    sil_commands = sil.add_subparsers(dest="silence_command", required=True, metavar="SILENCE_COMMAND")
    add = sil_commands.add_parser("add", help="create a silence; prints its id")
    add.add_argument("matchers", nargs="+", metavar="MATCHER", help="e.g. 'rule = \"stuck calls\"' 'to =~ \"\\+44.*\"'")
    length = add.add_mutually_exclusive_group(required=True)
    length.add_argument("--for", dest="duration", metavar="DURATION", help='e.g. "1h"')
    length.add_argument("--until", metavar="TIME", help="ISO 8601 with an offset, e.g. 2026-12-01T18:00:00+01:00")
    add.add_argument("--starts", metavar="TIME", help="ISO 8601 with an offset (default: now)")
    add.add_argument("--comment", required=True, help="why (shown in silence list)")
    add.add_argument("--author", help="default: the user running the command")
    ls = sil_commands.add_parser("list", help="active and future silences")
    ls.add_argument("--all", action="store_true", help="expired ones too")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ex = sil_commands.add_parser("expire", help="end a silence now")
    ex.add_argument("id")

    rt = commands.add_parser("route-test", help="where a sample event would go, and how it would read")
    rt.add_argument("type", metavar="TYPE", help="an event type, e.g. call.stuck_queued")
    rt.add_argument("fields", nargs="*", metavar="FIELD=VALUE", help="override the sample's fields")
    rt.add_argument("--at", metavar="TIME", help="ISO 8601 with an offset (default: now)")
    rt.add_argument("--json", action="store_true", help="machine-readable output")

    rp = commands.add_parser("replay", help="what a config would have delivered for the stored events")
    rp.add_argument("--since", required=True, metavar="DURATION", help='e.g. "24h"')
    rp.add_argument(
        "--config", dest="other", metavar="OTHER", help="route through this config's rules (the store stays this one's)"
    )
    rp.add_argument("--json", action="store_true", help="machine-readable output")

    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    db_commands.add_parser("upgrade", help="apply migrations")
    copy = db_commands.add_parser("copy", help="copy the store into another, empty database (daemons stopped)")
    copy.add_argument("--to", required=True, metavar="URL", help="e.g. postgresql+psycopg://USER:PASSWORD@HOST/DB")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = args.log_level or os.environ.get("NOTIFIER_LOG_LEVEL", "info").lower()
    if level not in LEVELS:
        print(f"notifier: invalid NOTIFIER_LOG_LEVEL {level!r}; use one of {', '.join(LEVELS)}", file=sys.stderr)
        return 2
    setup_logging(level)
    sub = {"db": "db_command", "silence": "silence_command"}.get(args.command)
    handler: Handler = _HANDLERS[f"{args.command} {getattr(args, sub)}" if sub else args.command]
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"notifier: config error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except LeaseHeld as exc:
        print(f"notifier: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except ListenerError as exc:  # an address in use or not permitted is configuration: 78, no restart loop
        print(f"notifier: config error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except StoreLocationError as exc:  # a directory that does not exist will not appear by restarting
        print(f"notifier: config error: {scrub(str(exc))}", file=sys.stderr)
        return EX_CONFIG
    except StoreError as exc:
        print(f"notifier: {scrub(str(exc))}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:  # a database that cannot be reached, a lock held too long
        print(f"notifier: the store cannot be used: {scrub(error_reason(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `notifier events | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _config(args: argparse.Namespace, credentials: Credentials | None = None) -> Config:
    config = load_config(resolve_path(getattr(args, "file", None) or args.config), os.environ, credentials)
    register_secrets(config.secrets())
    return config


def _storage(args: argparse.Namespace) -> StorageConfig:
    """Only [storage] of the config (no API key or target secret needs to be present),
    with its password registered for masking."""
    storage = load_storage(resolve_path(args.config))
    register_secrets(storage_secrets(storage))
    return storage


def _read_store(args: argparse.Namespace) -> Store:
    """The store for read commands: nothing is ever created."""
    store = Store(_storage(args).url, create=False)
    try:
        store.require_schema()
    except StoreError:
        store.close()
        raise
    return store


def cmd_run(args: argparse.Namespace) -> int:
    from notifier.daemon import early_signals, run_daemon

    with early_signals() as stop_requested:
        config = _config(args)
        return run_daemon(config, os.environ, stop_requested)


def cmd_once(args: argparse.Namespace) -> int:
    from notifier.daemon import run_once

    return run_once(_config(args), os.environ)


def cmd_check(args: argparse.Namespace) -> int:
    from notifier.channels import describe_target

    credentials = Credentials(lenient=not args.strict)
    try:
        config = _config(args, credentials)
    finally:  # said before any error: an unread credential may be why a value looks wrong
        for why in dict.fromkeys(u.why for u in credentials.unread):
            names = ", ".join(f"{u.credential} ({u.key})" for u in credentials.unread if u.why == why)
            print(
                f"notifier: warning: credentials not read: {why}: {names}; checked without their values "
                "(--strict makes this an error)",
                file=sys.stderr,
            )
    errors, notes = _host_checks(config)
    for note in notes:
        print(f"notifier: warning: {note}", file=sys.stderr)
    if errors:
        for error in errors:
            print(f"notifier: config error: {config.path}: {error}", file=sys.stderr)
        return EX_CONFIG
    unread = f", except what {len(credentials.unread)} unread credential(s) hold" if credentials.unread else ""
    print(f"{config.path}: valid{unread}")
    if credentials.names:
        print(f"credentials: {', '.join(credentials.names)} (the unit loads each with LoadCredential=)")
    for source in config.sources.values():
        print(f"source {source.name}: {source.base_url} every {float(source.poll_interval):g}s")
    print(f"storage: {display_url(config.storage.url)} (lease {format_duration(float(config.storage.lease))})")
    print("targets:")
    for target in config.targets.values():
        print(f"  {target.name} ({target.kind}): {describe_target(target).replace(PLACEHOLDER, '${credential}')}")
    if not config.targets:
        print("  (none)")
    print("rules:")
    for rule in config.rules:
        matchers = " and ".join(str(m) for m in rule.matchers) or "always"
        print(f"  {rule.name}: {', '.join(rule.event_types)} where {matchers} -> {', '.join(rule.targets)}")
    if not config.rules:
        print("  (none: events are recorded but not sent anywhere)")
    if config.conditions:
        print("conditions:")
        for cond in config.conditions:
            when = f"{cond.metric} {'>' if cond.above else '<'} {cond.threshold:g}"
            grouped = f" per {', '.join(cond.group_by)}" if cond.group_by else ""
            counted = f" of calls where {' and '.join(str(m) for m in cond.matchers)}" if cond.matchers else ""
            inhibits = f"; inhibits {', '.join(cond.inhibits)}" if cond.inhibits else ""
            print(f"  {cond.name}: {when}{counted}{grouped} for {format_duration(cond.for_)}{inhibits}")
    if config.time_intervals:
        print("time intervals:")
        now = time.time()
        for name, interval in config.time_intervals.items():
            users = [
                f"{rule.name} ({'mutes' if interval in rule.muting.mute else 'active in'}, {rule.when_muted})"
                for rule in config.rules
                if interval in rule.muting.mute + rule.muting.active
            ]
            active = interval.active(now)
            state = "active now" if active else "not active now"
            until = next((b for b in interval.boundaries(now) if interval.active(b) != active), None)
            state += f", until {_local_and_utc(until)}" if until is not None else ""
            print(f"  {name}: {state}; used by {', '.join(users) or 'no rule'}")
    return 0


def _unprivileged_ports() -> int:
    """The first port any user may bind (Linux: 1024 unless the sysctl says otherwise)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


def _host_checks(config: Config) -> tuple[list[str], list[str]]:
    """(errors, warnings) about this host: can the store's directory be written, can
    the listen address be bound. A relative SQLite path is checked only where it will
    be: under $STATE_DIRECTORY."""
    from notifier.listener import probe
    from notifier.store.sqlite import database_path, location_problem

    errors, notes = [], []
    if config.storage.url.startswith("sqlite:"):
        path = database_path(config.storage.url)
        relative = not Path(config.storage.url.removeprefix("sqlite:///")).is_absolute()
        if relative and not os.environ.get("STATE_DIRECTORY"):
            notes.append(
                f"storage.url: a relative path: the service keeps it in $STATE_DIRECTORY (StateDirectory=); "
                f"here it would be {path}"
            )
        elif problem := location_problem(path):
            errors.append(f"storage.url: {problem}")
    if config.http is not None:
        port = int(config.http.listen.rpartition(":")[2])
        if os.geteuid() == 0 and port < _unprivileged_ports():
            notes.append(
                f"http.listen: port {port} needs privileges the unit does not have (DynamicUser=, no capabilities)"
            )
        failed = probe(config.http.listen)
        if failed is not None and failed.errno == errno.EADDRINUSE:
            notes.append(f"http.listen: {config.http.listen} is in use now (by a running daemon?)")
        elif failed is not None:
            errors.append(f"http.listen: cannot listen on {config.http.listen}: {failed.strerror}")
    return errors, notes


def cmd_events(args: argparse.Namespace) -> int:
    since = None
    if args.since:
        try:
            since = time.time() - parse_duration(args.since)
        except ValueError as exc:
            print(f"notifier: --since: {exc}", file=sys.stderr)
            return 2
    types = _expand_types(args.type)
    if types is None:
        return 2
    store = _read_store(args)
    try:
        found = store.events(
            since=since, types=types, call_id=args.call_id, source=args.source, limit=_one_more(args.limit)
        )
        more = _trim(found, args.limit)
    finally:
        store.close()
    if args.json:
        sys.stdout.write(msgspec.json.encode([event_document(e) for e in found]).decode() + "\n")
        return 0
    if not found:
        print("no events match" if since or types or args.call_id or args.source else "no events recorded yet")
        return 0
    print(f"{'detected (UTC)':<24}  {'id':<21}  {'type':<20} {'call':<12} detail")
    for event in found:
        print(
            printable(
                f"{iso(event.detected_at)}  {event.id}  {event.type:<20} {event.call_id or '-':<12} {_detail(event)}"
            )
        )
    if more:
        print(f"({len(found)} shown, the newest; --limit N for more, --limit 0 for all)")
    return 0


def _one_more(limit: int) -> int | None:
    """Ask for one row past ``--limit``: that one says whether there are more."""
    return limit + 1 if limit else None


def _trim(found: list[Any], limit: int) -> bool:
    """Keep the newest ``limit`` (lists are oldest first); True if some were left out."""
    if limit and len(found) > limit:
        del found[0]
        return True
    return False


def _detail(event: Event) -> str:
    """The line's tail: where the call goes and what it is now, or the source's trouble."""
    call = event.data.get("call")
    if call and event.type == "call.disappeared":
        return f"{call.get('to') or ''} ended (last seen {event.data.get('last_status')})".strip()
    if call:
        return f"{call.get('to') or ''} {call.get('status') or ''}".strip()
    if event.type == "source.unreachable":
        return f"{event.data.get('consecutive_failures')} failures: {event.data.get('last_error')}"
    if event.type.startswith("condition."):
        group = " ".join(f"{k}={v}" for k, v in (event.data.get("group") or {}).items())
        return f"{event.data.get('condition')} {group} {event.data.get('metric')}={event.data.get('value')}"
    return ""


def _expand_types(patterns: list[str]) -> list[str] | None:
    """``--type`` values (repeatable, comma-separated, ``call.*``) as rules read ``events``."""
    try:
        return list(expand_event_patterns([p for arg in patterns for p in arg.split(",") if p]))
    except RuleError as exc:
        print(f"notifier: --type: {exc.reason}", file=sys.stderr)
        return None


def cmd_deliveries(args: argparse.Namespace) -> int:
    store = _read_store(args)
    try:
        found = store.deliveries(status=args.status, limit=_one_more(args.limit))
        more = _trim(found, args.limit)
        history = store.attempts_of([d.id for d in found]) if args.json else {}
    finally:
        store.close()
    if args.json:
        rows = [
            {
                "id": d.id,
                "event_id": d.event_id,
                "events": d.event_count,
                "target": d.target,
                "rule": d.rule,
                "status": d.status,
                "attempts": d.attempts,
                "created_at": iso(d.created_at),
                "next_attempt_at": iso(d.next_attempt_at) if d.status == "pending" else None,
                "finished_at": iso(d.finished_at),
                "last_error": d.last_error,
                "quieted_by": d.quieted_by,
                "attempt_log": [
                    {
                        "at": iso(a.at),
                        "outcome": a.outcome,
                        "status_code": a.status_code,
                        "error": a.error,
                        "latency_seconds": round(a.latency, 4),
                    }
                    for a in history[d.id]
                ],
            }
            for d in found
        ]
        sys.stdout.write(msgspec.json.encode(rows).decode() + "\n")
        return 0
    if not found:
        print(f"no {args.status} deliveries" if args.status else "no deliveries recorded yet")
        return 0
    print(f"{'id':>6}  {'status':<9}  {'created (UTC)':<24}  {'target':<12}  {'rule':<20}  {'event':<21}  attempts")
    for d in found:
        digest = f" +{d.event_count - 1}" if d.event_count > 1 else ""
        when = f"; next {iso(d.next_attempt_at)}" if d.status == "pending" and d.attempts else ""
        if d.quieted_by:
            held = d.status in ("pending", "sent", "dead")  # a mute held it (until the time shown)
            when += f"; {'held by' if held else 'by'} {d.quieted_by}"
            when += f" until {iso(d.next_attempt_at)}" if d.status == "pending" else ""
        error = f"; last error: {d.last_error}" if d.last_error else ""
        print(
            printable(
                f"{d.id:>6}  {d.status:<9}  {iso(d.created_at):<24}  {d.target:<12}  {d.rule or '-':<20}  "
                f"{d.event_id + digest:<21}  {d.attempts}{when}{error}"
            )
        )
    if more:
        print(f"({len(found)} shown, the newest; --limit N for more, --limit 0 for all)")
    return 0


def cmd_redeliver(args: argparse.Namespace) -> int:
    store = _read_store(args)
    try:
        count = store.redeliver(time.time(), event_id=None if args.all_dead else args.event)
    finally:
        store.close()
    print(f"re-queued {count} dead deliver{'y' if count == 1 else 'ies'}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from notifier.lease import read_leader

    store = _read_store(args)
    try:
        now = time.time()
        info = read_leader(store)
        sources = store.sources()
        depth, oldest = store.queue_stats()
        firing = [(row.name, instance) for row in sources for instance in store.conditions_of(row.name).firing()]
    finally:
        store.close()
    leading = info is not None and info.held
    reachable = all(not row.state.unreachable for row in sources)
    report = {
        "leader": {
            "host": info.host,
            "pid": info.pid,
            "term": info.term,
            "since": iso(info.since),
            "lease_expires_in_seconds": round(info.expires_at - info.now, 3),
        }
        if leading and info is not None
        else None,
        "sources": [
            {
                "name": row.name,
                "reachable": not row.state.unreachable,
                "last_successful_poll": iso(row.state.last_success),
                "consecutive_failures": row.state.failures,
                "last_error": row.state.last_error,
                "active_calls": row.calls,
            }
            for row in sources
        ],
        "conditions": [
            {
                "source": name,
                "condition": i.condition,
                "group": i.group,
                "value": i.value,
                "firing_since": iso(i.firing_since),
            }
            for name, i in firing
        ],
        "queue": {"pending": depth, "oldest_seconds": round(now - oldest, 3) if oldest is not None else None},
    }
    if args.json:
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
    else:
        if leading and info is not None:
            print(f"leader: {info.host} pid {info.pid} (term {info.term}, since {iso(info.since) or '?'})")
        else:
            print("leader: none (no daemon holds the lease)")
        for row in sources:
            health = "reachable" if not row.state.unreachable else f"UNREACHABLE since {iso(row.state.failing_since)}"
            if row.state.failures and not row.state.unreachable:
                health = f"failing ({row.state.failures} polls: {row.state.last_error})"
            last = iso(row.state.last_success) or "never"
            calls = ", ".join(f"{count} {status}" for status, count in sorted(row.calls.items())) or "no active calls"
            print(printable(f"source {row.name}: {health}; last successful poll {last}; {calls}"))
        if not sources:
            print("sources: none polled yet")
        for name, i in firing:
            group = " ".join(f"{k}={v}" for k, v in i.group.items())
            print(printable(f"firing: {i.condition} {group} ({name}): {i.value:g} since {iso(i.firing_since)}"))
        age = f" (oldest {format_duration(now - oldest)})" if oldest is not None else ""
        print(f"queue: {depth} {'delivery' if depth == 1 else 'deliveries'} pending{age}")
    return 0 if leading and reachable else 1


def cmd_test(args: argparse.Namespace) -> int:
    from notifier.outbox import send_test

    config = _config(args)
    if args.target not in config.targets:
        known = ", ".join(sorted(config.targets)) or "none defined"
        print(f"notifier: no target {args.target!r} (targets: {known})", file=sys.stderr)
        return 1
    outcome = send_test(config.targets[args.target])
    if outcome.ok:
        print(f"sent a test notification to {args.target}")
        return 0
    print(printable(f"notifier: test notification to {args.target} failed: {outcome.error}"), file=sys.stderr)
    return 1


def cmd_simulate(args: argparse.Namespace) -> int:
    from notifier.simulator import BlandSimulator
    from notifier.traffic import TrafficModel

    try:
        latency = parse_duration(args.latency)
        backlog = None
        if args.backlog:
            after, _, size = args.backlog.partition(":")
            if not size.isdigit():
                raise ValueError(f"--backlog {args.backlog!r}: expected AFTER:CALLS, e.g. 1m:40")
            backlog = (parse_duration(after) / args.time_scale, int(size))
        outage = None
        if args.outage:
            after, _, length = args.outage.partition(":")
            start = time.time() + parse_duration(after)
            outage = (start, start + parse_duration(length))
    except ValueError as exc:
        print(f"notifier: simulate: {exc}", file=sys.stderr)
        return 2
    sim = BlandSimulator(args.port, api_key=args.api_key, org_id=args.org_id, seed=args.seed)
    sim.drive(TrafficModel(args.seed, time_scale=args.time_scale, backlog=backlog))
    sim.configure(latency=latency, error_rate=args.error_rate, outage=outage)
    print(
        f"Simulated Bland API on {sim.base_url}\n\n"
        f'[source]\nbase_url = "{sim.base_url}"\napi_key = "{sim.api_key}"\norg_id = "{sim.org_id}"\n\n'
        "Ctrl-C stops it.",
        flush=True,
    )
    try:
        sim.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from notifier.demo import run_demo

    if args.log_level is None and "NOTIFIER_LOG_LEVEL" not in os.environ:
        setup_logging("warning")  # the terminal is for the notifications
    try:
        duration = parse_duration(args.duration) if args.duration else None
    except ValueError as exc:
        print(f"notifier: demo: --duration: {exc}", file=sys.stderr)
        return 2
    return run_demo(seed=args.seed, duration=duration)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    store = Store(_storage(args).url)
    store.upgrade()
    log.info("database is up to date", extra={"kv": {"database": store.description}})
    store.close()
    return 0


def cmd_db_copy(args: argparse.Namespace) -> int:
    from notifier.config import interpolate_url, validate_storage
    from notifier.store.transfer import copy_store, ensure_quiet

    storage = _storage(args)
    # --to takes ${credential:NAME} and ${NAME} as the config does: no password on the command line.
    destination = StorageConfig(url=interpolate_url(args.to, "--to", "--to", os.environ))
    validate_storage(destination, lambda key, reason: ConfigError("--to", None, reason))
    register_secrets(storage_secrets(storage) + storage_secrets(destination))  # both, for the output
    source = Store(storage.url, create=False)
    try:
        source.require_schema()
        ensure_quiet(source)  # before anything is created at the destination
        target = Store(destination.url)
        try:
            target.upgrade()
            copied = copy_store(source, target)
        finally:
            target.close()
    finally:
        source.close()
    rows = ", ".join(f"{count} {table}" for table, count in copied.items() if count)
    print(f"copied {source.description} to {target.description}: {rows or 'nothing (the store was empty)'}")
    print("now point [storage] url at the new database and start the daemons")
    return 0


# -- quieting: silences, route-test, replay ---------------------------------------------


class _Usage(Exception):
    """A bad argument: said on one line, exit 2."""


def _instant(text: str, option: str) -> float:
    """An ISO 8601 time with an offset (``Z`` allowed): a silence must not end at a
    different hour depending on where the command ran."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise _Usage(f"{option}: {text!r} is not an ISO 8601 time such as 2026-12-01T18:00:00+01:00") from None
    if moment.tzinfo is None:
        raise _Usage(f"{option}: {text!r} needs an offset (e.g. +01:00 or Z)")
    return moment.timestamp()


#: Instants the commands take: from 1970 to the year 9000 (time zones and intervals
#: need room on either side of the year 9999).
_EPOCH_RANGE = (0.0, 221845392000.0)


def _local_and_utc(ts: float) -> str:
    local = datetime.fromtimestamp(ts).astimezone()
    return f"{local.strftime('%Y-%m-%d %H:%M %Z')} ({iso(ts)})"


def cmd_silence_add(args: argparse.Namespace) -> int:
    from notifier.quiet import Silence, parse_silence_matchers

    now = time.time()
    try:
        matchers = parse_silence_matchers(args.matchers)
        starts = _instant(args.starts, "--starts") if args.starts else now
        if args.duration:
            try:
                ends = starts + parse_duration(args.duration)
            except ValueError as exc:
                raise _Usage(f"--for: {exc}") from None
        else:
            ends = _instant(args.until, "--until")
        if ends <= max(starts, now):
            raise _Usage("the silence would end before it starts (or in the past)")
        if ends > now + 100 * 366 * 86400:
            raise _Usage("a silence ends within a hundred years (expire it sooner if need be)")
        if all(m.matches({}) for m in matchers):
            raise _Usage("these matchers hold for every delivery; silence something in particular")
        if not args.comment.strip() or not any(c.isalnum() for c in args.comment):
            raise _Usage("--comment: say why, for whoever finds the silence")
    except (ValueError, _Usage) as exc:
        print(f"notifier: silence add: {exc}", file=sys.stderr)
        return 2
    author = (args.author or "").strip() or os.environ.get("SUDO_USER") or getpass.getuser()
    silence = Silence(f"sil_{secrets.token_hex(6)}", matchers, starts, ends, args.comment.strip(), author, now)
    store = _read_store(args)
    try:
        store.add_silence(silence, [str(m) for m in matchers])
    finally:
        store.close()
    print(silence.id)
    print(printable(f"silences {' and '.join(str(m) for m in matchers)} until {_local_and_utc(ends)}"), file=sys.stderr)
    return 0


def _silence_json(silence: Any, now: float) -> dict[str, Any]:
    return {
        "id": silence.id,
        "matchers": [str(m) for m in silence.matchers],
        "starts_at": iso(silence.starts_at),
        "ends_at": iso(silence.ends_at),
        "state": _silence_state(silence, now),
        "comment": silence.comment,
        "author": silence.author,
        "created_at": iso(silence.created_at),
    }


def _silence_state(silence: Any, now: float) -> str:
    return "active" if silence.active(now) else "expired" if silence.ends_at <= now else "pending"


def cmd_silence_list(args: argparse.Namespace) -> int:
    now = time.time()
    store = _read_store(args)
    try:
        found = store.silences(None if args.all else now)
    finally:
        store.close()
    if args.json:
        sys.stdout.write(msgspec.json.encode([_silence_json(s, now) for s in found]).decode() + "\n")
        return 0
    if not found:
        print("no silences" if args.all else "no active or pending silences (--all shows expired ones)")
        return 0
    for silence in found:
        state = _silence_state(silence, now)
        span = f"until {_local_and_utc(silence.ends_at)}"
        if state == "pending":
            span = f"from {_local_and_utc(silence.starts_at)} " + span
        print(printable(f"{silence.id}  {state:<7}  {' and '.join(str(m) for m in silence.matchers)}"))
        print(printable(f"    {span}; by {silence.author}: {silence.comment}"))
    return 0


def cmd_silence_expire(args: argparse.Namespace) -> int:
    store = _read_store(args)
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
            raise _Usage(
                f"{item!r}: expected FIELD=VALUE with FIELD one of {', '.join(f for f in known if f != 'type')}"
            )
        sample = data["call"].get(name) if name in CALL_FIELDS else data.get(name)
        typed: Any = value
        if isinstance(sample, bool) or name == "international":
            if value not in ("true", "false"):
                raise _Usage(f"{item!r}: {name} is true or false")
            typed = value == "true"
        elif isinstance(sample, (int, float)):
            try:
                typed = float(value)
            except ValueError:
                typed = math.nan
            if not math.isfinite(typed) or typed < 0:
                raise _Usage(f"{item!r}: {name} is a number, 0 or more") from None
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

    config = _config(args, Credentials(lenient=True))  # it sends nothing: credentials are not needed
    try:
        if args.type not in EVENT_TYPES:
            raise _Usage(f"{args.type!r} is not an event type; types: {', '.join(EVENT_TYPES)}")
        at = _instant(args.at, "--at") if args.at else time.time()
        if not _EPOCH_RANGE[0] <= at <= _EPOCH_RANGE[1]:
            raise _Usage(f"--at: {args.at!r} is outside the years 1970 to 9000")
        event = _sample(args.type, args.fields, at)
    except _Usage as exc:
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
    print(printable(f"{args.type}{overrides} at {_local_and_utc(at)}"))
    if note:
        print(f"({note})")
    for row in results:
        outcome = row["outcome"]
        if outcome in ("silenced", "inhibited", "muted", "deferred"):
            outcome += f" ({row['by']})"
            if "until" in row:
                until = row["until"]
                outcome += f" until {_local_and_utc(parse_iso(until)) if until else 'no end within 400 days'}"
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
    store = _read_store(args)
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
    print(f"{len(found)} events since {_local_and_utc(since)} through {config.path} (nothing is sent or written)")
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


_HANDLERS: dict[str, Handler] = {
    "run": cmd_run,
    "once": cmd_once,
    "check": cmd_check,
    "events": cmd_events,
    "deliveries": cmd_deliveries,
    "redeliver": cmd_redeliver,
    "status": cmd_status,
    "test": cmd_test,
    "simulate": cmd_simulate,
    "demo": cmd_demo,
    "silence add": cmd_silence_add,
    "silence list": cmd_silence_list,
    "silence expire": cmd_silence_expire,
    "route-test": cmd_route_test,
    "replay": cmd_replay,
    "db upgrade": cmd_db_upgrade,
    "db copy": cmd_db_copy,
}
