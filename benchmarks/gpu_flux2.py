"""The prepared GPU check: one run on a lent H100/H200 (about 3-5 minutes), or `--tiny` on a CPU (the test).

    python benchmarks/gpu_flux2.py --json gpu.json     # GPU: all three parts below at full size
    python benchmarks/gpu_flux2.py --tiny              # CPU: the same parts at tiny size (CI)

1. determinism (the GPU-vs-CPU floor): the demo's tiny FLUX.2 item rendered by the engine in bf16 twice on the
   device with torch.use_deterministic_algorithms(True) (CUBLAS_WORKSPACE_CONFIG=:4096:8 is set before CUDA starts),
   then once on the CPU; reports whether the two device renders are bit-identical and how far the device is
   from the CPU (max pixel difference, SSIM): the hardware part of parity's noise floor;
2. full-size transformer benchmark: Flux2Transformer2DModel from the pinned FLUX.2-dev config
   (parity.engine.fullsize; ~32B parameters, ~64 GB in bf16) built on the meta device, then to_empty(device) and
   normal_ in place (nothing allocated on the CPU, nothing downloaded); random text embeddings (1, 512, 15360) stand
   in for the text encoder; the engine's own denoising loop (parity.engine.sampling.aitk_denoise) timed against a
   bare loop written here, interleaved, best of --repeat; the card's bf16 matmul peak; achieved TFLOP/s from the
   analytic FLOPs per step (cross-checked with torch.utils.flop_counter); peak GPU memory;
3. `parity doctor cases/ --json` on this machine: the plan the doctor makes for the demo cases on this device.
The VAE decode is not timed (it is ~1 % of a 25-step render at 1024 px).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts: deterministic cuBLAS
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from parity.engine.resources import step_flops  # noqa: E402  (one FLOPs formula, shared with parity doctor)

from _common import smoke, smoke_option  # noqa: E402


def build_random(cfg: dict, device, dtype, seed: int = 0):
    """The transformer with N(0, 0.02) weights (norm scales 1, biases 0) made directly on `device`."""
    import torch
    from diffusers import Flux2Transformer2DModel

    conf = {k: v for k, v in cfg.items() if not k.startswith("_")}
    with torch.device("meta"):
        model = Flux2Transformer2DModel(**conf)
    model = model.to(dtype=dtype).to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.02, generator=g)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)
        for _, b in model.named_buffers():  # none expected; keep any defined
            b.zero_()
    return model.eval().requires_grad_(False)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device, dtype, n: int, iters: int) -> float:
    """Best TFLOP/s of an n x n x n matmul on this device."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.matmul(a, b)
    sync(device)
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(iters):
            torch.matmul(a, b)
        sync(device)
        best = min(best, (time.perf_counter() - t0) / iters)
    del a, b
    return 2 * n ** 3 / best / 1e12


def bare_loop(model, embeds, noise, sigmas, guidance):
    """The floor: only transformer calls and the Euler update; packing and ids written here independently."""
    import torch

    _, c, h, w = noise.shape
    dev, dtype = embeds.device, embeds.dtype
    x = noise.to(dev).flatten(2).transpose(1, 2)                         # (1, h*w, 128), row-major tokens
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    img_ids = torch.stack([torch.zeros_like(rows), rows, cols, torch.zeros_like(rows)], -1).reshape(1, -1, 4)
    txt_ids = torch.zeros(1, embeds.shape[1], 4, dtype=torch.long)
    txt_ids[..., 3] = torch.arange(embeds.shape[1])
    img_ids, txt_ids = img_ids.to(dev), txt_ids.to(dev)
    g = torch.full((1,), guidance, device=dev, dtype=dtype)
    with torch.no_grad():
        for s, s_next in zip(sigmas[:-1], sigmas[1:]):
            t = torch.full((1,), s, device=dev, dtype=dtype)
            v = model(hidden_states=x, encoder_hidden_states=embeds, timestep=t, img_ids=img_ids, txt_ids=txt_ids,
                      guidance=g, return_dict=False)[0]
            x = x + (s_next - s) * v
    return x


