"""Renders from the user's own stack (issue 20, docs/your-own-stack.md): stable item ids, exported requests, a
folder (or manifest) of external renders, a running reference inference server (a local stand-in speaking its
HTTP API), and the explanation of an external render by the reference engine's settings.

The "other stack" is the tiny engine itself at other settings (25 steps, guidance 4, diffusers' empirical
schedule: the reference server's and diffusers' defaults), so what the diagnosis must name is known here
independently of parity's planning code.
"""

from __future__ import annotations

import copy
import json
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from parity.cli import main

STEPS = 4
OTHER = {"sample_steps": 25, "guidance_scale": 4.0, "schedule": "empirical"}   # the user's stack's settings
TOKEN, PASSWORD = "s3cret-t0ken-20", "pw-s3cret-20"

pytest_plugins = ["pytester"]


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tiny_model_dir(smooth_tiny_model_dir):
    """The smooth tiny model: explaining a render recovers settings by search, which needs a model whose pictures
    change smoothly with the knobs (as a trained one's do)."""
    return smooth_tiny_model_dir


@pytest.fixture(scope="module")
def job(tiny_model_dir, tmp_path_factory):
    """A two-prompt job on the tiny model, previews at step 100 (64 px, 4 steps, guidance 7, AI Toolkit schedule)."""
    from parity.demo import demo_config, write_job

    root = tmp_path_factory.mktemp("ext-job")
    cfg = demo_config(root)
    cfg["config"]["process"][0]["sample"].update(width=64, height=64, sample_steps=STEPS,
                                                  prompts=["a cat on a sofa", "a red fox in snow"])
    return write_job(root / "extjob", tiny_model_dir, config=cfg, checkpoints={100: 0.5}, preview_steps=(100,))


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from parity.engine import Engine

    return Engine(tiny_model_dir, device="cpu")


def _specs(job) -> dict[str, object]:
    """item id -> the preview's spec, read with the job reader (the ids built here by the documented rule)."""
    from parity.job import load_job

    return {f"{job.name}[step{it.step}-p{it.index}]": it.resolved.spec for it in load_job(job).items("latest")}


@pytest.fixture(scope="module")
def folder_run(job, engine, tiny_model_dir, tmp_path_factory):
    """`parity diff --renders DIR`: p0 rendered by "another stack" at OTHER, p1 missing, one stray file."""
    d = tmp_path_factory.mktemp("ext-folder")
    renders = d / "renders"
    renders.mkdir()
    ids = sorted(_specs(job))
    spec0 = _specs(job)[ids[0]]
    Image.fromarray(engine.render(spec0.with_(**OTHER)).image).save(renders / f"{ids[0]}.png")
    Image.new("RGB", (64, 64), (9, 9, 9)).save(renders / "stray.webp")
    out = d / "out"
    code = main(["diff", str(job), "--base-model", str(tiny_model_dir), "--renders", str(renders),
                 "--out", str(out), "-q"])
    return code, out, renders, ids


def _items(out: Path) -> dict[str, dict]:
    return {it["id"]: it for it in json.loads((out / "results.json").read_text())["items"]}


