"""Golden tests: previews that AI Toolkit's own code rendered (`../shared/oracle`), reproduced by parity.

1. What AI Toolkit decided per preview (prompt, seed, size, steps, guidance, LoRA file, the `t` values handed to
   the transformer, the first noise values, latent size): the job reader and the engine's schedule/noise must
   agree exactly. In process, fast.
2. Every oracle render (fp32, bf16, fp8, reference images, [klein]; 45) through `parity diff`, as a user runs it:
   one process per oracle job, started with a clean environment and put into portable CPU numerics only by
   `--cpu-numerics portable`. Each render must equal AI Toolkit's lossless PNG (max |delta| 0) and each preview
   must come out EXACT. On an Intel CPU the renders that differ (MKL's branch) are strict xfails from
   aitk_oracle.KNOWN_DIFFERENT; on the oracle's vendor (AMD) none is.
3. The mode is really what the comparison runs under: results.json records it, and on a CPU whose native kernels
   are not AVX2 the same render without the mode has other bits.

`make quick` keeps one render per precision and family member (tests/test_quick_golden.py).
"""

from __future__ import annotations

import os
from importlib.metadata import version

import numpy as np
import pytest

from aitk_oracle import (JOBS, ORACLE, assert_bit_exact, base_dir, clean_env, cpu_vendor, delta_report, golden_param,
                         job_dir, needs_oracle, oracle_numerics, preview, previews, run_facts, run_parity,
                         single_preview_job)
from aitk_oracle import render_preview  # noqa: F401 - benchmarks/mutation.py imports it from this module

pytestmark = needs_oracle
FACT_CASES = ("bf16", "fp32", "fp8")     # the flux2 jobs without reference images (their facts have one shape)


def _job(case):
    from parity.job import load_job

    return load_job(job_dir(case))


def _item_for(job_items, pv):
    for it in job_items:
        if it.step == pv.step and it.index == pv.index:
            return it
    raise AssertionError(f"{pv.id}: the job reader has no item for this preview")


# ------------------------------------------------------------------------------------------------ 1. facts
@pytest.mark.parametrize("case", FACT_CASES)
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


@pytest.mark.parametrize("case", FACT_CASES)
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


def test_the_modes_pins_are_the_ones_the_oracle_was_rendered_with():
    """The product's portable mode against what the oracle records (numerics.json), not against itself."""
    from parity import cpu_numerics

    rec = oracle_numerics()
    assert rec["cpu_numerics"] == "portable"
    assert cpu_numerics.PORTABLE_ENV == rec["env_before_python"]
    assert cpu_numerics.PORTABLE_CAPABILITY == rec["aten_capability"]
    assert rec["in_process"] == {"torch.backends.mkldnn.enabled": False, "torch.get_num_threads()": 1}
    assert set(cpu_numerics.BIT_LIBRARIES) <= set(rec["versions"])


# ------------------------------------------------------------------------------------------------ 2. renders
def _golden_params():
    # xdist_group: under `pytest -n N --dist loadgroup` one worker takes a whole job (one parity process)
    return [golden_param(pv, pytest.mark.xdist_group(f"oracle-{case}")) for case in JOBS for pv in previews(case)]


@pytest.mark.slow
@pytest.mark.parametrize("pv", _golden_params() if (ORACLE / "fp32").is_dir() else [])
def test_portable_render_is_ai_toolkits_image_bit_for_bit_and_exact(oracle_runs, pv):
    assert_bit_exact(pv, oracle_runs.get(pv.case))


# ------------------------------------------------------------------------------------------------ 3. the mode
@pytest.mark.slow
def test_portable_run_records_the_mode_avx2_and_the_versions_that_decide_bits(oracle_runs):
    run = oracle_runs.get("fp32")
    numerics = run.results["run"]["cpu_numerics"]
    assert numerics["mode"] == "portable" and numerics["applies"] is True
    assert numerics["aten_capability"] == "AVX2", "the child did not run AVX2 kernels: the restart did not pin"
    assert numerics["mkldnn"] is False and numerics["threads"] == 1
    # MKL honours MKL_CBWR=AVX2 only on Intel CPUs (elsewhere it runs AUTO, and the run says so)
    assert numerics["mkl_branch"] == ("AVX2" if _intel_cpu() else "AUTO")
    # the clean environment had none of them: the child restarted itself with the pins
    assert numerics["env"] == {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "OMP_NUM_THREADS": "1"}
    assert numerics["versions"] == {name: version(name) for name in
                                    ("torch", "diffusers", "transformers", "optimum-quanto")}
    assert run.results["run"]["inputs"]["cpu_numerics"] == "portable"   # a --resume must not mix modes
    page = (run.folder / "run" / "index.html").read_text()
    assert 'id="cpu-numerics">cpu numerics portable (AVX2)</span>' in page


def _intel_cpu() -> bool:
    return cpu_vendor() == "GenuineIntel"


@pytest.mark.slow
def test_native_kernels_are_not_what_the_golden_tests_compare(oracle_runs, tmp_path):
    """The same bf16 render without the mode (torch's native kernels; one thread, as the mode would use) has other
    bits than the portable one on a CPU whose native kernels are not AVX2. Where they are AVX2 already the ISA pin
    changes nothing, so this test shows nothing there and is skipped."""
    pv = preview("bf16-step0-p2")
    job = single_preview_job(pv, tmp_path / "job")
    native = run_parity(["diff", str(job), "--base-model", str(base_dir("bf16")), "--step", "0"], tmp_path / "native",
                        clean_env(tmp_path / "cache", OMP_NUM_THREADS="1"))
    numerics = native.results["run"]["cpu_numerics"]
    assert numerics["mode"] == "native" and "cpu_numerics" not in native.results["run"]["inputs"]
    if numerics["aten_capability"] == "AVX2":
        pytest.skip("this CPU's native kernels are AVX2 already: the ISA pin changes nothing to compare here")
    native_pixels = native.render_pixels(pv)
    portable_pixels = oracle_runs.get("bf16").render_pixels(pv)
    assert not np.array_equal(native_pixels, portable_pixels), (
        f"native {numerics['aten_capability']} kernels gave the portable render's bits: the mode changed nothing")
    assert delta_report(pv, native_pixels)[0] > 0, f"{pv.id}: native kernels reproduce the oracle"
