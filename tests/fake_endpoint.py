"""A fake inference endpoint on 127.0.0.1 for the endpoint tests (test-only; parity never imports it).

It speaks the reference server's API (runcomfy-com/ai-toolkit-inference src/api/v1/inference.py: /v1/models,
POST /v1/inference, /v1/requests/{id}/status and /result) with a configurable result image, and any route can be
replaced by a hostile answer: a redirect, a body dripped one byte at a time, a huge body, any JSON. Every request
is recorded with its Authorization header, so a test can say where a credential went.

    with FakeEndpoint() as ep:
        ep.image = {"format": "png", "url": ep.url + "/img/0.png"}
        ep.route("GET", "/img/0.png", raw(png_bytes, "image/png"))
        ep.route("GET", "/v1/models", drip(b'{"models": []}', every_s=1.0))
        client = EndpointClient(ep.url, timeout=1, wait=3)
"""

from __future__ import annotations

import io
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any, Callable

Reply = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Seen:
    method: str
    path: str
    auth: str | None
    port: int


def _send(h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None,
          length: int | None = None) -> None:
    h.send_response(status)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(body) if length is None else length))
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    try:
        h.wfile.write(body)
    except (BrokenPipeError, ConnectionResetError):  # the client gave up
        pass


def json_reply(doc: Any, status: int = 200) -> Reply:
    return lambda h: _send(h, status, json.dumps(doc).encode(), "application/json")


def raw(body: bytes, ctype: str = "application/octet-stream", status: int = 200) -> Reply:
    return lambda h: _send(h, status, body, ctype)


def redirect(location: str, status: int = 302) -> Reply:
    return lambda h: _send(h, status, b"", "text/plain", {"Location": location})


def drip(body: bytes, every_s: float = 1.0, ctype: str = "application/json") -> Reply:
    """Headers at once, then one byte of `body` every `every_s` seconds (each read sees data: no read times out)."""
    def reply(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        try:
            for i in range(len(body)):
                h.wfile.write(body[i:i + 1])
                h.wfile.flush()
                time.sleep(every_s)
        except (BrokenPipeError, ConnectionResetError):
            pass
    return reply


def huge(n_bytes: int, declare_length: bool = True, ctype: str = "application/json") -> Reply:
    """A body of `n_bytes` spaces (valid JSON whitespace), sent as fast as the client reads; without
    `declare_length` the length is not announced (the body ends when the connection closes)."""
    def reply(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", ctype)
        if declare_length:
            h.send_header("Content-Length", str(n_bytes))
        h.send_header("Connection", "close")
        h.end_headers()
        chunk, sent = b" " * 65536, 0
        try:
            while sent < n_bytes:
                h.wfile.write(chunk[: n_bytes - sent])
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        h.close_connection = True
    return reply


class FakeEndpoint:
    """The reference server's API on 127.0.0.1 (a free port), every route replaceable (`route`)."""

    def __init__(self, models: tuple[str, ...] = ("flux2", "flux2_klein_4b")):
        self.seen: list[Seen] = []
        self.routes: dict[tuple[str, str], Reply] = {}
        self.models = models
        self.image: dict[str, Any] = {"format": "png", "file_path": "/nonexistent"}   # outputs.images[0]
        self.images: dict[str, dict[str, Any]] = {}   # request id -> its own result image (else `image`)
        self.submitted: list[dict[str, Any]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def _any(self) -> None:
                endpoint.seen.append(Seen(self.command, self.path, self.headers.get("Authorization"),
                                          self.server.server_address[1]))
                n = int(self.headers.get("Content-Length") or 0)
                self.body = self.rfile.read(n) if n else b""
                self.close_connection = True
                endpoint.answer(self)

            do_GET = do_POST = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def route(self, method: str, path: str, reply: Reply) -> None:
        self.routes[(method, path)] = reply

    def answer(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?")[0]
        if (h.command, path) in self.routes:
            return self.routes[(h.command, path)](h)
        if (h.command, path) == ("GET", "/v1/models"):
            return json_reply({"models": [{"id": m} for m in self.models]})(h)
        if (h.command, path) == ("POST", "/v1/inference"):
            rid = f"r{len(self.submitted)}"
            self.submitted.append(json.loads(h.body))
            return json_reply({"request_id": rid, "status": "queued"})(h)
        parts = path.strip("/").split("/")
        if len(parts) == 4 and parts[:2] == ["v1", "requests"] and parts[3] == "status":
            return json_reply({"request_id": parts[2], "status": "succeeded"})(h)
        if len(parts) == 4 and parts[:2] == ["v1", "requests"] and parts[3] == "result":
            image = self.images.get(parts[2], self.image)
            return json_reply({"request_id": parts[2], "status": "succeeded", "error": None,
                               "outputs": {"images": [image], "videos": []}})(h)
        return json_reply({"detail": {"error": {"code": "NOT_FOUND", "message": path}}}, 404)(h)

    def auth_by_port(self) -> dict[int, set[str | None]]:
        out: dict[int, set[str | None]] = {}
        for s in self.seen:
            out.setdefault(s.port, set()).add(s.auth)
        return out

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "FakeEndpoint":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def png_bytes(width: int = 16, height: int = 16, color: tuple[int, int, int] = (200, 40, 40),
              fmt: str = "PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, fmt)
    return buf.getvalue()


def endpoint_items(n: int = 2, arch: str = "flux2") -> list[Any]:
    """Planned-item stand-ins with what the endpoint client reads: id, step, index, preview path, the spec."""
    from parity.spec import RenderSpec

    items = []
    for i in range(n):
        spec = RenderSpec(prompt=f"prompt {i}", width=64, height=64, seed=100 + i, sample_steps=4,
                          guidance_scale=4.0, lora_path="/loras/x.safetensors", arch=arch)
        items.append(SimpleNamespace(id=f"case[step10-p{i}]", step=10, index=i, preview_path=None,
                                     inference=SimpleNamespace(spec=spec), problem=None))
    return items