# ------------------------------------------------------------------------------------- ids and exported requests
def test_plan_json_ids_are_the_results_ids(job, tiny_model_dir, tmp_path, capsys):
    assert main(["plan", str(job), "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    out = tmp_path / "run"
    assert main(["diff", str(job), "--base-model", str(tiny_model_dir), "--no-attribution", "-q",
                 "--out", str(out)]) in (0, 1)
    results = _items(out)
    assert [r["id"] for r in planned] and {r["id"] for r in planned} == set(results)
    for r in planned:  # the same item: same step, index and prompt
        assert (results[r["id"]]["step"], results[r["id"]]["index"], results[r["id"]]["prompt"]) == \
            (r["step"], r["index"], r["prompt"])


def _roundtrip_job(tmp_path, monkeypatch):
    """test_job_plan's job (no rendering), both prompts at one multiplier so one request can hold them."""
    import test_job_plan

    cfg = copy.deepcopy(test_job_plan.CFG)
    cfg["config"]["process"][0]["sample"]["samples"][0]["prompt"] = "photo of [trigger]"
    monkeypatch.setattr(test_job_plan, "CFG", cfg)
    return test_job_plan.make_job(tmp_path)


# (index) -> (prompt, width, height, seed, steps, guidance): AI Toolkit's rules on test_job_plan's config
# (walk 42 + i, item seed 5, sizes floored 1000 -> 992 and 72 -> 64, [trigger] -> sks).
ROUNDTRIP = {0: ("photo of sks", 992, 512, 42, 28, 4.0), 1: ("a castle", 64, 512, 5, 28, 4.0)}


def test_export_requests_round_trip_through_the_request_parser(tmp_path, capsys, monkeypatch):
    from parity.diagnose.settings import InferenceSettings, inference_spec
    from parity.job import load_job

    root = _roundtrip_job(tmp_path, monkeypatch)
    out = tmp_path / "requests"
    assert main(["plan", str(root), "--step", "20", "--export-requests", str(out)]) == 0
    assert "wrote 2 render request(s)" in capsys.readouterr().err
    ck = str((root / "plan_lora.safetensors").resolve())
    for i, want in ROUNDTRIP.items():
        one = json.loads((out / f"plan_lora[step20-p{i}].json").read_text())
        assert one["id"] == f"plan_lora[step20-p{i}]" and one["file_stem"] == one["id"]
        got = (one["prompt"], one["width"], one["height"], one["seed"], one["sample_steps"], one["guidance_scale"])
        assert got == want and one["lora"] == ck and one["network_multiplier"] == 1.0
    # the reference server's request file reads back, through parity's own parser, to the same settings
    settings = InferenceSettings.from_request_file(out / "request-step20.json")
    for it in load_job(root).items(20):
        s = inference_spec(it.resolved, it.index, settings).spec
        assert (s.prompt, s.width, s.height, s.seed, s.sample_steps, s.guidance_scale) == ROUNDTRIP[it.index]
        assert s.lora_path == ck and s.network_multiplier == 1.0


def test_export_refuses_one_request_for_two_multipliers_and_says_why(tmp_path, capsys):
    from test_job_plan import make_job

    root = make_job(tmp_path)   # prompt 0 has --m 0.8, prompt 1 the default 1.0
    out = tmp_path / "requests"
    assert main(["plan", str(root), "--step", "20", "--export-requests", str(out)]) == 0
    err = capsys.readouterr().err
    assert "step 20: no reference-server request file: the prompts use different LoRA files or multipliers" in err
    assert not (out / "request-step20.json").exists()
    assert json.loads((out / "plan_lora[step20-p0].json").read_text())["network_multiplier"] == 0.8


# ------------------------------------------------------------------------------------------ a folder of renders
def test_folder_run_compares_lists_missing_and_extra(folder_run):
    code, out, renders, ids = folder_run
    assert code == 1
    items = _items(out)
    assert set(items) == set(ids)
    rendered, missing = items[ids[0]], items[ids[1]]
    assert rendered["tier"] in ("DRIFT", "DIFFERENT") and rendered["metrics"]["ssim"] < 0.99
    assert rendered["source"] == {"kind": "folder", "location": str(renders.resolve()),
                                  "file": str((renders / f"{ids[0]}.png").resolve())}
    assert rendered["irreducible"] == []   # parity-engine-only differences do not apply to another stack
    assert missing["tier"] == "ERROR" and missing["error"].startswith("missing render: no ")
    assert f"{ids[1]}.png" in missing["error"] and missing["source"]["kind"] == "folder"
    run = json.loads((out / "results.json").read_text())["run"]
    assert run["renders"] == [{"kind": "folder", "location": str(renders.resolve()), "extra": ["stray.webp"],
                               "missing": [ids[1]]}]


def test_external_render_compared_is_the_file_not_a_parity_render(folder_run, engine, job):
    """The comparison's `render` image is the user's file, pixel for pixel (not a parity render)."""
    _, out, renders, ids = folder_run
    it = _items(out)[ids[0]]
    saved = np.asarray(Image.open(out / it["paths"]["render"]).convert("RGB"))
    theirs = np.asarray(Image.open(renders / f"{ids[0]}.png").convert("RGB"))
    assert np.array_equal(saved, theirs)
    assert np.array_equal(np.asarray(Image.open(out / it["paths"]["external"]).convert("RGB")), theirs)


def test_explanation_reproduces_the_external_render_better_than_the_preview_settings(folder_run, engine, job):
    from parity.compare import compare

    _, out, _, ids = folder_run
    it = _items(out)[ids[0]]
    ex = it["explanation"]
    assert "error" not in ex, ex
    external = out / it["paths"]["external"]
    repro = out / it["paths"]["reproduction"]
    # the saved reproduction is the image the explanation scored
    assert compare(np.asarray(Image.open(repro).convert("RGB")), external).metrics["ssim"] == \
        pytest.approx(ex["score"], abs=1e-9)
    # and it reproduces the user's render better than the previews' own settings do (rendered here)
    own = compare(engine.render(_specs(job)[ids[0]]).image, external).metrics["ssim"]
    assert ex["score"] > own + 0.05
    assert ex["settings"] and ex["verdict"]


def test_explanation_names_the_other_stacks_settings_with_values(folder_run):
    _, out, _, ids = folder_run
    ex = _items(out)[ids[0]]["explanation"]
    assert ex["settings"] == {"steps": {"value": 25, "preview": STEPS}, "guidance": {"value": 4.0, "preview": 7.0},
                              "schedule": {"value": "empirical", "preview": "aitk"}}
    assert ex["explained"] is True
    assert "steps 25, guidance 4, schedule diffusers empirical" in ex["verdict"]


def test_explanation_names_ui_default_settings_with_values(job, engine, tiny_model_dir, tmp_path):
    """A stack left at AI Toolkit's UI defaults (30 steps, guidance 4): the explanation names both, with the
    values, and its reproduction matches the user's render exactly (the same engine made it)."""
    ids = sorted(_specs(job))
    folder = tmp_path / "ui"
    folder.mkdir()
    spec = _specs(job)[ids[1]]
    Image.fromarray(engine.render(spec.with_(sample_steps=30, guidance_scale=4.0)).image).save(folder / f"{ids[1]}.png")
    out = tmp_path / "out"
    assert main(["diff", str(job), "--base-model", str(tiny_model_dir), "--renders", str(folder), "--out", str(out),
                 "-q"]) == 1
    ex = _items(out)[ids[1]]["explanation"]
    assert ex["settings"] == {"steps": {"value": 30, "preview": STEPS}, "guidance": {"value": 4.0, "preview": 7.0}}
    assert ex["explained"] is True and ex["tier"] == "EXACT"
    assert ex["verdict"].startswith(f"your stack renders like steps 30, guidance 4; the previews used {STEPS}, 7")


def test_without_the_base_model_renders_are_compared_and_the_explanation_says_why_not(folder_run, job, tmp_path):
    _, _, renders, ids = folder_run
    out = tmp_path / "out"
    assert main(["diff", str(job), "--renders", str(renders), "--base-model", str(tmp_path / "none"),
                 "--out", str(out), "-q"]) == 1
    it = _items(out)[ids[0]]
    assert it["tier"] in ("DRIFT", "DIFFERENT") and it["metrics"]["ssim"] > 0
    assert str(tmp_path / "none") in it["explanation"]["error"] and "reproduction" not in it["paths"]


def test_manifest_maps_ids_to_files_and_reports_unknown_ids(job, engine, tmp_path, capsys):
    ids = sorted(_specs(job))
    for n, i in enumerate(ids):
        Image.fromarray(engine.render(_specs(job)[i]).image).save(tmp_path / f"mine-{n}.png")
    manifest = tmp_path / "renders.json"
    manifest.write_text(json.dumps({ids[0]: "mine-0.png", ids[1]: str(tmp_path / "mine-1.png"),
                                    "extjob[step999-p0]": "gone.png"}))
    out = tmp_path / "out"
    # the comparison alone needs no base model: the job's hub id is not on this machine
    assert main(["diff", str(job), "--renders", str(manifest), "--out", str(out), "-q", "--no-attribution"]) in (0, 1)
    items = _items(out)
    assert all(items[i]["tier"] != "ERROR" and items[i]["source"]["kind"] == "manifest" for i in ids)
    run = json.loads((out / "results.json").read_text())["run"]
    assert run["renders"][0]["extra"] == ["extjob[step999-p0]"] and run["renders"][0]["missing"] == []
    assert f"note: 1 file(s) in {manifest.resolve()} match no item: extjob[step999-p0]" in capsys.readouterr().err


def test_case_renders_key_runs_and_a_non_image_is_refused_before_any_copy(job, engine, tmp_path):
    ids = sorted(_specs(job))
    folder = tmp_path / "mine"
    folder.mkdir()
    Image.fromarray(engine.render(_specs(job)[ids[0]]).image).save(folder / f"{ids[0]}.webp", lossless=True)
    (folder / f"{ids[1]}.png").write_text("not an image, whatever the name says")
    case = tmp_path / "cases" / "deploy.yaml"
    case.parent.mkdir()
    case.write_text(f"name: {job.name}\njob: {job}\nrenders: ../mine\nattribution: false\n")
    out = tmp_path / "out"
    assert main(["run", str(case), "--out", str(out), "-q"]) == 1
    items = _items(out)
    assert items[ids[0]]["tier"] in ("EXACT", "NEAR") and items[ids[0]]["source"]["kind"] == "folder"
    assert items[ids[1]]["tier"] == "ERROR" and str(folder / f"{ids[1]}.png") in items[ids[1]]["error"]
    assert [p.suffix for p in (out / "external").iterdir()] == [".webp"]   # the non-image was never copied


@pytest.mark.slow
def test_pytest_plugin_checks_a_deployment_through_a_case_renders_key(pytester, job, engine):
    """`pytest cases/deploy.yaml` on a CI box without the base model: the item with a render is compared (and
    passes), the item without one fails with the missing-render message, not with a missing-model error."""
    ids = sorted(_specs(job))
    folder = pytester.mkdir("mine")
    Image.fromarray(engine.render(_specs(job)[ids[0]]).image).save(folder / f"{ids[0]}.png")
    cases = pytester.mkdir("cases")
    (cases / "deploy.yaml").write_text(f"name: {job.name}\njob: {job}\nbase_model: /nowhere/FLUX.2-dev\n"
                                       "renders: ../mine\nattribution: false\n")
    result = pytester.runpytest_subprocess("cases/deploy.yaml", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "missing render: no" in out and "base model not found" not in out


def test_renders_case_key_is_resolved_against_the_case_file(tmp_path):
    from parity.cases import load_case

    (tmp_path / "r").mkdir()
    case = tmp_path / "c.yaml"
    case.write_text("job: ../somewhere\nrenders: r\n")
    assert load_case(case).renders == (tmp_path / "r").resolve()
    assert main(["diff", str(tmp_path), "--renders", str(tmp_path / "nope")]) == 2


# ------------------------------------------------------------------------------------------------- the report
def test_report_of_an_external_run_shows_three_images_and_the_settings(folder_run):
    from parity.report.html import report_json_blob

    _, out, _, ids = folder_run
    html = (out / "index.html").read_text()
    blob = report_json_blob(html)
    view = {v["id"]: v for v in blob["items"]}[ids[0]]
    for key in ("external", "preview", "reproduction"):
        url = view["u"][key]
        assert url and (out / url).is_file(), key
    assert view["source"]["kind"] == "folder" and view["explanation"]["settings"]
    assert "stray.webp" in html and "without a render" in html   # the run banner


# ------------------------------------------------------------------------------------ a reference server
class FakeServer:
    """The reference inference server's HTTP API (runcomfy-com/ai-toolkit-inference src/api/v1/inference.py),
    rendering with the tiny engine: a request whose seed is in `fail` answers HTTP 500, one in `slow` answers its
    status calls (or, in `slow_post`, its submission) only after `slow_s` seconds; the first status call of a
    request says in_progress."""

    lock = threading.Lock()   # one render at a time on the shared engine, across servers (a slow one lingers)

    def __init__(self, engine, out_dir: Path, fail=(), slow=(), slow_post=(), slow_s=3.0):
        self.engine, self.out_dir, self.fail, self.slow, self.slow_s = engine, out_dir, set(fail), set(slow), slow_s
        self.slow_post = set(slow_post)
        self.tasks: dict[str, dict] = {}
        self.auth: list[str | None] = []
        self.calls: dict[tuple[str, int], int] = {}   # (POST | status, seed) -> calls received
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _send(self, code, doc):
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (the timeout case)
                    pass

            def do_GET(self):
                server.auth.append(self.headers.get("Authorization"))
                if self.path == "/v1/models":
                    return self._send(200, {"models": [{"id": "flux2", "resolution_divisor": 16,
                                                        "default_steps": 25, "default_guidance_scale": 4.0}]})
                parts = self.path.strip("/").split("/")
                task = server.tasks.get(parts[2]) if len(parts) == 4 else None
                if task is None:
                    return self._send(404, {"detail": {"error": {"code": "REQUEST_NOT_FOUND", "message": "no"}}})
                if parts[3] == "status":
                    key = ("status", task["seed"])
                    server.calls[key] = server.calls.get(key, 0) + 1
                    if task["seed"] in server.slow:
                        time.sleep(server.slow_s)
                    task["polls"] += 1
                    return self._send(200, {"request_id": parts[2],
                                            "status": "in_progress" if task["polls"] == 1 else "succeeded"})
                return self._send(200, {"request_id": parts[2], "status": "succeeded", "error": None,
                                        "outputs": {"images": [{"format": "jpeg", "width": 64, "height": 64,
                                                                "file_path": task["path"], "seed": task["seed"]}],
                                                    "videos": []}})

            def do_POST(self):
                server.auth.append(self.headers.get("Authorization"))
                doc = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                p = doc["prompts"][0]
                server.calls[("POST", p["seed"])] = server.calls.get(("POST", p["seed"]), 0) + 1
                if p["seed"] in server.fail:
                    return self._send(500, {"detail": "Internal Server Error"})
                if p["seed"] in server.slow_post:
                    time.sleep(server.slow_s)
                rid = str(uuid.uuid4())
                path = server.render(doc, rid)
                server.tasks[rid] = {"path": path, "seed": p["seed"], "polls": 0}
                return self._send(200, {"request_id": rid, "status": "queued", "created_at": "now",
                                        "status_url": f"http://wrong-host:8000/v1/requests/{rid}/status",
                                        "result_url": f"http://wrong-host:8000/v1/requests/{rid}/result"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def render(self, doc, rid) -> str:
        """As the server renders on a CPU (fp32, aitk-flux2-previews.md D.1) and saves: JPEG q95."""
        from parity.spec import RenderSpec

        p, lora = doc["prompts"][0], doc["loras"][0]
        spec = RenderSpec(prompt=p["prompt"], width=p["width"], height=p["height"], seed=p["seed"],
                          sample_steps=p["sample_steps"], guidance_scale=p["guidance_scale"], lora_path=lora["path"],
                          network_multiplier=lora["network_multiplier"], dtype="fp32")
        with self.lock:
            image = self.engine.render(spec).image
        path = self.out_dir / f"{rid}_output_0.jpg"
        Image.fromarray(image).save(path, quality=95)
        return str(path)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _files_text(out: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in out.rglob("*")
                     if p.is_file() and p.suffix in (".json", ".jsonl", ".html", ".md", ".xml"))


@pytest.mark.slow
def test_endpoint_end_to_end_with_a_server_error_and_a_timeout(job, engine, tmp_path, monkeypatch, capsys):
    seeds = sorted(s.seed for s in _specs(job).values())
    ids = {s.seed: i for i, s in _specs(job).items()}
    # one failure mode per run, on the second item: each meets a healthy item
    for mode in ("fail", "slow", "slow_post"):
        server = FakeServer(engine, tmp_path, **{mode: [seeds[1]]}, slow_s=2.5)
        url = f"http://alice:{PASSWORD}@127.0.0.1:{server.port}/"
        monkeypatch.setenv("PARITY_ENDPOINT_TOKEN", TOKEN)
        monkeypatch.setattr(sys, "argv", ["parity", "diff", str(job), "--endpoint", url])
        out = tmp_path / f"out-{mode}"
        try:
            code = main(["diff", str(job), "--endpoint", url, "--endpoint-timeout", "1", "--no-attribution",
                         "--out", str(out)])
        finally:
            server.close()
        captured = capsys.readouterr()
        assert code == 1
        items = _items(out)
        good, bad = items[ids[seeds[0]]], items[ids[seeds[1]]]
        assert good["tier"] != "ERROR", good.get("error")
        assert good["source"]["kind"] == "endpoint" and good["source"]["location"] == f"http://127.0.0.1:{server.port}"
        assert good["source"]["request_id"] in server.tasks and good["paths"]["external"].endswith(".jpg")
        assert bad["tier"] == "ERROR"
        from parity.external.endpoint import RETRIES

        if mode == "fail":  # retried, then given up
            assert server.calls[("POST", seeds[1])] == 1 + RETRIES and server.calls[("POST", seeds[0])] == 1
            assert bad["error"] == (f"inference server error: POST http://127.0.0.1:{server.port}/v1/inference "
                                    "answered HTTP 500: Internal Server Error")
        elif mode == "slow":
            assert server.calls[("status", seeds[1])] == 1 + RETRIES
            assert bad["error"].startswith("inference server timeout: GET http://127.0.0.1:") and \
                "did not answer within 1 s" in bad["error"]
        else:  # a submission that timed out is not sent again (the server may have queued it)
            assert server.calls[("POST", seeds[1])] == 1
            assert bad["error"] == (f"inference server timeout: POST http://127.0.0.1:{server.port}/v1/inference "
                                    "did not answer within 1 s")
        # the token went to the server, and nowhere else
        assert server.auth and set(server.auth) == {f"Bearer {TOKEN}"}
        text = _files_text(out) + captured.out + captured.err
        for secret in (TOKEN, PASSWORD, "alice"):
            assert secret not in text


def test_endpoint_refused_connection_fails_every_item_clearly(job, tmp_path):
    with socket.socket() as s:   # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    assert main(["diff", str(job), "--endpoint", f"http://127.0.0.1:{port}", "--endpoint-timeout", "1",
                 "--out", str(out), "-q"]) == 1
    items = _items(out)
    assert len(items) == 2
    for it in items.values():
        assert it["tier"] == "ERROR"
        assert it["error"] == f"inference server down: cannot reach http://127.0.0.1:{port} (connection refused)"


def test_endpoint_url_checks_and_credentials_stay_out_of_shown_urls(tmp_path, capsys):
    from parity.external.endpoint import parse_endpoint, public_url

    assert public_url("https://u:p@host.example:8443/base/?key=1#x") == "https://host.example:8443/base"
    base, basic = parse_endpoint("http://bob:s%40fe@h:8000")
    assert base == "http://h:8000" and basic == "Basic Ym9iOnNAZmU="   # base64("bob:s@fe")
    assert main(["diff", str(tmp_path), "--endpoint", "ftp://me:pw@h"]) == 2
    err = capsys.readouterr().err
    assert "--endpoint must be an http:// or https:// URL with a host, got 'ftp://h'" in err and "pw" not in err


@pytest.mark.browser
def test_report_item_shows_three_images_and_recovered_settings_in_chromium(folder_run):
    from test_report_browser import SCREENSHOTS, chromium_driver, open_report
    from urllib.parse import quote

    from types import SimpleNamespace

    _, out, _, ids = folder_run
    drv = chromium_driver(1400, 1700)
    try:
        open_report(drv, SimpleNamespace(index=out / "index.html"), "#item=" + quote(ids[0], safe=""))
        sec = drv.find_element("css selector", ".detail section.external")
        drv.execute_script("arguments[0].scrollIntoView()", sec)
        loaded = drv.execute_script(
            "var imgs = [...document.querySelectorAll('.detail section.external .trio img')];"
            "return Promise.all(imgs.map(i => i.decode().then(() => [i.closest('figure').dataset.key, i.naturalWidth],"
            " () => [i.closest('figure').dataset.key, 0])));")
        assert sorted(loaded) == [["external", 64], ["preview", 64], ["reproduction", 64]]
        rows = drv.execute_script("return [...document.querySelectorAll('.detail table.recovered tbody tr')]"
                                  ".map(r => [...r.children].map(c => c.textContent))")
        ex = _items(out)[ids[0]]["explanation"]
        assert [r[0] for r in rows] == [k.replace("_", " ") for k in ex["settings"]] and rows
        assert ex["verdict"] in sec.text
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)   # the card from its top: thumbnails, viewer, "Your stack"
        drv.execute_script("var c = document.querySelector('.card.open');"
                           "window.scrollTo(0, c.getBoundingClientRect().top + window.scrollY - 110);")
        time.sleep(0.3)
        drv.save_screenshot(str(SCREENSHOTS / "external-item.png"))
        errors = [e for e in drv.get_log("browser") if e.get("level") == "SEVERE"]
        assert not errors, errors
    finally:
        drv.quit()


def test_summaries_say_where_renders_came_from_and_what_they_look_like(folder_run):
    from parity.pytest_plugin import failure_screen
    from parity.record import ItemRecord

    _, out, renders, ids = folder_run
    it = _items(out)[ids[0]]
    screen = failure_screen(ItemRecord.from_dict(it), out)
    assert f"rendered by: folder {renders.resolve() / (ids[0] + '.png')}" in screen
    assert f"explanation: {it['explanation']['verdict']}" in screen
    from parity.report.markdown import md_text

    assert md_text(it["explanation"]["verdict"], 160) in (out / "summary.md").read_text()
