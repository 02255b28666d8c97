"""Synthetic runs for tests, benchmarks and screenshots: fake items with small generated images (no engine, no
torch). The numbers are made up but consistent (a DIFFERENT item has a low SSIM and mismatched knobs)."""

from __future__ import annotations

import math
import random
import zlib
from pathlib import Path
from typing import Any

from parity import fileio
from parity.report.store import ResultsStore
from parity import knobs as registry
from parity.tier import DEFAULT_GATE, DIFFERENT, DRIFT, ERROR, EXACT, NEAR, tier_names

HOSTILE_PROMPT = "<img src=x onerror=alert(1)>"
HOSTILE_TEXTS = (
    HOSTILE_PROMPT,
    "</script><script>alert(2)</script>",
    "\"'><svg onload=alert(3)> & | `md` [link](javascript:alert(4)) \x07bell",
)
HOSTILE_FILE = "x\"'><img src=y onerror=alert(5)>#?.png"

_CASES = ("demo-parity", "style-lora", "faces", "product-shots", "landscapes")
_PROMPTS = ("a red fox in the snow, photo", "portrait of an old sailor, oil painting", "a glass teapot on a wooden table",
            "neon city street at night, rain", "isometric tiny house, 3d render", "a bowl of ramen, top view",
            "mountain lake at sunrise", "a robot reading a book in a library")
_WEIGHTS = {EXACT.name: 0.3, NEAR.name: 0.35, DRIFT.name: 0.2, DIFFERENT.name: 0.1, ERROR.name: 0.05}


def _sigmas(n: int, mu: float) -> list[float]:
    # Shifted linear timesteps t' = e^mu / (e^mu + (1/t - 1)): the shape of AI Toolkit's get_schedule
    # (reference/aitk-flux2-previews.md finding 1); here only to give the sigma table realistic numbers.
    out = []
    for i in range(n + 1):
        t = 1 - i / n
        out.append(0.0 if t <= 0 else round(math.exp(mu) / (math.exp(mu) + (1 / t - 1)), 6))
    return out


