"""Harness overhead: the parity run over the demo job vs a bare diffusers Flux2Pipeline loop, same images.

    .venv/bin/python benchmarks/overhead.py [--demo DIR] [--repeat 5] [--step all]

Harness side (what `parity diff demo/output/tiny-portrait --step all --no-attribution` does after loading the
model): plan the job (read config.yaml, pair previews), Runner.run (render with parity.engine.Engine, save PNGs,
compare against the JPEG previews on the worker thread, build records), ResultsStore journal + snapshot, and
write_report (HTML, JUnit, markdown, thumbnails). The Engine is created and warmed once and handed to every run,
as one `parity diff` process keeps it across cases.

Bare side: diffusers' own Flux2Pipeline.from_pretrained(demo/tiny-flux2) with the AI Toolkit schedule as a static
shift (cpu-stack-notes section 7), each distinct LoRA file loaded once as a PEFT adapter and selected per image
(set_adapters / disable_lora), same prompts, sizes, seeds, steps and guidance, CPU generator, output_type="np".
Nothing is saved or compared: the floor is the pipeline's own work.

Two embedding-cache modes, both stated in the output:
  warm: the harness Engine's in-process embedding cache already holds the prompts; the bare loop gets
        precomputed prompt_embeds (encoded once before timing)
  cold: the harness cache is emptied before each run (the text encoder, already loaded, re-encodes each distinct
        prompt once per run); the bare loop passes prompt strings (the pipeline encodes per image)
Model load is excluded on both sides. Sides run interleaved in one process, best of --repeat, torch at 1 thread.
The images of both sides are compared (max |diff| in uint8) so the two sides are known to do the same work.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from _common import aitk_shift, demo_items, demo_root, interleaved_best, machine_line, peak_rss_mib, pin_threads, \
    ratio, smoke, smoke_option


def build_bare(base: Path, specs):
    import torch
    from diffusers import Flux2Pipeline

    pipe = Flux2Pipeline.from_pretrained(str(base), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    adapters: dict[str, str] = {}
    for s in specs:
        if s.lora_path and s.lora_path not in adapters:
            name = f"lora{len(adapters)}"
            pipe.load_lora_weights(s.lora_path, adapter_name=name)
            adapters[s.lora_path] = name
    # Catch a silent no-op load (cpu-stack-notes section 3).
    listed = {a for v in pipe.get_list_adapters().values() for a in v}
    missing = set(adapters.values()) - listed
    if missing:
        raise SystemExit(f"diffusers did not register LoRA adapters {sorted(missing)}")
    embeds = {}
    with torch.no_grad():
        for s in specs:
            if s.prompt not in embeds:
                embeds[s.prompt] = pipe.encode_prompt(prompt=s.prompt, device="cpu", max_sequence_length=512)[0]
    return pipe, adapters, embeds


def bare_render(pipe, adapters, embeds, spec, *, cold: bool):
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    if spec.lora_path:
        pipe.enable_lora()
        pipe.set_adapters([adapters[spec.lora_path]], [float(spec.network_multiplier)])
    elif adapters:
        pipe.disable_lora()
    cfg = {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}
    cfg.update(use_dynamic_shifting=False, shift=aitk_shift(spec.width, spec.height))
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(cfg)
    gen = torch.Generator("cpu").manual_seed(int(spec.seed))
    text = {"prompt": spec.prompt} if cold else {"prompt_embeds": embeds[spec.prompt]}
    out = pipe(**text, height=spec.height, width=spec.width, num_inference_steps=spec.sample_steps,
               guidance_scale=spec.guidance_scale, generator=gen, output_type="np", return_dict=False)[0]
    return (out[0] * 255).round().clip(0, 255).astype("uint8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", default=None, help="demo folder (default: ./demo, built if missing)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--step", default="all", help="job steps to check (all, latest)")
    ap.add_argument("--modes", default="warm,cold")
    smoke_option(ap)
    a = smoke(ap.parse_args(argv), repeat=1, step="latest", modes="warm")
    pin_threads()
    import numpy as np
    from PIL import Image

    from parity.engine import Engine
    from parity.report import write_report
    from parity.report.store import ResultsStore, absolute_paths
    from parity.runner import Runner
    from parity.session import run_metadata

    root = demo_root(a.demo)
    steps = a.step if a.step in ("all", "latest") else int(a.step)
    _, items = demo_items(root, steps)
    specs = [it.inference.spec for it in items]
    base = root / "tiny-flux2"

    t = time.perf_counter()
    engine = Engine(base, device="cpu")
    for s in specs:  # warm: every LoRA applied once, every prompt encoded (first-use costs are model load)
        engine.render(s)
    engine_load = time.perf_counter() - t
    key = items[0].engine_key
    t = time.perf_counter()
    pipe, adapters, embeds = build_bare(base, specs)
    for s in specs:
        bare_render(pipe, adapters, embeds, s, cold=False)
    bare_load = time.perf_counter() - t

    work = Path(tempfile.mkdtemp(prefix="parity-overhead-"))
    counter = [0]
    phases: dict[str, float] = {}
    last_results: list = []

    def harness(cold: bool):
        if cold:
            engine.text.memory.clear()
        counter[0] += 1
        out = work / f"run{counter[0]}"
        t0 = time.perf_counter()
        _, its = demo_items(root, steps)
        phases["plan"] = time.perf_counter() - t0
        store = ResultsStore(out)
        store.start(dict(run_metadata("cpu"), entry="benchmark"))
        runner = Runner(out, device="cpu", attribution=False)
        runner.engines[key] = engine
        t0 = time.perf_counter()
        try:
            runner.run(its, on_record=store.add)
        finally:
            runner.close()
        t1 = time.perf_counter()
        results = store.finish(timings={"total_s": t1 - t0})
        t2 = time.perf_counter()
        write_report(results, out)
        phases.update(run=t1 - t0, finish=t2 - t1, report=time.perf_counter() - t2)
        last_results[:] = [results]
        if counter[0] > 2:
            shutil.rmtree(work / f"run{counter[0] - 2}", ignore_errors=True)
        return results

    last_bare: list = []

    def bare(cold: bool):
        last_bare[:] = [bare_render(pipe, adapters, embeds, s, cold=cold) for s in specs]

    modes = [m for m in a.modes.split(",") if m]
    sides = {}
    for m in modes:
        cold = m == "cold"
        sides[f"harness-{m}"] = (lambda c=cold: harness(c))
        sides[f"bare-{m}"] = (lambda c=cold: bare(c))
    times = interleaved_best(sides, a.repeat)

    # Same work? Compare the last harness run's PNGs (where its records say they are) with the bare loop's images.
    res = last_results[0]
    renders = {it["id"]: absolute_paths(it, res.base_dir)["paths"].get("render") for it in res.items}
    diffs = []
    for it, img in zip(items, last_bare):
        mine = np.asarray(Image.open(renders[it.id]).convert("RGB"))
        diffs.append(int(np.abs(mine.astype(int) - img.astype(int)).max()) if mine.shape == img.shape else 999)
    # Where the harness time goes (one extra warm run, its own per-item timings).
    res = harness(False)
    render_s = sum((r.get("timings") or {}).get("total", 0.0) for r in res.items)
    shutil.rmtree(work, ignore_errors=True)

    print(f"harness overhead on the tiny model: {len(items)} images ({root / 'output'}), best of {a.repeat}, "
          f"interleaved; {machine_line()}")
    print(f"model load excluded: engine first pass {engine_load:.2f} s, pipeline load + first pass {bare_load:.2f} s")
    print(f"max |harness - diffusers| per image (uint8): {diffs}")
    result = {"benchmark": "overhead", "images": len(items), "repeat": a.repeat, "max_abs_diff_uint8": max(diffs),
              "modes": {}}
    print(f"{'mode':6s} {'harness s':>10s} {'bare s':>8s} {'ratio':>7s}  (target <= 1.10)")
    for m in modes:
        h, b = min(times[f"harness-{m}"]), min(times[f"bare-{m}"])
        r = ratio(h, b)
        print(f"{m:6s} {h:10.3f} {b:8.3f} {r:7.3f}  {'ok' if r <= 1.10 else 'OVER'}")
        result["modes"][m] = {"harness_s": h, "bare_s": b, "ratio": r,
                              "harness_all": times[f"harness-{m}"], "bare_all": times[f"bare-{m}"]}
    print(f"one more warm harness run: Engine.render total {render_s:.3f} s of Runner.run {phases['run']:.3f} s; "
          f"plan {phases['plan']:.3f} s, store finish {phases['finish']:.3f} s, write_report {phases['report']:.3f} s")
    print(f"peak RSS {peak_rss_mib():.0f} MiB")
    result["render_s_in_harness"] = render_s
    result["phases_s"] = dict(phases)
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
