"""The JSON API of a running daemon: reads, changes behind the token, errors, the
OpenAPI document (and a fuzz run from it), a standby that serves it read-only."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from notifier.simulator import BlandSimulator, wire_call
from tests.conftest import cli_env, from_store, wait_for
from tests.receivers import Receiver
from tests.web import TOKEN, Web, web_daemon


def campaign() -> list[dict[str, str]]:
    """Made when a test starts: the queue times count from then."""
    return [
        wire_call("q-old", created_ms=int((time.time() - 300) * 1000), to="+13105550101", pathway_id="pw-7"),
        wire_call("q-new", created_ms=int((time.time() - 30) * 1000), to="+13105550102", pathway_id="pw-7"),
        wire_call("q-mid", created_ms=int((time.time() - 120) * 1000), to="+13105550103", pathway_id="pw-9"),
        wire_call("p-1", "IN_PROGRESS", created_ms=int((time.time() - 200) * 1000), to="+13105550104"),
    ]


@pytest.fixture
def receiver() -> Receiver:
    with Receiver() as r:
        yield r


@pytest.fixture
def web(tmp_path: Path, sim: BlandSimulator, receiver: Receiver) -> Web:
    sim.set_calls(campaign())
    with web_daemon(tmp_path, sim, receiver) as running:
        wait_for(lambda: len(receiver.received) >= 4)
        yield running


def test_reads_status_calls_and_events(web: Web) -> None:
    status = web.get("/api/v1/status")
    assert status["role"] == "leader" and status["read_only_reason"] is None
    assert status["leader"]["pid"] == web.daemon.pid
    assert status["sources"][0]["active_calls"] == {"QUEUED": 3, "IN_PROGRESS": 1}

    queued = web.get("/api/v1/calls?status=QUEUED")
    assert queued["total"] == 3
    assert [c["call_id"] for c in queued["items"]] == ["q-old", "q-mid", "q-new"]  # the longest queued first
    assert 290 < queued["items"][0]["queued_seconds"] < 400 and queued["items"][0]["pathway_id"] == "pw-7"
    page = web.get("/api/v1/calls?status=QUEUED&limit=1&offset=1")
    assert page["total"] == 3 and [c["call_id"] for c in page["items"]] == ["q-mid"]
    assert web.get("/api/v1/calls")["total"] == 4

    events = web.get("/api/v1/events?type=call.appeared")["items"]
    assert sorted(e["data"]["call"]["call_id"] for e in events) == ["p-1", "q-mid", "q-new", "q-old"]
    assert all(e["type"] == "call.appeared" and e["source"] == "default" for e in events)
    started = web.get("/api/v1/events?type=call.started")["items"]
    assert [e["data"]["call"]["call_id"] for e in started] == ["p-1"]
    assert web.get("/api/v1/events?type=call.disappeared")["items"] == []
    by_call = web.get("/api/v1/events?call_id=q-mid")["items"]
    assert {e["data"]["call"]["call_id"] for e in by_call} == {"q-mid"} and len(by_call) < len(events) + len(started)
    found = web.get("/api/v1/events?q=%2B13105550103&type=call.appeared")["items"]  # the number, anywhere
    assert [e["data"]["call"]["call_id"] for e in found] == ["q-mid"]
    assert web.get("/api/v1/events?since=2999-01-01T00:00:00Z")["items"] == []
    assert len(web.get("/api/v1/events?limit=2")["items"]) == 2

    deliveries = web.get("/api/v1/deliveries?status=sent")["items"]
    assert len(deliveries) == 4 and all(d["attempt_log"][0]["outcome"] == "sent" for d in deliveries)
    assert deliveries[0]["id"] > deliveries[-1]["id"]  # newest first


def test_a_silence_needs_the_token_and_acts_on_the_next_delivery(
    web: Web, sim: BlandSimulator, receiver: Receiver
) -> None:
    body = {"matchers": ['call_id = "c-quiet"'], "duration": "1h", "comment": "maintenance on this line"}
    status, answer, headers = web.call("POST", "/api/v1/silences", body)
    assert status == 401 and "Bearer" in answer["detail"] and headers["www-authenticate"].startswith("Bearer")
    assert web.call("POST", "/api/v1/silences", body, token=TOKEN + "x")[0] == 401
    assert web.call("POST", "/api/v1/silences", body, token=TOKEN[:-1])[0] == 401
    status, made, _ = web.call("POST", "/api/v1/silences", body, token=TOKEN)
    assert status == 201 and made["state"] == "active" and made["author"] == "api"
    assert [s["id"] for s in web.get("/api/v1/silences")] == [made["id"]]

    sim.set_calls([*campaign(), wire_call("c-quiet"), wire_call("c-loud")])
    wait_for(lambda: any(r.json["data"]["call"]["call_id"] == "c-loud" for r in receiver.received))
    wait_for(lambda: any(d.status == "silenced" for d in from_store(web.daemon.directory, lambda s: s.deliveries())))
    assert not any(r.json["data"]["call"]["call_id"] == "c-quiet" for r in receiver.received)
    quieted = web.get("/api/v1/deliveries?status=silenced")["items"]
    assert [d["quieted_by"] for d in quieted] == [made["id"]]

    assert web.call("DELETE", f"/api/v1/silences/{made['id']}")[0] == 401
    assert web.call("DELETE", f"/api/v1/silences/{made['id']}", token=TOKEN)[0] == 204
    status, answer, _ = web.call("DELETE", f"/api/v1/silences/{made['id']}", token=TOKEN)
    assert status == 404 and made["id"] in answer["detail"]
    assert web.get("/api/v1/silences") == [] and web.get("/api/v1/silences?all=true")[0]["state"] == "expired"
    assert TOKEN not in web.daemon.log


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"matchers": ["nope"], "duration": "1h", "comment": "x1"}, "is not FIELD OP VALUE"),
        ({"matchers": ['colour = "red"'], "duration": "1h", "comment": "x1"}, "no event has a field 'colour'"),
        ({"matchers": ["rule =~ .*"], "duration": "1h", "comment": "x1"}, "hold for every delivery"),
        ({"matchers": ['rule = "a"'], "duration": "soon", "comment": "x1"}, "soon"),
        ({"matchers": ['rule = "a"'], "comment": "x1"}, "give duration"),
        ({"matchers": ['rule = "a"'], "duration": "1h", "ends_at": "2999-01-01T00:00:00Z", "comment": "x"}, "not both"),
        ({"matchers": ['rule = "a"'], "duration": "1h", "comment": "  "}, "say why"),
        ({"matchers": ['rule = "a"'], "ends_at": "2000-01-01T00:00:00Z", "comment": "x1"}, "in the past"),
        ({"matchers": [], "duration": "1h", "comment": "x1"}, "matchers"),
        ({"matchers": ['rule = "a"'], "duration": "1h", "comment": "x1", "colour": 1}, "colour"),
        ({"matchers": 'rule = "a"', "duration": "1h", "comment": "x1"}, "matchers"),
    ],
)
def test_a_malformed_silence_is_refused_with_the_reason(web: Web, body: dict[str, object], reason: str) -> None:
    status, answer, _ = web.call("POST", "/api/v1/silences", body, token=TOKEN)
    malformed = body["matchers"] in ([], 'rule = "a"') or "colour" in body  # not the schema: 400; else 422
    assert status == (400 if malformed else 422), answer
    assert reason in answer["detail"] + str(answer.get("extra", "")), answer


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/api/v1/events?limit=0", "limit"),
        ("/api/v1/events?limit=abc", "limit"),
        ("/api/v1/events?type=call.exploded", "Invalid enum value"),
        ("/api/v1/events?since=yesterday", "since"),
        ("/api/v1/deliveries?status=lost", "status"),
        ("/api/v1/calls?offset=-1", "offset"),
    ],
)
def test_malformed_queries_are_400_with_the_reason(web: Web, path: str, reason: str) -> None:
    status, answer, _ = web.call("GET", path)
    assert status == 400 and reason in answer["detail"] + str(answer.get("extra", "")), answer


def test_redeliver_sends_a_dead_delivery_again(tmp_path: Path, sim: BlandSimulator, receiver: Receiver) -> None:
    receiver.respond(500)
    sim.set_calls([wire_call("c-1")])
    extra = 'retry_initial = "100ms"\nretry_max = "100ms"\ngive_up_after = "300ms"\n'
    with web_daemon(tmp_path, sim, receiver, target_extra=extra) as web:
        dead = wait_for(lambda: web.get("/api/v1/deliveries?status=dead")["items"])
        tries = len(receiver.received)
        status, answer, _ = web.call("POST", f"/api/v1/deliveries/{dead[0]['id']}/redeliver", token=TOKEN)
        assert status == 200 and answer["status"] == "pending" and answer["attempts"] == 0
        status, answer, _ = web.call("POST", f"/api/v1/deliveries/{dead[0]['id']}/redeliver", token=TOKEN)
        assert status == 409 and "not dead" in answer["detail"]
        receiver.respond(200)
        wait_for(lambda: web.get("/api/v1/deliveries?status=sent")["items"])
        assert len(receiver.received) > tries
        assert web.call("POST", "/api/v1/deliveries/999999/redeliver", token=TOKEN)[0] == 404
        assert web.call("POST", f"/api/v1/deliveries/{dead[0]['id']}/redeliver")[0] == 401


def test_without_a_token_changes_are_403_and_reads_work(
    tmp_path: Path, sim: BlandSimulator, receiver: Receiver
) -> None:
    sim.set_calls([wire_call("c-1")])
    with web_daemon(tmp_path, sim, receiver, token=None) as web:
        body = {"matchers": ['rule = "a"'], "duration": "1h", "comment": "x1"}
        status, answer, _ = web.call("POST", "/api/v1/silences", body, token="anything-at-all-here")
        assert status == 403 and "no [http] token" in answer["detail"]
        assert web.get("/api/v1/status")["read_only_reason"].startswith("changes are off")
        assert wait_for(lambda: web.get("/api/v1/calls")["total"]) == 1


def test_every_route_is_documented_and_every_documented_route_exists(web: Web) -> None:
    from notifier.web import make_app
    from notifier.web.api import WebContext

    document = web.get("/api/v1/openapi.json")
    assert document["openapi"].startswith("3.1")
    documented = {(path, method.upper()) for path, item in document["paths"].items() for method in item}
    app = make_app(WebContext(None, None, None))  # type: ignore[arg-type]  # routes only; nothing is served
    existing = {
        (route.path.replace(":int", "").replace(":str", ""), method)
        for route in app.routes
        if route.path.startswith("/api/v1/")
        and not any(h.fn.__module__.startswith("litestar._openapi") for h in route.route_handlers)  # its own
        for method in route.methods
        if method not in ("OPTIONS", "HEAD")
    }
    assert documented == existing
    assert documented >= {
        ("/api/v1/status", "GET"),
        ("/api/v1/calls", "GET"),
        ("/api/v1/events", "GET"),
        ("/api/v1/deliveries", "GET"),
        ("/api/v1/silences", "GET"),
        ("/api/v1/silences", "POST"),
        ("/api/v1/silences/{silence_id}", "DELETE"),
        ("/api/v1/deliveries/{delivery_id}/redeliver", "POST"),
    }
    for path, method in documented:  # and each one answers (a guard or 4xx, never 404 for the route)
        concrete = path.replace("{silence_id}", "sil_x").replace("{delivery_id}", "1")
        status = web.call(method, concrete, {} if method == "POST" else None)[0]
        assert status != 404 or "{" in path, (path, method, status)


def test_security_headers_and_no_cors(web: Web) -> None:
    for path in ("/", "/api/v1/status", "/static/console.js", "/metrics"):
        status, _, headers = web.call("GET", path, headers={"origin": "https://evil.example"})
        assert status == 200, path
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
        assert not any(name.lower().startswith("access-control-") for name in headers), path
    status, _, headers = web.call(
        "OPTIONS",
        "/api/v1/silences",
        headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
    )
    assert not any(name.lower().startswith("access-control-allow") for name in headers)


def test_a_standby_serves_the_api_read_only(tmp_path: Path, sim: BlandSimulator, receiver: Receiver) -> None:
    sim.set_calls(campaign())
    with web_daemon(tmp_path, sim, receiver) as leader:
        wait_for(lambda: leader.get("/api/v1/calls")["total"] == 4)
        with web_daemon(tmp_path, sim, receiver, name="standby.toml") as standby:
            status = standby.get("/api/v1/status")
            assert status["role"] == "standby" and "standby" in status["read_only_reason"]
            assert status["leader"]["pid"] == leader.daemon.pid
            assert standby.get("/api/v1/calls")["total"] == 4  # from the shared store
            body = {"matchers": ['rule = "a"'], "duration": "1h", "comment": "x1"}
            answer = standby.call("POST", "/api/v1/silences", body, token=TOKEN)
            assert answer[0] == 403 and "standby" in answer[1]["detail"]
            assert "standby" in standby.call("GET", "/")[1]


def test_the_api_survives_a_fuzz_run_from_its_own_document(web: Web) -> None:
    """schemathesis, from the served document: every operation, generated input (valid
    and not), the token sent: no 500s; answers match the documented schema, status codes
    and content types; invalid input is refused."""
    schema = schemathesis.openapi.from_url(web.url + "/api/v1/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(case=operation.as_strategy())
        def fuzz(case: schemathesis.Case) -> None:
            # A schema cannot say what a matcher is: well-formed input that is no silence is
            # refused with 422 (and asserted below), not accepted as the check expects.
            case.call_and_validate(
                headers={"authorization": f"Bearer {TOKEN}"}, timeout=10, excluded_checks=[positive_data_acceptance]
            )

        try:
            fuzz()
        except Exception as exc:  # every operation's failure, not only the first
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert not failures, "\n\n".join(failures)
    assert "Traceback" not in web.daemon.log and "web request failed" not in web.daemon.log, web.daemon.log[-3000:]


def test_the_token_as_a_credential_is_checked(tmp_path: Path, sim: BlandSimulator) -> None:
    from tests.conftest import run_cli, write_config
    from tests.test_service import free_port

    (tmp_path / "credentials").mkdir()
    (tmp_path / "credentials" / "http_token").write_text("short\n")
    write_config(tmp_path, sim, f'[http]\nlisten = "127.0.0.1:{free_port()}"\ntoken = "${{credential:http_token}}"\n')
    result = run_cli(["check"], cli_env(sim, tmp_path, CREDENTIALS_DIRECTORY=str(tmp_path / "credentials")), tmp_path)
    assert result.returncode == 78 and "http.token: at least 16 ASCII characters" in result.stderr
    assert "short" not in result.stderr.replace("shorter", "")


def test_a_store_that_cannot_answer_is_503_with_the_reason(tmp_path: Path) -> None:
    from litestar.testing import TestClient

    from notifier.listener import Standing
    from notifier.store import Store
    from notifier.web import make_app
    from notifier.web.api import WebContext

    store = Store(f"sqlite:///{tmp_path}/empty.db")  # made, but no tables yet (before db upgrade)
    try:
        app = make_app(WebContext(store, lambda: Standing("leader"), time.time, TOKEN))
        with TestClient(app) as client:
            for path in ("/api/v1/status", "/api/v1/calls", "/api/v1/events"):
                answer = client.get(path)
                assert answer.status_code == 503, path
                assert "store unavailable" in answer.json()["detail"] and "no such table" in answer.json()["detail"]
                assert answer.headers["retry-after"] == "5"
            page = client.get("/")  # the console: a page saying so, which reloads itself
            assert page.status_code == 503 and page.headers["content-type"].startswith("text/html")
            assert "store unavailable" in page.text and "no such table" in page.text and page.headers["refresh"] == "5"
    finally:
        store.close()


def test_input_the_app_cannot_take_is_refused_in_json_with_the_headers(web: Web) -> None:
    import socket

    for path, code, reason in [
        ("/api/v1/events?q=%00", 400, "NUL"),
        ("/api/v1/calls?source=a%00b", 400, "NUL"),
        ("/%ff", 400, "not UTF-8"),
        ("/static/" + "a" * 5000, 414, "too long"),
        ("/api/v1/matchers?matcher=" + "x" * 1001, 400, "length <= 1000"),
    ]:
        status, answer, headers = web.call("GET", path)
        assert status == code and reason in answer["detail"] + str(answer.get("extra")), (path, status, answer)
        assert headers["x-frame-options"] == "DENY"
    port = int(web.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /api/v1/silences HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.0 400")
    deep = "(" * 495 + ")" * 495  # past what Python's regex compiler takes in a thread: an answer, not a 500
    check = web.get(f"/api/v1/matchers?matcher=call_id%3D~{deep}")
    assert check["ok"] is False and "too complex" in check["error"]
    body = {"matchers": [f"call_id=~{deep}"], "duration": "1h", "comment": "deep"}
    assert web.call("POST", "/api/v1/silences", body, token=TOKEN)[0] == 422
    body = {"matchers": ['rule = "a"'], "duration": "1h", "comment": "nul\u0000here"}
    assert web.call("POST", "/api/v1/silences", body, token=TOKEN)[0] == 400
    assert "web request failed" not in web.daemon.log and "Traceback" not in web.daemon.log


def test_head_answers_as_get_without_a_body(web: Web) -> None:
    for path in ("/", "/api/v1/status"):
        status, body, headers = web.call("HEAD", path)
        assert status == 200 and body == "" and int(headers["content-length"]) > 100, path


def test_a_loopback_listener_answers_loopback_host_names_only(web: Web) -> None:
    """A web page the operator visits cannot read the API through a name rebound to 127.0.0.1."""
    status, answer, _ = web.call("GET", "/api/v1/calls", headers={"host": "attacker.example:80"})
    assert status == 421 and "loopback names only" in answer["detail"]
    for host in ("localhost", "LOCALHOST:9464", "127.0.0.1:1", "[::1]:9464"):
        assert web.call("GET", "/api/v1/status", headers={"host": host})[0] == 200, host
    assert web.call("GET", "/healthz", headers={"host": "attacker.example"})[0] == 200  # monitoring as it was


def test_aborted_requests_leave_nothing_behind(web: Web) -> None:
    import socket
    import struct

    port = int(web.url.rsplit(":", 1)[1])
    for index in range(60):  # each closes (half with a reset) before the page is read
        sock = socket.create_connection(("127.0.0.1", port))
        if index % 2:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(b"GET /?calls_status=all HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        sock.close()
    wait_for(lambda: web.call("GET", "/api/v1/status")[0] == 200)
    assert web.daemon.stop() == 0
    assert "Task was destroyed" not in web.daemon.log and "Traceback" not in web.daemon.log


def test_health_checks_answer_while_the_console_is_busy_or_trickled(web: Web) -> None:
    import socket
    import threading
    import urllib.request

    port = int(web.url.rsplit(":", 1)[1])
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                urllib.request.urlopen(web.url + "/?calls_status=all", timeout=5).read()
            except OSError:
                pass

    # Six clients load pages nonstop, six more trickle headers: 12 of the listener's 16
    # connections, and more than the console's 4 slots.
    workers = [threading.Thread(target=hammer, daemon=True) for _ in range(6)]
    trickles = []
    for _ in range(6):  # slowloris: a header line every 2 s, never the end of the headers
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /api/v1/status HTTP/1.1\r\n")
        trickles.append(sock)
    for worker in workers:
        worker.start()
    answered = 0
    try:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            for sock in trickles:
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    pass  # dropped at the headers' deadline, as it should be
            with urllib.request.urlopen(web.url + "/healthz", timeout=3) as response:
                answered += response.status == 200
            time.sleep(0.5)
    finally:
        stop.set()
        for sock in trickles:
            sock.close()
        for worker in workers:
            worker.join(10)
    assert answered >= 10


def test_unknown_paths_are_a_json_404(web: Web) -> None:
    for path in ("/api/v1/nope", "/api/v1/a/b", "/nope"):
        status, answer, headers = web.call("GET", path)
        assert status == 404 and "no such path" in answer["detail"] and headers["content-type"] == "application/json"


def test_check_says_where_the_console_listens_and_warns_off_loopback(tmp_path: Path, sim: BlandSimulator) -> None:
    from tests.conftest import run_cli, write_config
    from tests.test_service import free_port

    port = free_port()
    (tmp_path / "credentials").mkdir()
    (tmp_path / "credentials" / "http_token").write_text(TOKEN + "\n")
    env = cli_env(sim, tmp_path, CREDENTIALS_DIRECTORY=str(tmp_path / "credentials"))
    write_config(tmp_path, sim, f'[http]\nlisten = "0.0.0.0:{port}"\ntoken = "${{credential:http_token}}"\n')
    result = run_cli(["check"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"http: 0.0.0.0:{port}: /metrics, /healthz, the console and the API; changes need the token" in result.stdout
    assert "http.listen: 0.0.0.0 is reachable from other hosts" in result.stderr and TOKEN not in result.stdout
    write_config(tmp_path, sim, f'[http]\nlisten = "127.0.0.1:{port}"\n')
    result = run_cli(["check"], env, tmp_path)
    assert "; read-only (no token)" in result.stdout and "reachable from other hosts" not in result.stderr


def test_the_console_summary_of_a_condition_reads_as_numbers() -> None:
    from notifier.model import Event
    from notifier.web.console import summary

    data = {"condition": "queue backlog", "group": {"pathway_id": "pw-7"}, "value": 5.0}
    assert summary(Event("e1", "condition.resolved", 0.0, data)) == "queue backlog pathway_id=pw-7 value 5"
    firing = Event("e2", "condition.firing", 0.0, {**data, "value": 10.0, "threshold": 5.0})
    assert summary(firing) == "queue backlog pathway_id=pw-7 value 10 (threshold 5)"
