"""The console in a real browser: Debian's chromium driven by Playwright, against a
running daemon, a simulated campaign and a webhook receiver on loopback."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from notifier.simulator import BlandSimulator, wire_call
from tests.conftest import wait_for
from tests.receivers import Receiver
from tests.web import TOKEN, web_daemon

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
XSS = "<img src=x onerror=alert(1)>"
ago = lambda seconds: int((time.time() - seconds) * 1000)  # noqa: E731


def campaign() -> list[dict[str, str]]:
    """Made when a test starts: the queue times count from then."""
    return [
        wire_call("q-old", created_ms=ago(540), to="+13105550101", pathway_id="pw-7", objective="Book the follow-up"),
        wire_call("q-mid", created_ms=ago(200), to="+13105550102", pathway_id="pw-7", objective=XSS),
        wire_call("q-new", created_ms=ago(20), to="+13105550103", pathway_id="pw-9"),
        wire_call("p-1", "IN_PROGRESS", created_ms=ago(100), to="+13105550104", pathway_id="pw-9"),
    ]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "Debian's chromium is needed (apt-get install chromium; .ci/run installs it)"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    dialogs: list[str] = []
    opened.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    gone = "net::ERR_CONNECTION_REFUSED"  # (a test that stops the daemon under the page)
    opened.on(
        "console", lambda message: message.type == "error" and gone not in message.text and errors.append(message.text)
    )
    try:
        yield opened
        assert dialogs == [], "a dialog opened: something ran that should not"
        assert errors == [], errors
    finally:
        context.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def set_token(page: Page) -> None:
    page.get_by_label("API token").fill(TOKEN)
    page.get_by_label("API token").press("Enter")
    expect(page.locator("#flash")).to_have_text("token set for this tab")


def test_the_console_lists_the_calls_oldest_queued_first(
    tmp_path: Path, sim: BlandSimulator, receiver: Receiver, page: Page
) -> None:
    sim.set_calls(campaign())
    with web_daemon(tmp_path, sim, receiver) as web:
        wait_for(lambda: web.get("/api/v1/calls")["total"] == 4)
        page.goto(web.url + "/")
        expect(page.locator("#role")).to_contain_text("leader")
        rows = page.locator("#calls tbody tr")
        expect(rows).to_have_count(3)  # the queue first
        assert [rows.nth(i).locator("td").first.inner_text() for i in range(3)] == ["q-old", "q-mid", "q-new"]
        expect(rows.first).to_contain_text("9m")  # queued for 9 minutes
        expect(page.locator("#calls nav.filters")).to_contain_text("IN_PROGRESS (1)")
        page.get_by_role("link", name="all", exact=True).first.click()
        expect(page.locator("#calls tbody tr")).to_have_count(4)
        expect(page.locator("#sources")).to_contain_text("reachable")

        sim.set_calls([*campaign(), wire_call("q-late", created_ms=ago(1))])  # the page refreshes itself
        expect(page.locator("#calls tbody tr")).to_have_count(5, timeout=15_000)
        expect(page.locator("#events")).to_contain_text("q-late", timeout=15_000)


def test_a_value_from_bland_is_shown_as_text_and_runs_nothing(
    tmp_path: Path, sim: BlandSimulator, receiver: Receiver, page: Page
) -> None:
    hostile = wire_call(f'"><script>alert(2)</script>{XSS}', created_ms=ago(30), pathway_id=XSS, objective=XSS)
    sim.set_calls([*campaign(), hostile])
    with web_daemon(tmp_path, sim, receiver) as web:
        wait_for(lambda: web.get("/api/v1/calls")["total"] == 5)
        page.goto(web.url + "/?calls_status=all")
        expect(page.locator("#calls")).to_contain_text(XSS)
        assert page.locator("#calls td", has_text=XSS).count() >= 2  # objective and pathway, as characters
        assert page.locator("img").count() == 0 and page.locator("main script").count() == 0
        page.locator("#events button[data-like]").first.click()  # the payload travels into the form as text
        quoted = hostile["call_id"].replace('"', '\\"')  # the matcher syntax's own escape
        expect(page.locator("#s-matchers")).to_have_value(f'type = "call.appeared"\ncall_id = "{quoted}"')
        page.wait_for_timeout(6000)  # a refresh swaps the sections in: still nothing runs
        assert page.locator("img").count() == 0
    # (the page fixture asserts no dialog opened and no script error happened)


def test_a_silence_made_in_the_form_stops_the_next_matching_delivery(
    tmp_path: Path, sim: BlandSimulator, receiver: Receiver, page: Page
) -> None:
    sim.set_calls(campaign())
    with web_daemon(tmp_path, sim, receiver) as web:
        wait_for(lambda: len(receiver.received) == 4)
        page.goto(web.url + "/")
        create = page.get_by_role("button", name="Create silence")
        expect(create).to_be_disabled()
        expect(page.locator("#new-silence .why")).to_have_text("enter the API token above to act")
        set_token(page)
        expect(create).to_be_enabled()

        matchers = page.get_by_label("matchers, one per line")
        matchers.fill("colour = red")  # checked as it is typed, by the same parser
        expect(page.locator("#s-check")).to_contain_text("no event has a field 'colour'")
        expect(matchers).to_have_attribute("aria-invalid", "true")
        matchers.fill('call_id = "c-quiet"')
        expect(page.locator("#s-check")).to_have_text('silences call_id = "c-quiet"')
        page.get_by_label("for").fill("1h")
        page.get_by_label("why").fill("the line is being moved")
        page.get_by_label("why").press("Enter")  # by keyboard
        expect(page.locator("#flash")).to_contain_text('made: call_id = "c-quiet"')
        expect(page.locator("#silences tbody tr")).to_have_count(1)
        expect(page.locator("#silences")).to_contain_text("the line is being moved")

        sim.set_calls([*campaign(), wire_call("c-quiet"), wire_call("c-loud")])
        wait_for(lambda: any(r.json["data"]["call"]["call_id"] == "c-loud" for r in receiver.received))
        wait_for(lambda: web.get("/api/v1/deliveries?status=silenced")["items"])
        assert not any(r.json["data"]["call"]["call_id"] == "c-quiet" for r in receiver.received)

        page.locator("#silences button[data-act=expire]").click()
        expect(page.locator("#flash")).to_contain_text("expired")
        expect(page.locator("#silences tbody tr")).to_have_count(0)
        assert web.get("/api/v1/silences") == []


def test_redeliver_on_a_dead_delivery_sends_it(
    tmp_path: Path, sim: BlandSimulator, receiver: Receiver, page: Page
) -> None:
    receiver.respond(500)
    sim.set_calls([wire_call("c-1")])
    extra = 'retry_initial = "100ms"\nretry_max = "100ms"\ngive_up_after = "300ms"\n'
    with web_daemon(tmp_path, sim, receiver, target_extra=extra) as web:
        wait_for(lambda: web.get("/api/v1/deliveries?status=dead")["items"])
        page.goto(web.url + "/?delivery_status=dead")
        button = page.locator("#deliveries button[data-act=redeliver]")
        expect(button).to_have_count(1)
        expect(button).to_be_disabled()
        expect(button).to_have_attribute("title", "enter the API token above to act")
        set_token(page)
        receiver.respond(200)
        page.locator("#deliveries button[data-act=redeliver]").click()
        expect(page.locator("#flash")).to_contain_text("queued again")
        wait_for(lambda: web.get("/api/v1/deliveries?status=sent")["items"])
        assert receiver.received[-1].json["data"]["call"]["call_id"] == "c-1"
        page.goto(web.url + "/?delivery_status=sent")
        expect(page.locator("#deliveries tbody tr")).to_have_count(1)


def test_without_a_token_the_buttons_say_why_they_cannot_act(
    tmp_path: Path, sim: BlandSimulator, receiver: Receiver, page: Page
) -> None:
    receiver.respond(500)
    sim.set_calls([wire_call("c-1")])
    extra = 'retry_initial = "100ms"\nretry_max = "100ms"\ngive_up_after = "300ms"\n'
    with web_daemon(tmp_path, sim, receiver, token=None, target_extra=extra) as web:
        wait_for(lambda: web.get("/api/v1/deliveries?status=dead")["items"])
        page.goto(web.url + "/?delivery_status=dead")
        reason = "changes are off: no [http] token is configured"
        expect(page.locator("header .why")).to_have_text(reason)
        expect(page.get_by_label("API token")).to_have_count(0)
        for button in (page.locator("button[data-act=redeliver]"), page.get_by_role("button", name="Create silence")):
            expect(button).to_be_disabled()
            expect(button).to_have_attribute("title", reason)


def test_a_standby_says_so_and_is_read_only(
    tmp_path: Path, sim: BlandSimulator, receiver: Receiver, page: Page
) -> None:
    sim.set_calls(campaign())
    with web_daemon(tmp_path, sim, receiver) as leader:
        wait_for(lambda: leader.get("/api/v1/calls")["total"] == 4)
        with web_daemon(tmp_path, sim, receiver, name="standby.toml") as standby:
            page.goto(standby.url + "/")
            expect(page.locator("#role")).to_contain_text("standby: read-only")
            expect(page.locator("#calls tbody tr")).to_have_count(3)  # from the shared store
            expect(page.get_by_role("button", name="Create silence")).to_be_disabled()
            expect(page.locator("header .why")).to_contain_text("this daemon is a standby")


def test_readable_on_a_phone_and_dark_aware(
    tmp_path: Path, sim: BlandSimulator, receiver: Receiver, page: Page
) -> None:
    sim.set_calls(campaign())
    with web_daemon(tmp_path, sim, receiver) as web:
        wait_for(lambda: web.get("/api/v1/calls")["total"] == 4)
        page.set_viewport_size({"width": 390, "height": 844})
        page.emulate_media(color_scheme="dark")
        page.goto(web.url + "/?calls_status=all")
        expect(page.locator("#calls tbody tr")).to_have_count(4)
        wide = page.evaluate(
            "[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > 390"
            " && !e.closest('.scroll')).map(e => e.tagName + '#' + e.id + '.' + e.className)"
        )
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, wide  # wide tables scroll in their box
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(15, 20, 25)"
        page.emulate_media(color_scheme="light")
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(255, 255, 255)"


def test_screenshot_of_a_campaign_with_a_backlog(
    tmp_path: Path, sim: BlandSimulator, receiver: Receiver, page: Page
) -> None:
    """The README's screenshot: a backlog firing on one pathway, a silence, a dead delivery.
    Saved under docs/ when NOTIFIER_SCREENSHOT is set (to the path to write)."""
    calls = [
        wire_call(f"{i:08x}-4c1d-9e2f-{i:012x}", created_ms=ago(30 + 37 * i), to=f"+1310555{i:04d}", pathway_id="pw-7")
        for i in range(14)
    ] + [
        wire_call(f"{i:08x}-77aa-41b0-{i:012x}", "IN_PROGRESS", created_ms=ago(60 + i), pathway_id="pw-support")
        for i in range(20, 26)
    ]
    sim.set_calls(calls)
    extra = 'retry_initial = "100ms"\nretry_max = "100ms"\ngive_up_after = "300ms"\n'
    receiver.respond(500)
    backlog = (
        '[[conditions]]\nname = "queue backlog"\nmetric = "queued"\nabove = 10\nfor = "0s"\ngroup_by = ["pathway_id"]\n'
    )
    with web_daemon(tmp_path, sim, receiver, target_extra=extra, extra=backlog) as web:
        wait_for(lambda: web.get("/api/v1/deliveries?status=dead")["items"])
        receiver.respond(200)
        body = {"matchers": ['pathway_id = "pw-support"'], "duration": "2h", "comment": "pathway being rebuilt"}
        assert web.call("POST", "/api/v1/silences", body, token=TOKEN)[0] == 201
        page.goto(web.url + "/")
        expect(page.locator("#calls tbody tr")).to_have_count(14)
        expect(page.locator("#conditions")).to_contain_text("queue backlog")
        shot = tmp_path / "console.png"
        page.screenshot(path=str(shot), full_page=False)
        assert shot.stat().st_size > 10_000
        if os.environ.get("NOTIFIER_SCREENSHOT"):
            shutil.copy(shot, os.environ["NOTIFIER_SCREENSHOT"])


def test_the_page_says_when_it_is_stale_and_follows_a_failover(
    tmp_path: Path, sim: BlandSimulator, receiver: Receiver, page: Page
) -> None:
    sim.set_calls(campaign())
    storage = 'url = "sqlite:///notifier.db"\nlease = "2s"\n'
    with web_daemon(tmp_path, sim, receiver, storage=storage) as leader:
        wait_for(lambda: leader.get("/api/v1/calls")["total"] == 4)
        with web_daemon(tmp_path, sim, receiver, storage=storage, name="standby.toml") as standby:
            page.goto(standby.url + "/")
            expect(page.locator("#role")).to_contain_text("standby: read-only")
            assert leader.daemon.stop() == 0  # the lease is given up: the standby takes over
            expect(page.locator("#role")).to_contain_text("leader", timeout=20_000)
            expect(page.get_by_label("API token")).to_be_visible(timeout=10_000)  # a leader's page, reloaded
            expect(page.get_by_role("button", name="Create silence")).to_have_attribute(
                "title", "enter the API token above to act"
            )
            standby.daemon.kill()
            expect(page.locator("#stale")).to_contain_text("not updated since", timeout=15_000)
            expect(page.locator("#stale")).to_contain_text("does not answer")
