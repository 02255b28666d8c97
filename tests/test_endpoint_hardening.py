"""The endpoint client against a hostile server (issue 35 rows 1, 2, 4, 5 and the weaker points on downloads):
the credential stays with the endpoint's origin, every exchange and the whole fetch end in time, a bad result
costs its item only, and no body is read without a cap. Every server is tests/fake_endpoint.py on 127.0.0.1;
every test is bounded in time (an alarm per test, and asserted wall times)."""

from __future__ import annotations

import random
import signal
import time

import pytest

from fake_endpoint import FakeEndpoint, drip, endpoint_items, huge, json_reply, png_bytes, raw, redirect

TOKEN = "tok-3b1f9e"
TEST_LIMIT_S = 90   # no endpoint test may hang a run: one that would is stopped here and fails


@pytest.fixture(autouse=True)
def _time_limit():
    def expire(*_):
        raise TimeoutError(f"endpoint test ran over {TEST_LIMIT_S} s (a client that waits forever?)")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TEST_LIMIT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _client(url: str, **kw):
    from parity.external.endpoint import EndpointClient

    kw.setdefault("timeout", 2.0)
    kw.setdefault("wait", 10.0)
    return EndpointClient(url, poll=0.01, **kw)


def _fetch(client, tmp_path, n=2):
    items = endpoint_items(n)
    started = time.monotonic()
    client.fetch_all(items, tmp_path / "external")
    return items, time.monotonic() - started


# ------------------------------------------------------------------------------ row 1: where the credential goes
def test_redirect_to_another_origin_is_refused_and_the_token_stays_home(tmp_path):
    """A result whose image redirects to another port: that item ERROR naming the target; the other server
    never sees the token; the other item (served on the endpoint itself) is kept."""
    with FakeEndpoint() as ep, FakeEndpoint() as other:
        other.route("GET", "/stolen.png", raw(png_bytes(), "image/png"))
        ep.route("GET", "/img/bad.png", redirect(f"{other.url}/stolen.png"))
        ep.route("GET", "/img/good.png", raw(png_bytes(), "image/png"))
        ep.images = {"r0": {"format": "png", "url": f"{ep.url}/img/good.png"},
                     "r1": {"format": "png", "url": f"{ep.url}/img/bad.png"}}
        items, _ = _fetch(_client(ep.url, token=TOKEN), tmp_path)
        good, bad = items[0].id, items[1].id
        assert other.seen == []          # not even asked: a redirect to another origin is not followed
        assert {s.auth for s in ep.seen} == {f"Bearer {TOKEN}"}
    client_errors = _errors_of(tmp_path)
    assert good not in client_errors
    assert f"redirected to {other.url}/stolen.png" in client_errors[bad]
    assert "another origin" in client_errors[bad]


_LAST: dict = {}


def _errors_of(tmp_path) -> dict:
    return {k: v.error for k, v in _LAST["client"].fetched.items() if v.error}


@pytest.fixture(autouse=True)
def _remember_client(monkeypatch):
    """Keep the last client built, so a test can read its per-item outcome after the servers are closed."""
    from parity.external import endpoint

    real = endpoint.EndpointClient.__init__

    def init(self, *a, **kw):
        real(self, *a, **kw)
        _LAST["client"] = self
    monkeypatch.setattr(endpoint.EndpointClient, "__init__", init)


def test_a_result_url_on_another_port_is_downloaded_without_the_credential(tmp_path):
    """The old "same server" test was a string prefix: http://127.0.0.1:2345 also matched :23451. Here the
    image lives on another origin: it is fetched, but without the Authorization header."""
    with FakeEndpoint() as ep, FakeEndpoint() as cdn:
        cdn.route("GET", "/a.png", raw(png_bytes(), "image/png"))
        ep.image = {"format": "png", "url": f"{cdn.url}/a.png"}
        _fetch(_client(ep.url, token=TOKEN), tmp_path, n=1)
        assert [s.auth for s in cdn.seen] == [None]
        assert {s.auth for s in ep.seen} == {f"Bearer {TOKEN}"}
    assert not _errors_of(tmp_path)


def test_basic_credentials_in_the_url_never_leave_the_endpoints_origin(tmp_path):
    with FakeEndpoint() as ep, FakeEndpoint() as cdn:
        cdn.route("GET", "/a.png", raw(png_bytes(), "image/png"))
        ep.image = {"format": "png", "url": f"http://bob:pw@127.0.0.1:{cdn.port}/a.png"}
        _fetch(_client(f"http://alice:secret@127.0.0.1:{ep.port}", token=""), tmp_path, n=1)
        assert {s.auth for s in ep.seen} == {"Basic YWxpY2U6c2VjcmV0"}   # base64("alice:secret")
        assert [s.auth for s in cdn.seen] == [None]                     # neither alice's nor bob's


