"""A client for a running reference inference server (runcomfy-com/ai-toolkit-inference), urllib only.

The server's HTTP API, as its code defines it (src/api/v1/inference.py and src/schemas/response.py at af4aec1):
- `POST /v1/inference` with an InferenceInput (src/schemas/request.py; aitk-flux2-previews.md D.4) answers
  `{"request_id", "status": "queued", "status_url", "result_url", "created_at"}` (inference.py L340-346,
  response.py L31-38). Refusals are FastAPI HTTPExceptions, `{"detail": {"error": {"code", "message",
  "details"}}}` with status 400 (inference.py L166-276); a schema violation is FastAPI's 422 `{"detail": [...]}`.
- `GET /v1/requests/{id}/status` answers `{"request_id", "status", "created_at", "started_at", "finished_at",
  "error"}`, status one of in_queue, in_progress, succeeded, failed, canceled (inference.py L349-379,
  src/schemas/task.py L20-29); 404 REQUEST_NOT_FOUND for an unknown id.
- `GET /v1/requests/{id}/result` answers `{"request_id", "status", "outputs", "error", "created_at",
  "finished_at", "metadata"}` (inference.py L382-413); `outputs` is `{"images": [{"format": "jpeg", "width",
  "height", "file_path", "seed"}], "videos": []}` (src/tasks/executor.py L571-597): the image is a JPEG q95 at a
  path ON THE SERVER'S MACHINE (OUTPUT_BASE_PATH, default /tmp/inference_output); there is no download route, so
  parity reads that path (run parity where the server's output folder is visible) and, where a gateway adds a
  `url` to an image, downloads that instead.
- `GET /v1/models` answers `{"models": [{"id", "base_model", "resolution_divisor", "default_steps",
  "default_guidance_scale", ...}]}` (inference.py L416-438).
The URLs the server returns are built from its BASE_URL setting (inference.py L334-336), which may not be how
this machine reaches it, so parity builds status and result URLs from the endpoint it was given.

Credentials: `$PARITY_ENDPOINT_TOKEN` is sent as `Authorization: Bearer ...` (for a gateway in front of the
server; the server itself has no authentication); `user:password@` in the URL is sent as Basic auth. Neither
ever appears in a message, the results or the report: they show `public_url` (no userinfo, no query).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from parity.errors import ConfigError, ParityError

log = logging.getLogger("parity")

TOKEN_ENV = "PARITY_ENDPOINT_TOKEN"
DONE = {"succeeded", "failed", "canceled", "cancelled"}
RETRIES = 3            # extra tries after a connection error, a timeout or a 5xx answer
MAX_DOWNLOAD = 256 * 2**20   # bytes of one result image fetched from a `url` (a FLUX.2 JPEG is a few MB)
BACKOFF_S = 0.25       # first wait between tries, doubled each time


class EndpointError(ParityError):
    """One HTTP exchange failed: a one-line message naming the endpoint (without credentials) and the problem."""

    def __init__(self, message: str, *, retry: bool = False, down: bool = False, timeout: bool = False):
        super().__init__(message)
        self.retry, self.down, self.timeout = retry, down, timeout


def public_url(url: str) -> str:
    """The URL as it may be shown: scheme, host, port and path (userinfo, query and fragment dropped)."""
    u = urllib.parse.urlsplit(url)
    host = u.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{u.port}" if u.port else "")
    return urllib.parse.urlunsplit((u.scheme, netloc, u.path.rstrip("/"), "", ""))


def parse_endpoint(url: str) -> tuple[str, str | None]:
    """(base URL without userinfo, Basic auth header or None). A URL that cannot work is a usage error."""
    try:
        u = urllib.parse.urlsplit(url)
        u.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ConfigError(f"--endpoint: not a URL: {public_url(url)!r}") from None
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ConfigError(f"--endpoint must be an http:// or https:// URL with a host, got {public_url(url)!r}")
    basic = None
    if u.username is not None:
        pair = f"{urllib.parse.unquote(u.username)}:{urllib.parse.unquote(u.password or '')}"
        basic = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
    return public_url(url), basic


@dataclass
class Fetched:
    """One item's outcome: the image file kept in the run folder and where it came from, or the error."""

    path: Path | None = None
    source: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class EndpointClient:
    """Submit every item as its own request, poll until each finishes, keep each result image."""

    def __init__(self, url: str, *, timeout: float = 30.0, wait: float = 1800.0, poll: float = 0.5,
                 token: str | None = None, sleep: Callable[[float], None] = time.sleep):
        self.base, basic = parse_endpoint(url)
        self.public_url = self.base
        self.timeout, self.wait, self.poll, self.sleep = float(timeout), float(wait), float(poll), sleep
        token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self._auth = f"Bearer {token}" if token else basic
        self.fetched: dict[str, Fetched] = {}

    # -- HTTP ----------------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: Any = None) -> Any:
        """One JSON exchange, retried with backoff on connection errors, timeouts and 5xx answers (a POST that
        timed out is not sent again: the server may have queued it, and a second copy would render twice)."""
        wait = BACKOFF_S
        for attempt in range(RETRIES + 1):
            try:
                return self._once(method, path, body)
            except EndpointError as e:
                if not e.retry or attempt == RETRIES or (e.timeout and method == "POST"):
                    raise
                log.debug("retrying %s %s after: %s", method, path, e)
                self.sleep(wait)
                wait *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _once(self, method: str, path: str, body: Any) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self._auth:
            req.add_header("Authorization", self._auth)
        what = f"{method} {self.public_url}{path}"
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = _error_detail(e)
            raise EndpointError(f"inference server error: {what} answered HTTP {e.code}{detail}",
                                retry=e.code >= 500) from None
        except (TimeoutError, socket.timeout):
            raise EndpointError(f"inference server timeout: {what} did not answer within {self.timeout:g} s",
                                retry=True, timeout=True) from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise EndpointError(f"inference server timeout: {what} did not answer within {self.timeout:g} s",
                                    retry=True, timeout=True) from None
            text = "connection refused" if isinstance(reason, ConnectionRefusedError) else str(reason)
            raise EndpointError(f"inference server down: cannot reach {self.public_url} ({text})", retry=True,
                                down=True) from None
        except (ConnectionError, OSError) as e:
            raise EndpointError(f"inference server down: {what} failed ({type(e).__name__}: {e})", retry=True,
                                down=True) from None
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise EndpointError(f"inference server error: {what} did not answer JSON") from None

    # -- the exchange --------------------------------------------------------------------------------------
    def models(self) -> list[str]:
        doc = self._call("GET", "/v1/models")
        models = doc.get("models") if isinstance(doc, dict) else None
        if not isinstance(models, list):
            raise EndpointError(f"inference server error: GET {self.public_url}/v1/models did not list models")
        return [str(m.get("id")) for m in models if isinstance(m, dict)]

    def fetch_all(self, items: list[Any], out_dir: Path) -> None:
        """Every item's render into `out_dir`, or its error; one failing item never stops the others."""
        try:
            models = self.models()
        except EndpointError as e:  # the server is not there: every item says so, at once
            for it in items:
                self.fetched[it.id] = Fetched(error=str(e), source=self._source())
            return
        log.info("submitting %d request(s) to %s", len(items), self.public_url)
        pending: dict[str, tuple[Any, str]] = {}
        for it in items:
            try:
                pending[it.id] = (it, self._submit(it, models))
            except ParityError as e:
                self.fetched[it.id] = Fetched(error=str(e), source=self._source())
        self._poll(pending, out_dir)
        done = sum(1 for f in self.fetched.values() if f.error is None)
        log.info("%s rendered %d of %d item(s)", self.public_url, done, len(items))

    def _submit(self, item: Any, models: list[str]) -> str:
        from parity.external.export import render_request, request_document

        # the settings under test: the preview's own unless --set / --profile / --request say otherwise
        r = render_request(item.id, item, item.inference.spec)
        if r.arch not in models:
            raise EndpointError(f"inference server error: {self.public_url} does not serve model {r.arch!r} "
                                f"(it lists {', '.join(models) or 'none'})")
        doc = self._call("POST", "/v1/inference", request_document([r]))
        rid = doc.get("request_id") if isinstance(doc, dict) else None
        if not isinstance(rid, str) or not rid:
            raise EndpointError(f"inference server error: POST {self.public_url}/v1/inference gave no request_id")
        return rid

    def _poll(self, pending: dict[str, tuple[Any, str]], out_dir: Path) -> None:
        deadline, interval = time.monotonic() + self.wait, self.poll
        while pending:
            for iid, (it, rid) in list(pending.items()):
                try:
                    status = self._status(rid)
                    if status in DONE:
                        self.fetched[iid] = self._result(it, rid, out_dir)
                        del pending[iid]
                except ParityError as e:
                    self.fetched[iid] = Fetched(error=str(e), source=self._source(rid))
                    del pending[iid]
            if pending and time.monotonic() >= deadline:
                for iid, (_, rid) in pending.items():
                    self.fetched[iid] = Fetched(error=f"inference server timeout: request {rid} did not finish "
                                                      f"within {self.wait:g} s", source=self._source(rid))
                return
            if pending:
                self.sleep(interval)
                interval = min(interval * 1.5, 5.0)

    def _status(self, rid: str) -> str:
        doc = self._call("GET", f"/v1/requests/{urllib.parse.quote(rid)}/status")
        return str(doc.get("status", "")) if isinstance(doc, dict) else ""

    def _result(self, item: Any, rid: str, out_dir: Path) -> Fetched:
        doc = self._call("GET", f"/v1/requests/{urllib.parse.quote(rid)}/result")
        doc = doc if isinstance(doc, dict) else {}
        source = self._source(rid)
        if doc.get("status") != "succeeded":
            why = doc.get("error") or doc.get("status") or "no status"
            return Fetched(error=f"inference server error: request {rid} {doc.get('status', 'ended')}: {why}",
                           source=source)
        images = (doc.get("outputs") or {}).get("images") if isinstance(doc.get("outputs"), dict) else None
        if not isinstance(images, list) or not images or not isinstance(images[0], dict):
            return Fetched(error=f"inference server error: request {rid} succeeded without an image", source=source)
        path = self._keep(images[0], item, out_dir, rid)
        source.update(file=str(images[0].get("file_path") or images[0].get("url")), seed=images[0].get("seed"))
        return Fetched(path=path, source=source)

    def _keep(self, image: dict[str, Any], item: Any, out_dir: Path, rid: str) -> Path:
        """The result image copied into the run folder (read from the server's path, or downloaded)."""
        from parity.run import item_file_name

        out_dir.mkdir(parents=True, exist_ok=True)
        fmt = str(image.get("format") or "jpeg").lower()
        dest = out_dir / f"{item_file_name(item.id)}.{'jpg' if fmt in ('jpeg', 'jpg') else fmt}"
        url, file_path = image.get("url"), image.get("file_path")
        if isinstance(url, str) and url.startswith(("http://", "https://")):
            self._download(url, dest)
        elif isinstance(file_path, str) and Path(file_path).is_file():
            from parity.external.sources import read_render

            read_render(Path(file_path))   # an image (a server's answer is input like any other) before copying
            shutil.copyfile(file_path, dest)
        else:
            raise EndpointError(f"inference server result: request {rid} wrote its image to {file_path} on the "
                                "server's machine, which is not readable here (run parity where the server's "
                                "OUTPUT_BASE_PATH is visible)")
        return dest

    def _download(self, url: str, dest: Path) -> None:
        req = urllib.request.Request(url)
        if self._auth and public_url(url).startswith(self.public_url):
            req.add_header("Authorization", self._auth)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp, dest.open("wb") as f:
                data = resp.read(MAX_DOWNLOAD + 1)
                if len(data) > MAX_DOWNLOAD:
                    raise EndpointError(f"inference server result: {public_url(url)} is larger than "
                                        f"{MAX_DOWNLOAD // 2**20} MiB; not an image parity will read")
                f.write(data)
        except (urllib.error.URLError, OSError) as e:
            raise EndpointError(f"inference server result: cannot download {public_url(url)} "
                                f"({type(e).__name__})") from None

    def _source(self, rid: str | None = None) -> dict[str, Any]:
        return {"kind": "endpoint", "location": self.public_url, **({"request_id": rid} if rid else {})}

    def result(self, item: Any) -> tuple[Path, dict[str, Any]]:
        """The item's kept image and source (parity.external.sources); its error as a ParityError."""
        got = self.fetched.get(item.id)
        if got is None:
            raise ParityError(f"missing render: {item.id} was not requested from {self.public_url}")
        if got.error:
            raise ParityError(got.error)
        return got.path, dict(got.source)


def _error_detail(e: urllib.error.HTTPError) -> str:
    """`: CODE message` from a FastAPI error body ({"detail": {"error": {...}}} or {"detail": [...]})."""
    try:
        doc = json.loads(e.read(4096).decode("utf-8", "replace"))
    except Exception:  # noqa: BLE001 - no readable body: the status says enough
        return ""
    detail = doc.get("detail") if isinstance(doc, dict) else None
    err = detail.get("error") if isinstance(detail, dict) else None
    if isinstance(err, dict):
        text = f"{err.get('code', '')} {err.get('message', '')}".strip()
    elif isinstance(detail, list) and detail and isinstance(detail[0], dict):
        text = f"{'.'.join(map(str, detail[0].get('loc', [])))}: {detail[0].get('msg', '')}"
    elif isinstance(detail, str):
        text = detail
    else:
        return ""
    text = " ".join(text.split())
    return f": {text[:300]}" if text else ""