def _base_image(size: int, seed: int) -> Any:
    import numpy as np

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.empty((size, size, 3), np.float32)
    c0, c1 = rng.uniform(30, 220, 3), rng.uniform(30, 220, 3)
    for ch in range(3):
        img[..., ch] = c0[ch] * (1 - y) + c1[ch] * y
    for _ in range(5):  # a few soft blobs and a hard-edged square so the heatmap has structure
        cx, cy, r = rng.uniform(0.15, 0.85, 2).tolist() + [rng.uniform(0.05, 0.2)]
        col = rng.uniform(0, 255, 3)
        m = np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r)))[..., None]
        img = img * (1 - m) + col * m
    s0, s1 = sorted(rng.integers(size // 8, size - size // 8, 2).tolist())
    img[s0:s1, s0:s1] = img[s0:s1, s0:s1] * 0.5 + rng.uniform(0, 255, 3) * 0.5
    img += rng.normal(0, 6, img.shape)  # texture, so JPEG has work to do
    return img


def _params(step: int, index: int, prompt: str, mismatches: list[str], irreducible: list[str], size: int
            ) -> dict[str, dict[str, dict[str, Any]]]:
    pv = {
        "steps": (20, "block"), "schedule": ("aitk", "default"), "guidance": (4.0, "block"),
        "resolution": (f"{size}x{size}", "floor"), "seed": (42 + index, "walk"), "generator": ("cpu", "default"),
        "prompt": (prompt, "item"), "lora_scale": (1.0, "block"), "lora_application": ("merged", "job"),
        "checkpoint": (f"demo_{step:09d}.safetensors", "job"), "quantization": (None, "block"),
        "dtype": ("bf16", "block"), "text_encoder": ("mistral-small-3.1", "default"),
        "lora_precision": ("fp32", "job"), "hardware": ("cuda", "job"),
    }
    inf = dict(pv)
    changed = {"steps": (28, "request"), "schedule": ("empirical", "profile"), "guidance": (3.5, "request"),
               "resolution": (f"{size + 16}x{size}", "request"), "seed": (43 + index, "override"),
               "generator": ("cuda", "profile"), "lora_scale": (0.8, "request"), "dtype": ("fp16", "override"),
               "lora_application": ("live", "profile"), "quantization": ("qfloat8", "profile"),
               "lora_precision": ("bf16", "job"), "hardware": ("cpu", "job")}
    for k in mismatches + irreducible:
        if k in changed:
            inf[k] = changed[k]
    wrap = lambda d: {k: {"value": v, "source": s} for k, (v, s) in d.items()}  # noqa: E731
    return {"preview": wrap(pv), "inference": wrap(inf)}


def synthetic_results(n: int, out_dir: str | Path, *, image_size: int = 96, seed: int = 0, hostile: bool = False,
                      complete: bool = True, cases: int | None = None, gate: str = DEFAULT_GATE,
                      prompts: int | None = None) -> Path:
    """Write a run of `n` fake items into `out_dir` through ResultsStore (images under out_dir/images/) and
    return the path of its results.json. `hostile=True` puts markup in prompts, ids, a case name and a file
    name; `complete=False` leaves the run unfinished (no finish record). `prompts` fixes the prompts per case
    (default up to 4), so e.g. `prompts=1` makes every case a long step timeline."""
    from PIL import Image

    out = Path(out_dir)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(seed)
    case_names = list(_CASES[: cases or len(_CASES)])
    if hostile:
        case_names[-1] = "<b>case</b>&amp;"
    per_case = max(1, math.ceil(n / len(case_names)))
    n_prompts = min(prompts or 4, per_case)
    n_steps = max(1, math.ceil(per_case / n_prompts))
    steps = [s * 250 for s in range(n_steps)]
    store = ResultsStore(out, snapshot_every=1e9)
    store.start({
        "id": f"synthetic-{n}", "versions": {"torch": "2.13.0", "diffusers": "0.42.1", "transformers": "5.24.0",
                                             "Pillow": Image.__version__, "python": "3.11"},
        "device": "synthetic (no render)", "base_model": {"path": "FLUX.2-dev", "hash": "sha256:0000"},
        "loras": {"demo": "sha256:1111"}, "settings": {"gate": gate, "score_metric": "ssim", "semantics": "aitk"},
        "shard": {"index": 0, "count": 1},
    }, overwrite=True)
    bases: dict[tuple[int, int], Any] = {}
    made = 0
    tiers = list(_WEIGHTS)
    for ci, case in enumerate(case_names):
        for step in steps:
            for pi in range(n_prompts):
                if made >= n:
                    break
                tier = rnd.choices(tiers, weights=[_WEIGHTS[t] for t in tiers])[0]
                if step == 0 and tier in (DIFFERENT.name, ERROR.name):
                    tier = NEAR.name
                prompt = _PROMPTS[(ci * 3 + pi) % len(_PROMPTS)]
                iid = f"{case}[step{step}-p{pi}]"
                if hostile and made < len(HOSTILE_TEXTS):
                    prompt = HOSTILE_TEXTS[made]
                    tier = DIFFERENT.name if made == 0 else tier
                    if made == 1:
                        iid = f"{case}[step{step}-p{pi}]\"><svg onload=alert(6)>"
                made += 1
                item = _item(iid, case, step, pi, prompt, tier, rnd, img_dir, out, image_size, bases, ci,
                             hostile_file=hostile and made == 1)
                store.add(item)
    if complete:
        store.finish(timings={"total": round(0.01 * made, 3)})
    else:
        store.write_snapshot()
        store.close()
    return out / "results.json"


def _render_and_score(preview: Any, tier: str, drift: float, nrng: Any, rnd: random.Random, img_dir: Path,
                      stem: str, paths: dict[str, str]) -> dict[str, Any]:
    """A drifted render and its diff heatmap written beside the preview (paths added); returns its metrics."""
    import numpy as np

    render = preview.copy()
    if drift:
        shift = int(drift // 10)
        if shift:
            render = np.roll(render, shift, axis=1)
        render = render + nrng.normal(0, drift, render.shape)
    render = np.clip(render, 0, 255).astype(np.uint8)
    fileio.save_image(img_dir / f"{stem}_render.png", render, compress_level=1)
    diff = np.abs(render.astype(np.int16) - preview.astype(np.int16)).mean(-1)
    # the real heatmap's colour ramp and scale, so the report's legend reads true on synthetic runs too
    from parity.compare.heatmap import DIFF_FULL_SCALE, colorize

    hm = colorize(diff / DIFF_FULL_SCALE)
    fileio.save_image(img_dir / f"{stem}_diff.png", hm, compress_level=1)
    paths.update(render=f"images/{stem}_render.png", heatmap_diff=f"images/{stem}_diff.png")
    ssim = {EXACT.name: 1.0, NEAR.name: rnd.uniform(0.965, 0.995), DRIFT.name: rnd.uniform(0.8, 0.94),
            DIFFERENT.name: rnd.uniform(0.25, 0.6)}[tier]
    mae = float(diff.mean())
    metrics = {"ssim": round(ssim, 5), "ssim_y": round(min(1.0, ssim + 0.01), 5),
               "psnr": math.inf if tier == EXACT.name else round(20 * math.log10(255 / max(mae, 1e-3)), 3),
               "mae": round(mae, 4), "max_abs": int(diff.max())}
    return metrics


def _noise_floor(irreducible: list[str], ssim_y: float) -> dict[str, Any]:
    """A `noise_floor` record that lifted a DRIFT item to NEAR (as parity.diagnose.floor.floor_record writes)."""
    loss = 1.0 - ssim_y
    return {
        "knobs": list(irreducible), "twin": [{"knob": k, "how": "LoRA values moved within their bfloat16 "
                                                                "rounding cells"} for k in irreducible],
        "unmeasured": [], "metrics": {"ssim_y": round(1.0 - loss / 1.5, 5), "window_density": 0.0},
        "ratio": 2.0, "tier_before": DRIFT.name, "tier": NEAR.name, "applied": True,
        "reason": f"within the noise floor of {', '.join(irreducible)}: SSIM-Y loss {loss:.5f} vs 2 x measured "
                  f"{loss / 1.5:.5f}; worst window 0.000 vs 0.150"}


def _item(iid: str, case: str, step: int, pi: int, prompt: str, tier: str, rnd: random.Random, img_dir: Path,
          out: Path, size: int, bases: dict, ci: int, *, hostile_file: bool) -> dict[str, Any]:
    import numpy as np

    key = (ci, pi)
    if key not in bases:
        bases[key] = _base_image(size, 1000 * ci + pi)
    drift = {EXACT.name: 0.0, NEAR.name: 2.0, DRIFT.name: 9.0, DIFFERENT.name: 40.0, ERROR.name: 0.0}[tier]
    nrng = np.random.default_rng(zlib.crc32(iid.encode()))
    preview = np.clip(bases[key] + step / 250 * 4.0, 0, 255)
    stem = f"c{ci}_s{step}_p{pi}"
    pv_name = HOSTILE_FILE.replace(".png", ".jpg") if hostile_file else f"{stem}_preview.jpg"
    pv_path = img_dir / pv_name
    fileio.save_image(pv_path, preview.astype(np.uint8), "JPEG", quality=75)
    paths: dict[str, str] = {"preview": f"images/{pv_name}"}
    metrics: dict[str, Any] = {}
    error = None
    if tier == ERROR.name:
        error = rnd.choice(["render produced NaN at denoising step 7 of 20",
                            f"images/{stem}.safetensors: truncated file (expected 19.2 MB, found 4.1 MB)"])
    else:
        metrics = _render_and_score(preview, tier, drift, nrng, rnd, img_dir, stem, paths)
    mismatches: list[str] = []
    if tier in (DRIFT.name, DIFFERENT.name):
        pool = ["schedule", "guidance", "steps", "seed", "lora_scale", "resolution", "generator", "dtype"]
        mismatches = rnd.sample(pool, 1 if tier == DRIFT.name else rnd.randint(2, 3))
    irreducible = ["lora_precision"] if tier in (NEAR.name, DRIFT.name) and rnd.random() < 0.5 else []
    params = _params(step, pi, prompt, mismatches, irreducible, size)
    base = metrics.get("ssim", 0.0)
    causes = [{"knob": k, "value_preview": params["preview"][k]["value"],
               "value_inference": params["inference"][k]["value"],
               "ssim_aligned": round(min(1.0, base + (1 - base) * w), 5)}
              for k, w in zip(mismatches, (0.8, 0.15, 0.04))]
    sched = None
    if "schedule" in mismatches or "steps" in mismatches:
        sched = {"preview": _sigmas(8, 0.4675), "inference": _sigmas(8, 1.83), "mu_preview": 0.4675, "mu_inference": 1.83}
    elif tier != ERROR.name:
        sched = {"preview": _sigmas(8, 0.4675), "inference": _sigmas(8, 0.4675)}
    item = {
        "id": iid, "case": case, "step": step, "index": pi, "prompt": prompt, "paths": paths, "tier": tier,
        "metrics": metrics,
        "metric_variants": {"ssim": "skimage 7x7 uniform RGB", "ssim_y": "skimage gaussian σ1.5 luma"} if metrics else {},
        "jpeg": {"quality": 75, "subsampling": "4:2:0"}, "ceiling": {"ssim": 0.962} if metrics else None,
        "size_mismatch": "resolution" in mismatches,
        "params": params, "mismatches": mismatches, "irreducible": irreducible, "causes": causes,
        "schedule": sched, "timings": {"render": round(rnd.uniform(0.5, 3.0), 3), "compare": 0.01}, "error": error,
    }
    if tier == NEAR.name and irreducible and not mismatches and pi % 2 == 0:
        # judged against a measured noise floor (parity.compare.tiers.decide_floor_tier); no rnd draws, so the
        # sequence of the other items is unchanged
        item["noise_floor"] = _noise_floor(irreducible, metrics["ssim_y"])
    assert item["tier"] in tier_names() and all(k in registry.irreducible_names() for k in irreducible)
    return item