def test_a_redirect_within_the_origin_is_followed_with_the_credential(tmp_path):
    with FakeEndpoint() as ep:
        ep.route("GET", "/img/moved.png", redirect("/img/here.png", 307))
        ep.route("GET", "/img/here.png", raw(png_bytes(), "image/png"))
        ep.image = {"format": "png", "url": f"{ep.url}/img/moved.png"}
        _fetch(_client(ep.url, token=TOKEN), tmp_path, n=1)
        assert [s.auth for s in ep.seen if s.path.startswith("/img/")] == [f"Bearer {TOKEN}"] * 2
    assert not _errors_of(tmp_path)


@pytest.mark.parametrize("seed", range(4))
def test_redirects_to_random_other_origins_are_all_refused(tmp_path, seed):
    """Randomized targets: another port, the same port under another name or scheme, a port that starts with
    the endpoint's, userinfo tricks. None is followed; the endpoint's token goes nowhere else."""
    rng = random.Random(seed)
    with FakeEndpoint() as ep:
        p = ep.port
        targets = [f"http://localhost:{p}/x.png", f"https://127.0.0.1:{p}/x.png", f"http://127.0.0.1:{p}1/x.png",
                   f"http://127.0.0.1:{p}@127.0.0.2:{p}/x.png", f"http://127.0.0.2:{p}/x.png",
                   f"//127.0.0.3:{p}/x.png", f"http://127.0.0.1.evil.example:{p}/x.png",
                   f"http://127.0.0.1:{rng.choice([p + 1, p - 1, 1, 65535])}/x.png"]
        rng.shuffle(targets)
        ep.images = {f"r{i}": {"format": "png", "url": f"{ep.url}/go/{i}"} for i in range(len(targets))}
        for i, t in enumerate(targets):
            ep.route("GET", f"/go/{i}", redirect(t, rng.choice([301, 302, 303, 307, 308])))
        _fetch(_client(ep.url, token=TOKEN, timeout=1.0), tmp_path, n=len(targets))
        assert {s.port for s in ep.seen} == {p}
        assert not [s for s in ep.seen if s.path.endswith("x.png")]
    errors = _errors_of(tmp_path)
    assert len(errors) == len(targets) and all("another origin" in e for e in errors.values()), errors


def test_credential_origin_is_compared_as_parsed_values():
    from parity.http import Credential, Origin

    cred = Credential("Bearer t", Origin.of("http://gpu-box:2345/base"))
    same = ["http://gpu-box:2345/x", "HTTP://GPU-BOX:2345/y", "http://gpu-box.:2345/", "http://u:p@gpu-box:2345/"]
    other = ["http://gpu-box:23451/x", "http://gpu-box.evil.com:2345/", "https://gpu-box:2345/", "http://gpu-box/",
             "http://gpu-box:2345@evil.com/", "http://evil.com/http://gpu-box:2345/", "ftp://gpu-box:2345/"]
    assert all(cred.header_for(u) == "Bearer t" for u in same)
    assert all(cred.header_for(u) is None for u in other)
    default = Credential("Bearer t", Origin.of("https://api.example"))
    assert default.header_for("https://api.example:443/v1") == "Bearer t"
    assert default.header_for("http://api.example:443/v1") is None


def test_a_token_over_plain_http_to_another_machine_needs_the_users_say_so(monkeypatch):
    from parity.errors import ConfigError
    from parity.external.endpoint import EndpointClient

    with pytest.raises(ConfigError) as e:
        EndpointClient("http://gpu-box:8000", token=TOKEN)
    assert "--endpoint-allow-insecure-token" in str(e.value) and TOKEN not in str(e.value)
    with pytest.raises(ConfigError):
        EndpointClient("http://alice:pw@10.0.0.5:8000", token="")
    EndpointClient("http://gpu-box:8000", token=TOKEN, allow_insecure_token=True)
    for ok in ("https://gpu-box:8000", "http://127.0.0.1:8000", "http://localhost:1", "http://[::1]:80"):
        EndpointClient(ok, token=TOKEN)
    EndpointClient("http://gpu-box:8000", token="")   # no credential: nothing to protect


