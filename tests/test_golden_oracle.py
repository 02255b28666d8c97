"""Golden tests: previews that AI Toolkit's own code rendered (`../shared/oracle`), reproduced by parity.

Three layers, so that every machine guards something:
1. What AI Toolkit decided per preview (prompt, seed, size, steps, guidance, LoRA file, the `t` values handed to
   the transformer, the first noise values, latent size): the job reader and the engine's schedule/noise must
   agree exactly. Hardware-independent, fast.
2. The renders against the lossless PNGs AI Toolkit had before saving: bit-exact on the oracle's machine
   (`aitk_oracle.exact_gate`); on another CPU fp32 is held to one level on a few pixels and bf16/fp8 to the
   hardware bound measured in docs/numerics.md ("Golden renders").
3. `parity diff` on the saved JPEG previews, as a user runs it: every item EXACT on the oracle's machine.

The numerics details that only show in bf16 are also pinned at tensor level, hardware-independently, in
tests/test_numerics_details.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from aitk_oracle import CASES, DEV_BASE, exact_gate, job_dir, needs_oracle, previews, run_facts

pytestmark = needs_oracle

# On a machine other than the oracle's (exact_gate False), what a faithful render still achieves, measured on an
# AVX2 box against renders made elsewhere (docs/numerics.md "Golden renders"): fp32 stays within one level on a
# few pixels; bf16/fp8 drift chaotically (tens of levels) but keep the picture.
FP32_MAX_LEVELS = 1
FP32_MAX_DIFFERING = 0.01        # fraction of values (H*W*3) allowed to differ by that one level (seen: 0.77%)
LOW_PRECISION_MIN_SSIM = 0.95    # (seen: 0.976 or more) mean SSIM (Gaussian, scikit-image) of a bf16/fp8 render vs the lossless PNG


def _job(case):
    from parity.job import load_job

    return load_job(job_dir(case))


def _item_for(job_items, pv):
    for it in job_items:
        if it.step == pv.step and it.index == pv.index:
            return it
    raise AssertionError(f"{pv.id}: the job reader has no item for this preview")


# ------------------------------------------------------------------------------------------------ 1. facts
@pytest.mark.parametrize("case", sorted(CASES))
def test_job_reader_derives_every_preview_as_ai_toolkit_rendered_it(case):
    items = _job(case).items("all")
    assert len(items) == len(previews(case))
    for pv in previews(case):
        f, it = pv.facts, _item_for(items, pv)
        s = it.spec
        assert it.preview == pv.jpeg, pv.id
        assert s.prompt == f["prompt"], pv.id
        assert s.seed == f["seed"], pv.id
        assert (s.width // 16 * 16, s.height // 16 * 16) == tuple(f["size"]) == (f["width"], f["height"]), pv.id
        assert s.sample_steps == f["num_inference_steps"], pv.id
        assert s.guidance_scale == f["guidance_scale"] == f["guidance_passed"][0], pv.id
        assert s.network_multiplier == f["network_multiplier"], pv.id
        assert (None if s.lora_path is None else os.path.basename(s.lora_path)) == f["lora_file"], pv.id
        want_dtype = {"torch.float32": "fp32", "torch.bfloat16": "bf16"}[f["x_dtype"]]
        assert s.dtype == want_dtype, pv.id
    run = run_facts(case)
    lora_items = [it for it in items if it.spec.lora_path]
    # AI Toolkit merges the LoRA for sampling when it can (network_can_merge_in), else runs it live
    assert {it.spec.lora_application for it in lora_items} == {"merged" if run["network_can_merge_in"] else "live"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_schedule_timesteps_and_noise_are_ai_toolkits(case):
    import torch

    from parity.engine import numerics, schedule
    from parity.engine.sampling import make_noise
    from parity.engine.weights import torch_dtype

    for pv in previews(case):
        f = pv.facts
        dtype = torch_dtype({"torch.float32": "fp32", "torch.bfloat16": "bf16"}[f["x_dtype"]])
        sigmas, _ = schedule.sigmas_for("aitk", f["width"], f["height"], f["num_inference_steps"])
        # AI Toolkit's schedule tensor lives in the latent dtype; the t values the transformer received are its
        # entries, rounded to the model dtype (numerics detail 1)
        assert torch.tensor(sigmas).to(dtype).tolist() == f["schedule_with_terminal"], pv.id
        handed = [float(numerics.timestep_input(t, dtype, "aitk")[0]) for t in sigmas[:-1]]
        assert handed == f["timesteps"], pv.id
        assert len(handed) == f["transformer_calls"] and f["forward_passes_per_step"] == 1 and not f["cfg_ran"]
        noise = make_noise(f["seed"], f["width"], f["height"], dtype)
        assert list(noise.shape[2:]) == f["latent_hw"], pv.id
        assert noise.shape[2] * noise.shape[3] == f["image_tokens"] == f["transformer_x_len"], pv.id
        # the first packed token's first four channels (tokens are (h w) c)
        assert noise[0, :4, 0, 0].float().tolist() == f["noise_first4"], pv.id
        assert noise.dtype == getattr(torch, f["x_dtype"].split(".")[1])


# ------------------------------------------------------------------------------------------------ 2. lossless
@pytest.fixture(scope="module")
def oracle_engine():
    from parity.engine.render import Engine

    return Engine(DEV_BASE, cache_dir=None)


def render_preview(engine, case, pv):
    """Render one oracle preview the way `parity diff` does: the job reader's spec, and for merged LoRAs the
    earlier merge/un-merge rounds replayed."""
    from parity.job.history import history_from_job

    job = _job(case)
    it = _item_for(job.items("all"), pv)
    history = history_from_job(job, it.step, it.spec.network_multiplier) if it.spec.lora_path else None
    return engine.render(it.spec, merge_history=history)


def _ssim(a, b):
    """scikit-image's Gaussian SSIM over RGB (an implementation parity does not own)."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False, data_range=255))


