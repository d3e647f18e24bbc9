"""The TOML configuration: schema, interpolation, validation, and one clear error.

Every problem becomes a ``ConfigError`` naming the file, the key path
(``rules[2].match[0]``) and the reason; the CLI turns it into exit 78. The schema
structs forbid unknown keys so that a typo never passes silently.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec

from notifier.conditions import Condition
from notifier.detect import DetectSettings
from notifier.durations import Duration, parse_duration
from notifier.route import Rule, RuleError, compile_rule
from notifier.secret import Secret, url_secrets
from notifier.timeintervals import IntervalError, Muting, TimeInterval, parse_interval

EX_CONFIG = 78
DEFAULT_PATHS = (Path("notifier.toml"), Path("/etc/bland-notifier/notifier.toml"))


class ConfigError(Exception):
    """A configuration problem, already phrased for the operator."""

    def __init__(self, file: Path | str, key: str | None, reason: str, rule: str | None = None) -> None:
        self.file, self.key, self.reason, self.rule = str(file), key, reason, rule
        where = f"{self.file}: {key}" if key else self.file
        named = f" (rule {rule!r})" if rule else ""
        super().__init__(f"{where}{named}: {reason}")


class _Schema(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """The config file's sections. Subclasses restate ``frozen=True``: msgspec inherits
    it, but type checkers do not know that."""


class SourceConfig(_Schema, frozen=True):
    api_key: Secret
    org_id: Secret
    base_url: str = "https://api.bland.ai"
    poll_interval: Duration = Duration(5)
    timeout: Duration = Duration(10)
    unreachable_after: Duration = Duration(60)
    fetch_details: bool = False
    max_answer_mb: int = 256  # a larger answer is a failed poll (100k calls are ~60 MB)
    name: str = "default"  # required in [[sources]]


class StorageConfig(_Schema, frozen=True):
    url: str = "sqlite:///notifier.db"
    lease: Duration = Duration(15)
    retention: Duration = Duration(30 * 86400)


class DetectConfig(_Schema, frozen=True):
    stuck_queued_after: Duration = Duration(120)
    stuck_queued_repeat: Duration = Duration(0)
    long_running_after: Duration = Duration(0)
    missing_polls: int = 1
    announce_existing: bool = False


class HttpConfig(_Schema, frozen=True):
    listen: str = "127.0.0.1:9464"
    token: Secret | None = None  # the API's bearer token for changes; none: the console is read-only


class HeartbeatConfig(_Schema, frozen=True):
    url: Secret  # any http(s) URL, fetched with GET; it usually holds the switch's key
    every: Duration = Duration(60)
    timeout: Duration = Duration(10)


class TargetConfig(_Schema, frozen=True):
    url: Secret
    secret: Secret | None = None
    min_interval: Duration | None = None
    timeout: Duration = Duration(10)
    retry_initial: Duration = Duration(5)
    retry_max: Duration = Duration(600)
    give_up_after: Duration = Duration(86400)


class RuleConfig(_Schema, frozen=True):
    name: str
    events: list[str]
    targets: list[str]
    match: list[str] = []
    title: str | None = None
    body: str | None = None
    digest_after: int = 5
    digest_title: str | None = None
    digest_body: str | None = None
    mute_time_intervals: list[str] = []
    active_time_intervals: list[str] = []
    when_muted: str = "drop"


class ConditionConfig(_Schema, frozen=True):
    name: str
    metric: str
    above: float | None = None
    below: float | None = None
    for_: Duration = msgspec.field(default=Duration(0), name="for")
    keep_firing_for: Duration = Duration(0)
    group_by: list[str] = []
    match: list[str] = []
    inhibits: list[str] = []


class _File(_Schema, frozen=True):
    source: SourceConfig | None = None
    sources: list[SourceConfig] = []
    storage: StorageConfig = StorageConfig()
    detect: DetectConfig = DetectConfig()
    http: HttpConfig | None = None
    heartbeat: HeartbeatConfig | None = None
    targets: dict[str, TargetConfig] = {}
    rules: list[RuleConfig] = []
    time_intervals: dict[str, list[dict[str, Any]]] = {}
    conditions: list[ConditionConfig] = []


@dataclass(frozen=True)
class Target:
    """A validated target. ``kind`` is ``webhook`` for http(s) URLs, else ``apprise``."""

    name: str
    kind: str
    url: Secret
    secret: Secret | None
    min_interval: float
    timeout: float
    retry_initial: float
    retry_max: float
    give_up_after: float
    credentials: tuple[str, ...] = ()  # values read from ${credential:...} into url or secret

    def secrets(self) -> list[str]:
        values = url_secrets(self.url.reveal()) + list(self.credentials)
        if self.secret is not None:
            values.append(self.secret.reveal())
        return values


@dataclass(frozen=True)
class Config:
    path: Path
    sources: dict[str, SourceConfig]  # by name; a single [source] is "default"
    storage: StorageConfig
    detect: DetectSettings  # [detect]; each source's unreachable_after: ``detect_for``
    http: HttpConfig | None
    targets: dict[str, Target]
    rules: tuple[Rule, ...]
    time_intervals: dict[str, TimeInterval] = field(default_factory=dict)
    heartbeat: HeartbeatConfig | None = None
    conditions: tuple[Condition, ...] = ()

    def secrets(self) -> list[str]:
        """Every secret value, for scrubbing text that might have picked one up."""
        values = storage_secrets(self.storage)
        if self.http is not None and self.http.token is not None:
            values.append(self.http.token.reveal())
        if self.heartbeat is not None:
            values += url_secrets(self.heartbeat.url.reveal())
        for source in self.sources.values():
            values += [source.api_key.reveal(), source.org_id.reveal()]
        for target in self.targets.values():
            values.extend(target.secrets())
        return values

    @property
    def source(self) -> SourceConfig:
        """The first source (the only one, in a config with a single ``[source]``)."""
        return next(iter(self.sources.values()))

    @property
    def poll_interval(self) -> float:
        """The shortest poll interval of any source."""
        return min(float(source.poll_interval) for source in self.sources.values())

    @cached_property
    def _detect_by_source(self) -> dict[str, DetectSettings]:
        return {
            name: msgspec.structs.replace(self.detect, unreachable_after=float(source.unreachable_after))
            for name, source in self.sources.items()
        }

    def detect_for(self, source: str) -> DetectSettings:
        """Detection settings for one source: [detect] plus its ``unreachable_after``."""
        return self._detect_by_source[source]

    @cached_property
    def digestible(self) -> frozenset[str]:
        """Targets a digest may go to: Apprise ones (a webhook gets one request per event)."""
        return frozenset(name for name, target in self.targets.items() if target.kind == "apprise")


def changes(old: Config, new: Config) -> dict[str, str]:
    """What a reload changed, by name (``rules_added="night shift"``), for the log line
    that says so: a count of rules says nothing about which one a typo broke."""
    found: dict[str, str] = {}
    sections: dict[str, tuple[Mapping[str, object], Mapping[str, object]]] = {
        "sources": (old.sources, new.sources),
        "targets": (old.targets, new.targets),
        "rules": ({r.name: r for r in old.rules}, {r.name: r for r in new.rules}),
    }
    for section, (before, after) in sections.items():
        for verb, names in (
            ("added", [n for n in after if n not in before]),
            ("removed", [n for n in before if n not in after]),
            ("changed", [n for n in after if n in before and after[n] != before[n]]),
        ):
            if names:
                found[f"{section}_{verb}"] = ", ".join(repr(name) for name in names)
    for section in ("detect", "heartbeat", "conditions", "time_intervals"):
        if getattr(old, section) != getattr(new, section):
            found[f"{section}_changed"] = "yes"
    if old.http != new.http:
        found["http_changed"] = "at the next restart"
    return found


def resolve_path(explicit: str | None, env: Mapping[str, str] = os.environ) -> Path:
    """SPEC order: ``--config``, ``$NOTIFIER_CONFIG``, ``./notifier.toml``, /etc."""
    if explicit:
        return Path(explicit)
    if env.get("NOTIFIER_CONFIG"):
        return Path(env["NOTIFIER_CONFIG"])
    for candidate in DEFAULT_PATHS:
        if candidate.exists():
            return candidate
    return DEFAULT_PATHS[0]


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, None, "file not found (use --config or $NOTIFIER_CONFIG)") from None
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, None, "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"invalid TOML: {exc}") from None


def load_storage(path: Path, env: Mapping[str, str] = os.environ) -> StorageConfig:
    """Only ``[storage]``, for the read commands: they work on a host that has the
    store's address but none of the API keys, target secrets or credentials."""
    raw = _read_toml(path).get("storage", {})
    if not isinstance(raw, dict):
        raise ConfigError(path, "storage", "must be a table")
    try:
        storage = msgspec.convert(
            _Resolver(path, env).interpolate(raw, "storage"), StorageConfig, dec_hook=_decode_custom
        )
    except msgspec.ValidationError as exc:
        key, reason = _split_msgspec_error(str(exc))
        raise ConfigError(path, _join("storage", key) if key else "storage", reason) from None
    validate_storage(storage, lambda key, reason: ConfigError(path, key, reason))
    return storage


