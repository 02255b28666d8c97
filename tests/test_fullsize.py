"""Full-size FLUX.2 structure on the meta device (no weights allocated, no download): parameter counts against
published figures, BFL <-> diffusers key mapping checked against diffusers' own single-file converter, the LoRA
target set AI Toolkit selects mapped onto the base model, and the Linear layers qfloat8 quantizes."""

from __future__ import annotations

import pytest
import torch

from parity.engine import fullsize, keymap

TRANSFORMERS = sorted(fullsize.TRANSFORMER_CONFIGS)


@pytest.fixture(scope="module", params=TRANSFORMERS)
def meta(request):
    name = request.param
    model = fullsize.meta_transformer(name)
    return name, fullsize.TRANSFORMER_CONFIGS[name], model


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_transformer_parameters_allocate_nothing_and_match_published_counts(meta):
    name, cfg, model = meta
    assert all(p.device.type == "meta" for p in model.parameters())
    n = _count(model)
    # flux2-dev: 32,223,281,152 (aitk-flux2-previews.md H, counted on ai-toolkit's own Flux2 class, not diffusers).
    # klein: BFL's model names ("4B", "9B"); the transformer alone is a little under the name.
    published = {"flux2-dev": (32_223_281_152, 32_223_281_152), "flux2-klein-4b": (3.5e9, 4.2e9),
                 "flux2-klein-9b": (8.6e9, 9.3e9)}[name]
    assert published[0] <= n <= published[1], n


def test_every_family_member_has_pinned_configs_with_sources():
    from parity.family import FAMILIES

    for fam in FAMILIES.values():
        assert fam.transformer_config in fullsize.TRANSFORMER_CONFIGS
        assert fam.text_encoder_config in fullsize.TEXT_ENCODER_CONFIGS
        assert fullsize.TRANSFORMER_CONFIGS[fam.transformer_config]["joint_attention_dim"] == fam.context_dim
        assert fullsize.TRANSFORMER_CONFIGS[fam.transformer_config]["guidance_embeds"] == (not fam.true_cfg)
    assert set(fullsize.SOURCES) == set(fullsize.TRANSFORMER_CONFIGS) | set(fullsize.TEXT_ENCODER_CONFIGS)


@pytest.mark.parametrize("name,low,high", [
    # Mistral-Small-3.1-24B: "24B" (model card), text 23.57 B + Pixtral ~0.40 B (aitk-flux2-previews.md H).
    ("mistral-small-3.1-24b", 23.9e9, 24.1e9),
    ("qwen3-4b", 3.95e9, 4.05e9),   # Qwen3-4B model card: 4.0B parameters (tied embeddings)
    ("qwen3-8b", 8.15e9, 8.25e9),   # Qwen3-8B model card: 8.2B
])
def test_text_encoder_parameter_counts(name, low, high):
    te = fullsize.meta_text_encoder(name)
    assert all(p.device.type == "meta" for p in te.parameters())
    assert low <= _count(te) <= high, _count(te)


def test_mistral_text_part_matches_the_published_split():
    te = fullsize.meta_text_encoder("mistral-small-3.1-24b")
    text = sum(v.numel() for k, v in te.state_dict().items() if "language_model" in k or k.startswith("lm_head"))
    assert round(text / 1e9, 2) == 23.57


def test_bfl_keys_round_trip_through_diffusers_own_converter(meta):
    """Our diffusers -> BFL names, then diffusers' single-file converter back: every key and shape of the model."""
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers

    name, cfg, model = meta
    sd = model.state_dict()
    bfl = keymap.diffusers_to_bfl_transformer(sd)
    assert not any(k.endswith(".bias") for k in bfl)  # FLUX.2 has no biases
    if name == "flux2-dev":
        assert len(bfl) == 299  # aitk-flux2-previews.md E.5: the BFL state dict has 299 keys
    theirs = convert_flux2_transformer_checkpoint_to_diffusers(dict(bfl))
    assert {k: tuple(v.shape) for k, v in theirs.items()} == {k: tuple(v.shape) for k, v in sd.items()}
    ours = keymap.bfl_to_diffusers_transformer(bfl)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in sd.items()}


def aitk_lora_targets(bfl_state_dict: dict) -> dict[str, tuple[int, int]]:
    """AI Toolkit's default selection (lora_special.py L531-541, transformer_only): every Linear layer (2-D
    weight) whose BFL module name contains double_blocks or single_blocks."""
    out = {}
    for key, value in bfl_state_dict.items():
        module, param = key.rsplit(".", 1)
        if param == "weight" and value.ndim == 2 and ("double_blocks" in module or "single_blocks" in module):
            out[module] = tuple(value.shape)
    return out


