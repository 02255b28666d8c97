"""parity's one HTTP client (the only module in parity/ that imports an HTTP library; tests/test_structural.py).

What it guarantees, whatever the server answers (issue 35):
- a credential is sent only to the origin it belongs to: scheme, host and port compared as parsed values, the
  default port filled in (`http://gpu-box` is not `http://gpu-box.evil.com`, `:2345` is not `:23451`); userinfo
  in a URL is never sent anywhere by itself;
- redirects are followed by this module, not by a library: within the same origin (at most MAX_REDIRECTS),
  never to another origin (an HttpError naming the target);
- one exchange (connect, send, headers, body) ends within its time limit in total: a watchdog shuts the socket
  down at the deadline, so a server dripping one byte a second cannot hold it;
- a body larger than its cap is refused before it is read whole (Content-Length) or as soon as it passes the cap.
Errors are HttpError, one line, URLs shown without userinfo and query (`public_url`).
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from parity.errors import ParityError

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)
ERROR_BODY_BYTES = 64 * 1024     # of an error answer, enough for a server's one-line reason
CHUNK = 64 * 1024


class HttpError(ParityError):
    """One exchange failed. `kind`: status (an HTTP error answer: `status`, `body`), timeout, down (no
    connection), redirect (to another origin, or too many), too_large, bad_url."""

    def __init__(self, message: str, kind: str, *, status: int = 0, body: bytes = b""):
        super().__init__(message)
        self.kind, self.status, self.body = kind, status, body


@dataclass(frozen=True)
class Origin:
    """Where a credential may go: scheme, lower-case host and port, as parsed values (default port filled in)."""

    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> "Origin":
        """Raises HttpError(kind="bad_url") for a URL that is not http(s)://host[:port]."""
        try:
            u = urllib.parse.urlsplit(url)
            port = u.port
        except ValueError:
            raise HttpError(f"not a URL: {public_url(url)!r}", "bad_url") from None
        scheme = u.scheme.lower()
        if scheme not in DEFAULT_PORTS or not u.hostname:
            raise HttpError(f"not an http:// or https:// URL with a host: {public_url(url)!r}", "bad_url")
        return cls(scheme, u.hostname.lower().rstrip("."), port if port is not None else DEFAULT_PORTS[scheme])

    @property
    def is_loopback(self) -> bool:
        """This machine by name or address (no name is resolved: what the URL says is what is checked)."""
        if self.host == "localhost" or self.host.endswith(".localhost"):
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def public_url(url: str) -> str:
    """The URL as it may be shown: scheme, host, port and path (userinfo, query and fragment dropped)."""
    try:
        u = urllib.parse.urlsplit(url)
        host, port = u.hostname or "", u.port
    except ValueError:
        return "<not a URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{port}" if port else "")
    return urllib.parse.urlunsplit((u.scheme, netloc, u.path.rstrip("/"), "", ""))[:300]


@dataclass(frozen=True)
class Credential:
    """An Authorization header value bound to one origin: `header_for(url)` gives it to that origin only."""

    value: str
    origin: Origin

    def header_for(self, url: str) -> str | None:
        try:
            return self.value if Origin.of(url) == self.origin else None
        except HttpError:
            return None


@dataclass
class Response:
    status: int
    body: bytes
    url: str                      # after same-origin redirects
    content_type: str = ""


def request(method: str, url: str, *, limit_s: float, max_bytes: int, body: bytes | None = None,
            headers: dict[str, str] | None = None, credential: Credential | None = None) -> Response:
    """One exchange with `url`, redirects within its origin followed, each hop within `limit_s` seconds in
    total. An HTTP error answer (>= 400) raises HttpError(kind="status") holding the first ERROR_BODY_BYTES."""
    first = Origin.of(url)
    for _ in range(MAX_REDIRECTS + 1):
        hop_headers = dict(headers or {})
        auth = credential.header_for(url) if credential else None
        if auth:
            hop_headers["Authorization"] = auth
        status, location, data, ctype = _exchange(method, url, body, hop_headers, limit_s, max_bytes)
        if status not in REDIRECTS or not location:
            if status >= 400:
                raise HttpError(f"{method} {public_url(url)} answered HTTP {status}", "status", status=status,
                                body=data)
            return Response(status, data, url, ctype)
        target = urllib.parse.urljoin(url, location)
        if _origin_or_none(target) != first:
            raise HttpError(f"{method} {public_url(url)} redirected to {public_url(target)}, another origin than "
                            f"{first}; parity does not follow it", "redirect")
        if status == 303 or (status in (301, 302) and method == "POST"):
            method, body = "GET", None
        url = target
    raise HttpError(f"{method} {public_url(url)}: more than {MAX_REDIRECTS} redirects", "redirect")


