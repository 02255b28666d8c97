"""Golden tests: previews that AI Toolkit's own code rendered (`../shared/oracle`), reproduced by parity.

1. What AI Toolkit decided per preview (prompt, seed, size, steps, guidance, LoRA file, the `t` values handed to
   the transformer, the first noise values, latent size): the job reader and the engine's schedule/noise must
   agree exactly. In process, fast.
2. Every oracle render (fp32, bf16, fp8, reference images, [klein]; 45) through `parity diff`, as a user runs it:
   one process per oracle job, started with a clean environment and put into portable CPU numerics only by
   `--cpu-numerics portable`. Each render must equal AI Toolkit's lossless PNG (max |delta| 0) and each preview
   must come out EXACT. The renders that still differ are strict xfails from aitk_oracle.KNOWN_DIFFERENT.
3. The mode is really what the comparison runs under: results.json records it, and on a CPU whose native kernels
   are not AVX2 the same render without the mode has other bits.

`make quick` keeps one render per precision and family member, rendered by ONE `parity run` with
`PARITY_CPU_NUMERICS=portable` (the environment route of the same mode).
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

from aitk_oracle import (CASES, JOBS, ORACLE, ParityRun, base_dir, clean_env, delta_report, diff_job,
                         fail_if_worse_than_known, golden_param, job_dir, needs_oracle, oracle_numerics, previews,
                         run_facts, run_parity, single_preview_job)
from aitk_oracle import render_preview  # noqa: F401 - benchmarks/mutation.py imports it from this module

pytestmark = needs_oracle
FACT_CASES = ("bf16", "fp32", "fp8")     # the flux2 jobs without reference images (their facts have one shape)
# `make quick`: one render per precision and family member, the cheapest of each (128x80 where there is one)
QUICK = ("fp32-step0-p2", "bf16-step0-p2", "fp8-step0-p2", "ctrl-step0-p1", "klein-step0-p2")


def _job(case):
    from parity.job import load_job

    return load_job(job_dir(case))


def _item_for(job_items, pv):
    for it in job_items:
        if it.step == pv.step and it.index == pv.index:
            return it
    raise AssertionError(f"{pv.id}: the job reader has no item for this preview")


def _preview(pv_id: str):
    return next(pv for case in JOBS for pv in previews(case) if pv.id == pv_id)


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
class OracleRuns:
    """The parity processes the golden tests read, each run once per test session and shared by the pytest-xdist
    workers (a file lock per run in the session's common temp folder; the first worker to ask runs it)."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def get(self, case: str) -> ParityRun:
        """One portable `parity diff` of an oracle job, every step."""
        return self._once(case, lambda folder: diff_job(case, folder, "--cpu-numerics", "portable"))

    def quick(self) -> ParityRun:
        """One `parity run` (one process) over one-preview copies of five oracle jobs (QUICK), portable through
        $PARITY_CPU_NUMERICS."""
        return self._once("quick", _quick_run)

    def _once(self, name: str, produce) -> ParityRun:
        folder = self.root / name
        with _locked(self.root / f"{name}.lock"):
            done = folder / "process.json"
            if not done.is_file():
                run = produce(folder)
                done.write_text(json.dumps({"returncode": run.returncode, "stderr": run.stderr}))
            proc = json.loads(done.read_text())
            results = folder / "results.json"
            return ParityRun(folder, proc["returncode"], proc["stderr"],
                             json.loads(results.read_text()) if results.is_file() else {})


@contextmanager
def _locked(path: Path):
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def oracle_runs(tmp_path_factory) -> OracleRuns:
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base   # the controller's session folder
    return OracleRuns(shared / "oracle-portable")


def _golden_params():
    # xdist_group: under `pytest -n N --dist loadgroup` one worker takes a whole job (one parity process)
    return [golden_param(pv, pytest.mark.xdist_group(f"oracle-{case}")) for case in JOBS for pv in previews(case)]


def _assert_bit_exact(pv, run: ParityRun) -> None:
    worst, message = delta_report(pv, run.render_pixels(pv))
    fail_if_worse_than_known(pv, worst, message)
    assert worst == 0, message
    item = run.items[pv.item_id]
    assert item["tier"] == "EXACT", f"{pv.id}: identical pixels but parity diff says {item['tier']} ({item['reason']})"


@pytest.mark.slow
@pytest.mark.parametrize("pv", _golden_params() if (ORACLE / "fp32").is_dir() else [])
def test_portable_render_is_ai_toolkits_image_bit_for_bit_and_exact(oracle_runs, pv):
    _assert_bit_exact(pv, oracle_runs.get(pv.case))


# ------------------------------------------------------------------------------------------------ 3. the mode
@pytest.mark.slow
def test_portable_run_records_the_mode_avx2_and_the_versions_that_decide_bits(oracle_runs):
    run = oracle_runs.get("fp32")
    numerics = run.results["run"]["cpu_numerics"]
    assert numerics["mode"] == "portable" and numerics["applies"] is True
    assert numerics["aten_capability"] == "AVX2", "the child did not run AVX2 kernels: the restart did not pin"
    assert numerics["mkldnn"] is False and numerics["threads"] == 1
    # the clean environment had none of them: the child restarted itself with the pins
    assert numerics["env"] == {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "OMP_NUM_THREADS": "1"}
    assert numerics["versions"] == {name: version(name) for name in
                                    ("torch", "diffusers", "transformers", "optimum-quanto")}
    assert run.results["run"]["inputs"]["cpu_numerics"] == "portable"   # a --resume must not mix modes
    page = (run.folder / "run" / "index.html").read_text()
    assert 'id="cpu-numerics">cpu numerics portable (AVX2)</span>' in page


@pytest.mark.slow
def test_native_kernels_are_not_what_the_golden_tests_compare(oracle_runs, tmp_path):
    """The same bf16 render without the mode (torch's native kernels; one thread, as the mode would use) has other
    bits than the portable one on a CPU whose native kernels are not AVX2. Where they are AVX2 the two runs
    compute alike, so this half cannot show anything there and is skipped."""
    pv = _preview("bf16-step0-p2")
    job = single_preview_job(pv, tmp_path / "job")
    native = run_parity(["diff", str(job), "--base-model", str(base_dir("bf16")), "--step", "0"], tmp_path / "native",
                        clean_env(tmp_path / "cache", OMP_NUM_THREADS="1"))
    numerics = native.results["run"]["cpu_numerics"]
    assert numerics["mode"] == "native" and "cpu_numerics" not in native.results["run"]["inputs"]
    if numerics["aten_capability"] == "AVX2":
        pytest.skip("this CPU's native kernels are AVX2 already: native and portable runs compute alike here")
    native_pixels = native.render_pixels(pv)
    portable_pixels = oracle_runs.get("bf16").render_pixels(pv)
    assert not np.array_equal(native_pixels, portable_pixels), (
        f"native {numerics['aten_capability']} kernels gave the portable render's bits: the mode changed nothing")
    assert delta_report(pv, native_pixels)[0] > 0, f"{pv.id}: native kernels reproduce the oracle"


# ------------------------------------------------------------------------------------------------ make quick
def _quick_run(folder: Path) -> ParityRun:
    cases = []
    for pv_id in QUICK:
        pv = _preview(pv_id)
        job = single_preview_job(pv, folder / "jobs")
        case = folder / f"{pv.case}.yaml"
        case.write_text(json.dumps({"name": CASES[pv.case], "job": str(job), "base_model": str(base_dir(pv.case)),
                                    "steps": 0, "noise_floor": False}))
        cases.append(str(case))
    return run_parity(["run", *cases], folder, clean_env(folder / "cache", PARITY_CPU_NUMERICS="portable"))


@pytest.mark.quick
@pytest.mark.parametrize("pv", [golden_param(_preview(i)) for i in QUICK] if (ORACLE / "fp32").is_dir() else [])
def test_quick_one_render_per_precision_and_family_member_is_bit_exact(oracle_runs, pv):
    run = oracle_runs.quick()
    assert run.results["run"]["cpu_numerics"]["aten_capability"] == "AVX2", run.stderr[-2000:]
    _assert_bit_exact(pv, run)
