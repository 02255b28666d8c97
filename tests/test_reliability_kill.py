"""Crash safety: SIGKILL `parity diff` mid-run, read the partial results, build a report from them, resume, and
get the same final results as an uninterrupted run without redoing finished items."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_reliability import write_job

pytestmark = pytest.mark.slow  # every test here runs parity in other Python processes

PROMPTS = ["a cat", "a dog --seed 7", "[trigger] a tree", "a house", "a boat"]

# Runs `parity diff` in a child process with Engine.render slowed down (so the kill lands mid-run) and counting
# its calls in a file (to prove that --resume does not redo finished items).
CHILD = r"""
import os, sys, time
import torch
torch.set_num_threads(1)
from parity.engine import Engine
real = Engine.render
def render(self, spec, **kw):
    res = real(self, spec, **kw)
    with open(os.environ["PARITY_TEST_COUNT"], "a") as f:
        f.write(spec.prompt + "\n")
    time.sleep(float(os.environ.get("PARITY_TEST_SLEEP", "0")))
    return res
Engine.render = render
from parity.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _child(args, count_file: Path, sleep: float) -> subprocess.Popen:
    env = dict(os.environ, PARITY_TEST_COUNT=str(count_file), PARITY_TEST_SLEEP=str(sleep), OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-c", CHILD, *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _item_lines(journal: Path) -> int:
    if not journal.exists():
        return 0
    return sum(1 for ln in journal.read_bytes().split(b"\n") if b'"type": "item"' in ln or b'"type":"item"' in ln)


def _summary(results) -> dict:
    return {it["id"]: (it["tier"], {k: v for k, v in sorted(it["metrics"].items())}) for it in results.items}


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, tiny_model_dir):
    from parity.report import load, write_report

    job = write_job(tmp_path / "jobs" / "killj", tiny_model_dir, prompts=PROMPTS)
    common = ["diff", job, "--base-model", tiny_model_dir, "--no-attribution", "-q"]

    # the uninterrupted reference run (in a child too: same process set-up as the killed one)
    ref_out, ref_count = tmp_path / "ref", tmp_path / "ref-count"
    p = _child([*common, "--out", ref_out], ref_count, 0.0)
    so, se = p.communicate(timeout=300)
    assert p.returncode == 0, se
    reference = load(ref_out)
    assert reference.complete and len(reference.items) == len(PROMPTS)

    # the run to kill: wait until two items are journaled, then SIGKILL
    out, count = tmp_path / "run", tmp_path / "count"
    journal = out / "results.jsonl"
    p = _child([*common, "--out", out], count, 1.5)
    deadline = time.monotonic() + 240
    while _item_lines(journal) < 2 and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL

    partial = load(out)
    assert not partial.complete
    done = {it["id"] for it in partial.items}
    assert 2 <= len(done) < len(PROMPTS), done
    for it in partial.items:  # what was recorded is whole and right
        assert (it["tier"], it["metrics"]) == (reference.by_id()[it["id"]]["tier"],
                                               reference.by_id()[it["id"]]["metrics"])
    # a report builds from the partial results and says the run is incomplete
    paths = write_report(partial, tmp_path / "partial-report")
    html = Path(paths.index).read_text()
    assert "Incomplete run" in html

    # resume: only the unfinished items are rendered again
    renders_before = count.read_text().splitlines()
    count.unlink()
    p = _child([*common, "--out", out, "--resume"], count, 0.0)
    so, se = p.communicate(timeout=300)
    assert p.returncode == 0, se
    redone = count.read_text().splitlines()
    assert len(redone) == len(PROMPTS) - len(done), (redone, done)
    final = load(out)
    assert final.complete and final.run.get("resumed")
    assert _summary(final) == _summary(reference)
    # every item appears once in the journal (finished items were not redone)
    ids = [json.loads(ln)["item"]["id"] for ln in journal.read_text().splitlines() if '"type": "item"' in ln
           or '"type":"item"' in ln]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == len(PROMPTS)
    assert len(renders_before) >= len(done)


# Counts first-pass renders (EnginePool.render(item), the runner's own render of an item) apart from the
# follow-ups' renders (attribution renders through the engine directly), and slows the follow-ups down.
CHILD_FIRST_PASS = r"""
import os, sys, time
import torch
torch.set_num_threads(1)
from parity.engine import Engine
from parity.runner.engines import EnginePool
real_pool, real_engine = EnginePool.render, Engine.render
def pool_render(self, item, *a, **kw):
    if not a and not kw:
        with open(os.environ["PARITY_TEST_COUNT"], "a") as f:
            f.write(item.id + "\n")
    return real_pool(self, item, *a, **kw)
def engine_render(self, spec, **kw):
    time.sleep(float(os.environ.get("PARITY_TEST_SLEEP", "0")))
    return real_engine(self, spec, **kw)
EnginePool.render, Engine.render = pool_render, engine_render
from parity.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _first_pass_child(args, count_file: Path, sleep: float) -> subprocess.Popen:
    env = dict(os.environ, PARITY_TEST_COUNT=str(count_file), PARITY_TEST_SLEEP=str(sleep), OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-c", CHILD_FIRST_PASS, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _causes(results) -> dict:
    return {it["id"]: [c["knob"] for c in it.get("causes") or []] for it in results.items}


def test_sigkill_during_attribution_keeps_every_compared_item_and_resume_only_follows_up(tmp_path,
                                                                                         tiny_model_dir):
    """Items below their gate are journaled as soon as they are compared (a first pass), before attribution: a
    kill during attribution keeps all of them, and --resume attributes them from the saved renders without
    rendering any item's first pass again (issue 17 finding 4)."""
    from parity.report import load

    job = write_job(tmp_path / "jobs" / "attrj", tiny_model_dir, prompts=PROMPTS)
    # sample_steps 3 against previews rendered with 2: every item is below its gate and gets attributed
    common = ["diff", job, "--base-model", tiny_model_dir, "--set", "sample_steps=3", "--determinism-check", "off",
              "-q"]
    p = _first_pass_child([*common, "--out", tmp_path / "ref"], tmp_path / "ref-count", 0.0)
    so, se = p.communicate(timeout=300)
    assert p.returncode == 1, se
    reference = load(tmp_path / "ref")
    assert all(not it["passed"] and it.get("causes") for it in reference.items), _causes(reference)

    out, count = tmp_path / "run", tmp_path / "count"
    journal = out / "results.jsonl"
    p = _first_pass_child([*common, "--out", out], count, 0.5)
    deadline = time.monotonic() + 240
    while _item_lines(journal) < len(PROMPTS) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL  # killed during the follow-ups, not after the run ended

    partial = load(out)
    assert sorted(partial.pending) == sorted(it["id"] for it in reference.items)  # every item compared, kept
    for it in partial.items:
        ref = reference.by_id()[it["id"]]
        assert (it["tier"], it["metrics"]) == (ref["tier"], ref["metrics"])

    count.unlink()
    p = _first_pass_child([*common, "--out", out, "--resume"], count, 0.0)
    so, se = p.communicate(timeout=300)
    assert p.returncode == 1, se
    assert not count.exists() or count.read_text() == ""  # no item's first pass rendered again
    final = load(out)
    assert final.complete and final.pending == []
    assert _summary(final) == _summary(reference) and _causes(final) == _causes(reference)
