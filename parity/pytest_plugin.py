"""pytest plugin (entry point `pytest11: parity`): case files become test items.

    pytest parity                       # every case under cases/ (or --parity-cases / ini `parity_cases`)
    pytest parity -k p1                 # a subset: ids look like  portrait-v1[step2000-p3]
    pytest cases/portrait-v1.yaml       # one case
    pytest parity -n 2                  # pytest-xdist: workers write per-worker results, the controller merges

One item per (case, step, prompt). The base model loads once per session (per worker) and is shared by all
items; items are ordered to minimise LoRA switches. Metrics and tier go into `user_properties` (JUnit).
Like pytest-mpl, workers write their own results and the controller merges them once at session end and
writes one report (`--parity-report-dir`).
"""

from __future__ import annotations

import os
import time
from argparse import Namespace
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest
from _pytest._code.code import TerminalRepr  # the base class of pytest's own failure output

from parity.errors import ParityError
from parity.options import PlanOptions, ReportOptions, RunOptions, SessionOptions
from parity.record import ItemRecord
from parity.tier import gate_names


# -- options -----------------------------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("parity", "FLUX.2 preview parity")
    group.addoption("--parity-cases", action="append", default=None, metavar="PATH",
                    help="case files or folders to collect (default: ini parity_cases, else cases/)")
    group.addoption("--parity-base-model", default=None, metavar="DIR",
                    help="base model folder for every case (else the case's base_model, $PARITY_BASE_MODEL, job)")
    group.addoption("--parity-device", default=None, help="torch device for rendering (default: cuda if available)")
    group.addoption("--parity-report-dir", default=None, metavar="DIR",
                    help="where results.json and the HTML report go (default: reports/pytest-<time>)")
    group.addoption("--parity-min-tier", default=None,
                    help=f"override every case's gate ({', '.join(gate_names())})")
    group.addoption("--parity-attribution", dest="parity_attribution", action="store_true", default=None,
                    help="re-render one knob at a time for items below their gate (default on)")
    group.addoption("--parity-no-attribution", dest="parity_attribution", action="store_false",
                    help="skip attribution re-renders")
    group.addoption("--parity-shard", default=None, metavar="K/N",
                    help="run only shard K of N (deterministic split of items, for CI matrices)")
    group.addoption("--parity-cpu-numerics", default=None, metavar="{native,portable}",
                    help="CPU kernels for rendering: native (default) or portable (pinned to AVX2, the same bits on "
                         "every x86-64 CPU with AVX2; also $PARITY_CPU_NUMERICS). pytest restarts itself with the pins")
    group.addoption("--parity-skip-missing-model", dest="parity_skip_missing_model", action="store_true",
                    default=None, help="skip items whose base model is not on this machine (default: they fail)")
    group.addoption("--parity-report-url", default=None, metavar="BASE",
                    help="address the report folder will be served from (absolute links in summary.md, junit.xml "
                         "and the PR comment)")
    group.addoption("--parity-github", action="store_true", default=False,
                    help="also write pr-comment.md and commit-status.json into the report folder and append the "
                         "comment to $GITHUB_STEP_SUMMARY when set (docs/ci.md)")
    parser.addini("parity_cases", "case files or folders collected by `pytest parity`", type="linelist",
                  default=[])
    parser.addini("parity_base_model", "base model folder for every case", default="")
    parser.addini("parity_device", "torch device for rendering", default="")
    parser.addini("parity_report_dir", "report directory", default="")
    parser.addini("parity_min_tier", "gate override for every case", default="")
    parser.addini("parity_attribution", "attribution re-renders on/off", type="bool", default=True)
    parser.addini("parity_skip_missing_model", "skip (instead of fail) items whose base model is missing",
                  type="bool", default=False)


@dataclass(frozen=True)
class PluginOptions:
    """The plugin's options: the run's (parity.options) and what only pytest has."""

    run: RunOptions
    cases: tuple[str, ...]          # case files or folders collected by `pytest parity`
    skip_missing_model: bool        # skip, instead of fail, items whose base model is not here


_INI_KEYS = ("cases", "base_model", "device", "report_dir", "min_tier")