def storage_secrets(storage: StorageConfig) -> list[str]:
    """The database password, when the URL has one."""
    from notifier.store import url_passwords

    return url_passwords(storage.url)


@dataclass(frozen=True)
class Unread:
    """A ``${credential:NAME}`` that could not be read here."""

    key: str
    credential: str
    why: str


@dataclass
class Credentials:
    """The credentials a config reads. ``lenient`` (``notifier check`` on a machine
    without the service's credentials): a missing one stands in as a placeholder and
    is listed in ``unread``, and the key it is in is validated as far as it can be
    without it, so a file can be checked where it is written, not only where it runs."""

    lenient: bool = False
    names: list[str] = field(default_factory=list)
    unread: list[Unread] = field(default_factory=list)
    values: dict[str, list[str]] = field(default_factory=dict)  # key path -> what was read there

    def under(self, key: str) -> tuple[str, ...]:
        """Every credential value read into ``key`` or below it: secrets by declaration."""
        return tuple(v for k, found in self.values.items() if k == key or k.startswith(key + ".") for v in found)


def load_config(path: Path, env: Mapping[str, str] = os.environ, credentials: Credentials | None = None) -> Config:
    """Read, interpolate, validate. Raises ConfigError; never returns a half-valid config."""
    raw = _read_toml(path)
    credentials = credentials or Credentials()
    try:
        data = _Resolver(path, env, credentials).interpolate(raw, "")
        try:
            schema = msgspec.convert(data, _File, dec_hook=_decode_custom)
        except msgspec.ValidationError as exc:
            key, reason = _split_msgspec_error(str(exc))
            raise ConfigError(path, _name_targets(key, data), reason) from None
        return _validate(schema, path, credentials)
    except ConfigError as exc:
        raise _with_rule_name(exc, raw) from None


