"""Warm vs cold embedding cache: a fresh Engine each time, the same prompts, an on-disk cache folder.

    .venv/bin/python benchmarks/embed_cache.py [--demo DIR] [--repeat 3]

  cold  a fresh Engine with an empty cache folder: the text encoder is constructed and every prompt encoded
  warm  a fresh Engine over the folder the cold run filled: embeddings read from safetensors files, the text
        encoder never constructed
Each side: Engine(...) + prepare_embeddings(the demo's specs) + one render per distinct prompt (the transformer
and VAE load are the same on both sides and included). Prints the text phase and the total, and the Engine's
text_encoder_loads (cold 1, warm 0). On the real model the text encoder is 24B parameters; on the tiny model it is
small, so the ratio here understates the saving.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

from _common import demo_items, demo_root, interleaved_best, machine_line, peak_rss_mib, pin_threads, ratio, smoke, \
    smoke_option


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", default=None)
    ap.add_argument("--repeat", type=int, default=3)
    smoke_option(ap)
    a = smoke(ap.parse_args(argv), repeat=1)
    pin_threads()
    from parity.engine import Engine

    root = demo_root(a.demo)
    _, items = demo_items(root, "latest")
    specs = [it.inference.spec for it in items]
    base = root / "tiny-flux2"
    work = Path(tempfile.mkdtemp(prefix="parity-embcache-"))
    warm_dir = work / "warm"
    Engine(base, device="cpu", cache_dir=warm_dir).prepare_embeddings(specs)
    runs: dict[str, list] = {"cold": [], "warm": []}
    n = [0]

    def side(name: str):
        def go():
            n[0] += 1
            folder = work / f"cold{n[0]}" if name == "cold" else warm_dir
            t0 = time.perf_counter()
            e = Engine(base, device="cpu", cache_dir=folder)
            e.prepare_embeddings(specs)
            text_s = time.perf_counter() - t0
            for s in specs:
                e.render(s)
            runs[name].append((text_s, dataclasses.asdict(e.stats)))
            if name == "cold":
                shutil.rmtree(folder, ignore_errors=True)
        return go

    times = interleaved_best({"cold": side("cold"), "warm": side("warm")}, a.repeat)
    shutil.rmtree(work, ignore_errors=True)
    best = {k: min(v) for k, v in times.items()}
    text = {k: min(t for t, _ in v) for k, v in runs.items()}
    te = {k: v[-1][1]["text_encoder_loads"] for k, v in runs.items()}
    hits = {k: v[-1][1]["embedding_cache_hits"] for k, v in runs.items()}
    print(f"embedding cache, fresh Engine per run, {len(specs)} renders ({len(set(s.prompt for s in specs))} prompts), "
          f"best of {a.repeat}, interleaved; {machine_line()}")
    print(f"{'side':6s} {'total s':>8s} {'engine+text s':>14s} {'text encoder built':>19s} {'cache hits':>11s}")
    for k in ("cold", "warm"):
        print(f"{k:6s} {best[k]:8.3f} {text[k]:14.3f} {te[k]:19d} {hits[k]:11d}")
    print(f"warm/cold: total {ratio(best['warm'], best['cold']):.3f}, engine+text phase "
          f"{ratio(text['warm'], text['cold']):.3f}; peak RSS {peak_rss_mib():.0f} MiB")
    result = {"benchmark": "embed_cache", "seconds": best, "text_phase_s": text, "text_encoder_loads": te,
              "cache_hits": hits, "ratio_warm_cold_total": ratio(best["warm"], best["cold"]),
              "ratio_warm_cold_text": ratio(text["warm"], text["cold"])}
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