def plugin_options(given: Namespace, ini: Callable[[str], Any]) -> PluginOptions:
    """The one place the plugin reads its options: the command line (`given`), else the ini file, else the
    default. Checked: a bad value is pytest's one-line usage error."""
    from parity import cpu_numerics
    from parity.session import gate_tier

    def value(name: str) -> Any:
        v = vars(given).get(f"parity_{name}")
        if (v is None or v == []) and name in _INI_KEYS:
            v = ini(f"parity_{name}")
        return v if v not in ("", []) else None

    def flag(name: str) -> bool:
        v = vars(given).get(f"parity_{name}")
        return bool(ini(f"parity_{name}") if v is None else v)

    gate = value("min_tier")
    report_dir = value("report_dir")
    run = RunOptions(
        plan=PlanOptions(base_model=value("base_model"), shard=value("shard"),
                         min_tier=gate_tier(gate, "--parity-min-tier") if gate else None),
        # a pytest run owns its report folder: a rerun into the same --parity-report-dir starts afresh
        session=SessionOptions(device=value("device"), attribution=flag("attribution"), overwrite=True),
        report=ReportOptions(report_url=value("report_url"), github=bool(value("github"))),
        cpu_numerics=cpu_numerics.requested(value("cpu_numerics"), where="--parity-cpu-numerics"),
        out=Path(report_dir) if report_dir else None)
    return PluginOptions(run=run, cases=tuple(value("cases") or ("cases",)),
                         skip_missing_model=flag("skip_missing_model"))


def _case_paths(config: pytest.Config) -> list[Path]:
    given = config.stash[_OPTIONS].cases
    return [(config.rootpath / p).resolve() if not Path(p).is_absolute() else Path(p) for p in given]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]):
    """Before output capture starts and before any conftest imports torch: read the options (once; xdist workers
    read the same command line), enter their CPU numerics mode (a restart of pytest itself with the pins,
    docs/numerics.md), then rewrite `pytest parity` (see _rewrite_parity_word)."""
    try:
        _enter_cpu_numerics(_read_options(early_config, early_config.known_args_namespace).run)
    except ParityError as err:
        raise pytest.UsageError(str(err)) from None
    _rewrite_parity_word(args)
    return (yield)


def _read_options(config: pytest.Config, given: Namespace) -> PluginOptions:
    """The options, read once per process into the config's stash (a bad value: pytest's usage error)."""
    if _OPTIONS not in config.stash:
        try:
            config.stash[_OPTIONS] = plugin_options(given, config.getini)
        except ParityError as err:
            raise pytest.UsageError(str(err)) from None
    return config.stash[_OPTIONS]


def _enter_cpu_numerics(options: RunOptions) -> None:
    """xdist workers inherit the controller's pins and never restart (their channel to the controller would
    break)."""
    from parity import cpu_numerics

    cpu_numerics.enter(options.cpu_numerics, device=options.session.device,
                       may_restart="PYTEST_XDIST_WORKER" not in os.environ)


def _rewrite_parity_word(args: list[str]) -> None:
    """`pytest parity` means "run the parity suite": replace the bare word by the case folders.

    In this repository `parity/` is also the package folder; elsewhere it usually does not exist at all. Either
    way the word would otherwise collect nothing (or fail), so it is rewritten in place before collection."""
    if "parity" not in args:
        return
    cases = []
    for i, a in enumerate(args):
        if a.startswith("--parity-cases="):
            cases.append(a.split("=", 1)[1])
        elif a == "--parity-cases" and i + 1 < len(args):
            cases.append(args[i + 1])
    if not cases:
        cases = ["cases"]
    pos = args.index("parity")
    args[pos : pos + 1] = cases


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "parity: a FLUX.2 preview-parity item (collected from a case file)")
    from parity.cli import quiet_third_party

    # Third-party logs and loading bars stay out of the test output unless pytest logs at DEBUG.
    quiet_third_party(debug=str(config.getoption("log_level", default=None) or "").upper() == "DEBUG")
    options = _read_options(config, config.option)  # read early unless the plugin came in late (a conftest)
    if hasattr(config, "workerinput"):  # an xdist worker: the controller chose the run folder
        run_dir = Path(config.workerinput["parity_run_dir"])
    else:
        run_dir = options.run.out or config.rootpath / "reports" / time.strftime("pytest-%Y%m%d-%H%M%S")
    config.stash[_RUN_DIR] = run_dir.resolve()
    config.stash[_STATE] = _SessionState()
    report_url = options.run.report.report_url
    if report_url:
        from parity.report.html import report_href

        try:  # a bad address is a usage error now, not a failure after every item has run
            report_href(report_url)
        except ParityError as e:
            raise pytest.UsageError(str(e).replace("--report-url", "--parity-report-url")) from None