def _name_targets(key: str | None, data: dict[str, Any]) -> str | None:
    """msgspec says ``targets[...].secrett`` for a dict entry: find which one."""
    if not key or not key.startswith("targets[...]"):
        return key
    for name, table in (data.get("targets") or {}).items():
        try:
            msgspec.convert(table, TargetConfig, dec_hook=_decode_custom)
        except msgspec.ValidationError:
            return f"targets.{name}" + key.removeprefix("targets[...]")
    return key


def _with_rule_name(exc: ConfigError, raw: dict[str, Any]) -> ConfigError:
    """``rules[3].match[0]`` is easier to find with the rule's name beside it."""
    found = re.match(r"rules\[(\d+)\]", exc.key or "")
    rules = raw.get("rules")
    if not found or not isinstance(rules, list) or int(found.group(1)) >= len(rules):
        return exc
    rule = rules[int(found.group(1))]
    name = rule.get("name") if isinstance(rule, dict) else None
    if not isinstance(name, str) or exc.rule:
        return exc
    return ConfigError(exc.file, exc.key, exc.reason, rule=name)


_REF = re.compile(r"\$\$\{|\$\{([^}]*)\}")
#: What a credential ``check`` cannot read stands for while the rest is validated.
PLACEHOLDER = "unchecked-credential"


