"""The engine's offload policy against the resource plan: what goes where on 24/48/80/141 GB cards for the real
FLUX.2-dev, weight bytes against published sizes and against quanto's own storage, and the clear error the engine
raises before loading anything when a render cannot fit."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from parity.engine import fullsize, offload
from parity.engine.resources import footprint
from parity.engine.weights import FLUX2_DEV_VAE_CONFIG

DEV = fullsize.TRANSFORMER_CONFIGS["flux2-dev"]
MISTRAL = fullsize.TEXT_ENCODER_CONFIGS["mistral-small-3.1-24b"]


def test_bf16_transformer_bytes_are_twice_the_published_parameter_count():
    fp = footprint("transformer", fullsize.meta_transformer("flux2-dev"), "bf16")
    assert fp.params == 32_223_281_152 and fp.weight_bytes == 2 * 32_223_281_152  # 64.45 GB (section H)


def test_qfloat8_bytes_match_quanto_storage_on_a_real_model():
    """The footprint formula against what quanto actually stores after quantize + freeze (tiny transformer,
    real weights): fp8 data plus per-row scales, the rest unchanged."""
    from optimum import quanto

    from parity.tiny import TRANSFORMER_CONFIG

    model = fullsize.meta_transformer(TRANSFORMER_CONFIG).to_empty(device="cpu").to(torch.bfloat16)
    for p in model.parameters():
        torch.nn.init.normal_(p, 0, 0.02)
    predicted = footprint("t", fullsize.meta_transformer(TRANSFORMER_CONFIG), "bf16", "qfloat8").weight_bytes
    quanto.quantize(model, weights=quanto.qfloat8)
    quanto.freeze(model)
    stored = 0
    for p in model.parameters():
        if hasattr(p, "_data"):  # a quanto QTensor: its fp8 data and its scale
            stored += p._data.numel() * p._data.element_size() + p._scale.numel() * p._scale.element_size()
        else:
            stored += p.numel() * p.element_size()
    assert stored == predicted


def _needs(quantize: str | None, **kw) -> offload.Needs:
    shape = offload.RenderShape(dtype="bf16", quantize=quantize, quantize_te=quantize, **kw)
    return offload.render_needs(DEV, MISTRAL, FLUX2_DEV_VAE_CONFIG, shape)


@pytest.mark.parametrize("card_gb,quantize,mode,fits", [
    # Published sizes (aitk-flux2-previews.md H): transformer 64.45 GB bf16, Mistral 24B ~48 GB, VAE 0.17 GB.
    (24, None, "sequential", False),     # not even the transformer alone
    (48, None, "sequential", False),
    (80, None, "sequential", True),      # one component at a time: 64.45 GB transformer + activations
    (141, None, "none", True),           # all three at once (~113 GB)
    (24, "qfloat8", "sequential", False),  # 32 GB fp8 transformer still over
    (48, "qfloat8", "sequential", True),
    (80, "qfloat8", "none", True),
    (141, "qfloat8", "none", True),
])
def test_what_goes_where_on_each_card(card_gb, quantize, mode, fits):
    plan = offload.plan_offload(_needs(quantize), int(card_gb * 1e9))
    assert (plan.mode, plan.fits) == (mode, fits), plan.describe()
    if plan.mode == "sequential":
        assert [c for c, _ in plan.stages.values()] == [("text_encoder",), ("transformer",), ("vae",)]
    if not fits:
        assert "denoise needs" in plan.overflow and "over" in plan.overflow


def test_merged_lora_pristine_copies_count_where_the_transformer_is():
    """A merged LoRA keeps pristine copies of its 160 target weights (~63 GB at full size): on the device in mode
    none, so a 141 GB card falls back to sequential; the copies then wait on the host."""
    plain = offload.plan_offload(_needs(None), int(141e9))
    merged_needs = _needs(None, lora_params=195_000_000, lora_application="merged")
    merged = offload.plan_offload(merged_needs, int(141e9))
    assert plain.mode == "none" and merged.mode == "sequential" and merged.fits
    assert merged_needs.lora_pristine > 60e9
    assert offload.host_bytes(merged_needs, merged) >= merged_needs.transformer + merged_needs.lora_pristine
    live = _needs(None, lora_params=195_000_000, lora_application="live")
    assert live.lora_pristine == 0 and live.lora_device == 195_000_000 * 4


def test_engine_refuses_before_loading_when_the_render_cannot_fit(tiny_model_dir, monkeypatch):
    """The engine on a (simulated) 24 GB CUDA card with the full-size FLUX.2-dev config: ModelError naming the
    base folder and the overflowing stage, and nothing was loaded."""
    from parity.engine import Engine
    from parity.errors import ModelError
    from parity.spec import RenderSpec

    engine = Engine(tiny_model_dir)
    engine.layout = dataclasses.replace(engine.layout, transformer_config=dict(DEV))
    engine.device = torch.device("cuda")
    engine.offload = "sequential"

    class Props:
        total_memory = 24 * 10 ** 9

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props())
    spec = RenderSpec(prompt="a cat", width=1024, height=1024, seed=1, sample_steps=2, guidance_scale=4.0,
                      dtype="bf16")
    with pytest.raises(ModelError, match=r"does not fit on this device: denoise needs .* over") as err:
        engine.render(spec)
    assert str(tiny_model_dir) in str(err.value)
    assert engine.stats.transformer_loads == 0 and engine.stats.text_encoder_loads == 0
    Props.total_memory = 200 * 10 ** 9  # the same check passes on a large card (so the refusal is the plan's)
    offload.check_engine(engine, spec)
