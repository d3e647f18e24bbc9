"""A daemon with its console and API on loopback, for the API and browser tests."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from notifier.simulator import BlandSimulator
from tests.conftest import DaemonProcess, cli_env, wait_for, write_config
from tests.receivers import Receiver
from tests.test_service import free_port

TOKEN = "console-token-0123456789abcdef"


@dataclass
class Web:
    url: str
    token: str | None
    daemon: DaemonProcess

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        """(status, decoded JSON or text, headers) of one request; errors are answers too."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=dict(headers or {}))
        if data is not None:
            request.add_header("content-type", "application/json")
        if token is not None:
            request.add_header("authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, raw, got = response.status, response.read(), response.headers
        except urllib.error.HTTPError as exc:
            status, raw, got = exc.code, exc.read(), exc.headers
        lowered = {name.lower(): value for name, value in got.items()}
        kind = lowered.get("content-type", "")
        return status, json.loads(raw) if raw and "json" in kind else raw.decode(), lowered

    def get(self, path: str) -> Any:
        status, body, _ = self.call("GET", path)
        assert status == 200, (path, status, body)
        return body


@contextmanager
def web_daemon(
    directory: Path,
    sim: BlandSimulator,
    receiver: Receiver,
    *,
    token: str | None = TOKEN,
    events: str = '"call.appeared"',
    target_extra: str = "",
    storage: str = 'url = "sqlite:///notifier.db"',
    name: str = "notifier.toml",
    extra: str = "",
) -> Iterator[Web]:
    """A daemon announcing ``events`` to ``receiver``, its token read as a systemd
    credential, as README tells operators to set it."""
    port = free_port()
    credentials = directory / "credentials"
    credentials.mkdir(exist_ok=True)
    token_line = ""
    if token is not None:
        (credentials / "http_token").write_text(token + "\n")
        token_line = 'token = "${credential:http_token}"\n'
    write_config(
        directory,
        sim,
        f'[detect]\nannounce_existing = true\n[http]\nlisten = "127.0.0.1:{port}"\n{token_line}'
        f'[targets.crm]\nurl = "{receiver.url}"\nmin_interval = "0s"\n{target_extra}'
        f'[[rules]]\nname = "announce"\nevents = [{events}]\ntargets = ["crm"]\n{extra}',
        storage=storage,
        name=name,
    )
    env = cli_env(sim, directory, CREDENTIALS_DIRECTORY=str(credentials))
    daemon = DaemonProcess(directory, env, ["--config", str(directory / name), "run"])
    web = Web(f"http://127.0.0.1:{port}", token, daemon)

    def answering() -> bool:
        try:
            return web.call("GET", "/api/v1/status")[0] == 200
        except OSError:
            return False

    wait_for(answering)
    yield web