def setup(a) -> dict:
    """Device, dtype and sizes of the transformer benchmark: full FLUX.2-dev on CUDA, or tiny on the CPU."""
    import torch

    if a.tiny:
        from parity.tiny import TRANSFORMER_CONFIG as cfg

        torch.set_num_threads(1)
        device = torch.device(a.device or "cpu")
        dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
        return dict(cfg=cfg, device=device, dtype=dtype, size=a.size or 64, steps=a.steps or 2,
                    text_len=a.text_len or 32, mm_n=256, mm_iters=5)
    from parity.engine.fullsize import TRANSFORMER_CONFIGS
    from parity.family import DEFAULT_ARCH, family

    device = torch.device(a.device or "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --tiny on a CPU")
    return dict(cfg=TRANSFORMER_CONFIGS[family(DEFAULT_ARCH).transformer_config], device=device, dtype=torch.bfloat16, size=a.size or 1024,
                steps=a.steps or 4, text_len=a.text_len or 512, mm_n=8192, mm_iters=20)


def determinism(device) -> dict:
    """Part 1: the demo item in bf16, twice on `device` with deterministic algorithms, once on the CPU."""
    import numpy as np
    import torch

    from parity.compare.metrics import ssim
    from parity.demo import build_demo
    from parity.engine import Engine
    from parity.spec import RenderSpec

    paths = build_demo(ROOT / "demo")
    lora = sorted(paths.job.glob("*.safetensors"))[-1]
    spec = RenderSpec(prompt="a portrait of a woman, studio light", width=64, height=64, seed=42, sample_steps=8,
                      guidance_scale=4.0, dtype="bf16", lora_path=str(lora))
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        t0 = time.perf_counter()
        on_device = Engine(paths.base_model, device=str(device))
        first, second = on_device.render(spec).image, on_device.render(spec).image
        t_device = time.perf_counter() - t0
    finally:
        torch.use_deterministic_algorithms(before)
    cpu = Engine(paths.base_model, device="cpu").render(spec).image
    diff = np.abs(first.astype(int) - cpu.astype(int))
    return {"device": str(device), "bit_identical_twice": bool(np.array_equal(first, second)),
            "max_abs_vs_cpu": int(diff.max()), "pixels_differing_vs_cpu": int((diff > 0).any(-1).sum()),
            "ssim_vs_cpu": float(ssim(first, cpu).ssim), "seconds_device": t_device}


