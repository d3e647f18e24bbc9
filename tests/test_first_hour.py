"""The operator's first hour: README's production steps run as written (in a temporary
root), the example and the unit agree on credentials, and errors say what to fix."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from notifier.model import iso
from notifier.simulator import BlandSimulator, wire_call
from tests.conftest import announce_to, cli_env, run_cli, wait_for, write_config
from tests.receivers import Receiver
from tests.test_config import EXAMPLE_CREDENTIALS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "rules.example.toml"
UNIT = ROOT / "systemd" / "bland-notifier.service"
NOTIFIER = str(Path(sys.executable).parent / "notifier")
VALUES = EXAMPLE_CREDENTIALS


def _production_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Production install (systemd)", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


def _example_credentials() -> set[str]:
    """``${credential:NAME}`` the example reads (outside comments)."""
    code = "\n".join(line.split("#", 1)[0] for line in EXAMPLE.read_text().splitlines())
    return set(re.findall(r"\$\{credential:([^}]+)\}", code))


def test_readme_the_unit_and_the_example_name_the_same_credentials() -> None:
    unit = set(re.findall(r"^LoadCredential=([^:]+):/etc/bland-notifier/credentials/\1$", UNIT.read_text(), re.M))
    loop = re.search(r"for name in (.*?); do", _production_block(), re.S)
    assert loop is not None
    readme = set(loop.group(1).replace("\\\n", " ").split())
    assert _example_credentials() == unit == readme == set(VALUES)


def test_the_example_header_command_works_as_written_and_strict_needs_the_credentials(tmp_path: Path) -> None:
    header = EXAMPLE.read_text().splitlines()[1]
    assert header == "# Check it with:  notifier check rules.example.toml"
    env = cli_env(None, tmp_path)
    env.pop("CREDENTIALS_DIRECTORY", None)
    result = run_cli(["check", "rules.example.toml"], env, ROOT)
    assert result.returncode == 0, result.stderr
    assert "rules.example.toml: valid, except what 8 unread credential(s) hold" in result.stdout
    assert "credentials not read: $CREDENTIALS_DIRECTORY is not set" in result.stderr
    assert "slack_tokens (targets.ops-slack.url)" in result.stderr
    assert "unchecked-credential" not in result.stdout  # the placeholder is masked like a value
    strict = run_cli(["check", "--strict", "rules.example.toml"], env, ROOT)
    assert strict.returncode == 78
    assert "source.api_key: ${credential:bland_api_key}: $CREDENTIALS_DIRECTORY is not set" in strict.stderr


def test_an_unread_credential_still_gets_everything_else_checked(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        None,
        '[targets.chat]\nurl = "nosuchservice://${credential:token}"\n'
        '[[rules]]\nname = "r"\nevents = ["call.appeared"]\ntargets = ["chat"]\n',
    )
    result = run_cli(["check", str(path)], cli_env(None, tmp_path), tmp_path)
    assert result.returncode == 78
    assert "targets.chat.url: Apprise has no nosuchservice:// service" in result.stderr


def test_readme_production_steps_run_as_written_in_a_temporary_root(tmp_path: Path) -> None:
    """Steps 2 and 3 (all but what needs systemd itself), with /etc and /opt moved under
    a temporary root and the credentials typed in as the loop asks for them."""
    root = tmp_path / "root"
    script = _production_block()
    kept = [
        line
        for line in script.splitlines()
        if not re.match(r"\s*(sudo )?(systemctl|journalctl|python3 -m venv|/opt/bland-notifier/bin/pip)", line)
        and "STATE_DIRECTORY=" not in line  # step 4 reads the running service's store
        and not re.match(r"sudo (python3|/opt)", line)
    ]
    text = "\n".join(kept)
    text = (
        text.replace("sudo ", "").replace("/etc/", f"{root}/etc/").replace("/opt/bland-notifier/bin/notifier", NOTIFIER)
    )
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    typed = "".join(
        VALUES[name] + "\n" for name in re.findall(r"\w+", _production_block().split("for name in")[1].split("; do")[0])
    )
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", text], input=typed, capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "notifier.toml: valid\n" in result.stdout  # --strict: every credential read and checked
    assert "credentials: bland_api_key, bland_org_id" in result.stdout
    credentials = root / "etc" / "bland-notifier" / "credentials"
    assert {p.name: p.read_text() for p in credentials.iterdir()} == VALUES  # no newline added
    assert {oct(p.stat().st_mode & 0o777) for p in credentials.iterdir()} == {"0o600"}
    assert (root / "etc" / "systemd" / "system" / "bland-notifier.service").read_text() == UNIT.read_text()
    for value in VALUES.values():
        assert value not in result.stdout + result.stderr


def test_check_and_run_refuse_a_storage_directory_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    path = write_config(tmp_path, None, storage=f'url = "sqlite:///{missing}/notifier.db"')
    env = cli_env(None, tmp_path)
    check = run_cli(["check", str(path)], env, tmp_path)
    assert check.returncode == 78
    assert f"storage.url: the directory {missing} does not exist" in check.stderr
    for command in (["run"], ["once"], ["db", "upgrade"]):
        result = run_cli(["--config", str(path), *command], env, tmp_path)
        assert result.returncode == 78, (command, result.stderr)
        assert "config error: storage.url: the directory" in result.stderr
    assert not (tmp_path / "no").exists()  # nothing was created on the way


def test_check_refuses_an_unwritable_storage_directory(tmp_path: Path) -> None:
    # Root may write anywhere a mode forbids, but not on a read-only mount: a bind mount
    # of the directory, read-only, in a namespace of the test's own.
    directory = tmp_path / "ro"
    directory.mkdir()
    path = write_config(tmp_path, None, storage=f'url = "sqlite:///{directory}/notifier.db"')
    script = f"mount --bind {directory} {directory} && mount -o remount,bind,ro {directory} && {NOTIFIER} check {path}"
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=cli_env(None, tmp_path), timeout=60
    )
    assert result.returncode == 78, result.stdout + result.stderr
    assert f"storage.url: {directory} is not writable by this user" in result.stderr


def test_check_says_when_the_listen_address_is_taken_or_impossible(tmp_path: Path) -> None:
    env = cli_env(None, tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = write_config(tmp_path, None, f'[http]\nlisten = "127.0.0.1:{port}"\n')
        taken = run_cli(["check", str(path)], env, tmp_path)
    assert taken.returncode == 0  # a running daemon holds it while its next config is checked
    assert f"warning: http.listen: 127.0.0.1:{port} is in use now" in taken.stderr
    path = write_config(tmp_path, None, '[http]\nlisten = "192.0.2.1:9464"\n')  # not an address of this host
    impossible = run_cli(["check", str(path)], env, tmp_path)
    assert impossible.returncode == 78
    assert "http.listen: cannot listen on 192.0.2.1:9464: Cannot assign requested address" in impossible.stderr


def test_errors_name_targets_by_name_and_rules_by_name_and_list_what_exists(tmp_path: Path) -> None:
    env = cli_env(None, tmp_path)

    def error(body: str) -> str:
        result = run_cli(["check", str(write_config(tmp_path, None, body))], env, tmp_path)
        assert result.returncode == 78, result.stdout
        assert result.stderr.count("\n") == 1, result.stderr  # one line, ours only
        return result.stderr

    assert "notifier.toml: targets.crm.secrett: unknown key (check the spelling)" in error(
        '[targets.ops]\nurl = "console://"\n[targets.crm]\nurl = "http://127.0.0.1:9/x"\nsecrett = "x"\n'
    )
    rules = '[targets.t]\nurl = "console://"\n[[rules]]\nname = "first"\nevents = ["*"]\ntargets = ["t"]\n'
    stuck = rules + '[[rules]]\nname = "stuck calls"\nevents = ["call.stuck_queued"]\ntargets = ["t"]\n'
    assert "rules[1].match[0] (rule 'stuck calls'): " in error(stuck + "match = ['nosuch = 1']\n")
    message = error(stuck + 'body = "{{ event.queued_for }}"\n')
    assert "rules[1].body (rule 'stuck calls'): for call.stuck_queued: no field 'queued_for' (event has " in message
    assert "queued_for_seconds, threshold_seconds" in message and "call has call_id, user_id" in message
    # Apprise's own complaints (which quote the URL's tokens) are not printed beside ours.
    slack = error('[targets.chat]\nurl = "slack://onlyonetoken1234"\n')
    assert "targets.chat.url: Apprise cannot use this slack:// URL" in slack and "onlyonetoken1234" not in slack


def test_check_masks_only_the_secret_parts_of_an_apprise_url(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        None,
        '[targets.mail]\nurl = "mailtos://alerts:pw-Secret-99@smtp.example.com:587?from=alerts@example.com&to=desk@example.com"\n'
        '[targets.chat]\nurl = "slack://T1AAAAAAA/B2BBBBBBB/C3CCCCCCCCCCCCCCCCCCCCCC"\n',
    )
    out = run_cli(["check", str(path)], cli_env(None, tmp_path), tmp_path).stdout
    assert (
        "mail (apprise): mailtos://alerts:**********@smtp.example.com:587?from=alerts@example.com&to=desk@example.com"
        in out
    )
    assert "chat (apprise): slack://**********/**********/**********\n" in out
    assert "pw-Secret-99" not in out and "T1AAAAAAA" not in out


def test_events_json_is_the_webhook_body_and_both_read_commands_say_what_they_show(
    tmp_path: Path, sim: BlandSimulator
) -> None:
    env = cli_env(sim, tmp_path)
    with Receiver() as rx:
        write_config(tmp_path, sim, announce_to(rx.url, events='"call.*"'))
        assert run_cli(["events"], env, tmp_path).returncode == 1  # no database yet: said, nothing created
        assert run_cli(["db", "upgrade"], env, tmp_path).returncode == 0
        assert run_cli(["events"], env, tmp_path).stdout == "no events recorded yet\n"
        assert run_cli(["deliveries"], env, tmp_path).stdout == "no deliveries recorded yet\n"
        now = time.time()
        started = wire_call("b", "IN_PROGRESS", created_ms=int((now - 0.7891234) * 1000), start_time=iso(now))
        sim.set_calls([wire_call("a"), started])
        assert run_cli(["once"], env, tmp_path).returncode == 0
        wait_for(lambda: len(rx.received) == 3)
    listed = json.loads(run_cli(["events", "--json"], env, tmp_path).stdout)
    assert listed == sorted((r.json for r in rx.received), key=lambda body: body["data"]["id"])
    durations = [v for e in listed for k, v in e["data"].items() if k.endswith("_seconds") and v is not None]
    assert durations and all(round(v, 3) == v for v in durations), durations  # milliseconds, no float noise
    text = run_cli(["events", "--limit", "2"], env, tmp_path).stdout.splitlines()
    assert text[0].split() == ["detected", "(UTC)", "id", "type", "call", "detail"]
    assert len(text) == 4 and text[-1] == "(2 shown, the newest; --limit N for more, --limit 0 for all)"
    assert run_cli(["events", "--type", "source.*"], env, tmp_path).stdout == "no events match\n"
    deliveries = run_cli(["deliveries"], env, tmp_path).stdout.splitlines()
    assert deliveries[0].split() == ["id", "status", "created", "(UTC)", "target", "rule", "event", "attempts"]
    assert len(deliveries) == 4 and all(
        " sent " in line and " crm " in line and " all " in line for line in deliveries[1:]
    )
    assert run_cli(["deliveries", "--status", "dead"], env, tmp_path).stdout == "no dead deliveries\n"


def test_a_refused_connection_reads_the_same_from_the_poller_and_a_webhook(tmp_path: Path, sim: BlandSimulator) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{closed.getsockname()[1]}"  # bound, never listening: refused
        env = cli_env(sim, tmp_path)
        write_config(tmp_path, sim, announce_to(f"{refused}/hook"))
        sim.set_calls([wire_call("a")])
        assert run_cli(["once"], env, tmp_path).returncode == 0
        [delivery] = json.loads(run_cli(["deliveries", "--json"], env, tmp_path).stdout)
        assert delivery["last_error"] == "cannot connect: Connection refused"
        config = tmp_path / "notifier.toml"
        config.write_text(config.read_text().replace(sim.base_url, refused))
        assert run_cli(["once"], env, tmp_path).returncode == 1
        status = json.loads(run_cli(["status", "--json"], env, tmp_path).stdout)
    assert status["sources"][0]["last_error"] == "GET /v1/calls/active: cannot connect: Connection refused"


def test_a_rule_templates_its_digest(tmp_path: Path, sim: BlandSimulator) -> None:
    rule = (
        '[targets.console]\nurl = "console://"\nmin_interval = "0s"\n'
        '[[rules]]\nname = "new calls"\nevents = ["call.appeared"]\ntargets = ["console"]\ndigest_after = 2\n'
        'title = "New: {{ call.to }}"\n'
    )
    env = cli_env(sim, tmp_path)
    write_config(tmp_path, sim, "[detect]\nannounce_existing = true\n" + rule)
    sim.set_calls([wire_call(f"c{i}", to=f"+1310555000{i}") for i in range(3)])
    out = run_cli(["once"], env, tmp_path).stdout
    assert "new calls: 3 call.appeared\n" in out  # the default: the rule and the counts
    assert "• New: +13105550000\n" in out  # each line the title the event would have had
    (tmp_path / "notifier.db").unlink()
    templated = rule + (
        'digest_title = "{{ events | length }} new calls on {{ rule }}"\n'
        'digest_body = "{% for e in events %}{{ e.call.to }} {% endfor %}"\n'
    )
    write_config(tmp_path, sim, "[detect]\nannounce_existing = true\n" + templated)
    out = run_cli(["once"], env, tmp_path).stdout
    assert "3 new calls on new calls\n  | +13105550000 +13105550001 +13105550002\n" in out
    broken = write_config(tmp_path, sim, templated.replace("e.call.to", "e.call.too"))
    result = run_cli(["check", str(broken)], env, tmp_path)
    assert result.returncode == 78
    assert "rules[0].digest_body (rule 'new calls'): for a digest of call.appeared: no field 'too'" in result.stderr


def test_every_default_template_renders_for_every_type_and_format_with_unknown_values_null() -> None:
    from notifier.model import EVENT_TYPES
    from notifier.templates import HTML, MARKDOWN, SLACK, TEXT, render, render_digest, sample_event

    for fmt in (TEXT, MARKDOWN, SLACK, HTML):
        for nulls in (False, True):
            samples = [sample_event(t, nulls) for t in EVENT_TYPES]
            for event in samples:
                title, body = render(None, event, fmt)
                assert title and body and "failed on this event" not in body, (event.type, nulls, fmt)
            title, body = render_digest(None, samples, fmt)
            assert "1 call" in title and body.count("•") == len(samples), (fmt, title)
    ended = render(None, sample_event("call.disappeared", nulls=True))[1]
    assert ended.startswith("Outcome: not asked (fetch_details = true asks Bland)\n"), ended


def test_check_never_shows_a_credential_or_a_key_in_an_apprise_url(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    values = {"ntfy": "tk_NTFYsecret4242", "smtp": "p#ss-Secret77", "pw": "PW@with/slash:colon"}
    for name, value in values.items():
        (creds / name).write_text(value)
    path = write_config(
        tmp_path,
        None,
        '[targets.push]\nurl = "ntfy://ops-alerts?token=${credential:ntfy}"\n'
        '[targets.mail]\nurl = "mailtos://alerts:${credential:smtp}@smtp.example.com:587?from=a@example.com"\n'
        '[targets.mail2]\nurl = "mailtos://alerts:${credential:pw}@smtp.example.com:587?from=a@example.com"\n'
        '[targets.api]\nurl = "json://hooks.example.com/in?-X-Api-Key=abcdefgh123"\n'
        '[targets.m3]\nurl = "mailtos://me:SECRETpw99@smtp.example.com?pass=QUERYPASS55&to=a@b.com"\n',
    )
    result = run_cli(["check", str(path)], cli_env(None, tmp_path, CREDENTIALS_DIRECTORY=str(creds)), tmp_path)
    assert result.returncode == 0, result.stderr
    for secret in (*values.values(), "abcdefgh123", "SECRETpw99", "QUERYPASS55", "Secret77"):
        assert secret not in result.stdout + result.stderr
    assert "mail (apprise): mailtos://alerts:**********@smtp.example.com:587?from=a@example.com\n" in result.stdout


def test_a_whole_url_from_an_unread_credential_is_not_an_error_and_is_said_first(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        None,
        '[targets.t]\nurl = "${credential:whole_url}"\n[http]\nlisten = "[::1]:0"\n'.replace(":0", ":19471"),
    )
    result = run_cli(["check", str(path)], cli_env(None, tmp_path), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "whole_url (targets.t.url)" in result.stderr and "unchecked-credential" not in result.stdout
    with socket.socket(socket.AF_INET6) as probe:  # IPv6 works in run as in check
        probe.bind(("::1", 0))
        port = probe.getsockname()[1]
    write_config(tmp_path, None, f'[http]\nlisten = "[::1]:{port}"\n')
    assert run_cli(["check"], cli_env(None, tmp_path), tmp_path).returncode == 0
    bare = write_config(tmp_path, None, '[http]\nlisten = "::1:9464"\n', name="bare.toml")
    refused = run_cli(["check", str(bare)], cli_env(None, tmp_path), tmp_path)
    assert refused.returncode == 78 and "an IPv6 address goes in brackets: [::1]:9464" in refused.stderr


def test_a_store_below_a_closed_directory_is_said_plainly_not_a_traceback(tmp_path: Path) -> None:
    """As a user who cannot enter a directory above the store (root can enter anything:
    a forked child takes nobody's uid, the code under test already imported)."""
    from notifier.store.sqlite import location_problem

    closed = tmp_path / "closed"
    (closed / "inner").mkdir(parents=True)
    closed.chmod(0o700)
    tmp_path.chmod(0o755)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child's result goes through the pipe)
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, (location_problem(closed / "inner" / "n.db") or "").encode())
        finally:
            os._exit(0)
    os.close(write)
    said = os.read(read, 4096).decode()
    os.waitpid(child, 0)
    assert said == f"{closed / 'inner'} cannot be reached by this user (uid 65534): a directory above it is closed"
