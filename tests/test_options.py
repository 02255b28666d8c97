"""A run's options (parity/options.py): every flag of `parity run` / `parity diff` / `parity demo` and of the pytest
plugin reaches its field, read in one builder per entry point; no code below reads `args`; a loaded Case is never
changed by a run's choices (it is frozen; the choices reach planning as new Case values)."""

from __future__ import annotations

import ast
import copy
import dataclasses
import inspect
import re
from argparse import Namespace
from pathlib import Path

import pytest

from parity.errors import ParityError
from parity.options import EndpointOptions, PlanOptions, ReportOptions, RunOptions, SessionOptions

ROOT = Path(__file__).resolve().parents[1]
pytest_plugins = ["pytester"]


def _options(argv: list[str]) -> RunOptions:
    """The options the CLI builds for a command line (no command runs)."""
    from parity.cli import build_parser

    args = build_parser(next(a for a in argv if not a.startswith("-"))).parse_args(argv)
    return args._module.options(args)


@pytest.fixture(autouse=True)
def _native_by_default(monkeypatch):
    monkeypatch.delenv("PARITY_CPU_NUMERICS", raising=False)


def test_no_code_below_the_entry_points_reads_args_by_name():
    """getattr(args, "x", default) hides a flag that one command has and another lacks: each builder reads the
    flags its parser defines, by attribute."""
    found = []
    for path in sorted((ROOT / "parity").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
                    and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id == "args"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


def test_diff_flags_reach_their_fields(tmp_path):
    out = tmp_path / "o"
    got = _options(["diff", "job", "--step", "100,200", "--set", "sample_steps=3", "--set", "seed=4",
                    "--min-tier", "near", "--base-model", "/m", "--text-encoder", "/te", "--lora", "l.safetensors",
                    "--shard", "2/3", "--no-attribution", "--budget", "7", "--determinism-check", "off", "--resume",
                    "--force-resume", "--device", "cpu", "--out", str(out), "--json", str(tmp_path / "r.json"),
                    "--link-images", "--report-url", "https://ci.example/r", "--github", "--endpoint",
                    "http://127.0.0.1:9", "--endpoint-timeout", "5", "--endpoint-wait", "60",
                    "--endpoint-allow-insecure-token", "--cpu-numerics", "native", "--profile", "diffusers"])
    assert got.plan == PlanOptions(steps="100,200", inference="diffusers", overrides=("sample_steps=3", "seed=4"),
                                   min_tier="NEAR", base_model="/m", text_encoder="/te",
                                   lora=Path("l.safetensors").resolve(), shard="2/3")
    assert got.plan.step_selection() == [100, 200]
    assert got.session == SessionOptions(device="cpu", attribution=False, budget=7, determinism_check="off",
                                         resume=True, force_resume=True)
    assert got.report == ReportOptions(link_images=True, report_url="https://ci.example/r", github=True)
    assert got.endpoint == EndpointOptions("http://127.0.0.1:9", timeout_s=5.0, wait_s=60.0, allow_insecure_token=True)
    assert (got.out, got.json_out, got.quiet, got.cpu_numerics) == (out, tmp_path / "r.json", False, "native")


def test_run_defaults_are_the_documented_ones(monkeypatch):
    got = _options(["run"])
    assert got == RunOptions()
    assert (got.plan.step_selection(), got.session.attribution, got.session.determinism_check,
            got.report.link_images, got.cpu_numerics) == (None, True, "auto", False, "native")
    monkeypatch.setenv("PARITY_CPU_NUMERICS", "portable")
    assert _options(["-q", "run", "--request", "r.json"]) == RunOptions(
        plan=PlanOptions(inference={"request": str(Path("r.json").resolve())}), cpu_numerics="portable", quiet=True)


def test_demo_renders_on_the_cpu_into_reports_demo():
    assert _options(["demo"]) == RunOptions(session=SessionOptions(device="cpu"), out=Path("reports/demo"))
    assert _options(["demo", "--out", "x", "--cpu-numerics", "portable"]).cpu_numerics == "portable"


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "--min-tier", "GOOD"], "--min-tier must be one of EXACT, NEAR, DRIFT, DIFFERENT, got 'GOOD'"),
    (["run", "--step", "soon"], "--step must be latest, all, N or N,M,..., got 'soon'"),
    (["run", "--budget", "-1"], "--budget must be 0 or more, got -1"),
    (["run", "--profile", "nope"], "unknown inference profile 'nope'"),
    (["run", "--cpu-numerics", "fast"], "--cpu-numerics 'fast' is not a CPU numerics mode"),
    (["diff", "j", "--endpoint", "http://h", "--endpoint-wait", "0"], "--endpoint-wait must be more than 0 seconds"),
])
def test_a_bad_flag_is_refused_where_the_options_are_built(argv, message):
    with pytest.raises(ParityError, match=re.escape(message)):
        _options(argv)


def test_session_open_takes_the_options_not_flags():
    from parity.session import Session

    params = inspect.signature(Session.open).parameters
    assert [p for p in params if params[p].annotation in (bool, "bool")] == []
    assert "options" in params and len(params) <= 6