_OPTIONS = pytest.StashKey[PluginOptions]()
_RUN_DIR = pytest.StashKey[Path]()
_STATE = pytest.StashKey["_SessionState"]()


class _SessionState:
    def __init__(self) -> None:
        self.session = None  # parity.session.Session, opened by the first parity item that runs
        self.case_files: dict[str, Path] = {}   # case name -> the file that has it (names must be unique)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:  # xdist controller -> worker
    node.workerinput["parity_run_dir"] = str(node.config.stash[_RUN_DIR])


# -- collection --------------------------------------------------------------------------------------------
def _is_case_file(config: pytest.Config, file_path: Path) -> bool:
    if file_path.suffix not in (".yaml", ".yml"):
        return False
    file_path = file_path.resolve()
    for root in _case_paths(config):
        if file_path == root or (root.is_dir() and root in file_path.parents):
            return True
    # An explicitly named file (pytest cases/foo.yaml) is collected even outside the case folders.
    return any(Path(a).resolve() == file_path for a in config.args if not a.startswith("-"))


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if _is_case_file(parent.config, file_path):
        return CaseFile.from_parent(parent, path=file_path)
    return None


class CaseFile(pytest.File):
    def collect(self):
        from parity.cases import load_case
        from parity.run import plan_case

        config = self.config
        plan = config.stash[_OPTIONS].run.plan
        try:
            case = load_case(self.path)
            _claim_name(config, case)
            planned = plan_case(plan.applied_to(case), base_model=plan.base_model)
        except ParityError as e:
            yield CaseErrorItem.from_parent(self, name=f"{self.path.stem}[load]", message=str(e))
            return
        for p in planned:
            yield ParityItem.from_parent(self, name=p.id, planned=p)


    def repr_failure(self, excinfo, style=None):
        """Two case files with one name stop the collection (pytest exits 2): the one line that says which."""
        if isinstance(excinfo.value, DuplicateCaseName):
            return f"parity: {excinfo.value}"
        return super().repr_failure(excinfo, style)


class DuplicateCaseName(Exception):
    """Not a ParityError: it must escape `collect` and fail the whole collection, not become one item."""


def _claim_name(config: pytest.Config, case: Any) -> None:
    from parity.cases import duplicate_name

    first = config.stash[_STATE].case_files.setdefault(case.name, Path(case.path))
    if first != Path(case.path):
        raise DuplicateCaseName(duplicate_name(case.name, first, case.path))


class CaseErrorItem(pytest.Item):
    """A case that could not be planned: fails with its one-line reason; other cases are unaffected."""

    def __init__(self, *, message: str, **kwargs):
        super().__init__(**kwargs)
        self.message = message

    def runtest(self) -> None:
        raise ParityError(self.message)

    def repr_failure(self, excinfo, style=None):
        return f"parity: {self.message}"

    def reportinfo(self):
        return self.path, 0, f"parity case {self.path.name}"


class ParityFailure(Exception):
    pass


class FailureScreen(TerminalRepr):
    """The failure screen, with its one-line headline where pytest's short summary looks for it (`reprcrash`);
    a plain string would put the whole screen there on CI."""

    def __init__(self, text: str, message: str):
        self.text = text
        self.reprcrash = SimpleNamespace(message=message, path="", lineno=0)

    def toterminal(self, tw) -> None:
        for line in self.text.splitlines():
            tw.line(line)


