"""LoRA switch: one Engine rendering with LoRA A, then B, then none vs a full pipeline reload per LoRA.

    .venv/bin/python benchmarks/lora_switch.py [--demo DIR] [--repeat 3]

Each side renders the same three images (the demo's first prompt at its preview settings: LoRA A = the step-100
checkpoint, B = the final checkpoint, then no LoRA):
  engine switch   one parity Engine kept across the three renders: the LoRA is merged into the resident weights and
                  the touched weights restored from pristine copies on the next switch (no reload)
  engine reload   a fresh Engine per render (reads the base weights from disk each time)
  diffusers reload  Flux2Pipeline.from_pretrained + load_lora_weights per render, as the reference inference server
                  does when the LoRA changes (without its hot-swap flag)
Sides interleaved, best of --repeat, torch at 1 thread. Also prints the Engine's load counters for the switch side
(transformer_loads must stay 1 however many switches).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from _common import demo_items, demo_root, interleaved_best, machine_line, peak_rss_mib, pin_threads, ratio, smoke, \
    smoke_option


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", default=None)
    ap.add_argument("--repeat", type=int, default=3)
    smoke_option(ap)
    a = smoke(ap.parse_args(argv), repeat=1)
    pin_threads()
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Pipeline

    from _common import aitk_shift
    from parity.engine import Engine

    root = demo_root(a.demo)
    _, items = demo_items(root, "all")
    loras = sorted({it.inference.spec.lora_path for it in items if it.inference.spec.lora_path})
    if len(loras) < 2:
        raise SystemExit("the demo job needs two LoRA checkpoints")
    first = next(it.inference.spec for it in items if it.index == 0)
    specs = [dataclasses.replace(first, lora_path=loras[0]), dataclasses.replace(first, lora_path=loras[1]),
             dataclasses.replace(first, lora_path=None)]
    base = root / "tiny-flux2"
    # The embedding is encoded once up front for every side (this benchmark is about weights, not text).
    engine = Engine(base, device="cpu")
    engine.prepare_embeddings(specs)
    emb = engine.embeddings(first.prompt, first.dtype, first.quantize_te)
    for s in specs:
        engine.render(s)
    stats_before = dataclasses.asdict(engine.stats)

    def engine_switch():
        for s in specs:
            engine.render(s)

    def engine_reload():
        for s in specs:
            e = Engine(base, device="cpu")
            e.text.memory = engine.text.memory  # same in-process embeddings: only the weights reload
            e.render(s)

    def diffusers_reload():
        for s in specs:
            pipe = Flux2Pipeline.from_pretrained(str(base), dtype=torch.float32)
            pipe.set_progress_bar_config(disable=True)
            if s.lora_path:
                pipe.load_lora_weights(s.lora_path)
            cfg = {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}
            cfg.update(use_dynamic_shifting=False, shift=aitk_shift(s.width, s.height))
            pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(cfg)
            pipe(prompt_embeds=emb, height=s.height, width=s.width, num_inference_steps=s.sample_steps,
                 guidance_scale=s.guidance_scale, generator=torch.Generator("cpu").manual_seed(s.seed),
                 output_type="np")

    times = interleaved_best({"engine switch": engine_switch, "engine reload": engine_reload,
                              "diffusers reload": diffusers_reload}, a.repeat)
    stats = dataclasses.asdict(engine.stats)
    best = {k: min(v) for k, v in times.items()}
    print(f"LoRA switch A -> B -> none, {first.width}x{first.height}, {first.sample_steps} steps, 3 renders per "
          f"side, best of {a.repeat}, interleaved; {machine_line()}")
    print(f"{'side':18s} {'s / 3 renders':>14s} {'vs engine switch':>17s}")
    for k, v in best.items():
        print(f"{k:18s} {v:14.3f} {ratio(v, best['engine switch']):16.2f}x")
    print(f"engine switch stats after warm-up {stats_before} -> after {stats}")
    print(f"peak RSS {peak_rss_mib():.0f} MiB")
    result = {"benchmark": "lora_switch", "seconds": best, "all": times,
              "ratio_switch_vs_diffusers_reload": ratio(best["engine switch"], best["diffusers reload"]),
              "ratio_switch_vs_engine_reload": ratio(best["engine switch"], best["engine reload"]),
              "transformer_loads": stats["transformer_loads"], "lora_applies": stats["lora_applies"],
              "base_restores": stats["base_restores"]}
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
