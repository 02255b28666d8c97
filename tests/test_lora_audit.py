"""`parity lora-check`: each adapter file kind x stack against what that stack's own code does.

- ComfyUI and the reference inference server: the expected modules, scales and dropped keys are fixtures that
  their own code produced on these very files (tests/data/lora_audit/*.json, written by a scratch harness that ran
  Comfy-Org/ComfyUI@a125cd84 and runcomfy-com/ai-toolkit-inference@af4aec18 outside the project; the files'
  sha256 is checked so the fixtures describe these bytes).
- diffusers: its loader is run here directly, and a LoRA it loads is held to parity's own AI Toolkit-faithful
  application by a transformer forward pass (same output = applied as trained).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from parity.lora_audit import APPLIED, MIS_SCALED, NOT_AT_ALL, PARTLY, audit_file, read_adapter
from parity.tiny.adapters import KINDS, write_adapter_kinds

DATA = Path(__file__).parent / "data" / "lora_audit"
COMFY = json.loads((DATA / "comfyui-a125cd84.json").read_text())
SERVER = json.loads((DATA / "reference-server-af4aec18.json").read_text())
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    return write_adapter_kinds(tmp_path_factory.mktemp("adapters"))


def test_factory_writes_the_bytes_the_fixtures_were_made_from(kinds):
    for kind, path in kinds.items():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest == COMFY["files"][kind]["sha256"] == SERVER["files"][kind]["sha256"], kind


def test_factory_key_forms(kinds):
    assert read_adapter(kinds["flux2_lora"]).prefix == "diffusion_model."
    assert read_adapter(kinds["lycoris_lokr"]).prefix == "lycoris_"
    assert {read_adapter(kinds[k]).kind for k in ("lokr_full", "lokr_factorised", "lycoris_lokr")} == {"lokr"}
    assert read_adapter(kinds["dora"]).kind == "dora"
    assert read_adapter(kinds["mixed_rank"]).ranks == [4, 8]


def _absolute(res, f) -> dict[str, float]:
    """The scale the stack applies per module (its factor vs AI Toolkit x AI Toolkit's scale)."""
    return {b: s * f.modules[b].aitk_scale() for b, s in res.scales.items()}


@pytest.mark.parametrize("stack", ["comfyui", "reference-server"])
@pytest.mark.parametrize("kind", KINDS)
def test_rules_match_what_the_stack_code_did(kinds, kind, stack):
    """Modules applied, the scale each gets, and (ComfyUI, which logs them) the keys left unloaded: as the stack's
    own code did on this file."""
    want = (COMFY if stack == "comfyui" else SERVER)["files"][kind]
    report = audit_file(kinds[kind], (stack,))
    res = report.results[0]
    assert sorted(res.applied) == want["applied_modules"]
    if "not_loaded_keys" in want:
        assert sorted(res.dropped) == want["not_loaded_keys"]
    got = _absolute(res, report.file)
    assert got.keys() == want["scales"].keys()
    for module, scale in want["scales"].items():
        assert got[module] == pytest.approx(scale, rel=1e-3), module


def test_mixed_rank_is_mis_scaled_at_the_reference_server(kinds):
    res = audit_file(kinds["mixed_rank"], ("reference-server",)).results[0]
    assert res.verdict == MIS_SCALED
    singles = {b: s for b, s in res.scales.items() if b.startswith("single_blocks")}
    assert len(singles) == 6 and all(s == pytest.approx(2.0) for s in singles.values())  # rank 8 at alpha/4
    assert all(s == pytest.approx(1.0) for b, s in res.scales.items() if b not in singles)
    assert "x2 on 6" in res.line()


def test_verdicts_per_kind_and_stack(kinds):
    """The table of docs/lora-audit.md, for the rule-based stacks (diffusers below)."""
    table = {kind: {r.stack: r.verdict for r in audit_file(kinds[kind], ("comfyui", "reference-server")).results}
             for kind in KINDS}
    assert table["dora"] == {"comfyui": PARTLY, "reference-server": PARTLY}
    assert table["lycoris_lokr"] == {"comfyui": NOT_AT_ALL, "reference-server": NOT_AT_ALL}
    assert table["mixed_rank"] == {"comfyui": APPLIED, "reference-server": MIS_SCALED}
    for kind in ("flux2_lora", "klein_lora", "lokr_full", "lokr_factorised"):
        assert set(table[kind].values()) == {APPLIED}, kind


# ---------------------------------------------------------------------------------------------------- diffusers
def _diffusers_loads(path: Path):
    """diffusers' loader on a tiny transformer: (transformer, None) or (None, the exception it raised)."""
    import torch
    from diffusers import Flux2Pipeline, Flux2Transformer2DModel

    from parity.tiny import flux2 as tiny

    torch.manual_seed(0)
    model = Flux2Transformer2DModel(**{k: v for k, v in tiny.TRANSFORMER_CONFIG.items()})
    pipe = Flux2Pipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, transformer=model)
    try:
        pipe.load_lora_weights(str(path), adapter_name="t")
    except Exception as exc:  # noqa: BLE001
        return None, exc
    return model, None


