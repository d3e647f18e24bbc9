"""A value that must never be printed: API keys, webhook secrets, URLs with tokens."""

from __future__ import annotations

MASK = "**********"


class Secret:
    """Holds a secret; ``str``, ``repr`` and formatting show a mask, ``reveal()`` the value.

    Equality compares the hidden values, so a reload can tell whether a secret changed
    without anyone printing it.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("a Secret cannot be pickled")


def redact(text: str, secrets: list[str]) -> str:
    """Replace every known secret value (4+ characters) in ``text`` with the mask."""
    for value in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(value, MASK)
    return text


def url_secrets(url: str) -> list[str]:
    """The parts of a URL that may be credentials: userinfo, path segments, query values.

    Apprise URLs carry tokens as path segments (``slack://T1/B2/C3``) and passwords as
    userinfo; a message that quotes any of them must not leak it.
    """
    from urllib.parse import parse_qsl, unquote, urlsplit

    parts = urlsplit(url)
    pieces = [url, parts.username or "", parts.password or ""]
    pieces += [unquote(seg) for seg in parts.path.split("/")]
    pieces += [value for _, value in parse_qsl(parts.query)]
    if parts.scheme not in ("http", "https"):  # slack://TOKEN/...: the "host" is a token
        pieces.append(parts.netloc.rpartition("@")[2])
    return [p for p in pieces if len(p) >= 6]