def test_cases_are_frozen():
    from parity.cases import Case, Expectation

    case = Case(name="c", path=Path("c.yaml"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        case.text_encoder = "/te"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        case.expect.min_tier = "EXACT"  # type: ignore[misc]
    assert isinstance(case.expect, Expectation)


def test_run_choices_reach_the_items_as_new_cases(tmp_path):
    """--min-tier, --text-encoder and --renders reach every planned item's case; the loaded cases stay as read."""
    from parity.cases import load_case
    from parity.commands._execute import _plan
    from parity.demo import build_demo

    build_demo(ROOT / "demo")
    loaded = [load_case(ROOT / "cases" / "demo-parity.yaml"), load_case(ROOT / "cases" / "demo-klein.yaml")]
    as_read = copy.deepcopy(loaded)
    planned, errors = _plan(loaded, PlanOptions(min_tier="EXACT", text_encoder="/te", renders=tmp_path))
    assert errors == [] and len({p.case.name for p in planned}) == 2
    assert {(p.case.expect.min_tier, p.case.text_encoder, p.case.renders, p.text_encoder) for p in planned} == {
        ("EXACT", "/te", tmp_path, "/te")}
    assert loaded == as_read
    assert [c.expect.min_tier for c in loaded] == ["NEAR", "NEAR"]
    same, _ = _plan(loaded, PlanOptions())
    assert {p.case.expect.min_tier for p in same} == {"NEAR"} and all(any(p.case is c for c in loaded) for p in same)


def test_doctor_text_encoder_is_a_new_case(monkeypatch):
    import parity.cases
    from parity.commands.doctor import load_targets
    from parity.demo import build_demo

    build_demo(ROOT / "demo")
    loaded = []
    monkeypatch.setattr(parity.cases, "load_case", lambda p, _load=parity.cases.load_case: loaded.append(_load(p))
                        or loaded[-1])
    target = str(ROOT / "cases" / "demo-parity.yaml")
    assert [c.text_encoder for c in load_targets([target], "/te")] == ["/te"]
    assert [c.text_encoder for c in loaded] == [None]


def _ini(values: dict):
    defaults = {"parity_cases": [], "parity_base_model": "", "parity_device": "", "parity_report_dir": "",
                "parity_min_tier": "", "parity_attribution": True, "parity_skip_missing_model": False}
    return lambda name: {**defaults, **values}[name]


def _given(**values) -> Namespace:
    names = ("cases", "base_model", "device", "report_dir", "min_tier", "attribution", "shard", "cpu_numerics",
             "skip_missing_model", "report_url")
    return Namespace(**{f"parity_{n}": values.get(n) for n in names}, parity_github=values.get("github", False))


def test_plugin_options_command_line_over_ini_over_default():
    from parity.pytest_plugin import PluginOptions, plugin_options

    assert plugin_options(_given(), _ini({})) == PluginOptions(
        run=RunOptions(session=SessionOptions(overwrite=True)), cases=("cases",), skip_missing_model=False)
    ini = _ini({"parity_cases": ["a", "b"], "parity_base_model": "/ini-model", "parity_device": "cpu",
                "parity_report_dir": "rep", "parity_min_tier": "drift", "parity_attribution": False,
                "parity_skip_missing_model": True})
    from_ini = plugin_options(_given(), ini)
    assert from_ini == PluginOptions(
        run=RunOptions(plan=PlanOptions(base_model="/ini-model", min_tier="DRIFT"),
                       session=SessionOptions(device="cpu", attribution=False, overwrite=True), out=Path("rep")),
        cases=("a", "b"), skip_missing_model=True)
    given = _given(cases=["c"], base_model="/m", device="cuda", report_dir="r2", min_tier="EXACT", attribution=True,
                   shard="1/2", cpu_numerics="native", skip_missing_model=False, report_url="https://x/r",
                   github=True)
    assert plugin_options(given, ini) == PluginOptions(
        run=RunOptions(plan=PlanOptions(base_model="/m", min_tier="EXACT", shard="1/2"),
                       session=SessionOptions(device="cuda", attribution=True, overwrite=True),
                       report=ReportOptions(report_url="https://x/r", github=True), out=Path("r2")),
        cases=("c",), skip_missing_model=False)


def test_plugin_refuses_a_bad_gate_before_collection():
    from parity.pytest_plugin import plugin_options

    with pytest.raises(ParityError, match="--parity-min-tier must be one of"):
        plugin_options(_given(min_tier="GOOD"), _ini({}))
    with pytest.raises(ParityError, match="--parity-cpu-numerics 'fast'"):
        plugin_options(_given(cpu_numerics="fast"), _ini({}))


def test_pytest_says_a_bad_gate_in_one_line(pytester):
    """Like --parity-cpu-numerics: pytest's usage error (exit 4) before anything is collected, not one failing
    item per case file."""
    pytester.mkdir("cases")
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--parity-min-tier", "GOOD")
    assert r.ret == 4
    assert r.stderr.str().strip() == "ERROR: --parity-min-tier must be one of EXACT, NEAR, DRIFT, DIFFERENT, got 'GOOD'"
