"""Hostile YAML/JSON in case files and job configs ends quickly with a one-line error naming the file (issue 17,
finding 8 and the duplicate-key part of 10)."""

from __future__ import annotations

import logging
import resource
import subprocess
import sys
import textwrap

import pytest

from parity import yamlsafe
from parity.cases import load_case
from parity.errors import ConfigError
from parity.job.config import read_config_file

# 9 levels of 9 aliases: 9**9 (387 million) leaves from under 800 bytes
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))


def test_alias_bomb_in_a_case_file(tmp_path):
    case = tmp_path / "bomb.yaml"
    case.write_text("name: bomb\njob: x\n" + BOMB)
    assert len(case.read_bytes()) < 800
    with pytest.raises(ConfigError, match=r"bomb\.yaml.*expands to \d+ values through aliases"):
        load_case(case)


def test_recursive_alias(tmp_path):
    case = tmp_path / "loop.yaml"
    case.write_text("name: loop\njob: &j [1, *j]\n")
    with pytest.raises(ConfigError, match=r"loop\.yaml.*recursive YAML alias \(line 2\)"):
        load_case(case)


def test_duplicate_key_in_a_case_file_names_key_and_line(tmp_path):
    case = tmp_path / "dup.yaml"
    case.write_text("name: a\njob: x\nname: b\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml.*duplicate key 'name' \(line 3\)"):
        load_case(case)


def test_duplicate_key_in_a_job_config_warns_and_keeps_the_last_like_ai_toolkit(tmp_path, caplog):
    cfg = tmp_path / "job.yaml"
    cfg.write_text("job: extension\nconfig:\n  name: first\n  name: second\n")
    with caplog.at_level(logging.WARNING, logger="parity"):
        data, _ = read_config_file(cfg)
    assert data["config"]["name"] == "second"
    assert "duplicate key 'name' (line 4)" in caplog.text and "job.yaml" in caplog.text


def test_deep_nesting_and_deep_json(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: d\njob: " + "[" * 500 + "]" * 500 + "\n")
    with pytest.raises(ConfigError, match=r"deep\.yaml.*nested deeper than"):
        load_case(deep)
    js = tmp_path / "deep.json"
    js.write_text('{"job": ' + "[" * 100000 + "]" * 100000 + "}")
    with pytest.raises(ConfigError, match=r"deep\.json.*(nested too deeply|too large|at most)"):
        read_config_file(js)


def test_oversized_config(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("job: extension\n# " + "x" * (yamlsafe.MAX_BYTES + 10) + "\n")
    with pytest.raises(ConfigError, match=r"big\.yaml.*at most"):
        read_config_file(big)


def test_anchors_and_merge_keys_still_work(tmp_path):
    case = tmp_path / "ok.yaml"
    case.write_text("name: ok\njob: ./job\nexpect: &e {min_tier: NEAR}\n")
    assert load_case(case).name == "ok"
    assert yamlsafe.load("base: &b {x: 1}\nd: {<<: *b, y: 2}\n", None) == {"base": {"x": 1}, "d": {"x": 1, "y": 2}}


def _limit_memory():
    limit = 2 * 1024 ** 3
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


@pytest.mark.parametrize("doc", [BOMB, "a: &a [1, *a]\n"], ids=["alias-bomb", "recursive"])
def test_hostile_job_config_under_a_2gb_address_space_limit(tmp_path, doc):
    cfg = tmp_path / "hostile.yaml"
    cfg.write_text("job: extension\nconfig:\n  name: h\n" + textwrap.indent(doc, "  "))
    proc = subprocess.run([sys.executable, "-m", "parity.cli", "plan", str(cfg)], capture_output=True, text=True,
                          timeout=30, preexec_fn=_limit_memory)
    assert proc.returncode == 2, proc.stderr
    assert "hostile.yaml" in proc.stderr and ("aliases" in proc.stderr or "recursive" in proc.stderr)
    assert "Traceback" not in proc.stderr
