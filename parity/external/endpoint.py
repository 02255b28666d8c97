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
server; the server itself has no authentication); `user:password@` in the URL is sent as Basic auth. Either goes
only to the endpoint's own origin (scheme, host, port: parity.http.Credential), never over plain http to another
machine unless the user passes --endpoint-allow-insecure-token, and never appears in a message, the results or the
report: they show `public_url` (no userinfo, no query).

Time: every HTTP exchange ends within `timeout` seconds in total; the whole fetch (models, submissions, polls,
downloads, retries included) within `wait` seconds of its start; what is not done by then is that item's ERROR.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from parity import http, limits
from parity.errors import ConfigError, ParityError
from parity.http import public_url  # noqa: F401 - shown URLs, importable from here as before
from parity.items import PlannedItem
from parity.jsonio import parse_json, short_text
from parity.record import RenderSource

log = logging.getLogger("parity")

TOKEN_ENV = "PARITY_ENDPOINT_TOKEN"
DONE = {"succeeded", "failed", "canceled", "cancelled"}
RETRIES = 3            # extra tries after a connection error, a timeout or a 5xx answer
MAX_REPLY = 16 * 2**20           # bytes of one JSON answer (a real one is under a few KB)
BACKOFF_S = 0.25       # first wait between tries, doubled each time
IMAGE_FORMATS = ("jpeg", "jpg", "png", "webp")   # the `format` values a result image may have
INSECURE_FLAG = "--endpoint-allow-insecure-token"


class EndpointError(ParityError):
    """One HTTP exchange failed: a one-line message naming the endpoint (without credentials) and the problem."""

    def __init__(self, message: str, *, retry: bool = False, down: bool = False, timeout: bool = False):
        super().__init__(message)
        self.retry, self.down, self.timeout = retry, down, timeout


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
        import base64

        pair = f"{urllib.parse.unquote(u.username)}:{urllib.parse.unquote(u.password or '')}"
        basic = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
    return public_url(url), basic


def endpoint_credential(base: str, value: str | None, allow_insecure: bool) -> http.Credential | None:
    """The Authorization value bound to the endpoint's origin; refused (usage error) over plain http to a host
    that is not this machine, unless the user said so (`allow_insecure`)."""
    if not value:
        return None
    origin = http.Origin.of(base)
    if origin.scheme == "http" and not origin.is_loopback and not allow_insecure:
        raise ConfigError(f"--endpoint {public_url(base)}: refusing to send the credential (${TOKEN_ENV} or the "
                          f"URL's user:password) over plain http to another machine; use https, or pass "
                          f"{INSECURE_FLAG} if this network is trusted")
    return http.Credential(value, origin)


@dataclass
class Fetched:
    """One item's outcome: the image file kept in the run folder and where it came from, or the error."""

    source: RenderSource
    path: Path | None = None
    error: str | None = None


