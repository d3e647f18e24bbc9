"""The operator's first hour: README's production steps run as written (in a temporary
root), the example and the unit agree on credentials, and errors say what to fix."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import cli_env, run_cli, write_config
from tests.test_config import WHSEC

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "rules.example.toml"
UNIT = ROOT / "systemd" / "bland-notifier.service"
NOTIFIER = str(Path(sys.executable).parent / "notifier")
#: Values of the right shape for each of the example's credentials (Apprise checks them).
VALUES = {
    "bland_api_key": "sk-example-key",
    "bland_org_id": "org-example",
    "slack_tokens": "T1AAAAAAA/B2BBBBBBB/C3CCCCCCCCCCCCCCCCCCCCCC",
    "smtp_password": "smtp-pass-123",
    "crm_webhook_secret": WHSEC,
    "pagerduty_integration_key": "integration0123456789abcdef0123456",
    "pagerduty_api_key": "apikey0123456789",
}


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
    assert "rules.example.toml: valid, except what 7 unread credential(s) hold" in result.stdout
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
