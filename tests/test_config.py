"""Configuration: defaults, interpolation, secrets, and one clear error per broken config."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from notifier.config import ConfigError, load_config
from tests.conftest import cli_env, run_cli

GOOD_SOURCE = """
[source]
api_key = "${KEY}"
org_id = "org-1"
"""
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> object:
    path = tmp_path / "notifier.toml"
    path.write_text(textwrap.dedent(text))
    return load_config(path, {"KEY": "sk-live-123456", **(env or {})})


def test_defaults_from_spec(tmp_path: Path) -> None:
    config = load(tmp_path, GOOD_SOURCE)
    src = config.source  # type: ignore[attr-defined]
    assert src.base_url == "https://api.bland.ai"
    assert (src.poll_interval, src.timeout, src.unreachable_after, src.fetch_details) == (5, 10, 60, False)
    det = config.detect  # type: ignore[attr-defined]
    assert (det.stuck_queued_after, det.stuck_queued_repeat, det.long_running_after) == (120, 0, 0)
    assert (det.missing_polls, det.announce_existing) == (1, False)
    assert config.storage.url == "sqlite:///notifier.db" and config.storage.retention == 30 * 86400  # type: ignore[attr-defined]
    assert config.storage.lease == 15 and src.max_answer_mb == 256 and src.name == "default"  # type: ignore[attr-defined]
    assert config.http is None  # type: ignore[attr-defined]


def test_targets_get_kind_and_defaults(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        GOOD_SOURCE
        + f"""
[targets.ops]
url = "slack://TokenA/TokenB/TokenC"
[targets.crm]
url = "https://crm.example.com/hooks/bland"
secret = "{WHSEC}"
""",
    )
    ops, crm = config.targets["ops"], config.targets["crm"]  # type: ignore[attr-defined]
    assert (ops.kind, ops.min_interval) == ("apprise", 1.0)
    assert (crm.kind, crm.min_interval, crm.retry_initial, crm.retry_max, crm.give_up_after, crm.timeout) == (
        "webhook",
        0.0,
        5.0,
        600.0,
        86400.0,
        10.0,
    )


def test_interpolation_env_credentials_and_literal(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "org").write_text("org-from-credential\n")
    config = load(
        tmp_path,
        """
[source]
api_key = "${KEY}"
org_id = "${credential:org}"
base_url = "http://127.0.0.1:1/$${literal}"
""",
        {"CREDENTIALS_DIRECTORY": str(creds)},
    )
    assert config.source.org_id.reveal() == "org-from-credential"  # type: ignore[attr-defined]
    assert config.source.base_url == "http://127.0.0.1:1/${literal}"  # type: ignore[attr-defined]


def test_secrets_do_not_print(tmp_path: Path) -> None:
    config = load(tmp_path, GOOD_SOURCE)
    for text in (repr(config), str(config.source), f"{config.source.api_key}"):  # type: ignore[attr-defined]
        assert "sk-live-123456" not in text


def test_durations(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        GOOD_SOURCE.replace('org_id = "org-1"', 'org_id = "o"\npoll_interval = "250ms"')
        + '[detect]\nstuck_queued_after = "1h30m"\n[storage]\nretention = "7d"\n',
    )
    assert config.source.poll_interval == 0.25  # type: ignore[attr-defined]
    assert config.detect.stuck_queued_after == 5400  # type: ignore[attr-defined]
    assert config.storage.retention == 7 * 86400  # type: ignore[attr-defined]


RULE = """
[targets.ops]
url = "console://"
[[rules]]
name = "r0"
events = ["call.*"]
targets = ["ops"]
"""

BROKEN = [
    ('[source]\norg_id = "o"\n', "source.api_key", "required key is missing"),
    (GOOD_SOURCE + 'pol_interval = "5s"\n', "source.pol_interval", "unknown key"),
    (GOOD_SOURCE + 'poll_interval = "5 s"\n', "source.poll_interval", "invalid duration"),
    (GOOD_SOURCE + "poll_interval = 5\n", "source.poll_interval", "durations are strings"),
    (GOOD_SOURCE + 'timeout = "0s"\n', "source.timeout", "more than 0s"),
    (GOOD_SOURCE + 'base_url = "ftp://x"\n', "source.base_url", "http"),
    ('[source]\napi_key = "${MISSING_VAR}"\norg_id = "o"\n', "source.api_key", "MISSING_VAR is not set"),
    ('[source]\napi_key = "${credential:nope}"\norg_id = "o"\n', "source.api_key", "CREDENTIALS_DIRECTORY"),
    (GOOD_SOURCE + "[detect]\nmissing_polls = 0\n", "detect.missing_polls", "1 or more"),
    (GOOD_SOURCE + '[detect]\nmissing_polls = "2"\n', "detect.missing_polls", "expected `int`"),
    (GOOD_SOURCE + '[storage]\nurl = "postgresql://x"\n', "storage.url", "postgresql+psycopg://"),
    (GOOD_SOURCE + '[storage]\nurl = "mysql://x"\n', "storage.url", "expected sqlite:///PATH or postgresql+psycopg://"),
    (GOOD_SOURCE + '[storage]\nlease = "500ms"\n', "storage.lease", "at least 1s"),
    (GOOD_SOURCE + '[http]\nlisten = "9464"\n', "http.listen", "HOST:PORT"),
    (GOOD_SOURCE + '[targets.x]\nurl = "nope://a"\n', "targets.x.url", "Apprise cannot use"),
    (GOOD_SOURCE + '[targets.x]\nurl = "https://h/x"\nsecret = "hunter2"\n', "targets.x.secret", "whsec_"),
    (GOOD_SOURCE + '[targets.x]\nurl = "https://h/x"\nretry_max = "1s"\n', "targets.x.retry_max", "retry_initial"),
    (GOOD_SOURCE + RULE.replace('targets = ["ops"]', 'targets = ["opz"]'), "rules[0].targets[0]", "unknown target"),
    (GOOD_SOURCE + RULE.replace('"call.*"', '"call.ended"'), "rules[0].events[0]", "matches no event type"),
    (GOOD_SOURCE + RULE + 'match = ["to =~ \\"(\\""]\n', "rules[0].match[0]", "invalid regular expression"),
    (GOOD_SOURCE + RULE + 'match = ["to ~ x"]\n', "rules[0].match[0]", "FIELD OP VALUE"),
    (GOOD_SOURCE + RULE + 'match = ["tooo = x"]\n', "rules[0].match[0]", "exists on none"),
    (
        GOOD_SOURCE + RULE.replace('"call.*"', '"source.*"') + 'match = ["to = x"]\n',
        "rules[0].match[0]",
        "exists on none",
    ),
    (GOOD_SOURCE + RULE + RULE.split("[[rules]]")[1].join(["[[rules]]", ""]), "rules[1].name", "duplicate"),
    (GOOD_SOURCE + RULE + 'title = "{{ call.nope }}"\n', "rules[0].title", "nope"),
    (GOOD_SOURCE + RULE + 'body = "{{ event.queued_for_seconds | round }}"\n', "rules[0].body", "queued_for_seconds"),
    (GOOD_SOURCE + RULE + 'body = "{% if %}"\n', "rules[0].body", "does not compile"),
    (GOOD_SOURCE + RULE + "digest_after = -1\n", "rules[0].digest_after", "0 (off) or more"),
    ("[source\n", None, "invalid TOML"),
]


@pytest.mark.parametrize("text, key, reason", BROKEN)
def test_broken_config_names_key_and_reason(tmp_path: Path, text: str, key: str | None, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert caught.value.key == key
    assert reason in caught.value.reason
    assert "sk-live-123456" not in str(caught.value)


@pytest.mark.parametrize("text, key, reason", [BROKEN[1], BROKEN[19], BROKEN[24], BROKEN[-1]])
def test_cli_reports_config_errors_with_exit_78(tmp_path: Path, text: str, key: str | None, reason: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    env = cli_env(None, tmp_path, KEY="sk-live-123456")
    # Read commands (events, deliveries, status) read only [storage]: see test_read_commands.
    for command in (["check"], ["once"], ["run"]):
        result = run_cli(["--config", str(path), *command], env, tmp_path)
        assert result.returncode == 78, (command, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr
        assert str(path) in lines[0] and (key or "") in lines[0] and reason in lines[0]


def test_check_prints_targets_masked_and_rules(tmp_path: Path) -> None:
    path = tmp_path / "notifier.toml"
    path.write_text(
        GOOD_SOURCE
        + f"""