class EndpointClient:
    """Submit every item as its own request, poll until each finishes, keep each result image."""

    def __init__(self, url: str, *, timeout: float = 30.0, wait: float = 1800.0, poll: float = 0.5,
                 token: str | None = None, sleep: Callable[[float], None] = time.sleep,
                 allow_insecure_token: bool = False):
        self.base, basic = parse_endpoint(url)
        self.public_url = self.base
        self.timeout, self.wait, self.poll, self.sleep = float(timeout), float(wait), float(poll), sleep
        token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self._credential = endpoint_credential(self.base, f"Bearer {token}" if token else basic, allow_insecure_token)
        self.deadline = time.monotonic() + self.wait   # restarted by fetch_all
        self.fetched: dict[str, Fetched] = {}

    # -- HTTP ----------------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: Any = None) -> Any:  # JSON in, JSON out (any shape)
        """One JSON exchange, retried with backoff on connection errors, timeouts and 5xx answers while the
        wait lasts (a POST that timed out is not sent again: the server may have queued it, and a second copy
        would render twice)."""
        wait = BACKOFF_S
        for attempt in range(RETRIES + 1):
            try:
                return self._once(method, path, body)
            except EndpointError as e:
                late = time.monotonic() + wait >= self.deadline
                if not e.retry or attempt == RETRIES or (e.timeout and method == "POST") or late:
                    raise
                log.debug("retrying %s %s after: %s", method, path, e)
                self.sleep(wait)
                wait *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _limit(self, what: str) -> float:
        """This exchange's time: --endpoint-timeout, or what is left of --endpoint-wait when that is less."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise EndpointError(f"inference server timeout: {what}: the --endpoint-wait of {self.wait:g} s is over")
        return min(self.timeout, left)

    def _once(self, method: str, path: str, body: Any) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Accept": "application/json", **({"Content-Type": "application/json"} if data else {})}
        what = f"{method} {self.public_url}{path}"
        try:
            resp = http.request(method, self.base + path, limit_s=self._limit(what), max_bytes=MAX_REPLY, body=data,
                                headers=headers, credential=self._credential)
        except http.HttpError as e:
            raise _endpoint_error(e, what) from None
        try:
            return parse_json(resp.body, what, max_bytes=MAX_REPLY)
        except ConfigError as e:
            raise EndpointError(f"inference server error: {what} did not answer usable JSON ({e.message})") from None

    # -- the exchange --------------------------------------------------------------------------------------
    def models(self) -> list[str]:
        doc = self._call("GET", "/v1/models")
        models = doc.get("models") if isinstance(doc, dict) else None
        if not isinstance(models, list):
            raise EndpointError(f"inference server error: GET {self.public_url}/v1/models did not list models")
        return [str(m.get("id")) for m in models if isinstance(m, dict)]

    def fetch_all(self, items: list[PlannedItem], out_dir: Path) -> None:
        """Every item's render into `out_dir`, or its error; one failing item never stops the others. Ends
        within --endpoint-wait (plus at most one exchange's cleanup)."""
        self.deadline = time.monotonic() + self.wait
        try:
            models = self.models()
        except EndpointError as e:  # the server is not there: every item says so, at once
            for it in items:
                self.fetched[it.id] = Fetched(error=str(e), source=self._source())
            return
        log.info("submitting %d request(s) to %s", len(items), self.public_url)
        pending: dict[str, tuple[PlannedItem, str]] = {}
        for it in items:
            try:
                pending[it.id] = (it, self._submit(it, models))
            except ParityError as e:
                self.fetched[it.id] = Fetched(error=str(e), source=self._source())
        self._poll(pending, out_dir)
        done = sum(1 for f in self.fetched.values() if f.error is None)
        log.info("%s rendered %d of %d item(s)", self.public_url, done, len(items))

    def _submit(self, item: PlannedItem, models: list[str]) -> str:
        from parity.external.export import render_request, request_document

        # the settings under test: the preview's own unless --set / --profile / --request say otherwise
        r = render_request(item.id, item, item.inference.spec)
        if r.arch not in models:
            raise EndpointError(f"inference server error: {self.public_url} does not serve model {r.arch!r} "
                                f"(it lists {short_text(', '.join(models) or 'none')})")
        doc = self._call("POST", "/v1/inference", request_document([r]))
        rid = doc.get("request_id") if isinstance(doc, dict) else None
        if not isinstance(rid, str) or not rid:
            raise EndpointError(f"inference server error: POST {self.public_url}/v1/inference gave no request_id")
        if len(rid) > 256 or not rid.isprintable():
            raise EndpointError(f"inference server error: POST {self.public_url}/v1/inference gave an unusable "
                                f"request_id ({short_text(repr(rid), 80)})")
        return rid

    def _poll(self, pending: dict[str, tuple[PlannedItem, str]], out_dir: Path) -> None:
        interval = self.poll
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
            if pending and time.monotonic() + interval >= self.deadline:
                for iid, (_, rid) in pending.items():
                    self.fetched[iid] = Fetched(error=f"inference server timeout: request {rid} did not finish "
                                                      f"within {self.wait:g} s", source=self._source(rid))
                return
            if pending:
                self.sleep(interval)
                interval = min(interval * 1.5, 5.0)

    def _status(self, rid: str) -> str:
        doc = self._call("GET", f"/v1/requests/{urllib.parse.quote(rid, safe='')}/status")
        return str(doc.get("status", "")) if isinstance(doc, dict) else ""

    def _result(self, item: PlannedItem, rid: str, out_dir: Path) -> Fetched:
        doc = self._call("GET", f"/v1/requests/{urllib.parse.quote(rid, safe='')}/result")
        doc = doc if isinstance(doc, dict) else {}
        source = self._source(rid)
        if doc.get("status") != "succeeded":
            why = short_text(str(doc.get("error") or doc.get("status") or "no status"))
            return Fetched(error=f"inference server error: request {rid} {short_text(str(doc.get('status', 'ended')))}"
                                 f": {why}", source=source)
        images = (doc.get("outputs") or {}).get("images") if isinstance(doc.get("outputs"), dict) else None
        if not isinstance(images, list) or not images or not isinstance(images[0], dict):
            return Fetched(error=f"inference server error: request {rid} succeeded without an image", source=source)
        path = self._keep(images[0], item, out_dir, rid)
        where = images[0].get("url") if isinstance(images[0].get("url"), str) else images[0].get("file_path")
        source.file = public_url(where) if images[0].get("url") else short_text(str(where))
        source.extra["seed"] = images[0].get("seed")   # as the server reported it
        return Fetched(path=path, source=source)

    def _keep(self, image: dict[str, Any], item: PlannedItem, out_dir: Path, rid: str) -> Path:
        """The result image kept in the run folder under a name made of the item id only (read from the server's
        path, or downloaded); the server's `format` only has to be one parity reads."""
        from parity.external.sources import keep_render

        fmt = str(image.get("format") or "jpeg").lower()
        if fmt not in IMAGE_FORMATS:
            raise EndpointError(f"inference server result: request {rid} gave an image of format "
                                f"{short_text(repr(fmt), 60)}, not one parity reads ({', '.join(IMAGE_FORMATS)})")
        out_dir.mkdir(parents=True, exist_ok=True)
        url, file_path = image.get("url"), image.get("file_path")
        if isinstance(url, str) and url.startswith(("http://", "https://")):
            return self._download(url, item, out_dir)
        if isinstance(file_path, str) and _is_file(file_path):
            return keep_render(Path(file_path), item.id, out_dir)
        raise EndpointError(f"inference server result: request {rid} wrote its image to "
                            f"{short_text(str(file_path))} on the server's machine, which is not readable here (run "
                            "parity where the server's OUTPUT_BASE_PATH is visible)")

    def _download(self, url: str, item: PlannedItem, out_dir: Path) -> Path:
        """The image at `url` (the credential only if it is the endpoint's origin), checked as an image, kept."""
        from parity.external.sources import keep_render

        what = f"GET {public_url(url)}"
        try:
            resp = http.request("GET", url, limit_s=self._limit(what), max_bytes=limits.MAX_IMAGE_BYTES,
                                credential=self._credential)
        except http.HttpError as e:
            raise EndpointError(f"inference server result: cannot download {public_url(url)} ({e.message})") from None
        from parity import fileio
        from parity.ids import item_file_name

        tmp = fileio.write_bytes(out_dir / f".download-{item_file_name(item.id)}", resp.body, durable=False)
        try:   # read back as an image (whatever the server called it), kept under the item's name, then removed
            return keep_render(tmp, item.id, out_dir)
        finally:
            tmp.unlink(missing_ok=True)

    def _source(self, rid: str | None = None) -> RenderSource:
        return RenderSource(kind="endpoint", location=self.public_url, request_id=rid or None)

    def result(self, item: PlannedItem) -> tuple[Path, RenderSource]:
        """The item's kept image and source (parity.external.sources); its error as a ParityError."""
        got = self.fetched.get(item.id)
        if got is None:
            raise ParityError(f"missing render: {item.id} was not requested from {self.public_url}")
        if got.error:
            raise ParityError(got.error)
        return got.path, dataclasses.replace(got.source, extra=dict(got.source.extra))


def _is_file(path: str) -> bool:
    """A server-given path names a regular file here (a NUL byte or an over-long name is simply not one)."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def _endpoint_error(e: http.HttpError, what: str) -> EndpointError:
    """parity.http's failure as the endpoint's one-line message (down / error / timeout), with whether to retry."""
    if e.kind == "status":
        return EndpointError(f"inference server error: {what} answered HTTP {e.status}{_error_detail(e.body)}",
                             retry=e.status >= 500)
    if e.kind == "timeout":
        return EndpointError(f"inference server timeout: {e.message}", retry=True, timeout=True)
    if e.kind == "down":
        return EndpointError(f"inference server down: {e.message}", retry=True, down=True)
    return EndpointError(f"inference server error: {e.message}")


def _error_detail(body: bytes) -> str:
    """`: CODE message` from a FastAPI error body ({"detail": {"error": {...}}} or {"detail": [...]})."""
    try:
        doc = parse_json(body, "error body", max_bytes=http.ERROR_BODY_BYTES)
    except ParityError:  # no readable body: the status says enough
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
