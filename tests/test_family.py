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

import numpy as np
import pytest
import yaml

from parity import family as fam_mod
from parity.cli import main
from parity.diagnose.request import parse_request
from parity.errors import ConfigError, ModelError
from parity.spec import RenderSpec

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


def test_other_models_are_refused_with_what_to_do_instead():
    # the reference server's flux2_diffusers model is diffusers' own pipeline (divisor 32), not AI Toolkit's
    with pytest.raises(ConfigError, match=r"'flux2_diffusers' is not supported.*resolution_divisor=32"):
        parse_request({"model": "flux2_diffusers", "prompts": [{"prompt": "x"}], "loras": []}, "req.json")
    with pytest.raises(ConfigError, match=r"'sdxl' is not supported; parity checks 'flux2', [^(]*$"):
        parse_request({"model": "sdxl", "prompts": [{"prompt": "x"}], "loras": []}, "req.json")
    with pytest.raises(ConfigError, match='expected the string "flux2"'):
        parse_request({"model": 3, "prompts": [{"prompt": "x"}], "loras": []}, "req.json")


def test_requests_accept_a_registered_member(throwaway):
    req = parse_request({"model": throwaway.arch, "prompts": [{"prompt": "x"}], "loras": []}, "req.json")
    assert req.model == throwaway.arch


# -- the engine path: tiny factory, base-folder detection, render ---------------------------------------------
def _render_spec(arch: str) -> RenderSpec:
    return RenderSpec(prompt="a red fox in the snow", width=64, height=64, seed=5, sample_steps=2, guidance_scale=4.0,
                      dtype="fp32", arch=arch, negative_prompt="blurry")


@pytest.fixture(scope="module")
def klein_base(tmp_path_factory) -> Path:
    from parity.tiny import build_member

    root = tmp_path_factory.mktemp("tiny-klein-4b")
    build_member("flux2_klein_4b", root)
    return root


def test_the_engine_renders_a_registered_member_like_the_member_it_copies(tmp_path, throwaway, klein_base):
    """The throwaway copies [klein] 4B's shapes under its own name: the tiny factory writes its single file, the
    engine finds the member by that file and runs its true CFG (two forwards a step), and the image is the
    [klein] 4B image of the same weights."""
    from parity.engine.render import Engine
    from parity.tiny import build_member

    build_member(throwaway.arch, tmp_path / "new")
    new = Engine(tmp_path / "new", layout="bfl")
    assert new.layout.arch == throwaway.arch and new.layout.transformer.name == "flux-2-klein-base-2b.safetensors"
    got = new.render(_render_spec(throwaway.arch))
    want = Engine(klein_base, layout="bfl").render(_render_spec("flux2_klein_4b"))
    assert got.cfg and got.transformer_calls == 2 * 2
    assert np.array_equal(got.image, want.image)


def test_the_tiny_factory_builds_a_distilled_member_the_engine_finds(tmp_path, monkeypatch):
    from parity.engine import weights
    from parity.tiny import build_member

    member = replace(fam_mod.family("flux2"), arch="flux2_small", label="throwaway distilled",
                     single_file="flux2-small.safetensors")
    monkeypatch.setitem(fam_mod.FAMILIES, member.arch, member)
    paths = build_member(member.arch, tmp_path)
    assert paths.bfl_transformer.name == "flux2-small.safetensors"
    layout = weights.resolve_base(tmp_path, layout="bfl")
    assert layout.arch == member.arch and layout.transformer == paths.bfl_transformer
    assert weights.resolve_base(tmp_path, layout="diffusers").arch == member.arch  # named by its file


def test_the_engine_refuses_a_removed_member(tmp_path, monkeypatch, throwaway):
    from parity.engine.render import Engine
    from parity.tiny import build_member

    build_member(throwaway.arch, tmp_path / "new")
    monkeypatch.delitem(fam_mod.FAMILIES, throwaway.arch)
    with pytest.raises(KeyError):
        build_member(throwaway.arch, tmp_path / "again")
    with pytest.raises(ModelError, match="missing the BFL transformer"):
        Engine(tmp_path / "new", layout="bfl")  # its single file is no member's any more
    engine = Engine(tmp_path / "new")  # the diffusers layout still loads, as a [klein] pipeline
    with pytest.raises(ConfigError, match=throwaway.arch):
        engine.render(_render_spec(throwaway.arch))


def test_a_transformer_config_that_contradicts_the_member_is_refused(tmp_path, klein_base):
    """A [klein] pipeline folder whose transformer config has a guidance embedding is another model: one error
    naming the config file, not a render without CFG."""
    from parity.engine.render import Engine

    base = tmp_path / "base"
    shutil.copytree(klein_base, base)
    cfg = base / "transformer" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "guidance_embeds": True}))
    with pytest.raises(ModelError, match="guidance_embeds is true") as e:
        Engine(base)
    assert str(cfg) in str(e.value)


def _family_names() -> set[str]:
    """Every name a family fact is keyed by: member archs, AI Toolkit's other archs and aliases, the reference
    server's other model ids, the members' pipeline classes and text-encoder kinds."""
    members = fam_mod.FAMILIES.values()
    return (set(fam_mod.FAMILIES) | {"flux2_klein"} | set(fam_mod.ARCH_ALIASES) | set(fam_mod.ARCH_ALIASES.values())
            | {name for _, name in fam_mod.LEGACY_ARCH_FLAGS} | {fam_mod.LEGACY_DEFAULT_ARCH}
            | set(fam_mod.OTHER_LABELS) | set(fam_mod.OTHER_HINTS)
            | {f.pipeline_class for f in members} | {f.text_encoder for f in members})


def arch_name_tests(root: Path) -> list[str]:
    """`file:line` of each comparison with a family name, and each `.startswith("flux2...")`, outside family.py."""
    names, found = _family_names(), []
    for path in root.rglob("*.py"):
        if path.name == "family.py" and path.parent == root:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            compares = isinstance(node, ast.Compare) and any(
                isinstance(c, ast.Constant) and c.value in names for c in [node.left, *node.comparators])
            prefix = (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                      and node.func.attr == "startswith" and node.args and isinstance(node.args[0], ast.Constant)
                      and str(node.args[0].value).startswith("flux2"))
            if compares or prefix:
                found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_no_arch_name_is_tested_outside_the_registry():
    """Family facts are asked of parity.family; no module (engine/, tiny/ and the demo included) compares or
    prefixes a family name itself."""
    offenders = arch_name_tests(PARITY)
    assert not offenders, offenders


def test_the_arch_name_rule_sees_the_tests_it_forbids(tmp_path):
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "m.py").write_text(
        'def f(arch, te, cls):\n    return arch == "flux2_klein_4b" or te != "qwen3" or "Flux2KleinPipeline" in cls'
        ' or arch.startswith("flux2")\n')
    (tmp_path / "job.py").write_text('def g(arch):\n    return arch == "flex1"\n')
    assert sorted(arch_name_tests(tmp_path)) == ["engine/m.py:2"] * 4 + ["job.py:2"]