def _origin_or_none(url: str) -> Origin | None:
    try:
        return Origin.of(url)
    except HttpError:
        return None


def _target(url: str) -> str:
    u = urllib.parse.urlsplit(url)
    return (u.path or "/") + (f"?{u.query}" if u.query else "")


class _Watchdog:
    """Shuts the connection's socket down when the exchange's time is up, whatever call is blocked on it."""

    def __init__(self, conn: http.client.HTTPConnection, limit_s: float):
        self.conn, self.expired = conn, False
        self.timer = threading.Timer(limit_s, self._fire)
        self.timer.daemon = True

    def _fire(self) -> None:
        self.expired = True
        sock = self.conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> "_Watchdog":
        self.timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.timer.cancel()
        self.conn.close()


def _exchange(method: str, url: str, body: bytes | None, headers: dict[str, str], limit_s: float,
              max_bytes: int) -> tuple[int, str, bytes, str]:
    """(status, Location, body, Content-Type) of one request, no redirect followed."""
    origin = Origin.of(url)
    if limit_s <= 0:
        raise HttpError(f"{method} {public_url(url)} did not answer within 0 s", "timeout")
    cls = http.client.HTTPSConnection if origin.scheme == "https" else http.client.HTTPConnection
    conn = cls(origin.host, origin.port, timeout=limit_s)
    ends = time.monotonic() + limit_s
    with _Watchdog(conn, limit_s) as dog:
        try:
            conn.request(method, _target(url), body=body, headers=headers)
            resp = conn.getresponse()
            cap = ERROR_BODY_BYTES if resp.status >= 300 else max_bytes
            data = _read_capped(resp, cap, ends, strict=resp.status < 300, what=f"{method} {public_url(url)}")
            if dog.expired:   # the socket was shut down under the read: what came is not the whole body
                raise TimeoutError
            return resp.status, resp.getheader("Location") or "", data, resp.getheader("Content-Type") or ""
        except HttpError:
            raise
        except http.client.InvalidURL as e:   # control characters or spaces in a server-given URL
            raise HttpError(f"not a usable URL: {public_url(url)!r} ({str(e)[:100]})", "bad_url") from None
        except (TimeoutError, socket.timeout):
            raise HttpError(f"{method} {public_url(url)} did not answer within {limit_s:g} s", "timeout") from None
        except (OSError, http.client.HTTPException) as e:
            if dog.expired or time.monotonic() >= ends:
                raise HttpError(f"{method} {public_url(url)} did not answer within {limit_s:g} s",
                                "timeout") from None
            text = "connection refused" if isinstance(e, ConnectionRefusedError) else f"{type(e).__name__}: {e}"
            raise HttpError(f"cannot reach {origin} ({text[:200]})", "down") from None


def _read_capped(resp: http.client.HTTPResponse, cap: int, ends: float, *, strict: bool, what: str) -> bytes:
    """The body, refused past `cap` bytes when `strict` (else cut there: an error answer's first bytes)."""
    declared = resp.getheader("Content-Length")
    if strict and declared and declared.isdigit() and int(declared) > cap:
        raise HttpError(f"{what} answered {int(declared)} bytes, more than parity's limit of {_size(cap)}",
                        "too_large")
    parts, got = [], 0
    while True:
        if time.monotonic() >= ends:
            raise TimeoutError
        chunk = resp.read1(CHUNK) if hasattr(resp, "read1") else resp.read(CHUNK)
        if not chunk:
            return b"".join(parts)
        got += len(chunk)
        if got > cap:
            if not strict:
                parts.append(chunk)
                return b"".join(parts)[:cap]
            raise HttpError(f"{what} answered more than parity's limit of {_size(cap)}", "too_large")
        parts.append(chunk)


def _size(n: int) -> str:
    return f"{n / 2**20:g} MiB" if n >= 2**20 else f"{n} bytes"
