"""The FLUX.2 family registry (parity/family.py) is the one home of family facts: a member registered in a
fixture is accepted by the job reader, the plan and request parsing with no other change, and removing one makes
each of them refuse it. Expected values here are written from AI Toolkit's classes (flux2_model.py,
flux2_klein_model.py), not read back from the registry."""

from __future__ import annotations

import ast
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from parity import family as fam_mod
from parity.cli import main
from parity.diagnose.request import parse_request
from parity.errors import ConfigError

DATA = Path(__file__).parent / "data" / "real_configs"
PARITY = Path(__file__).resolve().parents[1] / "parity"


def test_members_as_ai_toolkit_defines_them():
    # flux2_model.py: Flux2Model is guidance-distilled (one forward), Mistral hidden states 10/20/30;
    # flux2_klein_model.py: Flux2Klein4BModel / 9B run true CFG (two forwards) on Qwen3 states 9/18/27.
    dev, k4, k9 = (fam_mod.family(a) for a in ("flux2", "flux2_klein_4b", "flux2_klein_9b"))
    assert (dev.forwards_per_step, k4.forwards_per_step, k9.forwards_per_step) == (1, 2, 2)
    assert dev.hidden_layers == (10, 20, 30) and k4.hidden_layers == k9.hidden_layers == (9, 18, 27)
    assert (dev.single_file, k4.single_file, k9.single_file) == (
        "flux2-dev.safetensors", "flux-2-klein-base-4b.safetensors", "flux-2-klein-base-9b.safetensors")
    assert fam_mod.family("flux2:some_tag") is dev
    with pytest.raises(KeyError):
        fam_mod.family("flux")


@pytest.fixture
def throwaway(monkeypatch):
    """A member that exists nowhere else: a [klein]-like 'flux2_klein_2b' with its own file name."""
    member = replace(fam_mod.family("flux2_klein_4b"), arch="flux2_klein_2b", label="throwaway 2B",
                     single_file="flux-2-klein-base-2b.safetensors")
    monkeypatch.setitem(fam_mod.FAMILIES, member.arch, member)
    return member


def _job(tmp_path: Path, monkeypatch, arch: str, neg: str = "blurry") -> Path:
    data = json.loads((DATA / "ui_flux2_default.json").read_text())
    proc = data["config"]["process"][0]
    proc["model"]["arch"] = arch
    proc["sample"]["neg"] = neg
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)
    return path


def test_a_registered_member_is_planned(tmp_path, monkeypatch, capsys, throwaway):
    path = _job(tmp_path, monkeypatch, throwaway.arch)
    assert main(["plan", str(path), "--step", "0", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(r["arch"] == throwaway.arch for r in rows)
    # true CFG reads the negative prompt, so the plan shows it
    assert all(r["negative_prompt"] == "blurry" for r in rows)


def test_a_distilled_member_hides_the_negative_prompt(tmp_path, monkeypatch, capsys):
    path = _job(tmp_path, monkeypatch, "flux2")
    assert main(["plan", str(path), "--step", "0", "--json"]) == 0
    assert all(r["negative_prompt"] is None for r in json.loads(capsys.readouterr().out))


def test_a_removed_member_is_refused_by_job_reader_and_requests(tmp_path, monkeypatch, capsys):
    path = _job(tmp_path, monkeypatch, "flux2_klein_9b")
    monkeypatch.delitem(fam_mod.FAMILIES, "flux2_klein_9b")
    assert main(["plan", str(path), "--json"]) == 2
    assert "flux2_klein_9b" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="flux2_klein_9b"):
        parse_request({"model": "flux2_klein_9b", "prompts": [{"prompt": "x"}], "loras": []}, "req.json")


def test_requests_accept_a_registered_member(throwaway):
    req = parse_request({"model": throwaway.arch, "prompts": [{"prompt": "x"}], "loras": []}, "req.json")
    assert req.model == throwaway.arch


def test_no_arch_name_is_tested_outside_the_registry():
    """Family facts are asked of parity.family; no module compares or prefixes arch-name strings itself."""
    names = set(fam_mod.FAMILIES) | {"flux2_klein"}
    offenders = []
    for path in PARITY.rglob("*.py"):
        if path.name == "family.py" or "tiny" in path.parts or path.name == "demo.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(
                    isinstance(c, ast.Constant) and c.value in names for c in [node.left, *node.comparators]):
                offenders.append(f"{path.relative_to(PARITY)}:{node.lineno}")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "startswith" and node.args
                    and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith("flux2")):
                offenders.append(f"{path.relative_to(PARITY)}:{node.lineno}")
    assert not offenders, offenders