def transformer_benchmark(a, s: dict) -> dict:
    """Part 2: engine loop vs bare loop on the random-weight transformer; FLOPs, peak, memory."""
    import torch

    from parity.engine.numerics import resolve_switches
    from parity.engine.sampling import aitk_denoise, make_noise
    from parity.engine.schedule import FLUX2_SCHEDULER_CONFIG, sigmas_for

    cfg, device, dtype, size, steps = s["cfg"], s["device"], s["dtype"], s["size"], s["steps"]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    peak = matmul_peak(device, dtype, s["mm_n"], s["mm_iters"])
    t_peak, t0 = time.perf_counter() - t0, time.perf_counter()
    model = build_random(cfg, device, dtype)
    sync(device)
    t_build = time.perf_counter() - t0
    g = torch.Generator("cpu").manual_seed(0)
    embeds = (torch.randn(1, s["text_len"], cfg["joint_attention_dim"], generator=g) * 0.5).to(device, dtype)
    noise = make_noise(42, size, size, dtype)
    sigmas, _ = sigmas_for("aitk", size, size, steps, FLUX2_SCHEDULER_CONFIG)
    switches = resolve_switches((), "aitk")
    counted = counted_flops(model, embeds, noise, sigmas)

    def harness():
        aitk_denoise(model, embeds, noise, sigmas, 4.0, switches, device)
        sync(device)

    def bare():
        bare_loop(model, embeds, noise, sigmas, 4.0)
        sync(device)

    times = interleaved(harness, bare, a.repeat)
    n_img = (size // 16) ** 2
    flops = step_flops(cfg, n_img, s["text_len"])
    s_step = min(times["harness"]) / steps
    achieved = flops / s_step / 1e12
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    params = sum(p.numel() for p in model.parameters())
    del model
    return {
        "card": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "tiny": a.tiny,
        "dtype": str(dtype).replace("torch.", ""), "size": size, "steps": steps, "text_len": s["text_len"],
        "n_img": n_img, "params_b": params / 1e9, "build_s": t_build, "matmul_peak_tflops": peak,
        "matmul_n": s["mm_n"], "matmul_s": t_peak, "flops_per_step": flops,
        "flops_per_step_linear": step_flops(cfg, n_img, s["text_len"], attention=False),
        "flops_per_step_counted": counted, "s_per_step": s_step, "s_per_step_bare": min(times["bare"]) / steps,
        "achieved_tflops": achieved, "mfu_vs_matmul_peak": achieved / peak,
        "overhead_ratio": min(times["harness"]) / min(times["bare"]), "peak_gpu_mem_gib": mem, "all": times,
    }


def counted_flops(model, embeds, noise, sigmas) -> float:
    """One step under torch's own FLOP counter (catches a wrong architecture assumption in the formula)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        bare_loop(model, embeds, noise, sigmas[:2], 4.0)
    return counter.get_total_flops()


def interleaved(harness, bare, repeat: int) -> dict[str, list[float]]:
    harness(), bare()  # warm-up (kernels, allocator)
    times: dict[str, list[float]] = {"harness": [], "bare": []}
    for _ in range(repeat):
        for name, fn in (("harness", harness), ("bare", bare)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def doctor(device) -> dict:
    """Part 3: `parity doctor cases/ --json` in a fresh process on this machine's device."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "parity.cli", "doctor", str(ROOT / "cases"), "--json",
                        "--device", str(device)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    try:
        rep = json.loads(r.stdout)
    except ValueError:
        return {"exit_code": r.returncode, "error": r.stderr[-500:]}
    return {"exit_code": r.returncode, "ready": rep["ready"], "device": rep["device"], "versions": rep["versions"],
            "checks": {c["name"]: c["status"] for c in rep["checks"]},
            "plans": {c["case"]: c["plan"]["mode"] for c in rep["cases"]}}


def report(r: dict, repeat: int) -> None:
    d = r["determinism"]
    print(f"determinism on {d['device']}: bf16 twice bit-identical {d['bit_identical_twice']}; vs CPU max "
          f"{d['max_abs_vs_cpu']} levels, {d['pixels_differing_vs_cpu']} pixels differ, SSIM {d['ssim_vs_cpu']:.5f}")
    print(f"{r['card']}: Flux2 transformer {r['params_b']:.2f}B params ({r['dtype']}, random), built in "
          f"{r['build_s']:.1f} s; {r['size']}x{r['size']} ({r['n_img']} image + {r['text_len']} text tokens), "
          f"{r['steps']} steps, best of {repeat}")
    print(f"matmul peak ({r['matmul_n']}^3 {r['dtype']}): {r['matmul_peak_tflops']:.1f} TFLOP/s")
    print(f"FLOPs/step: formula {r['flops_per_step'] / 1e12:.3f} TFLOP (linear layers "
          f"{r['flops_per_step_linear'] / 1e12:.3f}), torch flop counter "
          f"{r['flops_per_step_counted'] / 1e12:.3f} TFLOP")
    print(f"engine loop: {r['s_per_step']:.3f} s/step -> {r['achieved_tflops']:.1f} TFLOP/s = "
          f"{r['mfu_vs_matmul_peak']:.0%} of the matmul peak")
    print(f"bare loop:   {r['s_per_step_bare']:.3f} s/step; overhead ratio engine/bare {r['overhead_ratio']:.3f}")
    if r["peak_gpu_mem_gib"] is not None:
        print(f"peak GPU memory: {r['peak_gpu_mem_gib']:.1f} GiB")
    doc = r["doctor"]
    print(f"parity doctor: exit {doc['exit_code']}, ready {doc.get('ready')}, plans {doc.get('plans')}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="parity's tiny transformer on the CPU (a quick check)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--size", type=int, default=None, help="image side in px (1024 full, 64 tiny)")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps timed per side (4 full, 2 tiny)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--text-len", type=int, default=None, help="text tokens (512 full, 32 tiny)")
    ap.add_argument("--json", default=None, help="also write the result here")
    smoke_option(ap)  # --smoke is --tiny, one repeat
    a = smoke(ap.parse_args(argv), tiny=True, repeat=1)
    s = setup(a)
    det = determinism(s["device"])
    result = {"benchmark": "gpu_flux2", **transformer_benchmark(a, s), "determinism": det}
    if s["device"].type == "cuda":
        import torch

        torch.cuda.empty_cache()
    result["doctor"] = doctor(s["device"])
    report(result, a.repeat)
    print("RESULT " + json.dumps(result))
    if a.json:
        from parity.report.jsonfile import write_text_atomic

        write_text_atomic(Path(a.json), json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
