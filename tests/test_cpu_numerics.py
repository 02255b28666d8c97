"""The CPU numerics mode (parity/cpu_numerics.py): option and environment, bad values, CPUs that cannot run it,
the restart that sets the pins, the refusal to run half pinned, CUDA. The golden tests
(tests/test_golden_oracle.py) show what the mode is for."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from parity import cpu_numerics
from parity.cli import main

REPO = Path(__file__).resolve().parents[1]
PINS = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "OMP_NUM_THREADS", "PARITY_CPU_NUMERICS",
        cpu_numerics.RESTARTED)


@pytest.fixture
def job(tmp_path):
    """Any existing folder: every refusal below happens before the job is read."""
    return str(tmp_path)


@pytest.fixture(autouse=True)
def _native_after(monkeypatch):
    """Each test leaves the process in native mode with the environment it found."""
    for k in PINS:
        monkeypatch.delenv(k, raising=False)
    yield
    cpu_numerics._active.update(mode="native", device=None)


def _one_line_exit_2(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("command", ["diff", "run", "demo"])
def test_every_rendering_command_has_the_option(command):
    from parity.cli import build_parser

    parser = build_parser(command)
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    assert any(a.option_strings == ["--cpu-numerics"] for a in sub._actions)


def test_unknown_value_is_one_line_exit_2(capsys, job):
    err = _one_line_exit_2(capsys, ["diff", job, "--cpu-numerics", "fast"])
    assert "--cpu-numerics 'fast' is not a CPU numerics mode: use native or portable" in err


def test_unknown_environment_value_is_one_line_exit_2(capsys, monkeypatch, job):
    monkeypatch.setenv("PARITY_CPU_NUMERICS", "avx512")
    err = _one_line_exit_2(capsys, ["diff", job])
    assert "$PARITY_CPU_NUMERICS 'avx512' is not a CPU numerics mode" in err


def test_the_option_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("PARITY_CPU_NUMERICS", "portable")
    assert cpu_numerics.requested("native") == "native"
    assert cpu_numerics.requested(None) == "portable"
    monkeypatch.delenv("PARITY_CPU_NUMERICS")
    assert cpu_numerics.requested(None) == "native"


def test_a_non_x86_cpu_is_one_line_exit_2(capsys, monkeypatch, job):
    monkeypatch.setattr(cpu_numerics, "machine", lambda: "aarch64")
    err = _one_line_exit_2(capsys, ["diff", job, "--cpu-numerics", "portable"])
    assert "need an x86-64 CPU with AVX2; this CPU is aarch64" in err


def test_an_x86_cpu_without_avx2_is_one_line_exit_2(capsys, monkeypatch, job):
    monkeypatch.setattr(cpu_numerics, "machine", lambda: "x86_64")
    monkeypatch.setattr(cpu_numerics, "cpu_flags", lambda: {"sse2", "sse4_2", "avx"})
    err = _one_line_exit_2(capsys, ["diff", job, "--cpu-numerics", "portable"])
    assert "need a CPU with AVX2 and FMA; this x86_64 CPU has no AVX2 and FMA" in err


def test_half_pinned_is_refused_when_torch_is_already_loaded(capsys, monkeypatch, job):
    """This test process has torch loaded; with only one pin set the other two are named, nothing renders."""
    import torch  # noqa: F401 - the point: torch is in sys.modules

    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    err = _one_line_exit_2(capsys, ["diff", job, "--cpu-numerics", "portable"])
    assert "torch is already loaded without MKL_CBWR=AVX2 OMP_NUM_THREADS=1" in err
    assert "ATEN_CPU_CAPABILITY" not in err


def test_a_library_call_of_main_never_restarts_the_process(monkeypatch):
    restarts = []
    monkeypatch.delitem(sys.modules, "torch")   # as if torch were not loaded yet; restored after the test
    with pytest.raises(cpu_numerics.CpuNumericsError, match="cannot restart itself"):
        cpu_numerics.enter("portable", may_restart=False, restart=restarts.append)
    assert restarts == []


def test_the_restart_adds_exactly_the_pins(monkeypatch):
    restarts = []
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx512")   # a conflicting value is replaced, not kept
    monkeypatch.setattr(cpu_numerics, "apply_in_process", lambda: None)
    cpu_numerics.enter("portable", may_restart=True, restart=restarts.append)
    (env,) = restarts
    assert {k: env[k] for k in cpu_numerics.PORTABLE_ENV} == cpu_numerics.PORTABLE_ENV
    assert env[cpu_numerics.RESTARTED] == "1"
    assert env["PATH"] == os.environ["PATH"]


def test_a_second_restart_is_refused_instead_of_looping(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setenv(cpu_numerics.RESTARTED, "1")
    with pytest.raises(cpu_numerics.CpuNumericsError, match="restarted with .* but they are not in the environment"):
        cpu_numerics.enter("portable", may_restart=True, restart=lambda env: None)


def test_on_cuda_the_mode_changes_nothing_and_says_so(caplog):
    """No pins, no refusal although torch is loaded unpinned: one INFO line."""
    with caplog.at_level(logging.INFO, logger="parity.cpu_numerics"):
        cpu_numerics.enter("portable", device="cuda:0", may_restart=False)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["cpu numerics portable: rendering on cuda:0, where the mode changes nothing (it pins CPU "
                     "kernels only)"]
    assert cpu_numerics.run_record("cuda:0")["applies"] is False


def test_the_module_does_not_import_torch():
    code = "import sys, parity.cpu_numerics, parity.commands.diff; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)}).returncode == 0


def _child(tmp_path, body: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    script = tmp_path / "child.py"
    script.write_text(body)
    clean = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120,
                          env={**clean, "PYTHONPATH": str(REPO), **env})


def test_a_program_restarts_itself_with_the_pins_and_its_own_arguments(tmp_path):
    """A clean environment: the child process that computes sees every pin, AVX2 kernels, no oneDNN, one thread,
    and the same command line."""
    body = ("import os, sys\nfrom parity import cpu_numerics\nprint('start', os.getpid(), flush=True)\n"
            "cpu_numerics.enter('portable', may_restart=True)\nimport torch\n"
            "print(os.environ['ATEN_CPU_CAPABILITY'], os.environ['MKL_CBWR'], os.environ['OMP_NUM_THREADS'],\n"
            "      torch.backends.cpu.get_cpu_capability(), torch.backends.mkldnn.enabled, torch.get_num_threads(),\n"
            "      sys.argv[1:])\n")
    r = _child(tmp_path, body, "a b", "--x")
    assert r.returncode == 0, r.stderr
    starts = [ln for ln in r.stdout.splitlines() if ln.startswith("start")]
    assert len(starts) == 2 and len(set(starts)) == 1      # execve: the same process, started twice
    assert r.stdout.splitlines()[-1] == "avx2 AVX2 1 AVX2 False 1 ['a b', '--x']"


@pytest.mark.parametrize("cbwr,branch", [("COMPATIBLE", "COMPATIBLE"), (None, "OFF")])
def test_the_mkl_branch_read_back_follows_mkl_cbwr(tmp_path, cbwr, branch):
    """What MKL reports is what MKL_CBWR asked for here (an Intel CPU honours every branch; an AMD one runs AUTO)."""
    body = "from parity import cpu_numerics\nprint(cpu_numerics.mkl_branch())\n"
    r = _child(tmp_path, body, **({"MKL_CBWR": cbwr} if cbwr else {}))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == branch


def test_a_program_with_torch_loaded_before_the_mode_fails_with_one_line(tmp_path):
    body = "import sys, torch\nfrom parity.cli import main\nsys.exit(main())\n"
    r = _child(tmp_path, body, "diff", str(tmp_path), "--cpu-numerics", "portable")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "parity: error: portable CPU numerics: torch is already loaded without ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2 "
        "OMP_NUM_THREADS=1 in its environment (they act only before it loads); set them before Python starts"]


def test_pytest_enters_the_mode_from_the_environment_also_in_xdist_workers(tmp_path):
    """`PARITY_CPU_NUMERICS=portable pytest -n 2`: the controller restarts itself pinned, the workers inherit it."""
    (tmp_path / "test_probe.py").write_text(
        "import os, torch\n"
        "def test_a():\n    assert (torch.backends.cpu.get_cpu_capability(), torch.backends.mkldnn.enabled,"
        " torch.get_num_threads(), os.environ['MKL_CBWR']) == ('AVX2', False, 1, 'AVX2')\n"
        "def test_b():\n    test_a()\n")
    clean = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "test_probe.py"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**clean, "PYTHONPATH": str(REPO), "PARITY_CPU_NUMERICS": "portable"})
    assert r.returncode == 0 and "2 passed" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]


def test_pytest_option_with_a_bad_value_is_one_usage_line(tmp_path):
    (tmp_path / "test_nothing.py").write_text("def test_x():\n    pass\n")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                        "--parity-cpu-numerics", "fast", "test_nothing.py"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 4    # pytest's usage error
    assert r.stderr.strip() == "ERROR: --parity-cpu-numerics 'fast' is not a CPU numerics mode: use native or portable"


def test_results_and_report_carry_the_mode_and_old_results_still_load(tmp_path):
    """run.cpu_numerics survives results.json -> load -> HTML run line; a run without it (written before the mode
    existed) loads and reports as before; a malformed block is one error naming the file."""
    import json

    from parity.errors import InputFileError
    from parity.report import load, synthetic_results, write_report

    path = synthetic_results(2, tmp_path / "run", image_size=32)
    doc = json.loads(path.read_text())
    assert "cpu_numerics" not in doc["run"]
    old_page = write_report(load(path), tmp_path / "old", thumbnails=False).index.read_text()
    assert 'id="cpu-numerics"' not in old_page
    doc["run"]["cpu_numerics"] = {"mode": "portable", "applies": True, "aten_capability": "AVX2"}
    path.write_text(json.dumps(doc))
    page = write_report(load(path), tmp_path / "new", thumbnails=False).index.read_text()
    assert '<span id="cpu-numerics">cpu numerics portable (AVX2)</span>' in page
    doc["run"]["cpu_numerics"] = "portable"
    path.write_text(json.dumps(doc))
    with pytest.raises(InputFileError, match="run.cpu_numerics"):
        load(path)


@pytest.mark.slow  # other Python processes
def test_benchmark_smoke_measures_both_modes_in_one_run(tmp_path, tiny_model_dir):
    import json

    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cpu_numerics.py"), "--smoke", "--base",
                        str(tiny_model_dir), "--json", str(out)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-2000:]
    fp32 = json.loads(out.read_text())["dtypes"]["fp32"]
    assert fp32["capability"]["portable"] == "AVX2"
    assert fp32["best_s"]["native"] > 0 and fp32["best_s"]["portable"] > 0 and fp32["ratio_portable_vs_native"] > 0
    # where native kernels are not AVX2 the two sides compute differently: the worker really changed mode
    if fp32["capability"]["native"] != "AVX2":
        assert fp32["same_bits"] is False