class ParityItem(pytest.Item):
    def __init__(self, *, planned, **kwargs):
        super().__init__(**kwargs)
        self.planned = planned
        self.record = None  # parity.record.ItemRecord once run
        self.add_marker(pytest.mark.parity)

    def runtest(self) -> None:
        from parity.session import missing_base_model

        # a case with `renders:` compares another stack's images: the base model only explains a difference
        why = missing_base_model(self.planned) if self.planned.case.renders is None else None
        if why and self.config.stash[_OPTIONS].skip_missing_model:
            pytest.skip(why)
        session = _session(self.config)
        if why:  # fails by default: a CI runner with a wrong model path must not go green
            from parity.runner import error_record

            record = error_record(self.planned, why, time.perf_counter(), session.runner.hardware)
        else:
            record = session.runner.run_item(self.planned)
        self.record = record
        session.store.add(record)
        self.user_properties.extend(junit_properties(record))
        if not record.passed:
            raise ParityFailure(record)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ParityFailure):
            record = excinfo.value.args[0]
            return FailureScreen(failure_screen(record, self.config.stash[_RUN_DIR]), headline(record))
        if isinstance(excinfo.value, ParityError):
            return f"parity: {excinfo.value}"
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, 0, f"parity {self.name}"


def junit_properties(record: ItemRecord) -> list[tuple[str, Any]]:
    """Tier, verdict, numeric metrics, mismatches and the top cause as JUnit `user_properties` (unset metrics
    are left out, never written as "None")."""
    props: list[tuple[str, Any]] = [("parity_tier", record.tier), ("parity_passed", record.passed)]
    if record.expected:
        props.append(("parity_expected", record.expected))
    props += [(f"parity_{name}", round(float(value), 6)) for name, value in record.metrics.items()
              if isinstance(value, (int, float)) and not isinstance(value, bool)]
    if record.mismatches:
        props.append(("parity_mismatches", ",".join(record.mismatches)))
    if record.causes:
        props.append(("parity_top_cause", record.causes[0].knob))
    return props


def headline(record: ItemRecord) -> str:
    """The failure in one line (pytest's short summary shows it after the item id): the item's verdict line
    (parity.report.summary.Verdict.line: tier, gate and the error, top cause or mismatching knobs)."""
    from parity.report.summary import verdict

    return verdict(record.to_dict()).line


def failure_screen(record: ItemRecord, run_dir: Path) -> str:
    """One screen: tier, scores, mismatching knobs with values, the top cause, the report link."""
    from parity.values import cause_text, size_mismatch_text

    lines = [f"{record.id}: {headline(record)}"]
    if record.error and "\n" in record.error.strip():
        lines.append(f"  error: {record.error}")  # the headline holds only its first line
    if record.size_mismatch:
        lines.append(f"  size mismatch: {size_mismatch_text(record.size_mismatch)} (render resampled to score)")
    m = record.metrics
    if m:
        scores = ", ".join(f"{k} {m[k]:.4f}" for k in ("ssim", "ssim_y", "psnr", "mae", "max_abs")
                           if isinstance(m.get(k), (int, float)))
        lines.append(f"  scores: {scores}")
    lines += [f"  fails: {reason}" for reason in record.fail_reasons if reason != record.error]
    lines += [_knob_line(record, knob) for knob in record.mismatches]
    if record.irreducible:
        lines.append(f"  irreducible: {', '.join(record.irreducible)}")
    floor = record.noise_floor
    if floor is not None and (floor.reason or floor.error):
        lines.append(f"  noise floor: {floor.reason or 'not measured: ' + str(floor.error)}")
    if record.causes:
        c = record.causes[0]
        lines.append(f"  top cause: {cause_text(c.knob, c.value_preview, c.value_inference, c.ssim_aligned)}")
    src = record.source
    if src is not None and src.external:  # a render from the user's own stack (docs/your-own-stack.md)
        lines.append(f"  rendered by: {src.kind} {src.file or src.location or ''}".rstrip())
    if record.suspects is not None and record.suspects.verdict:  # every knob agrees: what the search recovered
        lines.append(f"  recovered: {record.suspects.verdict}")
    ex = record.explanation or {}
    if ex.get("verdict") or ex.get("error"):
        lines.append(f"  explanation: {ex.get('verdict') or 'failed: ' + str(ex.get('error'))}")
    lines.append(f"  report: {run_dir / 'index.html'}")
    return "\n".join(lines)