def _forward(model):
    import torch

    from parity.tiny import flux2 as tiny

    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 128, generator=g)
    ctx = torch.randn(1, 8, tiny.TRANSFORMER_CONFIG["joint_attention_dim"], generator=g)
    ids = torch.zeros(1, 16, 4)
    with torch.no_grad():
        return model(hidden_states=x, encoder_hidden_states=ctx, timestep=torch.full((1,), 0.5),
                     img_ids=ids, txt_ids=torch.zeros(1, 8, 4), guidance=torch.full((1,), 3.5)).sample


def _aitk_applied(path: Path):
    """The same tiny transformer with the file applied the way AI Toolkit applies it (parity's engine)."""
    import torch
    from diffusers import Flux2Transformer2DModel

    from parity.engine.lora import LoraApplier
    from parity.tiny import flux2 as tiny

    torch.manual_seed(0)
    model = Flux2Transformer2DModel(**dict(tiny.TRANSFORMER_CONFIG))
    LoraApplier(model).apply(path, 1.0, "merged", {"lora_merge": "fp32"})
    return model


@pytest.mark.parametrize("kind", ["flux2_lora", "klein_lora", "lokr_full", "lokr_factorised"])
def test_diffusers_applies_what_its_loader_applies(kinds, kind):
    """Loaded by diffusers' own loader here, the transformer computes what AI Toolkit's application computes, and
    the audit says applied as trained (installed diffusers loads LoKr: a LoKr verdict follows its loader)."""
    model, exc = _diffusers_loads(kinds[kind])
    assert exc is None
    import torch

    base = _forward(_aitk_applied(kinds[kind]))
    assert torch.allclose(_forward(model), base, atol=2e-3, rtol=1e-3)
    res = audit_file(kinds[kind], ("diffusers",)).results[0]
    assert res.verdict == APPLIED and len(res.applied) == res.total == 22
    assert res.version.startswith("diffusers ") and "(installed)" in res.version


@pytest.mark.parametrize("kind", ["dora", "mixed_rank", "lycoris_lokr"])
def test_diffusers_refusal_is_reported_not_applied(kinds, kind):
    model, exc = _diffusers_loads(kinds[kind])
    assert exc is not None
    res = audit_file(kinds[kind], ("diffusers",)).results[0]
    assert res.verdict == NOT_AT_ALL and res.applied == []
    assert type(exc).__name__ in res.error and str(exc).splitlines()[0][:60] in res.error


def test_full_size_shapes_audited_on_the_meta_device(tmp_path):
    """A FLUX.2 [klein] 4B-shaped file: arch inferred from the shapes, diffusers' loader run on a meta-device
    transformer of the real configuration (nothing of the 4B base allocated)."""
    import torch

    from parity.engine import fullsize
    from parity.tiny import flux2 as tiny

    cfg = fullsize.TRANSFORMER_CONFIGS["flux2-klein-4b"]
    shapes = tiny.bfl_lora_target_shapes(cfg)
    path = tiny.save_aitk_lora(tmp_path / "klein4b.safetensors",
                               tiny.make_lora(shapes, seed=3, rank=1, dtype=torch.float16), step=1, name="k")
    report = audit_file(path, ("diffusers",))
    res = report.results[0]
    assert report.arch == "flux2_klein_4b"
    assert res.verdict == APPLIED and len(res.applied) == len(shapes) == 5 * 8 + 20 * 2


