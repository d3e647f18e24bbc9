"""``notifier [--config PATH] [--log-level LEVEL] COMMAND``: the command line (SPEC)."""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy.exc import SQLAlchemyError

from notifier import __version__
from notifier.cli_common import config_for, local_and_utc, printable, read_store, storage_of
from notifier.cli_quieting import cmd_replay, cmd_route_test, cmd_silence_add, cmd_silence_expire, cmd_silence_list
from notifier.config import (
    EX_CONFIG,
    PLACEHOLDER,
    Config,
    ConfigError,
    Credentials,
    StorageConfig,
    storage_secrets,
)
from notifier.durations import format_duration, parse_duration
from notifier.lease import LeaseHeld
from notifier.listener import ListenerError
from notifier.logs import LEVELS, log, register_secrets, scrub, setup_logging
from notifier.model import Event, event_document, iso
from notifier.route import RuleError, expand_event_patterns
from notifier.store import Store, StoreError, StoreLocationError, display_url, error_reason

Handler = Callable[[argparse.Namespace], int]
EX_TEMPFAIL = 75


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


def cmd_run(args: argparse.Namespace) -> int:
    from notifier.daemon import early_signals, run_daemon

    with early_signals() as stop_requested:
        config = config_for(args)
        return run_daemon(config, os.environ, stop_requested)


def cmd_once(args: argparse.Namespace) -> int:
    from notifier.daemon import run_once

    return run_once(config_for(args), os.environ)


def cmd_check(args: argparse.Namespace) -> int:
    from notifier.channels import describe_target

    credentials = Credentials(lenient=not args.strict)
    try:
        config = config_for(args, credentials)
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
    if config.http is not None:
        changes = "changes need the token" if config.http.token is not None else "read-only (no token)"
        print(f"http: {config.http.listen}: /metrics, /healthz, the console and the API; {changes}")
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
            state += f", until {local_and_utc(until)}" if until is not None else ""
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
    from notifier.listener import is_loopback, probe, split_listen
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
        host, port = split_listen(config.http.listen)
        if os.geteuid() == 0 and port < _unprivileged_ports():
            notes.append(
                f"http.listen: port {port} needs privileges the unit does not have (DynamicUser=, no capabilities)"
            )
        if not is_loopback(host):
            notes.append(
                f"http.listen: {host} is reachable from other hosts, and the console's reads need no token: "
                "keep it on a private network (or loopback behind a TLS proxy)"
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
    store = read_store(args)
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
    store = read_store(args)
    try:
        found = store.deliveries(status=args.status, limit=_one_more(args.limit))
        more = _trim(found, args.limit)
        history = store.attempts_of([d.id for d in found]) if args.json else {}
    finally:
        store.close()
    if args.json:
        from notifier.views import delivery_view

        rows = [delivery_view(d, history[d.id]) for d in found]
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
    store = read_store(args)
    try:
        count = store.redeliver(time.time(), event_id=None if args.all_dead else args.event)
    finally:
        store.close()
    print(f"re-queued {count} dead deliver{'y' if count == 1 else 'ies'}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from notifier.views import status_report

    store = read_store(args)
    try:
        now = time.time()
        report = status_report(store, now)
    finally:
        store.close()
    leader = report.leader
    if args.json:
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
    else:
        if leader is not None:
            print(f"leader: {leader.host} pid {leader.pid} (term {leader.term}, since {leader.since or '?'})")
        else:
            print("leader: none (no daemon holds the lease)")
        for row in report.sources:
            health = "reachable" if row.reachable else f"UNREACHABLE since {row.failing_since}"
            if row.consecutive_failures and row.reachable:
                health = f"failing ({row.consecutive_failures} polls: {row.last_error})"
            last = row.last_successful_poll or "never"
            calls = ", ".join(f"{n} {status}" for status, n in sorted(row.active_calls.items())) or "no active calls"
            print(printable(f"source {row.name}: {health}; last successful poll {last}; {calls}"))
        if not report.sources:
            print("sources: none polled yet")
        for c in report.conditions:
            group = " ".join(f"{k}={v}" for k, v in c.group.items())
            print(printable(f"firing: {c.condition} {group} ({c.source}): {c.value:g} since {c.firing_since}"))
        queue = report.queue
        age = f" (oldest {format_duration(queue.oldest_seconds)})" if queue.oldest_seconds is not None else ""
        print(f"queue: {queue.pending} {'delivery' if queue.pending == 1 else 'deliveries'} pending{age}")
    return 0 if leader is not None and all(row.reachable for row in report.sources) else 1


def cmd_test(args: argparse.Namespace) -> int:
    from notifier.outbox import send_test

    config = config_for(args)
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
    store = Store(storage_of(args).url)
    store.upgrade()
    log.info("database is up to date", extra={"kv": {"database": store.description}})
    store.close()
    return 0


def cmd_db_copy(args: argparse.Namespace) -> int:
    from notifier.config import interpolate_url, validate_storage
    from notifier.store.transfer import copy_store, ensure_quiet

    storage = storage_of(args)
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