def test_aitk_lora_target_set_at_full_size_maps_onto_the_base(meta):
    from parity.engine.lora import LoraModule, plan
    from parity.tiny import bfl_lora_target_shapes

    name, cfg, model = meta
    targets = aitk_lora_targets(keymap.diffusers_to_bfl_transformer(model.state_dict()))
    assert len(targets) == 8 * cfg["num_layers"] + 2 * cfg["num_single_layers"]
    if name == "flux2-dev":
        assert len(targets) == 160  # aitk-flux2-previews.md fact 12
        rank32 = sum(32 * (o + i) for o, i in targets.values())
        assert round(rank32 / 1e6, 1) == 195.0  # section H: rank 32 -> 195.0 M LoRA parameters
    assert bfl_lora_target_shapes(cfg) == targets  # the tiny factory's LoRA writer uses the same set
    rank = 4
    modules = {m: LoraModule(m, {"A": torch.empty(rank, i, device="meta"), "B": torch.empty(o, rank, device="meta")})
               for m, (o, i) in targets.items()}
    planned = plan(model, modules, "full-size.safetensors")
    # Fused qkv splits into three diffusers modules: 12 targets per double block, 2 per single block.
    assert len(planned) == 12 * cfg["num_layers"] + 2 * cfg["num_single_layers"]
    assert len({p.module for p in planned}) == len(planned)


def test_lora_plan_rejects_a_full_size_lora_on_the_wrong_model():
    """A FLUX.2-dev LoRA on klein 4B: the shapes do not fit and the plan says so (the check can fail)."""
    from parity.engine.lora import LoraModule, plan
    from parity.errors import ModelError
    from parity.tiny import bfl_lora_target_shapes

    dev = bfl_lora_target_shapes(fullsize.TRANSFORMER_CONFIGS["flux2-dev"])
    mod = "double_blocks.0.img_attn.qkv"
    o, i = dev[mod]
    lm = {mod: LoraModule(mod, {"A": torch.empty(4, i, device="meta"), "B": torch.empty(o, 4, device="meta")})}
    with pytest.raises(ModelError, match="does not fit"):
        plan(fullsize.meta_transformer("flux2-klein-4b"), lm, "dev-lora.safetensors")


def _linear_names(model) -> set[str]:
    return {n for n, m in model.named_modules() if type(m) is torch.nn.Linear}


def test_qfloat8_selects_every_linear_layer_of_the_transformer(meta):
    """AI Toolkit quantizes the whole transformer with quanto (no exclude list; aitk-flux2-previews.md A.5):
    every Linear layer becomes a QLinear, nothing else changes."""
    from optimum import quanto
    from optimum.quanto.nn import QLinear

    name, cfg, _ = meta
    model = fullsize.meta_transformer(name)  # a fresh one: quantizing replaces modules in place
    linear = _linear_names(model)
    # Counted from the architecture: 12 Linear per double block, 2 per single block, and x/context embedders,
    # 3 modulations, norm_out, proj_out, the timestep MLP (2) and, guidance-distilled only, the guidance MLP (2).
    globals_ = 7 + (4 if cfg["guidance_embeds"] else 2)
    assert len(linear) == 12 * cfg["num_layers"] + 2 * cfg["num_single_layers"] + globals_
    quanto.quantize(model, weights=quanto.qfloat8)
    quantized = {n for n, m in model.named_modules() if isinstance(m, QLinear)}
    assert quantized == linear


def test_qfloat8_selection_on_the_full_size_text_encoder():
    """quantize_te: every Linear of Mistral3 (language model, lm_head, Pixtral, projector) plus the Pixtral patch
    convolution; the norms stay as they are."""
    from optimum import quanto
    from optimum.quanto.nn import QConv2d, QLinear

    te = fullsize.meta_text_encoder("mistral-small-3.1-24b")
    linear = _linear_names(te)
    convs = {n for n, m in te.named_modules() if type(m) is torch.nn.Conv2d}
    quanto.quantize(te, weights=quanto.qfloat8)
    assert {n for n, m in te.named_modules() if isinstance(m, QLinear)} == linear
    assert {n for n, m in te.named_modules() if isinstance(m, QConv2d)} == convs == {"model.vision_tower.patch_conv"}
    assert len([n for n in linear if ".language_model.layers." in n]) == 40 * 7
