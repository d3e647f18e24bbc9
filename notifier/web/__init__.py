"""The console and the JSON API, served on ``[http] listen`` beside ``/metrics``.

Litestar (msgspec-native, OpenAPI 3.1 from the handlers' types) runs behind the
listener's bounded WSGI server through a2wsgi: the listener keeps its limits (a few
connections, idle ones dropped), and the web handlers run on a loop of their own, so a
busy daemon loop never stalls the console and the console never stalls polling.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from html import escape
from http import HTTPStatus
from importlib.resources import files
from typing import Any
from urllib.parse import unquote_to_bytes

import msgspec
from a2wsgi import ASGIMiddleware
from a2wsgi.asgi import ASGIResponder
from litestar import Litestar, Request, Response, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.static_files import create_static_files_router
from sqlalchemy.exc import SQLAlchemyError

from notifier import __version__
from notifier.listener import is_loopback, split_listen
from notifier.logs import kv
from notifier.store import StoreError, error_reason
from notifier.web.api import Problem, WebContext, api_router, provide_context
from notifier.web.console import console

#: The largest request body taken (a silence is a few hundred bytes).
MAX_BODY = 64 * 1024


log = logging.getLogger("notifier")


def _failed(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    """A fault of ours: logged for the operator (secrets scrubbed like every log line),
    answered without internals."""
    log.error("web request failed", exc_info=exc, extra=kv(method=request.method, path=request.url.path))
    return Response(Problem(500, "internal error: see the daemon's log"), status_code=500)


def _not_found(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    """JSON for every 404, an unknown path included."""
    detail = getattr(exc, "detail", "")
    if detail in ("", "Not Found"):
        detail = f"no such path: {request.url.path}"
    return Response(Problem(404, detail), status_code=404)


async def _json_not_found(response: Response[Any]) -> Response[Any]:
    """The OpenAPI router answers unknown paths under /api/v1/ with an HTML page: JSON instead."""
    if response.status_code == 404:
        problem = Problem(404, "no such path under /api/v1/ (see /api/v1/openapi.json)")
        return Response(problem, status_code=404, media_type="application/json")
    return response


def _store_trouble(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    """The store cannot answer (not made yet, PostgreSQL down, locked): 503 with the reason."""
    reason = error_reason(exc) if isinstance(exc, SQLAlchemyError) else str(exc)
    log.warning("web request: store unavailable", extra=kv(path=request.url.path, error=reason))
    problem, headers = Problem(503, f"store unavailable: {reason}"), {"Retry-After": "5"}
    if not request.url.path.startswith("/api/"):  # the console: a page that says so (and reloads)
        page = f"<!doctype html><title>bland-notifier</title><h1>bland-notifier</h1><p>{escape(problem.detail)}</p>"
        headers["Refresh"] = "5"
        return Response(page, status_code=503, media_type="text/html", headers=headers)  # type: ignore[return-value]
    return Response(problem, status_code=503, headers=headers)


def make_app(context: WebContext) -> Litestar:
    return Litestar(
        route_handlers=[
            api_router(),
            console,
            create_static_files_router("/static", directories=[str(files("notifier.web") / "static")]),
        ],
        dependencies={"context": Provide(provide_context, sync_to_thread=False)},
        state=State({"context": context}),
        openapi_config=OpenAPIConfig(
            title="bland-notifier",
            version=__version__,
            path="/api/v1",
            render_plugins=[JsonRenderPlugin()],
            openapi_router=Router("/api/v1", route_handlers=[], include_in_schema=False, after_request=_json_not_found),
            description="Active calls, events, deliveries and silences of a bland-notifier store.",
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer", description="[http] token")}
            ),
        ),
        exception_handlers={
            404: _not_found,
            500: _failed,
            SQLAlchemyError: _store_trouble,
            StoreError: _store_trouble,
        },
        request_max_body_size=MAX_BODY,
        logging_config=None,
        debug=False,
    )


#: Console and API requests served at once: the rest of the listener's connections stay
#: free for ``/healthz`` and ``/metrics`` however busy the console is.
WEB_CONCURRENCY = 4


class _Responder(ASGIResponder):
    """a2wsgi's responder, which also ends the app's task when the client goes away in
    the middle of the response: a2wsgi leaves it waiting forever (memory held per
    aborted request, and a "Task was destroyed" line for each at exit)."""

    task: asyncio.Task[None] | None = None

    async def start_asgi_app(self, environ: Any) -> asyncio.Task[None]:
        self.task = await super().start_asgi_app(environ)
        return self.task

    def __call__(self, environ: Any, start_response: Any) -> Iterator[bytes]:
        try:
            yield from super().__call__(environ, start_response)
        finally:
            if self.task is not None:
                self.loop.call_soon_threadsafe(self.task.cancel)


class _Bridge(ASGIMiddleware):
    def __call__(self, environ: Any, start_response: Any) -> Iterator[bytes]:
        return _Responder(self.app, self.loop, self.wait_time)(environ, start_response)


def wsgi_app(context: WebContext, listen: str) -> Callable[[dict[str, Any], Any], Iterable[bytes]]:
    """The app as a WSGI callable for the listener's server: input Litestar would choke
    on, a foreign Host and a full house are answered here, in JSON like every error."""
    bridge = _Bridge(make_app(context))  # type: ignore[arg-type]
    slots = threading.BoundedSemaphore(WEB_CONCURRENCY)
    loopback = is_loopback(split_listen(listen)[0])

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        refused = refusal(environ, loopback)
        if refused is None and not slots.acquire(blocking=False):
            refused = (503, "busy: the console is serving other requests; try again in a second")
        if refused is not None:
            code, detail = refused
            body = msgspec.json.encode(Problem(code, detail))
            headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
            start_response(
                f"{code} {HTTPStatus(code).phrase}", headers + ([("Retry-After", "1")] if code == 503 else [])
            )
            yield body
            return
        try:
            if environ.get("REQUEST_METHOD") == "HEAD":  # a GET's status and headers, no body
                for _ in bridge({**environ, "REQUEST_METHOD": "GET"}, start_response):
                    pass
                yield b""
            else:
                yield from bridge(environ, start_response)
        finally:
            slots.release()

    return app


def refusal(environ: dict[str, Any], loopback: bool) -> tuple[int, str] | None:
    """Why a request is refused before it reaches the app, or None.

    On a loopback listener only a loopback Host is served: a web page the operator
    visits cannot reach the reads through a DNS name rebound to 127.0.0.1."""
    path, query = environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")
    if len(path) > 2048 or len(query) > 8192:
        return 414, "the URL is too long"
    try:
        path.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return 400, "the path is not UTF-8"
    if "\x00" in path or b"\x00" in unquote_to_bytes(query):
        return 400, "NUL characters are not accepted"
    length = environ.get("CONTENT_LENGTH") or "0"
    if not length.isdigit():
        return 400, "Content-Length is not a number"
    header = environ.get("HTTP_HOST", "")  # (a browser always sends it; a rebinding attack needs one)
    if loopback and header and not is_loopback(_host_name(header).lower()):
        return 421, "this listener serves loopback names only (localhost, 127.0.0.1, [::1])"
    return None


def _host_name(header: str) -> str:
    """``[::1]:9464`` -> ``::1``; ``localhost:9464`` -> ``localhost``."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header