def test_arch_sets_the_pipeline_family_for_a_tiny_file(kinds):
    """Shapes alone cannot tell a tiny klein from a tiny dev: --arch picks Flux2KleinPipeline's loader."""
    report = audit_file(kinds["klein_lora"], ("diffusers",), arch="flux2_klein_4b")
    assert report.arch == "flux2_klein_4b" and report.results[0].verdict == APPLIED


# ---------------------------------------------------------------------------------------------------- CLI
def _cli(*args):
    return subprocess.run([sys.executable, "-m", "parity.cli", "lora-check", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_cli_exit_codes_and_json(kinds):
    ok = _cli(kinds["flux2_lora"], "--stack", "comfyui")
    assert ok.returncode == 0 and "comfyui (Comfy-Org/ComfyUI@a125cd84): applied as trained: 22/22" in ok.stdout
    bad = _cli(kinds["mixed_rank"], "--stack", "reference-server", "--json")
    assert bad.returncode == 1
    d = json.loads(bad.stdout)
    assert d["stacks"][0]["verdict"] == MIS_SCALED and d["stacks"][0]["version"].endswith("@af4aec18")


class _Tripwire:
    """Unpickling this object would create a file: proof that nothing was unpickled."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _bad_inputs(tmp_path, kinds) -> dict[str, tuple[Path, str]]:
    from safetensors.torch import save_file
    import torch

    text = tmp_path / "notes.safetensors"
    text.write_text("this is not a tensor file at all")
    nolora = tmp_path / "base.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(3, 2)}, str(nolora))
    cut = tmp_path / "cut.safetensors"
    whole = kinds["flux2_lora"].read_bytes()
    cut.write_bytes(whole[:8 + int.from_bytes(whole[:8], "little") + 100])   # header whole, data cut short
    pick = tmp_path / "lora.ckpt"
    pick.write_bytes(pickle.dumps({"state_dict": _Tripwire(str(tmp_path / "UNPICKLED"))}, protocol=4))
    return {"text": (text, "not a safetensors file"),
            "no lora keys": (nolora, "no AI Toolkit FLUX.2 LoRA/LoKr/DoRA keys"),
            "truncated": (cut, "truncated"), "pickle": (pick, "pickle")}


def test_bad_input_is_one_line_naming_the_file_exit_2(tmp_path, kinds):
    for what, (path, phrase) in _bad_inputs(tmp_path, kinds).items():
        r = _cli(path)
        assert r.returncode == 2, what
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0] and phrase in lines[0], (what, r.stderr)
    assert not (tmp_path / "UNPICKLED").exists()


# ---------------------------------------------------------------------------------------------------- doctor
def test_doctor_has_an_audit_line_per_lora(kinds, tmp_path, capsys):
    """The demo job with its final checkpoint swapped for a mixed-rank file: doctor names what each stack does."""
    import shutil

    from parity.cli import main

    job = tmp_path / "tiny-portrait"
    shutil.copytree(ROOT / "demo" / "output" / "tiny-portrait", job)
    shutil.copy(kinds["mixed_rank"], job / "tiny-portrait.safetensors")
    code = main(["doctor", str(job), "--base-model", str(ROOT / "demo" / "tiny-flux2")])
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if "LoRA audit" in ln]
    assert len(lines) == 1, out   # the latest step's checkpoint: the mixed-rank file
    (mixed,) = lines
    assert mixed.lstrip().startswith("WARN") and "reference-server mis-scaled" in mixed and "x2 on 6" in mixed
    assert "diffusers not at all" in mixed and "comfyui applied as trained" in mixed
    assert code == 0   # a warning: the base model is ready; the line tells which stacks will not match


def test_doctor_audit_line_of_an_aitk_file(capsys):
    from parity.cli import main

    main(["doctor", str(ROOT / "cases" / "demo-parity.yaml")])
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if "LoRA audit" in ln]
    assert len(lines) == 2, out   # steps: all -> the step-100 checkpoint and the final file
    for line in lines:
        assert line.lstrip().startswith("ok") and line.count("applied as trained") == 3, line


# ---------------------------------------------------------------------------------------------------- --renders
def test_renders_without_the_lora_are_explained_as_lora_not_applied(smooth_tiny_model_dir, tmp_path):
    """The stand-in stack renders each preview's settings with the LoRA left out (multiplier 0, what a loader that
    matched no key does): the explanation says the LoRA was not applied, with the audit line of the file."""
    from PIL import Image

    from parity.cli import main
    from parity.demo import demo_config, write_job
    from parity.engine import Engine
    from parity.job import load_job

    cfg = demo_config(tmp_path)
    cfg["config"]["process"][0]["sample"].update(width=64, height=64, sample_steps=4, prompts=["a red fox in snow"])
    job = write_job(tmp_path / "nolora", smooth_tiny_model_dir, config=cfg, checkpoints={100: 1.0},
                    preview_steps=(100,))
    (item,) = list(load_job(job).items("latest"))
    spec = item.resolved.spec
    renders = tmp_path / "renders"
    renders.mkdir()
    engine = Engine(smooth_tiny_model_dir, device="cpu")
    item_id = f"{job.name}[step{item.step}-p{item.index}]"
    Image.fromarray(engine.render(spec.with_(network_multiplier=0.0)).image).save(renders / f"{item_id}.png")
    out = tmp_path / "out"
    main(["diff", str(job), "--base-model", str(smooth_tiny_model_dir), "--renders", str(renders), "--out", str(out),
          "-q"])
    (rec,) = json.loads((out / "results.json").read_text())["items"]
    explanation = rec["explanation"]
    assert explanation["lora"]["applied"] is False, explanation
    assert explanation["verdict"].startswith("your stack did not apply the LoRA")
    assert f"LoRA audit of {Path(spec.lora_path).name}" in explanation["verdict"]
    assert "diffusers applied as trained" in explanation["lora"]["audit"]


def test_a_recovered_multiplier_near_zero_says_not_applied_without_another_render(kinds):
    from parity.runner.lora_applied import check_lora_applied
    from parity.spec import RenderSpec

    spec = RenderSpec(prompt="p", width=64, height=64, seed=1, sample_steps=4, guidance_scale=4.0,
                      lora_path=str(kinds["lycoris_lokr"]), network_multiplier=1.0)
    asked = []
    explanation = {"verdict": "your stack renders like lora scale 0.02", "settings": {
        "lora_scale": {"value": 0.02, "preview": 1.0}}}
    check_lora_applied(explanation, spec, lambda: asked.append(1) or True)
    assert asked == [] and explanation["lora"]["applied"] is False
    assert explanation["verdict"].startswith("your stack did not apply the LoRA (your render looks like LoRA "
                                             "multiplier 0.02, the previews used 1)")
    assert "comfyui not at all" in explanation["lora"]["audit"]
    kept = {"verdict": "v", "settings": {"lora_scale": {"value": 0.8, "preview": 1.0}}}
    check_lora_applied(kept, spec, lambda: False)
    assert kept == {"verdict": "v", "settings": {"lora_scale": {"value": 0.8, "preview": 1.0}}}


def test_rule_stacks_audit_without_torch(kinds):
    code = ("import sys\nfrom parity.lora_audit import audit_file\n"
            f"r = audit_file({str(kinds['dora'])!r}, ('comfyui', 'reference-server'))\n"
            "assert [x.verdict for x in r.results] == ['partly', 'partly'], r.lines()\n"
            "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_a_lora_without_visible_effect_is_never_called_unapplied(tmp_path):
    """When the renders with and without the LoRA are alike, a match with the one without says nothing."""
    import numpy as np
    from PIL import Image

    from parity.runner.lora_applied import without_lora_matches
    from parity.spec import RenderSpec

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    faint = np.clip(base.astype(int) + 1, 0, 255).astype(np.uint8)   # the LoRA's whole effect: one level
    target = tmp_path / "yours.png"
    Image.fromarray(base).save(target)
    spec = RenderSpec(prompt="p", width=64, height=64, seed=1, sample_steps=4, guidance_scale=4.0,
                      lora_path="l.safetensors", network_multiplier=1.0)

    class Cache:
        images = {spec: faint, spec.with_(network_multiplier=0.0): base}

    assert without_lora_matches(None, Cache, spec, target, None) is False
    strong = np.ascontiguousarray(base[::-1])                         # a LoRA that changes the picture
    Cache.images[spec] = strong
    assert without_lora_matches(None, Cache, spec, target, None) is True