def _golden_params():
    out = []
    for case in sorted(CASES):
        for pv in previews(case):
            marks = []
            # the quick local run (`make quick`) keeps one fp32 and one bf16 preview with a LoRA
            if pv.id in ("fp32-step250-p2", "bf16-step500-p2"):
                marks.append(pytest.mark.quick)
            out.append(pytest.param(case, pv, id=pv.id, marks=marks))
    return out


@pytest.mark.parametrize("case,pv", _golden_params() if (DEV_BASE / "model_index.json").is_file() else [])
def test_render_reproduces_ai_toolkits_lossless_image(oracle_engine, case, pv):
    exact, why = exact_gate()
    if not exact and case != "fp32" and pv.step != 500:
        # elsewhere a bf16/fp8 render is held only to the SSIM bound (gross errors); the step-500 previews, with
        # merge history (bf16) and the live LoRA (fp8), cover that at a third of the suite's time
        pytest.skip(f"bf16/fp8 step {pv.step}: checked bit for bit only on the oracle's CPU ({why})")
    result = render_preview(oracle_engine, case, pv)
    want = pv.lossless_pixels()
    assert result.image.shape == want.shape, pv.id
    delta = np.abs(result.image.astype(np.int16) - want.astype(np.int16))
    report = (f"{pv.id}: max |delta| {int(delta.max())}, {int((delta > 0).sum())} of {delta.size} values differ; "
              f"{why}")
    if exact:
        assert delta.max() == 0, report
    elif case == "fp32":
        assert delta.max() <= FP32_MAX_LEVELS, report
        assert (delta > 0).mean() <= FP32_MAX_DIFFERING, report
    else:
        score = _ssim(result.image, want)
        assert score >= LOW_PRECISION_MIN_SSIM, f"{report}; SSIM {score:.4f}"


# ------------------------------------------------------------------------------------------------ 3. parity diff
@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_diff_on_the_saved_previews(tmp_path, case):
    exact, why = exact_gate()
    if not exact and case != "fp32":
        pytest.skip(f"bf16/fp8 previews are bit-exact only on the oracle's CPU: {why}")
    out = tmp_path / "results.json"
    cmd = [sys.executable, "-m", "parity.cli", "diff", str(job_dir(case)), "--base-model", str(DEV_BASE),
           "--step", "all", "--no-attribution", "--out", str(tmp_path / "run"), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert out.is_file(), proc.stderr[-2000:]
    items = json.loads(out.read_text())["items"]
    assert len(items) == len(previews(case))
    tiers = {i["id"]: i["tier"] for i in items}
    allowed = {"EXACT"} if exact else {"EXACT", "NEAR"}
    assert set(tiers.values()) <= allowed, (tiers, why)
