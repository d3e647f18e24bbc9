"""Signed JSON webhooks (Standard Webhooks): one POST per event and attempt.

``webhook-id`` is the event id on every attempt, so a consumer can deduplicate a
resend after a crash; each attempt is signed afresh with its own
``webhook-timestamp``, since consumers reject signatures older than five minutes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import anyio
import httpx
import msgspec

from notifier.bland import USER_AGENT, retry_after_seconds
from notifier.channels import Message, Outcome
from notifier.config import Target
from notifier.model import Event, event_document
from notifier.neterrors import describe
from notifier.secret import redact

_encoder = msgspec.json.Encoder()


def webhook_body(event: Event) -> bytes:
    return _encoder.encode(event_document(event))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` with a ``whsec_`` key."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class WebhookChannel:
    def __init__(self, target: Target, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.target = target
        self._client = httpx.AsyncClient(
            timeout=target.timeout,
            follow_redirects=False,
            transport=transport,
            headers={"user-agent": USER_AGENT, "content-type": "application/json"},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, message: Message) -> Outcome:
        (event,) = message.events  # the planner never digests webhook deliveries
        body = webhook_body(event)
        timestamp = int(message.attempt_at)
        headers = {"webhook-id": event.id, "webhook-timestamp": str(timestamp)}
        if self.target.secret is not None:
            headers["webhook-signature"] = sign(self.target.secret.reveal(), event.id, timestamp, body)
        # httpx's timeout bounds each read; a receiver that trickles its answer would hold
        # this target's queue forever without a deadline on the whole exchange.
        with anyio.move_on_after(self.target.timeout):
            try:
                response = await self._client.post(self.target.url.reveal(), content=body, headers=headers)
            except httpx.TimeoutException:
                return Outcome(ok=False, error=f"timed out after {self.target.timeout:g}s")
            except httpx.HTTPError as exc:
                return Outcome(ok=False, error=self._safe(describe(exc)))
            return self._outcome(response)
        return Outcome(ok=False, error=f"timed out after {self.target.timeout:g}s (no complete answer)")

    def _outcome(self, response: httpx.Response) -> Outcome:
        status = response.status_code
        if 200 <= status < 300:
            return Outcome(ok=True, status_code=status)
        if status == 410:
            return Outcome(
                ok=False, dead=True, status_code=status, error="HTTP 410 Gone: the receiver retired this endpoint"
            )
        error = f"HTTP {status} {response.reason_phrase}".rstrip()
        if 300 <= status < 400:
            error += " (redirects are not followed; update the target URL)"
        return Outcome(
            ok=False,
            status_code=status,
            error=error,
            retry_after=retry_after_seconds(response.headers.get("retry-after")),
        )

    def _safe(self, text: str) -> str:
        return redact(text, self.target.secrets())[:500]
