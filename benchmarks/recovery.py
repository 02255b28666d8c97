"""Parameter recovery: renders and seconds per case, the search (now) next to the fixed-list suspect search it
replaced (parity/diagnose/suspects.py at commit 965c33f, loaded from git), on the same previews.

Each case is three prompts of a job recorded as 20 steps / guidance 4 / multiplier 1 / AI Toolkit's schedule whose
previews were rendered (smooth tiny model, 64 px, JPEG q75 as AI Toolkit saves them) with other values. "now" runs
as the runner does: the search on the worst item, one confirming render on each other item (a new search when that
fails); "before" searched every item with the lists. A case counts as recovered when every item names exactly the
changed knobs with the right values (steps exact; guidance, shift within 0.25; multiplier within 0.05).

    PYTHONPATH=. python benchmarks/recovery.py [--cases steps-12,guidance-5.5]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import smoke, smoke_option

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
OLD_COMMIT = "965c33f"
PROMPTS = ["a red cube on a table", "a portrait of a woman, studio light", "sks dog on the beach"]
CASES = {
    "steps-12": ({"sample_steps": 12}, {"steps": (12, 0)}),
    "steps-17": ({"sample_steps": 17}, {"steps": (17, 0)}),
    "guidance-5.5": ({"guidance_scale": 5.5}, {"guidance": (5.5, 0.25)}),
    "multiplier-0.6": ({"network_multiplier": 0.6}, {"lora_scale": (0.6, 0.05)}),
    "shift-2.5": ({"schedule": "static:2.5"}, {"schedule": (2.5, 0.25)}),
    "shift-3": ({"schedule": "static:3"}, {"schedule": (3.0, 0.25)}),
    "steps-24+guidance-3": ({"sample_steps": 24, "guidance_scale": 3.0}, {"steps": (24, 0), "guidance": (3.0, 0.25)}),
}


def old_suspects_module():
    """The fixed-list suspect search as it was before the search replaced it."""
    src = subprocess.run(["git", "show", f"{OLD_COMMIT}:parity/diagnose/suspects.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="parity-old-")) / "old_suspects.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_suspects", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["old_suspects"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def right(found: dict, expected: dict) -> bool:
    if set(found) != set(expected):
        return False
    for knob, (value, tol) in expected.items():
        got = found[knob]
        if isinstance(got, str) and got.startswith("static:"):
            got = float(got[7:])
        elif isinstance(got, str):
            try:
                got = float(got.split()[0])
            except ValueError:
                return False
        if abs(float(got) - value) > tol:
            return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--prompts", type=int, default=len(PROMPTS), help="prompts (items) per case")
    smoke_option(ap)
    args = smoke(ap.parse_args(), cases="multiplier-0.6", prompts=1)
    import torch
    from PIL import Image

    torch.set_num_threads(1)
    from parity.compare import compare
    from parity.diagnose import RenderCache, confirm_changes, suspect_search
    from parity.engine import Engine
    from parity.spec import RenderSpec
    from parity.tiny import build_tiny, tiny_paths

    work = Path(tempfile.mkdtemp(prefix="parity-recovery-"))
    paths = tiny_paths(build_tiny(work / "tiny", smooth=True).root)
    engine = Engine(paths.diffusers_dir)
    old = old_suspects_module()
    recorded = [RenderSpec(prompt=p, width=64, height=64, seed=3 + i, sample_steps=20, guidance_scale=4.0,
                           lora_path=str(paths.lora), network_multiplier=1.0, dtype="fp32")
                for i, p in enumerate(PROMPTS[:args.prompts])]

    def render(spec):
        return engine.render(spec).image

    def score(image, target):
        return compare(image, target, resample=True)

    print(f"{'case':22s} {'before: renders':>15s} {'s':>6s} {'ok':>3s}   {'now: renders':>12s} {'s':>6s} {'ok':>3s}")
    for name in args.cases.split(","):
        changes, expected = CASES[name]
        previews = []
        for i, spec in enumerate(recorded):
            p = work / f"{name}-{i}.jpg"
            Image.fromarray(render(spec.with_(**changes))).save(p)   # Pillow defaults: JPEG q75, as AI Toolkit
            previews.append(str(p))
        # before: the list search on every item
        t0, renders, ok = time.perf_counter(), 0, True
        for i, (spec, p) in enumerate(zip(recorded, previews)):
            s = old.suspect_search(p, spec, render, score, index=i, cache=RenderCache())
            renders += s.extra_renders
            ok &= s.explained and right({b.knob: b.value for b in s.best}, expected)
        before = (renders, time.perf_counter() - t0, ok)
        # now: search the worst item, confirm on the others
        t0, cache = time.perf_counter(), RenderCache()
        base = [score(render(s), p).metrics["ssim"] for s, p in zip(recorded, previews)]
        order = sorted(range(len(recorded)), key=lambda i: base[i])
        found, renders, ok = None, 0, True
        for i in order:
            s = None
            if found is not None:
                s = confirm_changes(previews[i], recorded[i], found, render, score, cache=cache)
                renders += s.extra_renders
                s = s if s.explained else None
            if s is None:
                s = suspect_search(previews[i], recorded[i], render, score, index=i, cache=cache)
                renders += s.extra_renders
                found = found or (s if s.explained else None)
            ok &= s.explained and right(s.changes(), expected)
        now = (renders, time.perf_counter() - t0, ok)
        print(f"{name:22s} {before[0]:15d} {before[1]:6.1f} {'yes' if before[2] else 'no':>3s}   "
              f"{now[0]:12d} {now[1]:6.1f} {'yes' if now[2] else 'no':>3s}", flush=True)


if __name__ == "__main__":
    main()
