"""The console and the JSON API, served on ``[http] listen`` beside ``/metrics``.

Litestar (msgspec-native, OpenAPI 3.1 from the handlers' types) runs behind the
listener's bounded WSGI server through a2wsgi: the listener keeps its limits (a few
connections, idle ones dropped), and the web handlers run on a loop of their own, so a
busy daemon loop never stalls the console and the console never stalls polling.
"""

from __future__ import annotations

import logging
from importlib.resources import files
from typing import Any

from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.static_files import create_static_files_router
from sqlalchemy.exc import SQLAlchemyError

from notifier import __version__
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


def _store_trouble(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    """The store cannot answer (not made yet, PostgreSQL down, locked): 503 with the reason."""
    reason = error_reason(exc) if isinstance(exc, SQLAlchemyError) else str(exc)
    log.warning("web request: store unavailable", extra=kv(path=request.url.path, error=reason))
    return Response(Problem(503, f"store unavailable: {reason}"), status_code=503, headers={"Retry-After": "5"})


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
            description="Active calls, events, deliveries and silences of a bland-notifier store.",
        ),
        exception_handlers={500: _failed, SQLAlchemyError: _store_trouble, StoreError: _store_trouble},
        request_max_body_size=MAX_BODY,
        logging_config=None,
        debug=False,
    )


def wsgi_app(context: WebContext) -> Any:
    """The app as a WSGI callable, for the listener's server."""
    from a2wsgi import ASGIMiddleware

    return ASGIMiddleware(make_app(context))  # type: ignore[arg-type]