@dataclass
class _Resolver:
    """``${NAME}`` from the environment, ``${credential:NAME}`` from
    ``$CREDENTIALS_DIRECTORY``, ``$${`` as ``${``."""

    path: Path
    env: Mapping[str, str]
    credentials: Credentials = field(default_factory=Credentials)

    def interpolate(self, value: Any, key: str) -> Any:
        if isinstance(value, dict):
            return {k: self.interpolate(v, _join(key, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.interpolate(v, f"{key}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, str) and "${" in value:
            if key == "storage.url":
                return self.url(value, key)
            return _REF.sub(lambda m: self.resolve(m, key), value)
        return value

    def url(self, url: str, key: str) -> str:
        """A database URL's references, where a value in the user-info part (a password
        from a credential, typically) is percent-encoded: ``p@ss:w/rd`` must not be read
        as another host or port. Elsewhere values go in as they are (a whole URL from
        the environment stays whole)."""
        scheme, sep, rest = url.partition("://")
        userinfo, at, location = rest.rpartition("@")
        if not sep or not at:
            return _REF.sub(lambda m: self.resolve(m, key), url)

        def quoted(match: re.Match[str]) -> str:
            value = self.resolve(match, key)
            return value if match.group(0) == "$${" else quote(value, safe="")

        return f"{scheme}://{_REF.sub(quoted, userinfo)}@" + _REF.sub(lambda m: self.resolve(m, key), location)

    def resolve(self, match: re.Match[str], key: str) -> str:
        if match.group(0) == "$${":
            return "${"
        name = match.group(1)
        if name.startswith("credential:"):
            return self.credential(name.removeprefix("credential:"), key)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ConfigError(self.path, key, f"invalid reference ${{{name}}}; write ${{NAME}} or ${{credential:NAME}}")
        if name not in self.env:
            raise ConfigError(self.path, key, f"environment variable {name} is not set")
        return self.env[name]

    def credential(self, name: str, key: str) -> str:
        if not name or "/" in name or name in (".", ".."):
            raise ConfigError(self.path, key, f"invalid credential name {name!r}")
        if name not in self.credentials.names:
            self.credentials.names.append(name)
        directory = self.env.get("CREDENTIALS_DIRECTORY")
        if not directory:
            why = "$CREDENTIALS_DIRECTORY is not set (systemd LoadCredential= sets it)"
        else:
            try:
                value = (Path(directory) / name).read_text(encoding="utf-8").strip()
                self.credentials.values.setdefault(key, []).append(value)
                return value
            except OSError:
                why = f"{name!r} is not in $CREDENTIALS_DIRECTORY ({directory})"
        if not self.credentials.lenient:
            raise ConfigError(self.path, key, f"${{credential:{name}}}: {why}")
        self.credentials.unread.append(Unread(key, name, why))
        return PLACEHOLDER


def interpolate_url(url: str, key: str, path: Path | str, env: Mapping[str, str]) -> str:
    """A database URL given outside the config (``db copy --to``), read as the config's."""
    return _Resolver(Path(path), env).url(url, key)


def _join(parent: str, child: str) -> str:
    return f"{parent}.{child}" if parent else child


def _decode_custom(type_: type, value: Any) -> Any:
    if type_ is Duration:
        if not isinstance(value, str):
            raise ValueError('durations are strings with a unit, e.g. "5s", "250ms", "1h30m"')
        return parse_duration(value)
    if type_ is Secret:
        if not isinstance(value, str):
            raise ValueError("expected a string")
        return Secret(value)
    raise NotImplementedError


_AT = re.compile(r"^(.*) - at `\$(.*)`$", re.DOTALL)


def _split_msgspec_error(message: str) -> tuple[str | None, str]:
    """``Object contains unknown field `x` - at `$.source``` -> (``source.x``, reason)."""
    found = _AT.match(message)
    reason, key = (found.group(1), found.group(2).lstrip(".")) if found else (message, "")
    unknown = re.match(r"Object contains unknown field `(.*)`", reason)
    if unknown:
        return _join(key, unknown.group(1)), "unknown key (check the spelling)"
    missing = re.match(r"Object missing required field `(.*)`", reason)
    if missing:
        return _join(key, missing.group(1)), "required key is missing"
    return key or None, reason[:1].lower() + reason[1:]


def _validate(schema: _File, path: Path, credentials: Credentials) -> Config:
    def fail(key: str, reason: str) -> ConfigError:
        return ConfigError(path, key, reason)

    sources = _sources(schema, fail)
    validate_storage(schema.storage, fail)
    det = schema.detect
    if det.missing_polls < 1:
        raise fail("detect.missing_polls", "must be 1 or more")
    if schema.http is not None:
        _validate_listen(schema.http.listen, fail)
        token = schema.http.token.reveal() if schema.http.token is not None else None
        if token is not None and token != PLACEHOLDER and not re.fullmatch(r"[!-~]{16,}", token):
            raise fail("http.token", "at least 16 ASCII characters, no spaces (e.g. from `openssl rand -hex 32`)")
    if schema.heartbeat is not None:
        _validate_heartbeat_url(schema.heartbeat.url.reveal(), fail)
        for name in ("every", "timeout"):
            if getattr(schema.heartbeat, name) <= 0:
                raise fail(f"heartbeat.{name}", "must be more than 0s")

    targets = {name: _target(name, cfg, fail, credentials) for name, cfg in schema.targets.items()}
    intervals = {}
    for name, entries in schema.time_intervals.items():
        try:
            intervals[name] = parse_interval(name, entries)
        except IntervalError as exc:
            raise fail(f"time_intervals.{name}{exc.key}", exc.reason) from None
    rules = []
    names: set[str] = set()
    for index, rule in enumerate(schema.rules):
        key = f"rules[{index}]"
        if rule.name in names:
            raise fail(f"{key}.name", f"duplicate rule name {rule.name!r}")
        names.add(rule.name)
        if not rule.targets:
            raise fail(f"{key}.targets", "must name at least one target")
        for t_index, target in enumerate(rule.targets):
            if target not in targets:
                known = ", ".join(sorted(targets)) or "none defined"
                raise fail(f"{key}.targets[{t_index}]", f"unknown target {target!r} (targets: {known})")
        muting = Muting(
            mute=_intervals_of(rule.mute_time_intervals, intervals, f"{key}.mute_time_intervals", fail),
            active=_intervals_of(rule.active_time_intervals, intervals, f"{key}.active_time_intervals", fail),
        )
        try:
            compiled = compile_rule(
                name=rule.name,
                events=rule.events,
                match=rule.match,
                targets=rule.targets,
                title=rule.title,
                body=rule.body,
                digest_after=rule.digest_after,
                digest_title=rule.digest_title,
                digest_body=rule.digest_body,
                muting=muting,
                when_muted=rule.when_muted,
            )
        except RuleError as exc:
            raise fail(f"{key}.{exc.key}", exc.reason) from None
        rules.append(compiled)

    detect = DetectSettings(
        stuck_queued_after=float(det.stuck_queued_after),
        stuck_queued_repeat=float(det.stuck_queued_repeat),
        long_running_after=float(det.long_running_after),
        missing_polls=det.missing_polls,
        announce_existing=det.announce_existing,
        unreachable_after=float(next(iter(sources.values())).unreachable_after),
    )
    config = Config(
        path=path,
        sources=sources,
        storage=schema.storage,
        detect=detect,
        http=schema.http,
        targets=targets,
        rules=tuple(rules),
        time_intervals=intervals,
        heartbeat=schema.heartbeat,
        conditions=tuple(_condition(i, c, fail) for i, c in enumerate(schema.conditions)),
    )
    if len({c.name for c in config.conditions}) != len(config.conditions):
        names = [c.name for c in config.conditions]
        dup = next(n for n in names if names.count(n) > 1)
        raise fail(f"conditions[{names.index(dup, names.index(dup) + 1)}].name", f"duplicate condition name {dup!r}")
    _check_templates(config, fail)
    return config


def _condition(index: int, cfg: ConditionConfig, fail: Any) -> Condition:
    from notifier.conditions import METRICS
    from notifier.model import CALL_EVENT_TYPES
    from notifier.route import CALL_FIELDS, expand_event_patterns, parse_matcher

    key = f"conditions[{index}]"
    if cfg.metric not in METRICS:
        raise fail(f"{key}.metric", f"{cfg.metric!r} is not one of {', '.join(METRICS)}")
    if (cfg.above is None) == (cfg.below is None):
        raise fail(key, "give exactly one of above or below")
    for g_index, name in enumerate(cfg.group_by):
        if name not in CALL_FIELDS:
            raise fail(f"{key}.group_by[{g_index}]", f"{name!r} is not a call field ({', '.join(CALL_FIELDS)})")
    matchers = []
    for m_index, text in enumerate(cfg.match):
        try:
            matcher = parse_matcher(text)
        except ValueError as exc:
            raise fail(f"{key}.match[{m_index}]", str(exc)) from None
        if matcher.field not in CALL_FIELDS:
            raise fail(f"{key}.match[{m_index}]", f"{matcher.field!r} is not a call field ({', '.join(CALL_FIELDS)})")
        matchers.append(matcher)
    try:
        inhibits = expand_event_patterns(cfg.inhibits)
    except RuleError as exc:
        raise fail(f"{key}.inhibits{exc.key.removeprefix('events')}", exc.reason) from None
    for i_index, event_type in enumerate(inhibits):
        if event_type not in CALL_EVENT_TYPES:
            raise fail(f"{key}.inhibits[{i_index}]", f"{event_type!r}: only call events belong to a group")
    for name in ("for_", "keep_firing_for"):
        if getattr(cfg, name) < 0:
            raise fail(f"{key}.{name.rstrip('_')}", "must not be negative")
    return Condition(
        name=cfg.name,
        metric=cfg.metric,
        threshold=float(cfg.above if cfg.above is not None else cfg.below),  # type: ignore[arg-type]
        above=cfg.above is not None,
        for_=float(cfg.for_),
        keep_firing_for=float(cfg.keep_firing_for),
        group_by=tuple(cfg.group_by),
        matchers=tuple(matchers),
        inhibits=inhibits,
    )


def _intervals_of(names: list[str], known: dict[str, TimeInterval], key: str, fail: Any) -> tuple[TimeInterval, ...]:
    found = []
    for index, name in enumerate(names):
        if name not in known:
            listed = ", ".join(sorted(known)) or "none defined"
            raise fail(f"{key}[{index}]", f"no time interval {name!r} (time_intervals: {listed})")
        found.append(known[name])
    return tuple(found)


_SOURCE_NAME = re.compile(r"[a-z0-9-]+")


def _sources(schema: _File, fail: Any) -> dict[str, SourceConfig]:
    """``[source]`` (named ``default``) or ``[[sources]]``, each validated."""
    if schema.source is not None and schema.sources:
        raise fail("sources", "write either [source] or [[sources]], not both")
    if schema.source is not None:
        if schema.source.name != "default":
            raise fail("source.name", "a single [source] is named 'default'; use [[sources]] to name several")
        listed = [("source", schema.source)]
    elif schema.sources:
        listed = [(f"sources[{i}]", source) for i, source in enumerate(schema.sources)]
    else:
        raise fail("source", "required section is missing ([source], or [[sources]] for several organisations)")
    found: dict[str, SourceConfig] = {}
    for key, source in listed:
        if not _SOURCE_NAME.fullmatch(source.name):
            raise fail(f"{key}.name", f"{source.name!r}: use lower-case letters, digits and '-'")
        if source.name in found:
            raise fail(f"{key}.name", f"duplicate source name {source.name!r}")
        if not re.match(r"^https?://[^/\s]+", source.base_url):
            raise fail(f"{key}.base_url", "must be an http:// or https:// URL")
        if not source.api_key:
            raise fail(f"{key}.api_key", "must not be empty")
        if not source.org_id:
            raise fail(f"{key}.org_id", "must not be empty")
        for name in ("poll_interval", "timeout", "unreachable_after"):
            if getattr(source, name) <= 0:
                raise fail(f"{key}.{name}", "must be more than 0s")
        if source.max_answer_mb < 1:
            raise fail(f"{key}.max_answer_mb", "must be 1 or more")
        found[source.name] = source
    return found


def validate_storage(storage: StorageConfig, fail: Any) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    url = storage.url
    try:
        make_url(url).port  # noqa: B018  (parses the port too)
    except (ArgumentError, ValueError):
        reason = "not a valid database URL (percent-encode @ : / # in a user name or password)"
        raise fail("storage.url", reason) from None
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        raise fail("storage.url", "write postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB (the psycopg 3 driver)")
    if not url.startswith(("sqlite:///", "postgresql+psycopg://")):
        raise fail("storage.url", "expected sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB")
    if storage.retention <= 0:
        raise fail("storage.retention", "must be more than 0s")
    if storage.lease < 1:
        raise fail("storage.lease", "must be at least 1s")


def _validate_heartbeat_url(url: str, fail: Any) -> None:
    """As httpx will read it when it pings (a port that is not a number, a host IDNA
    refuses): refused here, not by a crash at the first ping."""
    import httpx

    reason = "must be an http:// or https:// URL (it is fetched with GET)"
    try:
        parsed = httpx.URL(url)
        parsed.host.encode("idna")
    except (httpx.InvalidURL, UnicodeError, ValueError):
        raise fail("heartbeat.url", reason + "; this one does not parse") from None
    if parsed.scheme not in ("http", "https") or not parsed.host or any(c.isspace() for c in url):
        raise fail("heartbeat.url", reason)


def _validate_listen(listen: str, fail: Any) -> None:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise fail("http.listen", f"expected HOST:PORT, got {listen!r}")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise fail("http.listen", f"an IPv6 address goes in brackets: [{host}]:{port}")


def _target(name: str, cfg: TargetConfig, fail: Any, credentials: Credentials) -> Target:
    key = f"targets.{name}"
    unread = {u.key for u in credentials.unread}
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise fail(key, "target names may use letters, digits, '_', '-' and '.'")
    url = cfg.url.reveal().strip()
    kind = "webhook" if re.match(r"^https?://", url, re.IGNORECASE) else "apprise"
    if kind == "webhook":
        if cfg.secret is not None and f"{key}.secret" not in unread:
            _validate_webhook_secret(cfg.secret, f"{key}.secret", fail)
    else:
        if cfg.secret is not None:
            raise fail(f"{key}.secret", "only webhook (http/https) targets are signed")
        from notifier.channels.apprise import validate_scheme, validate_url

        if f"{key}.url" not in unread:
            problem = validate_url(url)
        else:  # checked as far as it can be without the credential's value (none: all of it is one)
            problem = None if url == PLACEHOLDER else validate_scheme(url)
        if problem:
            raise fail(f"{key}.url", problem)
    for duration in ("timeout", "retry_initial", "retry_max", "give_up_after"):
        if getattr(cfg, duration) <= 0:
            raise fail(f"{key}.{duration}", "must be more than 0s")
    if cfg.retry_max < cfg.retry_initial:
        raise fail(f"{key}.retry_max", "must not be less than retry_initial")
    default_interval = 1.0 if kind == "apprise" else 0.0
    return Target(
        name=name,
        kind=kind,
        url=Secret(url),
        secret=cfg.secret,
        min_interval=float(cfg.min_interval) if cfg.min_interval is not None else default_interval,
        timeout=float(cfg.timeout),
        retry_initial=float(cfg.retry_initial),
        retry_max=float(cfg.retry_max),
        give_up_after=float(cfg.give_up_after),
        credentials=credentials.under(key),
    )


def _validate_webhook_secret(secret: Secret, key: str, fail: Any) -> None:
    import base64
    import binascii

    value = secret.reveal().removeprefix("whsec_")
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) < 16:
        raise fail(key, "must be whsec_ followed by base64 of at least 16 random bytes (Standard Webhooks)")


def _check_templates(config: Config, fail: Any) -> None:
    from notifier.templates import TemplateProblem, check_rule_templates

    for index, rule in enumerate(config.rules):
        try:
            check_rule_templates(rule)
        except TemplateProblem as exc:
            raise fail(f"rules[{index}].{exc.key}", exc.reason) from None