[targets.ops]
url = "slack://T1SECRETAAA/B2SECRETBBB/C3SECRETCCCCCCCCCCCCCCCC"
[targets.crm]
url = "https://user:pw-secret@crm.example.com/hooks/tok-secret?k=q-secret"
secret = "{WHSEC}"
[[rules]]
name = "stuck"
events = ["call.stuck_queued"]
match = ['to =~ "\\+1310.*"']
targets = ["ops", "crm"]
"""
    )
    result = run_cli(["check", str(path)], cli_env(None, tmp_path, KEY="sk-live-123456"), tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    for secret in ("sk-live-123456", "SECRET", "pw-secret", "tok-secret", "q-secret", WHSEC):
        assert secret not in out
    assert "ops (apprise): slack://" in out and "crm (webhook): https://" in out
    assert 'stuck: call.stuck_queued where to =~ "\\\\+1310.*" -> ops, crm' in out


def test_config_path_resolution_order(tmp_path: Path) -> None:
    (tmp_path / "notifier.toml").write_text("[source\n")
    other = tmp_path / "other.toml"
    other.write_text(GOOD_SOURCE)
    env = cli_env(None, tmp_path, KEY="k")
    assert run_cli(["check"], env, tmp_path).returncode == 78  # ./notifier.toml
    assert run_cli(["check"], {**env, "NOTIFIER_CONFIG": str(other)}, tmp_path).returncode == 0
    assert (
        run_cli(
            ["--config", str(tmp_path / "notifier.toml"), "check"], {**env, "NOTIFIER_CONFIG": str(other)}, tmp_path
        ).returncode
        == 78
    )


#: Values of the right shape for each credential rules.example.toml reads (Apprise checks them).
EXAMPLE_CREDENTIALS = {
    "bland_api_key": "sk-example-key",
    "bland_org_id": "org-example",
    "slack_tokens": "T1AAAAAAA/B2BBBBBBB/C3CCCCCCCCCCCCCCCCCCCCCC",
    "smtp_password": "smtp-pass-123",
    "crm_webhook_secret": WHSEC,
    "pagerduty_integration_key": "integration0123456789abcdef0123456",
    "pagerduty_api_key": "apikey0123456789",
    "http_token": "console-0123456789abcdef0123456789",
}


def test_the_example_config_is_valid(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parent.parent / "rules.example.toml"
    creds = tmp_path / "creds"
    creds.mkdir()
    values = EXAMPLE_CREDENTIALS
    for name, value in values.items():
        (creds / name).write_text(value + "\n")
    result = run_cli(["check", str(example)], cli_env(None, tmp_path, CREDENTIALS_DIRECTORY=str(creds)), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(" -> ") == 6
    for value in values.values():
        assert value not in result.stdout + result.stderr