def _knob_line(record: ItemRecord, knob: str) -> str:
    from parity.values import knob_text

    pv = record.params.get("preview", {}).get(knob) or {}
    iv = record.params.get("inference", {}).get(knob) or {}
    return (f"  {knob}: preview {knob_text(knob, pv.get('value'))} ({pv.get('source')}) "
            f"vs inference {knob_text(knob, iv.get('value'))} ({iv.get('source')})")


def _session(config: pytest.Config):
    """The session's runner and store (parity.session), opened by the first item that runs."""
    state = config.stash[_STATE]
    if state.session is None:
        from parity.session import Session, default_device

        run_dir = config.stash[_RUN_DIR]
        options = config.stash[_OPTIONS].run.session
        device = options.device or default_device()
        worker = getattr(config, "workerinput", {}).get("workerid")
        if worker and device.startswith("cuda"):
            device = _worker_device(worker, device)
        state.session = Session.open(run_dir, dict(entry="pytest", worker=worker), replace(options, device=device),
                                     store_dir=run_dir / "workers" / worker if worker else run_dir)
    return state.session


def _worker_device(worker: str, device: str) -> str:
    """With several GPUs each xdist worker (gw0, gw1, ...) takes its own device."""
    import torch

    n = torch.cuda.device_count()
    if device != "cuda" or n <= 1:
        return device
    return f"cuda:{int(worker.lstrip('gw') or 0) % n}"


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]):
    from parity.ids import parse_shard, shard_of

    shard = config.stash[_OPTIONS].run.plan.shard
    if shard:
        k, n = parse_shard(shard)
        keep, drop = [], []
        for it in items:
            (drop if isinstance(it, ParityItem) and shard_of(it.planned.id, n) != k else keep).append(it)
        if drop:
            config.hook.pytest_deselected(items=drop)
        items[:] = keep
    # Minimise LoRA / precision switches: parity items sorted by their switch key, other items keep their order.
    parity_positions = [i for i, it in enumerate(items) if isinstance(it, ParityItem)]
    ordered = sorted((items[i] for i in parity_positions), key=lambda it: it.planned.switch_key)
    for pos, it in zip(parity_positions, ordered):
        items[pos] = it


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    state = config.stash.get(_STATE, None)
    if state is None:
        return
    if state.session is not None:
        state.session.close()
        state.session.store.finish()
    if hasattr(config, "workerinput"):
        return  # the controller merges and writes the report
    run_dir = config.stash[_RUN_DIR]
    from parity.report import write_report
    from parity.report.store import load, merge

    worker_dirs = sorted((run_dir / "workers").glob("*")) if (run_dir / "workers").is_dir() else []
    if worker_dirs and state.session is None:
        # xdist: every worker wrote its own run folder; one merged report for the session.
        results = merge([load(d) for d in worker_dirs])
    elif state.session is not None:
        results = load(run_dir)
    else:
        return  # no parity item ran in this session
    report = config.stash[_OPTIONS].run.report
    config.stash[_REPORT] = write_report(results, run_dir, report_url=report.report_url)
    if report.github:
        from parity.report.github import write_github_outputs

        write_github_outputs(results, run_dir, report_url=report.report_url)


_REPORT = pytest.StashKey[Any]()


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    paths = config.stash.get(_REPORT, None)
    if paths is None:
        return
    terminalreporter.write_sep("-", "parity")
    expected = [(r.nodeid, dict(r.user_properties).get("parity_expected"))
                for r in terminalreporter.stats.get("passed", []) if dict(r.user_properties).get("parity_expected")]
    if expected:  # passing, like xfail, but the drift is real: say so next to the report
        terminalreporter.write_line(f"parity: {len(expected)} item(s) pass with expected differences "
                                    "(expect.mismatches / expect.tier):")
        for nodeid, why in expected:
            terminalreporter.write_line(f"  {nodeid}: {why}")
    terminalreporter.write_line(f"parity report: {paths.index}")
