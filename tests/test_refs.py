"""Reference images (ctrl_img*) on FLUX.2 previews: job reader, encoding, the loop, and AI Toolkit's own renders.

AI Toolkit references (ostris/ai-toolkit 27a03a91): toolkit/config_modules.py L60-65 (SampleItem ctrl keys),
L1184-1185 (ctrl_img_1 defaults to ctrl_img), L1452-1453 (--ctrl_img flag); extensions_built_in/diffusion_models/
flux2/flux2_model.py L302-319 (order of control_img_list); src/sampling.py encode_image_refs / default_prep;
src/pipeline.py L360-427 (tokens appended after the image tokens, prediction sliced).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from parity.errors import InputFileError
from parity.job import load_job
from parity.job.samples import control_images
from parity.spec import RenderSpec

ORACLE = Path(os.environ.get("PARITY_ORACLE", Path(__file__).resolve().parents[2] / "shared" / "oracle"))


# ------------------------------------------------------------------------------------------------ job reader
@pytest.mark.parametrize("item, flag, want", [
    ({"ctrl_img": "a.png"}, None, ("a.png",)),                          # ctrl_img -> ctrl_img_1 (L63, L1184)
    ({"ctrl_img_1": "a.png", "ctrl_img_2": "b.png"}, None, ("a.png", "b.png")),
    ({"ctrl_img": "a.png", "ctrl_img_1": "z.png", "ctrl_img_3": "c.png"}, None, ("a.png", "c.png")),  # if/elif
    ({"ctrl_img_2": "b.png"}, None, ("b.png",)),
    ({"ctrl_img_1": "a.png"}, "f.png", ("f.png",)),                     # --ctrl_img wins over ctrl_img_1
    ({}, None, ()),
])
def test_control_image_order_follows_flux2_generate_single_image(item, flag, want):
    assert control_images(item, flag, "", None) == want


def _write_ctrl_job(root: Path, samples: list[dict], *, steps: int = 100) -> Path:
    """An AI Toolkit working directory `root` with output/<name>/ (config.yaml copy + an empty samples/)."""
    folder = root / "output" / "refjob"
    (folder / "samples").mkdir(parents=True)
    cfg = {"job": "extension", "config": {"name": "refjob", "process": [{
        "type": "sd_trainer", "training_folder": "output", "trigger_word": "zk9",
        "network": {"type": "lora", "linear": 4}, "train": {"steps": steps, "dtype": "fp32"},
        "model": {"name_or_path": "x", "arch": "flux2"},
        "sample": {"width": 64, "height": 64, "seed": 3, "walk_seed": True, "guidance_scale": 3.0,
                   "sample_steps": 3, "samples": samples}}]}}
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    return folder


def test_relative_ctrl_paths_resolve_from_aitk_working_directory(tmp_path):
    # AI Toolkit opens ctrl_img with Image.open(path) from its working directory: the folder that holds
    # training_folder (flux2_model.py L303-305), not the job folder
    folder = _write_ctrl_job(tmp_path, [{"prompt": "a", "ctrl_img": "refs/a.png"},
                                        {"prompt": "b --ctrl_img refs/b.png"}, {"prompt": "c"}])
    (tmp_path / "refs").mkdir()
    job = load_job(folder)
    samples = job.resolved_samples()
    specs = [job.render_spec(s, None, "merged").spec for s in samples]
    assert specs[0].control_images == (str(tmp_path.resolve() / "refs" / "a.png"),)
    assert specs[1].control_images == (str(tmp_path.resolve() / "refs" / "b.png"),)
    assert specs[2].control_images == ()


def test_bad_ctrl_value_is_a_config_error(tmp_path):
    folder = _write_ctrl_job(tmp_path, [{"prompt": "a", "ctrl_img": 5}])
    with pytest.raises(Exception, match=r"ctrl_img must be an image path"):
        load_job(folder)


# ------------------------------------------------------------------------------------------------ encoding
def test_reference_ids_and_patchify_equal_diffusers_flux2pipeline():
    from diffusers import Flux2Pipeline

    from parity.engine.refs import pack_references, patchify

    z = torch.randn(1, 32, 8, 6)
    assert torch.equal(patchify(z), Flux2Pipeline._patchify_latents(z))
    lat = [torch.randn(128, 3, 5), torch.randn(128, 4, 2)]
    packed = pack_references(lat)
    assert torch.equal(packed.ids, Flux2Pipeline._prepare_image_ids([x.unsqueeze(0) for x in lat]))
    want = torch.cat([Flux2Pipeline._pack_latents(x.unsqueeze(0)) for x in lat], dim=1).to(torch.bfloat16)
    assert torch.equal(packed.tokens, want)
    assert packed.tokens.dtype == torch.bfloat16 and packed.count == 15 + 8


def test_prepare_reference_caps_crops_and_scales(tmp_path):
    from parity.engine.refs import prepare_reference

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (1100, 1000, 3), dtype=np.uint8))
    x = prepare_reference(img)
    # 1000x1100 -> sqrt(2**20/1.1e6) -> int(976.3)=976 x int(1073.9)=1073 (LANCZOS) -> crop to 976x1072
    assert x.shape == (1, 3, 1072, 976)
    assert x.min() >= -1 and x.max() <= 1
    small = Image.new("RGB", (80, 90), (255, 0, 0))
    y = prepare_reference(small)
    assert y.shape == (1, 3, 80, 80)                 # crop (90 -> 80) centred, no resize below the cap
    assert torch.allclose(y[0, 0], torch.ones(80, 80)) and torch.allclose(y[0, 1], -torch.ones(80, 80))
    with pytest.raises(InputFileError, match="both sides >= 64"):
        prepare_reference(Image.new("RGB", (63, 200)))


def test_encoded_reference_matches_diffusers_encode_vae_image(tiny_model_dir):
    """Independent check of the normalised latent: diffusers' Flux2Pipeline._encode_vae_image (subtract/divide
    by the BN statistics) vs ours (BatchNorm2d eval, as BFL's AutoEncoder.encode), in fp32."""
    from diffusers import Flux2Pipeline

    from parity.engine import weights
    from parity.engine.refs import encode_reference

    vae = weights.load_vae(weights.resolve_base(tiny_model_dir), torch.float32)
    x = torch.rand(1, 3, 64, 96) * 2 - 1
    ours = encode_reference(vae, x)
    pipe = Flux2Pipeline(scheduler=None, vae=vae, text_encoder=None, tokenizer=None, transformer=None)
    theirs = pipe._encode_vae_image(x, generator=None)[0]
    assert ours.shape == theirs.shape == (128, 4, 6)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ renders
@pytest.fixture(scope="module")
def ref_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("refs")
    rng = np.random.default_rng(7)
    out = []
    for name in ("a", "b", "c"):
        p = root / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(p)
        out.append(str(p))
    return out


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from parity.engine.render import Engine

    return Engine(tiny_model_dir)


def _spec(refs=(), **kw):
    base = dict(prompt="a box on a beach", width=64, height=80, seed=5, sample_steps=4, guidance_scale=3.0,
                dtype="fp32", control_images=tuple(refs))
    base.update(kw)
    return RenderSpec(**base)


@pytest.mark.parametrize("n_refs", [0, 1, 2])
def test_reference_renders_are_exact_on_rerun_and_use_every_reference(engine, ref_images, n_refs):
    spec = _spec(ref_images[:n_refs])
    a, b = engine.render(spec), engine.render(spec)
    assert np.array_equal(a.image, b.image)
    # 80x96 references -> crop 80x96 -> latent 5x6 = 30 tokens each; one call per step (guidance-distilled)
    assert a.reference_tokens == 30 * n_refs and a.transformer_calls == 4
    if n_refs:
        plain = engine.render(_spec())
        assert not np.array_equal(a.image, plain.image)


def test_swapping_a_reference_changes_the_image_clearly(engine, ref_images):
    from parity.compare.metrics import ssim

    a = engine.render(_spec(ref_images[:2]))
    swapped = engine.render(_spec([ref_images[0], ref_images[2]]))
    order = engine.render(_spec([ref_images[1], ref_images[0]]))
    assert np.abs(a.image.astype(int) - swapped.image.astype(int)).max() > 8
    assert np.abs(a.image.astype(int) - order.image.astype(int)).max() > 8   # position ids depend on order
    assert ssim(a.image, swapped.image).ssim < 0.999


def test_missing_reference_image_is_an_error_naming_the_file(engine, tmp_path):
    gone = tmp_path / "nowhere" / "ref.png"
    with pytest.raises(InputFileError, match="reference image") as exc:
        engine.render(_spec([str(gone)]))
    assert str(gone) in str(exc.value)


# ------------------------------------------------------------------------------------------------ the oracle
@pytest.mark.skipif(not (ORACLE / "ctrl" / "facts.json").is_file(), reason="AI Toolkit oracle renders not present")
def test_ctrl_oracle_every_lossless_png_within_one_level():
    """shared/oracle/ctrl: AI Toolkit's own fp32 renders with one, two and no reference images. fp32 is exact on
    the oracle's CPU; on another ISA fp32 kernels may move a pixel by one level (docs/numerics.md)."""
    from parity.engine.render import Engine
    from parity.job.history import history_from_job

    case = ORACLE / "ctrl"
    facts = {f["file"]: f for f in json.loads((case / "facts.json").read_text())["images"]}
    job = load_job(case / "output" / "public_ctrl")
    engine = Engine(ORACLE / "tiny-flux2")
    items = job.items("all")
    assert len(items) == 9
    for it in items:
        f = facts[it.preview.name]
        r = engine.render(it.spec, merge_history=history_from_job(job, it.step, it.spec.network_multiplier))
        png = np.asarray(Image.open(case / "lossless_png" / (it.preview.stem + ".png")).convert("RGB"))
        assert r.image.shape == png.shape
        assert np.abs(r.image.astype(int) - png.astype(int)).max() <= 1, it.preview.name
        ref = f.get("reference_tokens") or {"total_tokens": 0, "n_ref_images": 0}
        assert r.reference_tokens == ref["total_tokens"]
        assert len(it.spec.control_images) == ref["n_ref_images"]
        assert r.transformer_calls == f["transformer_calls"]
        assert r.sigmas[:-1] == pytest.approx(f["timesteps"], abs=0)


def test_report_links_the_reference_images_next_to_the_preview(tmp_path):
    from parity.report.html import _view_item

    ref = tmp_path / "refs" / "a b.png"
    item = {"id": "c[step0-p0]", "tier": "EXACT", "paths": {"preview": str(tmp_path / "p.jpg")},
            "params": {"preview": {"reference_images": {"value": [str(ref)], "source": "item"}}}}
    v = _view_item(item, tmp_path / "report", {}, "ssim")
    # outside the report folder: linked by absolute path (a report copies it into images/ unless --link-images)
    assert v["u"]["refs"] == [str(ref).replace(" ", "%20")]
    plain = _view_item({**item, "params": {"preview": {"reference_images": {"value": [], "source": "default"}}}},
                       tmp_path / "report", {}, "ssim")
    assert "refs" not in plain["u"]


def test_control_video_is_refused_for_flux2():
    # toolkit/models/base_model.py L556-590 knows control videos; FLUX.2 (flux2_model.py L302-319) opens every
    # path with PIL, so AI Toolkit cannot have rendered such a preview
    with pytest.raises(Exception, match="control video"):
        control_images({"ctrl_img": "clip.MP4"}, None, "", None)


def test_job_with_references_is_exact_through_parity_diff_and_a_swapped_reference_is_caught(tiny_model_dir,
                                                                                             tmp_path):
    """End to end: an AI Toolkit job whose prompts have one, two and no reference images, previews rendered by
    the engine and saved as AI Toolkit saves them; `parity diff` reproduces every preview EXACT. Replacing one
    reference image file afterwards changes only the item that uses it."""
    import shutil
    import subprocess
    import sys

    from PIL import Image

    from parity.demo import demo_config, write_job

    rng = np.random.default_rng(3)
    refs = {}
    for name in ("a", "b", "c"):
        refs[name] = tmp_path / "refs" / f"{name}.png"
        refs[name].parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(refs[name])
    cfg = demo_config(tmp_path / "output")
    sample = cfg["config"]["process"][0]["sample"]
    sample.update(width=64, height=80, sample_steps=4)
    sample["samples"] = [{"prompt": "[trigger] a box, reference", "ctrl_img": str(refs["a"])},
                         {"prompt": "two references", "ctrl_img_1": str(refs["a"]), "ctrl_img_2": str(refs["b"])},
                         {"prompt": "no reference"}]
    job = write_job(tmp_path / "output" / "refs-job", tiny_model_dir, config=cfg, checkpoints={200: 1.0},
                    preview_steps=(200,))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def diff(out: str) -> dict:
        r = subprocess.run([sys.executable, "-m", "parity.cli", "diff", str(job), "--base-model", str(tiny_model_dir),
                            "--no-attribution", "--out", str(tmp_path / out), "--json", str(tmp_path / f"{out}.json")],
                           env=env, capture_output=True, text=True)
        assert r.returncode in (0, 1), r.stderr
        items = json.loads((tmp_path / f"{out}.json").read_text())["items"]
        return {it["index"]: it for it in items}

    first = diff("run1")
    assert [first[i]["tier"] for i in range(3)] == ["EXACT"] * 3
    assert [len(first[i]["params"]["preview"]["reference_images"]["value"]) for i in range(3)] == [1, 2, 0]
    shutil.copy(refs["c"], refs["b"])   # the second reference of prompt 1 is now another image
    second = diff("run2")
    assert second[0]["tier"] == "EXACT" and second[2]["tier"] == "EXACT"
    assert second[1]["tier"] in ("DRIFT", "DIFFERENT"), second[1]["tier"]


@pytest.mark.skipif(not (ORACLE / "ctrl" / "facts.json").is_file(), reason="AI Toolkit oracle renders not present")
def test_ctrl_oracle_previews_are_exact_or_near_after_jpeg(tmp_path):
    """The JPEG previews AI Toolkit saved: every item EXACT or NEAR through `parity diff` (fp32 one-level pixel
    differences on this CPU can leave an item NEAR instead of EXACT)."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, "-m", "parity.cli", "diff", str(ORACLE / "ctrl" / "output" / "public_ctrl"),
                        "--base-model", str(ORACLE / "tiny-flux2"), "--step", "all", "--no-attribution",
                        "--out", str(tmp_path / "run"), "--json", str(tmp_path / "r.json")],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    items = json.loads((tmp_path / "r.json").read_text())["items"]
    assert len(items) == 9 and {it["tier"] for it in items} <= {"EXACT", "NEAR"}
    assert sum(len(it["params"]["preview"]["reference_images"]["value"]) for it in items) == 9
