"""Bland AI's API: the HTTP client and the decoding of its answers.

Every answer is untrusted input. A malformed entry is skipped and counted, never the
whole poll; an answer that is not the documented shape is a failed poll (``PollError``).
Decoding is the hot path: see ``ActiveCallsDecoder``.
"""

from __future__ import annotations

import email.utils
import socket
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any, TypeVar, cast
from urllib.parse import quote

import anyio
import anyio.from_thread
import anyio.lowlevel
import httpx
import msgspec

from notifier import __version__
from notifier.model import IN_PROGRESS, Call, Snapshot
from notifier.neterrors import describe
from notifier.secret import Secret, redact
from notifier.threads import ThreadBudget, ThreadsExhausted

T = TypeVar("T")
USER_AGENT = f"bland-notifier/{__version__}"
#: Request threads one client may have running at once (a poll, up to 8 detail lookups,
#: and a few abandoned at their backstop).
MAX_LIVE_REQUESTS = 16
DETAIL_FIELDS = ("status", "completed", "call_length", "answered_by", "call_ended_by", "error_message")


class PollError(Exception):
    """A poll that produced no snapshot. ``reason`` is safe to log (no secrets)."""

    def __init__(self, reason: str, *, retry_after: float | None = None, auth: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.auth = auth


class _Envelope(msgspec.Struct):
    data: list[msgspec.Raw] | None = None
    errors: Any = None


_envelope_decoder = msgspec.json.Decoder(_Envelope)
_call_decoder = msgspec.json.Decoder(Call)
_any_decoder = msgspec.json.Decoder()


class ActiveCallsDecoder:
    """Decodes successive ``/v1/calls/active`` bodies, cheaply in time and memory.

    Between a campaign's bursts the whole answer is byte-for-byte the last one: a
    checksum of the body (CRC-32 and length, no copy) finds that, and the last
    snapshot is returned as it is. A CRC-32 that misses a change is a ~2e-10 event
    per changed answer; even so, every ``FULL_EVERY``-th answer is decoded whole, so a
    miss lasts that many polls at most.

    Otherwise almost every entry is still the same, so a 64-bit hash of each entry's
    bytes keys the ``Call`` decoded from them at the previous poll: only new or
    changed entries are decoded, and unchanged calls are the very same objects, which
    lets detection skip them with an identity check. (Two different entries sharing
    Python's keyed 64-bit hash is a ~1e-9 event per poll at 100k calls.) Text that
    campaigns repeat in every entry (objective, caller number, pathway, status) is stored once.
    """

    FULL_EVERY = 100

    def __init__(self) -> None:
        self._previous: dict[int, Call] = {}
        self._shared: dict[str, str] = {}
        self._last: tuple[tuple[int, int | None], Snapshot] | None = None  # (length, CRC-32), snapshot
        self._repeats = 0

    def decode(self, body: bytes | bytearray) -> Snapshot:
        """Raise ``PollError`` unless the body is the documented shape."""
        # The checksum is taken only when the length is the last answer's: while calls
        # come and go the length moves with them, and a poll with changes pays nothing.
        last = self._last
        checksum = zlib.crc32(body) if last is not None and last[0][0] == len(body) else None
        if last is not None and checksum is not None and last[0][1] == checksum and self._repeats < self.FULL_EVERY:
            self._repeats += 1
            return last[1]
        snapshot = self._decode(body)
        self._last, self._repeats = ((len(body), checksum), snapshot), 0
        return snapshot

    def _decode(self, body: bytes | bytearray) -> Snapshot:
        try:
            envelope = _envelope_decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise PollError(f"answer is not the documented shape: {exc}") from None
        except msgspec.DecodeError as exc:
            raise PollError(f"answer is not valid JSON: {exc}") from None
        if envelope.data is None:
            detail = f" (errors: {_short(envelope.errors)})" if envelope.errors else ""
            raise PollError(f"answer has no call list (data is null or missing){detail}")
        raws = envelope.data
        # C-level loops where possible: this runs for 10k+ entries a poll.
        keys = list(map(hash, map(bytes, raws)))
        found: list[Call | None] = list(map(self._previous.get, keys))
        malformed = False
        fresh: dict[int, Call | None] = {}  # an entry listed twice is decoded once, to one object
        for index in [index for index, call in enumerate(found) if call is None]:
            key = keys[index]
            if key not in fresh:
                fresh[key] = self._share(_decode_entry(raws[index]))
            call = found[index] = fresh[key]
            malformed = malformed or call is None
        if malformed:
            kept = [index for index, call in enumerate(found) if call is not None]
            keys, found = [keys[index] for index in kept], [found[index] for index in kept]
        decoded = cast("list[Call]", found)  # no None left
        calls = {call.call_id: call for call in decoded}
        duplicates = len(decoded) - len(calls)
        if duplicates:
            calls = _one_per_call_id(decoded)
        self._previous = dict(zip(keys, decoded, strict=True))
        if len(self._shared) > 4 * len(calls) + 1000:
            self._shared = {}  # bounded: values no call uses any more are let go
        skipped = len(raws) - len(calls)  # malformed entries and duplicate call_ids
        return Snapshot(calls=calls, skipped=skipped, duplicates=duplicates)

    def _share(self, call: Call | None) -> Call | None:
        if call is None:
            return None
        shared = self._shared.setdefault
        return msgspec.structs.replace(
            call,
            user_id=shared(call.user_id, call.user_id),
            from_=shared(call.from_, call.from_),
            objective=shared(call.objective, call.objective),
            pathway_id=shared(call.pathway_id, call.pathway_id),
            international=shared(call.international, call.international),
            status=shared(call.status, call.status),
        )


def _one_per_call_id(decoded: list[Call]) -> dict[str, Call]:
    """One entry per call_id, the same whatever order the answer lists them in: the
    furthest along (IN_PROGRESS before QUEUED), then the greatest by content. "Last
    wins" would flap between two entries from poll to poll and announce each flap."""
    calls: dict[str, Call] = {}
    for call in decoded:
        kept = calls.get(call.call_id)
        if kept is None or _precedence(call) > _precedence(kept):
            calls[call.call_id] = call
    return calls


def _precedence(call: Call) -> tuple[bool, bytes]:
    return call.status == IN_PROGRESS, msgspec.json.encode(call)


def decode_active_calls(body: bytes) -> Snapshot:
    """Decode one body on its own (no memory of earlier polls)."""
    return ActiveCallsDecoder().decode(body)


def _decode_entry(raw: msgspec.Raw) -> Call | None:
    try:
        call = _call_decoder.decode(raw)
    except msgspec.DecodeError:
        entry = _any_decoder.decode(raw)
        if not isinstance(entry, dict):
            return None
        fields = {name: _as_text(entry.get(name)) for name in _WIRE_NAMES}
        if not isinstance(entry.get("call_id"), str):
            return None
        call = msgspec.convert(fields, Call)
    return call if call.call_id and call.status else None  # both are needed to follow a call


_WIRE_NAMES = (
    "call_id",
    "user_id",
    "from",
    "to",
    "objective",
    "pathway_id",
    "start_time",
    "international",
    "status",
    "timestamp",
)


def _as_text(value: Any) -> str:
    """Normalise an odd scalar to the string Bland would have sent; drop the rest."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return ""


def _short(value: Any, limit: int = 200) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Parse ``Retry-After`` (delta-seconds or an HTTP date); None if absent or invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class BlandClient:
    """Bland's API through one pooled ``httpx.Client``, each request in a worker thread.

    Blocking reads in a thread, not the async client: a large body arrives in hundreds
    of chunks, and each chunk's round trip through the event loop costs CPU. A 60 MB
    answer (100k calls) took 164 ms of CPU to read asynchronously and 96 ms this way.
    The event loop keeps its turn meanwhile, and a cancelled request (SIGTERM, the
    details budget) is interrupted by shutting its socket down.
    """

    def __init__(
        self, base_url: str, api_key: Secret, org_id: Secret, timeout: float, max_bytes: int = 256 * 2**20
    ) -> None:
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={
                "authorization": api_key.reveal(),
                "x-bland-org-id": org_id.reveal(),
                "user-agent": USER_AGENT,
                "accept": "application/json",
            },
            timeout=timeout,
            follow_redirects=False,
        )
        self._timeout = timeout
        self._secrets = [api_key.reveal(), org_id.reveal()]
        self._max_bytes = max_bytes
        # Abandoned requests that still hang (an upstream trickling its headers forever)
        # each hold a thread and a socket: no more than this many at once.
        self._threads = ThreadBudget(MAX_LIVE_REQUESTS, "bland-request")
        self._decoder = ActiveCallsDecoder()
        self._decoding = threading.Lock()  # a cancelled fetch's thread may still be decoding

    async def aclose(self) -> None:
        self._client.close()

    async def __aenter__(self) -> BlandClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def fetch_active(self, then: Callable[[Snapshot | PollError], T]) -> tuple[Snapshot | PollError, T]:
        """One poll of ``GET /v1/calls/active``: the decoded answer, or why there is none,
        and what ``then`` makes of it in the same worker thread. ``then`` must be pure: a
        thread left behind at its backstop may still call it, for nobody."""

        def work(request: _Request) -> tuple[Snapshot | PollError, T]:
            answer = self._fetch_active(request)
            return answer, then(answer)

        try:
            return await self._in_thread("GET /v1/calls/active", work)
        except PollError as exc:  # the request outlived its backstop (see ``_in_thread``)
            return exc, then(exc)

    def _fetch_active(self, request: _Request) -> Snapshot | PollError:
        try:
            body = self._get("/v1/calls/active", request)
            with self._decoding:
                return self._decoder.decode(body)
        except PollError as exc:
            return self._scrubbed(exc)

    def _scrubbed(self, error: PollError) -> PollError:
        """The error with our key and org id masked: an upstream may echo them in its
        answer, and the reason is stored, shown in /healthz and sent in events."""
        reason = redact(error.reason, self._secrets)
        if reason == error.reason:
            return error
        return PollError(reason, retry_after=error.retry_after, auth=error.auth)

    async def fetch_details(self, call_id: str) -> dict[str, Any]:
        """``GET /v1/calls/{id}``, reduced to the scalar outcome fields SPEC names."""
        path = f"/v1/calls/{quote(call_id, safe='')}"
        content = await self._in_thread(f"GET {path}", lambda request: self._get(path, request))
        try:
            body = _any_decoder.decode(content)
        except msgspec.DecodeError as exc:
            raise PollError(f"call details are not valid JSON: {exc}") from None
        if isinstance(body, dict) and isinstance(body.get("data"), dict):
            body = body["data"]
        if not isinstance(body, dict):
            raise PollError("call details are not a JSON object")
        return {
            name: body.get(name) if isinstance(body.get(name), (str, int, float, bool)) else None
            for name in DETAIL_FIELDS
        }

    async def _in_thread(self, what: str, work: Callable[[_Request], T]) -> T:
        """``work`` in a daemon thread of its own, not in anyio's pool: a request still
        waiting for its answer's headers has no socket to cut off yet, and a stopping
        process must not wait for it (a pool thread would hold up the exit).

        Two deadlines, because httpx's timeout bounds each connect and each read, and an
        answer that keeps trickling in never trips one. At ``timeout`` (SPEC: per
        request) the socket of an answer still arriving is cut. Before the headers there
        is no socket, so at twice the timeout plus a second (time enough to decode and
        detect a complete answer) the thread is left to fail on its own.
        """
        request = _Request()

        def scrubbed() -> T:
            try:
                return work(request)
            except PollError as exc:
                raise self._scrubbed(exc) from None

        try:
            pending = self._threads.start(scrubbed)
        except ThreadsExhausted as exc:
            raise PollError(f"{what}: {exc}") from None
        backstop = request_backstop(self._timeout)
        try:
            with anyio.move_on_after(backstop):
                with anyio.move_on_after(self._timeout):
                    await pending.done.wait()
                if not pending.finished:
                    request.expire()
                    await pending.done.wait()
        except anyio.get_cancelled_exc_class():
            request.interrupt()  # the thread then fails fast instead of reading on
            raise
        if not pending.finished:  # expired above already: the thread fails once it gets a socket
            raise PollError(f"{what}: timed out after {backstop:g}s (no answer)")
        return pending.result()

    def _get(self, path: str, request: _Request) -> bytearray:
        """The body of a 2xx answer; any other outcome is a ``PollError`` saying why."""
        try:
            with self._client.stream("GET", path) as response:
                request.attach(response.extensions.get("network_stream"))
                try:
                    return _read(path, response, self._max_bytes)
                finally:
                    request.detach()  # before the connection goes back to the pool
        except httpx.TimeoutException:
            raise PollError(f"GET {path}: timed out") from None
        except httpx.HTTPError as exc:
            if request.expired:
                raise PollError(f"GET {path}: timed out after {self._timeout:g}s (no complete answer)") from None
            raise PollError(f"GET {path}: {describe(exc)}") from None


def request_backstop(timeout: float) -> float:
    """The longest a request (with the decoding of its answer) is waited for."""
    return 2 * timeout + 1.0


def _read(path: str, response: httpx.Response, max_bytes: int) -> bytearray:
    """The body is read from the stream into one buffer, so no response object (and its
    reference cycles) keeps a large body alive after the poll. More than ``max_bytes``
    is a failed poll, found from ``Content-Length`` before reading where it is sent."""
    status = response.status_code
    if 200 <= status < 300:
        too_large = PollError(
            f"GET {path}: the answer is larger than {max_bytes // 2**20} MB (source.max_answer_mb); not read"
        )
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise too_large
        body = bytearray()  # grows in place: no list of chunks plus a joined copy
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > max_bytes:
                raise too_large
        return body
    if status in (401, 403):
        raise PollError(
            f"GET {path}: HTTP {status}: Bland rejected the credentials; check source.api_key and source.org_id",
            auth=True,
        )
    retry_after = retry_after_seconds(response.headers.get("retry-after")) if status in (429, 503) else None
    raise PollError(f"GET {path}: HTTP {status} {response.reason_phrase}".rstrip(), retry_after=retry_after)


class _Request:
    """One request's socket, so that cancelling the request (or its deadline) can cut
    it off mid-read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._interrupted = False
        self.expired = False

    def attach(self, stream: Any) -> None:
        sock = stream.get_extra_info("socket") if stream is not None else None
        with self._lock:
            self._socket = sock
            interrupted = self._interrupted
        if interrupted:
            self._shut(sock)

    def detach(self) -> None:
        with self._lock:
            self._socket = None

    def expire(self) -> None:
        self.expired = True
        self.interrupt()

    def interrupt(self) -> None:
        with self._lock:
            self._interrupted = True
            sock = self._socket
        self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket | None) -> None:
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked read, which then fails
        except OSError:
            pass  # already closed