def test_insecure_token_is_a_usage_error_on_the_command_line(tmp_path, monkeypatch, capsys):
    from parity.cli import main

    monkeypatch.setenv("PARITY_ENDPOINT_TOKEN", TOKEN)
    job = tmp_path / "job"
    job.mkdir()
    assert main(["diff", str(job), "--endpoint", "http://gpu-box:8000", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--endpoint-allow-insecure-token" in err and TOKEN not in err


# ------------------------------------------------------------------------------------- row 2: deadlines
def test_a_slow_drip_on_models_ends_within_the_wait(tmp_path):
    """1 byte a second never lets a single read time out; the exchange still ends at --endpoint-timeout and the
    whole fetch, retries included, at --endpoint-wait."""
    with FakeEndpoint() as ep:
        ep.route("GET", "/v1/models", drip(b'{"models": [{"id": "flux2"}]}' + b" " * 100, every_s=0.5))
        items, took = _fetch(_client(ep.url, timeout=1.0, wait=3.0), tmp_path)
    assert took < 6.0, took
    errors = _errors_of(tmp_path)
    assert set(errors) == {it.id for it in items}
    assert all(e.startswith("inference server timeout: GET http://127.0.0.1:") for e in errors.values()), errors


def test_a_slow_drip_on_one_image_costs_that_item_only(tmp_path):
    with FakeEndpoint() as ep:
        ep.route("GET", "/slow.png", drip(png_bytes(), every_s=0.5, ctype="image/png"))
        ep.route("GET", "/fast.png", raw(png_bytes(), "image/png"))
        ep.images = {"r0": {"format": "png", "url": f"{ep.url}/slow.png"},
                     "r1": {"format": "png", "url": f"{ep.url}/fast.png"}}
        items, took = _fetch(_client(ep.url, timeout=1.0, wait=30.0), tmp_path)
    assert took < 10.0, took   # 1 try + 3 retries of 1 s each, plus backoff
    errors = _errors_of(tmp_path)
    assert list(errors) == [items[0].id] and "did not answer within 1 s" in errors[items[0].id]
    assert not list((tmp_path / "external").glob(".*"))   # no temporary left behind


def test_every_exchange_of_a_hanging_server_ends_at_the_wait(tmp_path):
    """A status route that never finishes a reply: polls stop at --endpoint-wait, the item is ERROR."""
    with FakeEndpoint() as ep:
        ep.route("GET", "/v1/requests/r0/status", drip(b'{"status": "in_progress"}' * 50, every_s=0.3))
        items, took = _fetch(_client(ep.url, timeout=5.0, wait=2.0), tmp_path, n=1)
    assert took < 4.0, took
    assert "inference server timeout" in _errors_of(tmp_path)[items[0].id]


# ------------------------------------------------------------------------------- row 4: the server's format
@pytest.mark.parametrize("fmt", ["png/x", "p" * 300, "/../../etc/x", "png\x00", "../png"])
def test_a_hostile_format_costs_its_item_only_and_never_reaches_a_path(tmp_path, fmt):
    with FakeEndpoint() as ep:
        ep.route("GET", "/a.png", raw(png_bytes(), "image/png"))
        ep.images = {"r0": {"format": fmt, "url": f"{ep.url}/a.png"}, "r1": {"format": "png", "url": f"{ep.url}/a.png"}}
        items, _ = _fetch(_client(ep.url), tmp_path)
    errors = _errors_of(tmp_path)
    assert list(errors) == [items[0].id]
    assert "not one parity reads" in errors[items[0].id] and len(errors[items[0].id]) < 400
    kept = [p.name for p in (tmp_path / "external").iterdir()]
    assert len(kept) == 1 and kept[0].startswith("case_step10-p1_") and kept[0].endswith(".png")


@pytest.mark.parametrize("file_path", ["x" * 5000, "/tmp/a\x00b", "/dev/zero", "/", 12])
def test_a_hostile_file_path_costs_its_item_only(tmp_path, file_path):
    with FakeEndpoint() as ep:
        ep.route("GET", "/a.png", raw(png_bytes(), "image/png"))
        ep.images = {"r0": {"format": "png", "file_path": file_path}, "r1": {"format": "png", "url": f"{ep.url}/a.png"}}
        items, _ = _fetch(_client(ep.url), tmp_path)
    errors = _errors_of(tmp_path)
    assert list(errors) == [items[0].id] and len(errors[items[0].id]) < 600


def test_kept_file_suffix_is_the_real_format_not_the_servers_word(tmp_path):
    """A JPEG announced as png is kept as .jpg; a TIFF (announced as png) as the decoded image in a .png."""
    with FakeEndpoint() as ep:
        ep.route("GET", "/j", raw(png_bytes(fmt="JPEG"), "image/jpeg"))
        ep.route("GET", "/t", raw(png_bytes(fmt="TIFF"), "image/tiff"))
        ep.images = {"r0": {"format": "png", "url": f"{ep.url}/j"}, "r1": {"format": "png", "url": f"{ep.url}/t"}}
        items, _ = _fetch(_client(ep.url), tmp_path)
    from PIL import Image

    client = _LAST["client"]
    jpg, tif = client.fetched[items[0].id].path, client.fetched[items[1].id].path
    assert jpg.suffix == ".jpg" and Image.open(jpg).format == "JPEG"
    assert tif.suffix == ".png" and Image.open(tif).format == "PNG"


# ------------------------------------------------------------------------------------ row 5: body caps
@pytest.mark.parametrize("declare_length", [True, False])
def test_a_huge_json_reply_is_refused_at_the_cap(tmp_path, monkeypatch, declare_length):
    from parity.external import endpoint

    monkeypatch.setattr(endpoint, "MAX_REPLY", 2**20)   # the real cap is 16 MiB; the test sends 8 MiB
    with FakeEndpoint() as ep:
        ep.route("GET", "/v1/models", huge(8 * 2**20, declare_length))
        items, took = _fetch(_client(ep.url, timeout=5.0), tmp_path, n=1)
    error = _errors_of(tmp_path)[items[0].id]
    assert "more than parity's limit of 1 MiB" in error and error.startswith("inference server error: GET")
    assert took < 5.0


def test_an_oversize_download_leaves_no_file(tmp_path, monkeypatch):
    from parity import limits

    monkeypatch.setattr(limits, "MAX_IMAGE_BYTES", 2**20)
    with FakeEndpoint() as ep:
        ep.route("GET", "/big.png", huge(3 * 2**20, ctype="image/png"))
        ep.image = {"format": "png", "url": f"{ep.url}/big.png"}
        items, _ = _fetch(_client(ep.url), tmp_path, n=1)
    assert "more than parity's limit of 1 MiB" in _errors_of(tmp_path)[items[0].id]
    assert list((tmp_path / "external").iterdir()) == []


def test_a_non_json_and_a_deeply_nested_reply_are_one_line_errors(tmp_path):
    with FakeEndpoint() as ep:
        ep.route("GET", "/v1/requests/r0/result", raw(b"[" * 100_000 + b"]" * 100_000, "application/json"))
        ep.route("GET", "/v1/requests/r1/result", raw(b"<html>busy</html>", "text/html"))
        items, _ = _fetch(_client(ep.url), tmp_path)
    errors = _errors_of(tmp_path)
    assert "nested too deeply" in errors[items[0].id]
    assert "invalid JSON at line 1, column 1" in errors[items[1].id]
    assert all("\n" not in e for e in errors.values())


def test_a_huge_request_id_is_cut_in_messages(tmp_path):
    with FakeEndpoint() as ep:
        ep.route("POST", "/v1/inference", json_reply({"request_id": "x" * 1_000_000}))
        items, _ = _fetch(_client(ep.url, wait=3.0), tmp_path, n=1)
    assert len(_errors_of(tmp_path)[items[0].id]) < 1000


def test_the_run_finishes_and_writes_its_results_against_a_dripping_server(tmp_path, capsys):
    """Row 2 end to end: `parity diff --endpoint` on the demo job against /v1/models dripping one byte every
    half second; --endpoint-timeout 1, --endpoint-wait 3: exit 1, every item ERROR in results.json, quickly."""
    import json
    from pathlib import Path

    from parity.cli import main
    from parity.demo import build_demo

    demo = build_demo(Path(__file__).resolve().parents[1] / "demo")
    out = tmp_path / "out"
    with FakeEndpoint() as ep:
        ep.route("GET", "/v1/models", drip(b'{"models": [{"id": "flux2"}]}' + b" " * 200, every_s=0.5))
        started = time.monotonic()
        code = main(["diff", str(demo.job), "--endpoint", ep.url, "--endpoint-timeout", "1", "--endpoint-wait", "3",
                     "--out", str(out), "--no-attribution", "-q"])
        took = time.monotonic() - started
    assert code == 1 and took < 30, took
    items = json.loads((out / "results.json").read_text())["items"]
    assert items and all(it["tier"] == "ERROR" and "inference server timeout" in it["error"] for it in items)
