"""The tiny FLUX.2-dev checkpoint factory: both layouts hold the same model, the LoRA files are in AI Toolkit's
format, builds are reproducible, and the model responds to every knob the harness diagnoses.

`build_tiny` writes every file without importing diffusers or transformers (that import alone cost ~8 s), so
the "faithful to the classes" section holds the written files to the real classes: the same tensors (names,
shapes, dtypes) as their state_dict() drawn from their default distributions, from_pretrained loads every tensor
unchanged with no missing/unexpected key, the JSON files equal what save_pretrained writes for the same config,
and the tokenizer behaves as a PreTrainedTokenizerFast built the old way. The reference pipeline there is built
with the real classes, independently of parity.tiny.

Other cross-checks use independent code paths: diffusers' own `Flux2Pipeline.from_pretrained` and its single-file
converter (`Flux2Transformer2DModel.from_single_file`), diffusers' PEFT LoRA loader, optimum-quanto, and
scikit-image's SSIM. Renders are 128 px, 20 steps, max_sequence_length 64 (~0.4 s each on one thread).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from parity.engine import keymap  # noqa: E402
from parity.tiny import (  # noqa: E402
    SCHEDULER_CONFIG,
    TRANSFORMER_CONFIG,
    VAE_CONFIG,
    lokr_factorization,
    make_lora,
    save_aitk_lora,
    tiny_paths,
)

SIZE = 128
STEPS = 20
PROMPT = "a photo of a red fox sitting in the snow"


# ------------------------------------------------------------------------------------------------ helpers


def _sha_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=-1, data_range=255))


def _aitk_scheduler(pipe, size: int):
    """AI Toolkit's preview schedule as a static shift: mu linear in seq_len from (256, 0.5) to (4096, 1.15), shift
    e^mu (cpu-stack-notes section 7; AI Toolkit flux2/src/pipeline.py get_schedule)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    seq_len = (size // 16) * (size // 16)
    mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (seq_len - 256)
    return FlowMatchEulerDiscreteScheduler.from_config(
        pipe.scheduler.config, use_dynamic_shifting=False, shift=math.exp(mu)
    )


def _load_pipe(root):
    from diffusers import Flux2Pipeline

    pipe = Flux2Pipeline.from_pretrained(str(root), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _render(pipe, *, seed: int = 0, prompt: str | None = PROMPT, steps: int = STEPS, guidance: float = 4.0, **kw):
    out = pipe(
        prompt=prompt,
        height=SIZE,
        width=SIZE,
        num_inference_steps=steps,
        guidance_scale=guidance,
        max_sequence_length=64,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
        **kw,
    ).images[0]
    return (out * 255).round().clip(0, 255).astype(np.uint8)  # HxWx3 uint8, like the PIL output


@pytest.fixture(scope="module")
def paths(tiny_model_dir):
    return tiny_paths(tiny_model_dir)


@pytest.fixture(scope="module")
def pipe(paths):
    """Diffusers-layout pipeline with AI Toolkit's static-shift schedule (the harness's preview recipe)."""
    p = _load_pipe(paths.diffusers_dir)
    p.scheduler = _aitk_scheduler(p, SIZE)
    return p


@pytest.fixture(scope="module")
def base_image(pipe):
    return _render(pipe)


# ------------------------------------------------------------------------------------------------ layout


def test_layout_mirrors_the_hub_repo(paths):
    index = json.loads((paths.root / "model_index.json").read_text())
    assert index["_class_name"] == "Flux2Pipeline"
    assert index["transformer"] == ["diffusers", "Flux2Transformer2DModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKLFlux2"]
    assert index["text_encoder"] == ["transformers", "Mistral3ForConditionalGeneration"]
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    for p in (paths.bfl_transformer, paths.bfl_vae, paths.lora, paths.lokr):
        assert p.is_file(), p
    assert paths.bfl_transformer.name == "flux2-dev.safetensors" and paths.bfl_vae.name == "ae.safetensors"
    # FLUX.1-dev scheduler config, as diffusers' convert_flux2_to_diffusers.py writes for FLUX.2-dev.
    sched = json.loads((paths.scheduler_dir / "scheduler_config.json").read_text())
    assert (sched["shift"], sched["use_dynamic_shifting"], sched["base_shift"], sched["max_shift"]) == (
        3.0, True, 0.5, 1.15,
    )  # fmt: skip
    assert (sched["base_image_seq_len"], sched["max_image_seq_len"]) == (256, 4096)


def test_pipeline_loads_offline_and_renders(paths, pipe, base_image):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    # The real model's size rules: 128 latent channels, 16 px per latent token, context = 3 x text hidden.
    assert pipe.transformer.x_embedder.in_features == 128
    assert pipe.vae_scale_factor * 2 == 16
    text_hidden = pipe.text_encoder.config.text_config.hidden_size
    assert pipe.transformer.config.joint_attention_dim == 3 * text_hidden
    assert pipe.text_encoder.config.text_config.num_hidden_layers >= 31
    embeds, _ = pipe.encode_prompt(prompt=PROMPT, max_sequence_length=64)
    assert tuple(embeds.shape) == (1, 64, 3 * text_hidden)
    # Not a flat image, not pixel noise, and the same seed renders the same bits.
    assert base_image.shape == (SIZE, SIZE, 3)
    assert base_image.std() > 20
    assert np.array_equal(_render(pipe), base_image)


def test_tokenizer_distinguishes_prompts(pipe):
    ids = [
        pipe.tokenizer.apply_chat_template(
            [{"role": "user", "content": [{"type": "text", "text": t}]}], tokenize=True, return_dict=True
        )["input_ids"]
        for t in ("a red fox", "a red box", "zebra crossing at night")  # last one uses words outside the corpus
    ]
    assert len({tuple(i) for i in ids}) == 3
    assert pipe.tokenizer.unk_token_id not in ids[2]  # byte-level BPE: no unknown tokens


def test_bfl_transformer_single_file_equals_diffusers_layout(paths, pipe):
    from diffusers import Flux2Transformer2DModel

    single = Flux2Transformer2DModel.from_single_file(
        str(paths.bfl_transformer), config=str(paths.diffusers_dir), subfolder="transformer", torch_dtype=torch.float32
    ).eval()
    ref = pipe.transformer
    a, b = single.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    g = torch.Generator("cpu").manual_seed(3)
    n_img, n_txt = 16, 8
    inputs = dict(
        hidden_states=torch.randn((1, n_img, 128), generator=g),
        encoder_hidden_states=torch.randn((1, n_txt, ref.config.joint_attention_dim), generator=g),
        timestep=torch.tensor([0.7]),
        guidance=torch.tensor([4.0]),
        img_ids=torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), torch.zeros(1),
                                           indexing="ij"), -1).reshape(-1, 4),
        txt_ids=torch.stack([torch.zeros(n_txt), torch.zeros(n_txt), torch.zeros(n_txt), torch.arange(n_txt * 1.0)],
                            -1),
        return_dict=False,
    )  # fmt: skip
    with torch.no_grad():
        out_single, out_ref = single(**inputs)[0], ref(**inputs)[0]
    assert out_ref.abs().mean() > 0.01
    assert torch.equal(out_single, out_ref)


def test_bfl_vae_equals_diffusers_layout(paths, pipe):
    from diffusers import AutoencoderKLFlux2
    from safetensors.torch import load_file

    bfl = load_file(str(paths.bfl_vae))
    # BFL AutoEncoder facts (AI Toolkit flux2/src/autoencoder.py): quant convs inside encoder/decoder, decoder
    # levels numbered from the bottom (level 0 = full resolution has no upsample, the top level has one), no
    # downsample on the last encoder level, attention as 1x1 convs, BN without affine parameters.
    for k in ("encoder.quant_conv.weight", "decoder.post_quant_conv.weight", "bn.running_mean", "bn.running_var",
              "encoder.norm_out.weight", "decoder.mid.attn_1.q.weight", "encoder.mid.block_2.conv2.weight",
              "decoder.up.3.upsample.conv.weight", "encoder.down.0.downsample.conv.weight",
              "decoder.up.0.block.1.conv1.weight"):  # fmt: skip
        assert k in bfl, k
    for k in ("decoder.up.0.upsample.conv.weight", "encoder.down.3.downsample.conv.weight", "bn.weight"):
        assert k not in bfl, k
    assert bfl["decoder.mid.attn_1.proj_out.weight"].shape == (32, 32, 1, 1)
    # decoder.up.N is diffusers' up_blocks[3 - N]: the reversal is visible in the weights.
    ref = pipe.vae
    assert torch.equal(bfl["decoder.up.0.block.0.conv1.weight"], ref.decoder.up_blocks[3].resnets[0].conv1.weight)

    converted = AutoencoderKLFlux2.from_config(AutoencoderKLFlux2.load_config(str(paths.vae_dir))).eval()
    missing, unexpected = converted.load_state_dict(keymap.bfl_to_diffusers_vae(bfl), strict=True)
    assert not missing and not unexpected
    z = torch.randn((1, 32, 8, 8), generator=torch.Generator("cpu").manual_seed(5))
    x = torch.rand((1, 3, 32, 32), generator=torch.Generator("cpu").manual_seed(6)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(converted.decode(z).sample, ref.decode(z).sample)
        assert torch.equal(converted.encode(x).latent_dist.mean, ref.encode(x).latent_dist.mean)
    # BN running stats are non-trivial so latent (de)normalisation is exercised.
    assert ref.bn.running_mean.abs().mean() > 0.1 and (ref.bn.running_var - 1).abs().mean() > 0.1


def test_vae_keymap_roundtrip_and_unknown_keys(pipe):
    sd = pipe.vae.state_dict()
    back = keymap.bfl_to_diffusers_vae(keymap.diffusers_to_bfl_vae(sd))
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    with pytest.raises(KeyError):
        keymap.bfl_to_diffusers_vae({"decoder.bogus.weight": torch.zeros(1)})
    with pytest.raises(KeyError):
        keymap.diffusers_to_bfl_vae({"decoder.bogus.weight": torch.zeros(1)})


# ------------------------------------------------------------------------------------------ faithful to the classes

# The inputs the factory gave transformers' classes when it still built the model with them (change together with
# parity.tiny.TEXT_ENCODER_CONFIG, whose full JSON transformers must derive from these).
_OLD_TEXT_INPUTS = {
    "model_type": "mistral", "vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 32,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 2048,
    "sliding_window": None, "rms_norm_eps": 1e-5, "rope_theta": 1e9, "initializer_range": 0.3, "bos_token_id": 1,
    "eos_token_id": 2, "pad_token_id": 11, "tie_word_embeddings": False,
}  # fmt: skip
_OLD_VISION_INPUTS = {
    "model_type": "pixtral", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
    "num_attention_heads": 4, "head_dim": 4, "image_size": 32, "patch_size": 8, "num_channels": 3,
}  # fmt: skip

COMPONENTS = ("transformer", "vae", "text_encoder")
_WEIGHT_FILES = {
    "transformer": "transformer/diffusion_pytorch_model.safetensors",
    "vae": "vae/diffusion_pytorch_model.safetensors",
    "text_encoder": "text_encoder/model.safetensors",
}


def _old_way_tokenizer():
    """The tokenizer as the factory built it with transformers: BPE training on the same corpus, wrapped in
    PreTrainedTokenizerFast (which installs its own post-processor) with the chat template set on it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from parity.tiny import _TOKENIZER_CORPUS, CHAT_TEMPLATE, SPECIAL_TOKENS, TOKENIZER_VOCAB

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TOKENIZER_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        padding_side="left", model_max_length=131072,
    )  # fmt: skip
    fast.chat_template = CHAT_TEMPLATE
    return fast


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory):
    """A Flux2Pipeline of the real classes built from the same configs (weights: the classes' own random init)
    and written by save_pretrained: what the factory must write, tensor values aside."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Pipeline, Flux2Transformer2DModel
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration
    from transformers.utils import logging as tf_logging

    text_encoder = Mistral3ForConditionalGeneration(
        Mistral3Config(
            text_config=_OLD_TEXT_INPUTS, vision_config=_OLD_VISION_INPUTS, image_token_index=10,
            spatial_merge_size=2, tie_word_embeddings=False,
        )  # fmt: skip
    )
    pipe = Flux2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
        vae=AutoencoderKLFlux2(**VAE_CONFIG),
        text_encoder=text_encoder,
        tokenizer=_old_way_tokenizer(),
        transformer=Flux2Transformer2DModel(**TRANSFORMER_CONFIG),
    )
    root = tmp_path_factory.mktemp("reference-save-pretrained")
    was_on = tf_logging.is_progress_bar_enabled()
    tf_logging.disable_progress_bar()
    try:
        pipe.save_pretrained(root, safe_serialization=True)
    finally:
        if was_on:
            tf_logging.enable_progress_bar()
    return root


def _json_without_versions(path: Path) -> dict:
    d = json.loads(path.read_text())
    d.pop("_diffusers_version", None)
    d.pop("transformers_version", None)
    return d


def _safetensors_header(path: Path) -> tuple[dict, dict]:
    """(metadata, {name: (dtype, shape)}) read from the file's JSON header."""
    blob = path.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    return meta, {k: (v["dtype"], v["shape"]) for k, v in header.items()}


def test_written_files_are_what_save_pretrained_writes(paths, reference_dir):
    """Same files; config JSONs equal (version fields aside); tokenizer.json and the chat template byte-equal;
    every weight file has the same tensor names, dtypes, shapes and metadata."""
    extras = {"flux2-dev.safetensors", "ae.safetensors", "loras/tiny_lora.safetensors", "loras/tiny_lokr.safetensors"}
    ours = {str(p.relative_to(paths.root)) for p in paths.files} - extras
    theirs = {str(p.relative_to(reference_dir)) for p in reference_dir.rglob("*") if p.is_file()}
    assert ours == theirs
    for rel in sorted(theirs):
        a, b = paths.root / rel, reference_dir / rel
        if rel.endswith(".safetensors"):
            assert _safetensors_header(a) == _safetensors_header(b), rel
        elif rel.endswith(".json") and rel != "tokenizer/tokenizer.json":
            assert _json_without_versions(a) == _json_without_versions(b), rel
        else:
            assert a.read_bytes() == b.read_bytes(), rel


def _file_key(component: str, state_key: str) -> str:
    """A state_dict() name -> the name in the weight file. transformers 5 renames Mistral3's modules and maps
    them back to the legacy checkpoint names when saving; diffusers keeps the names."""
    if component != "text_encoder":
        return state_key
    for new, old in (
        ("model.language_model.", "language_model.model."),
        ("lm_head.", "language_model.lm_head."),
        ("model.vision_tower.", "vision_tower."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
    ):
        if state_key.startswith(new):
            return old + state_key[len(new) :]
    raise KeyError(state_key)


def _fresh_model(component: str, paths):
    """The real class instantiated from the written config, with its own default initialisation."""
    torch.manual_seed(0)
    if component == "text_encoder":
        from transformers import Mistral3Config, Mistral3ForConditionalGeneration

        return Mistral3ForConditionalGeneration(Mistral3Config.from_pretrained(str(paths.text_encoder_dir)))
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel

    cls = {"transformer": Flux2Transformer2DModel, "vae": AutoencoderKLFlux2}[component]
    return cls.from_config(cls.load_config(str(paths.root / component)))


# The tensors cpu-stack-notes section 8 moves away from the classes' default initialisation, by name.
def _section8_changed(component: str, name: str) -> bool:
    if component == "transformer":
        return (
            (name.startswith("time_guidance_embed.") and ".linear_2." in name)
            or "_modulation" in name
            or name.startswith("norm_out.linear.")
            or name.rsplit(".", 2)[-2] in ("norm_q", "norm_k", "norm_added_q", "norm_added_k")
        )
    if component == "vae":  # decoder 3x3 conv weights (incl. conv_in/conv_out), BN running stats
        smooth = name.startswith("decoder.") and name.endswith(("conv1.weight", "conv2.weight", "conv.weight"))
        return smooth or name in ("decoder.conv_in.weight", "decoder.conv_out.weight", "bn.running_mean",
                                  "bn.running_var")  # fmt: skip
    return name == "language_model.model.embed_tokens.weight"


@pytest.mark.parametrize("component", COMPONENTS)
def test_written_tensors_are_the_class_state_dict(paths, component):
    """Exactly the class's state_dict() (names, shapes, dtypes), drawn from the class's default distributions
    except where cpu-stack-notes section 8 says otherwise (two-sample KS test per random tensor; constants equal)."""
    from safetensors.torch import load_file
    from scipy.stats import ks_2samp

    written = load_file(str(paths.root / _WEIGHT_FILES[component]))
    fresh = {_file_key(component, k): v for k, v in _fresh_model(component, paths).state_dict().items()}
    assert written.keys() == fresh.keys()
    wrong = {k: (written[k].dtype, tuple(written[k].shape), fresh[k].dtype, tuple(fresh[k].shape))
             for k in fresh if (written[k].dtype, written[k].shape) != (fresh[k].dtype, fresh[k].shape)}  # fmt: skip
    assert not wrong

    def differs(k: str) -> bool:
        w, f = written[k].double().flatten(), fresh[k].double().flatten()
        if w.numel() < 2 or f.std() == 0:  # constants (norm weights, BN stats, counters): must be equal
            return not torch.equal(written[k], fresh[k])
        return ks_2samp(w.numpy(), f.numpy()).pvalue < 1e-6

    changed = {k for k in written if differs(k)}
    expected = {k for k in written if _section8_changed(component, k)}
    assert changed == expected, (sorted(changed - expected), sorted(expected - changed))


def _load_component(component: str, paths):
    """(model, loading info) through the real classes' from_pretrained."""
    if component == "text_encoder":
        from transformers import Mistral3ForConditionalGeneration

        return Mistral3ForConditionalGeneration.from_pretrained(
            str(paths.text_encoder_dir), dtype=torch.float32, output_loading_info=True
        )
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel

    cls = {"transformer": Flux2Transformer2DModel, "vae": AutoencoderKLFlux2}[component]
    return cls.from_pretrained(str(paths.root), subfolder=component, output_loading_info=True)


@pytest.mark.parametrize("component", COMPONENTS)
def test_from_pretrained_loads_every_tensor_unchanged(paths, pipe, component):
    """No missing/unexpected/mismatched key, and every parameter and buffer of the loaded model (alone and inside
    Flux2Pipeline.from_pretrained) equals the file's tensor: nothing is silently re-initialised."""
    from safetensors.torch import load_file

    model, info = _load_component(component, paths)
    assert not any(info.values()), info
    written = load_file(str(paths.root / _WEIGHT_FILES[component]))
    for loaded in (model, getattr(pipe, component)):
        state = {_file_key(component, k): v for k, v in loaded.state_dict().items()}
        assert state.keys() == written.keys()
        changed = [k for k in written if not torch.equal(state[k], written[k])]
        assert not changed, changed[:5]


_TOKENIZER_TEXTS = [
    PROMPT, "", "a watercolor lighthouse on a rocky coast", "zebra crossing at night", "  two  spaces\tand tab\n",
    "café naïve 東京 🦊", "[INST] literal special tokens </s> <pad> [IMG]", "sks dog, 1girl, ohwx man",
]  # fmt: skip


def test_tokenizer_matches_a_pretrained_tokenizer_fast_built_the_old_way(paths, pipe):
    """AutoTokenizer on tokenizer/ and the pipeline's tokenizer give the ids, special tokens, padding and chat
    template output of a PreTrainedTokenizerFast wrapped around the same trained BPE (diffusers' own
    format_input messages, the pipeline's apply_chat_template call)."""
    from diffusers.pipelines.flux2.pipeline_flux2 import format_input
    from transformers import AutoTokenizer

    old = _old_way_tokenizer()
    auto = AutoTokenizer.from_pretrained(str(paths.tokenizer_dir))
    batch = format_input(prompts=[PROMPT, "zebra crossing at night 🦓"])
    plain = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a red fox"}]
    for tok in (auto, pipe.tokenizer):
        for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "padding_side",
                     "model_max_length", "all_special_ids"):  # fmt: skip
            assert getattr(tok, attr) == getattr(old, attr), attr
        for text in _TOKENIZER_TEXTS:
            ids = tok(text)["input_ids"]
            assert ids == old(text)["input_ids"], text
            assert tok.decode(ids) == old.decode(ids)
        padded = tok(["a", "a longer prompt here"], padding=True)["input_ids"]
        assert padded == old(["a", "a longer prompt here"], padding=True)["input_ids"]
        assert padded[0][0] == tok.pad_token_id  # left padding, as Mistral
        for messages in (batch, [plain]):
            want = old.apply_chat_template(messages, tokenize=False)
            assert tok.apply_chat_template(messages, tokenize=False) == want
        kw = dict(add_generation_prompt=False, tokenize=True, return_dict=True, return_tensors="pt",
                  padding="max_length", truncation=True, max_length=64)  # fmt: skip
        got, want = tok.apply_chat_template(batch, **kw), old.apply_chat_template(batch, **kw)
        assert torch.equal(got["input_ids"], want["input_ids"])
        assert torch.equal(got["attention_mask"], want["attention_mask"])
    assert old.apply_chat_template([plain[1:]], tokenize=False) == ["<s>[INST]a red fox[/INST]"]


# ------------------------------------------------------------------------------------------------ LoRA files


def test_lora_files_use_ai_toolkit_format(paths):
    from safetensors import safe_open
    from safetensors.torch import load_file

    bfl = load_file(str(paths.bfl_transformer))
    lora = load_file(str(paths.lora))
    modules = {k.rsplit(".", 2)[0] for k in lora}
    assert all(k.startswith("diffusion_model.") for k in lora)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in lora)  # no alpha, no lora_down/up
    n_double, n_single = TRANSFORMER_CONFIG["num_layers"], TRANSFORMER_CONFIG["num_single_layers"]
    assert len(modules) == 8 * n_double + 2 * n_single  # transformer_only: every Linear in the blocks
    for m in modules:
        name = m.removeprefix("diffusion_model.")
        assert name.startswith(("double_blocks.", "single_blocks.")), name
        w = bfl[name + ".weight"]  # the module exists in the BFL file with these shapes
        a, b = lora[m + ".lora_A.weight"], lora[m + ".lora_B.weight"]
        assert a.dtype == b.dtype == torch.bfloat16
        assert a.shape == (4, w.shape[1]) and b.shape == (w.shape[0], 4)
    with safe_open(str(paths.lora), "pt") as f:
        meta = f.metadata()
    assert meta["ss_base_model_version"] == "flux2" and meta["format"] == "pt"
    assert json.loads(meta["training_info"])["step"] == 100

    lokr = load_file(str(paths.lokr))
    lokr_modules = {k.rsplit(".", 1)[0] for k in lokr}
    assert lokr_modules == {m for m in modules}
    for m in lokr_modules:
        w = bfl[m.removeprefix("diffusion_model.") + ".weight"]
        assert set(k.rsplit(".", 1)[1] for k in lokr if k.startswith(m + ".")) == {"lokr_w1", "lokr_w2", "alpha"}
        assert torch.kron(lokr[m + ".lokr_w1"].float(), lokr[m + ".lokr_w2"].float()).shape == w.shape


def test_lokr_factorization_is_the_most_balanced_split():
    # With factor -1 AI Toolkit's loop ends at the divisor pair closest to sqrt(dimension); with a positive factor
    # it uses that factor when it divides, else the largest divisor not above it.
    def balanced(d):
        m = max(i for i in range(1, int(d**0.5) + 1) if d % i == 0)
        return m, d // m

    for d in (127, 128, 192, 250, 360, 512, 576, 1024):
        assert lokr_factorization(d) == balanced(d), d
    assert lokr_factorization(250) == (10, 25)
    assert lokr_factorization(128, 4) == (4, 32)
    assert lokr_factorization(250, 4) == (2, 125)


def test_make_lora_is_seeded_and_strength_scales_only_b(tmp_path):
    a = make_lora(TRANSFORMER_CONFIG, seed=7)
    b = make_lora(TRANSFORMER_CONFIG, seed=7, strength=0.5)
    c = make_lora(TRANSFORMER_CONFIG, seed=8)
    k_a = "diffusion_model.single_blocks.0.linear1.lora_A.weight"
    k_b = "diffusion_model.single_blocks.0.linear1.lora_B.weight"
    assert torch.equal(a[k_a], b[k_a]) and not torch.equal(a[k_a], c[k_a])
    assert torch.allclose(b[k_b].float(), 0.5 * a[k_b].float(), rtol=1e-2)
    path = save_aitk_lora(tmp_path / "x.safetensors", a, step=250, name="x")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()["training_info"]) == {"step": 250, "epoch": 0}
    with pytest.raises(ValueError):
        make_lora(TRANSFORMER_CONFIG, seed=0, kind="loha")


def _transformer_inputs(pipe) -> dict:
    """Fixed random transformer inputs (16 image + 8 text tokens) for the LoRA/LoKr merge checks."""
    g = torch.Generator("cpu").manual_seed(4)
    return dict(
        hidden_states=torch.randn((1, 16, 128), generator=g),
        encoder_hidden_states=torch.randn((1, 8, pipe.transformer.config.joint_attention_dim), generator=g),
        timestep=torch.tensor([0.5]),
        guidance=torch.tensor([4.0]),
        img_ids=torch.zeros((16, 4)),
        txt_ids=torch.zeros((8, 4)),
        return_dict=False,
    )


def test_lora_loads_in_diffusers_like_a_merged_update(paths, pipe):
    """diffusers' PEFT path on the diffusers layout == W + B@A merged into the BFL file and converted by diffusers'
    single-file converter (two independent routes)."""
    from diffusers import Flux2Transformer2DModel
    from safetensors.torch import load_file

    bfl = load_file(str(paths.bfl_transformer))
    lora = load_file(str(paths.lora))
    for k in [k for k in lora if k.endswith(".lora_A.weight")]:
        m = k.removeprefix("diffusion_model.").removesuffix(".lora_A.weight")
        bfl[m + ".weight"] = bfl[m + ".weight"] + lora[k.replace("lora_A", "lora_B")].float() @ lora[k].float()
    merged = Flux2Transformer2DModel.from_single_file(
        bfl, config=str(paths.diffusers_dir), subfolder="transformer", torch_dtype=torch.float32
    ).eval()
    inputs = _transformer_inputs(pipe)
    with torch.no_grad():
        base = pipe.transformer(**inputs)[0]
        pipe.load_lora_weights(str(paths.lora), adapter_name="check")
        try:
            assert pipe.get_list_adapters() == {"transformer": ["check"]}
            peft_out = pipe.transformer(**inputs)[0]
        finally:
            pipe.unload_lora_weights()
        merged_out = merged(**inputs)[0]
        assert torch.equal(pipe.transformer(**inputs)[0], base)  # unload restores the base exactly
    assert (peft_out - base).abs().max() > 0.1  # the LoRA matters
    assert torch.allclose(peft_out, merged_out, atol=1e-4, rtol=1e-4)


def test_lokr_changes_the_transformer_as_much_as_the_lora(paths, pipe):
    """diffusers 0.42.1 cannot load LoKr files; merge delta W = kron(w1, w2) (full rank: scale 1) into the BFL file
    and load it through diffusers' single-file converter."""
    from diffusers import Flux2Transformer2DModel
    from safetensors.torch import load_file

    bfl = load_file(str(paths.bfl_transformer))
    lokr = load_file(str(paths.lokr))
    for k in [k for k in lokr if k.endswith(".lokr_w1")]:
        m = k.removeprefix("diffusion_model.").removesuffix(".lokr_w1")
        bfl[m + ".weight"] = bfl[m + ".weight"] + torch.kron(lokr[k].float(), lokr[k[:-1] + "2"].float())
    merged = Flux2Transformer2DModel.from_single_file(
        bfl, config=str(paths.diffusers_dir), subfolder="transformer", torch_dtype=torch.float32
    ).eval()
    inputs = _transformer_inputs(pipe)
    with torch.no_grad():
        delta = merged(**inputs)[0] - pipe.transformer(**inputs)[0]
    assert delta.abs().max() > 0.1


def test_make_tiny_command_writes_both_layouts(tmp_path, capsys):
    from parity.cli import main

    assert main(["make-tiny", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "flux2-dev.safetensors" in out and "ae.safetensors" in out and "model_index.json" in out
    assert (tmp_path / "m" / "transformer" / "config.json").is_file()
    (tmp_path / "f").write_text("x")
    assert main(["make-tiny", str(tmp_path / "f")]) == 2  # a file, not a folder: one-line error, exit 2
    assert "not a folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ determinism


@pytest.mark.slow  # another Python process
def test_builds_are_byte_identical_across_processes(tiny_model_dir, tmp_path):
    """The session fixture built in this process; build again in a fresh interpreter and compare every byte."""
    out = tmp_path / "again"
    code = (
        "import sys, time; t = time.perf_counter(); from parity.tiny import build_tiny; "
        "p = build_tiny(sys.argv[1]); print(f'{p.seconds:.2f} {time.perf_counter() - t:.2f}')"
    )
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr[-2000:]
    build_s, with_imports_s = res.stdout.split()[-2:]
    print(f"\ntiny build: {build_s} s build_tiny, {with_imports_s} s with imports, {wall:.1f} s process wall")
    first, second = _sha_tree(Path(tiny_model_dir)), _sha_tree(out)
    assert len(first) >= 16
    assert first == second


@pytest.mark.slow  # another Python process
def test_make_tiny_is_quick_and_imports_neither_diffusers_nor_transformers(tmp_path):
    """Issue 2: `parity make-tiny DIR` in under 10 s on the 2-core machine. A fresh interpreter runs the command
    and reports which heavy packages it imported; the wall time includes interpreter start-up and `import torch`
    (measured 2.9-3.0 s alone, 3-5 s inside a busy test run)."""
    heavy = "{'diffusers', 'transformers', 'accelerate', 'peft', 'huggingface_hub'}"
    code = (
        "import sys; from parity.cli import main; rc = main(['make-tiny', sys.argv[1]]); "
        f"print('IMPORTED', sorted({{m.split('.')[0] for m in sys.modules}} & {heavy})); sys.exit(rc)"
    )
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m")], capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr[-2000:]
    print(f"\nparity make-tiny in a fresh process: {wall:.2f} s wall")
    assert "IMPORTED []" in res.stdout, res.stdout[-500:]
    assert (tmp_path / "m" / "model_index.json").is_file()
    assert wall < 10.0


# ------------------------------------------------------------------------------------------------ sensitivity

# Measured SSIM against the reference render (128 px, 20 steps, guidance 4, AI Toolkit static shift, seed 0),
# seed-0 build of the import-free writer (per-tensor generators), CPU fp32, 1 thread, diffusers 0.42.1 /
# transformers 5.24 / optimum-quanto 0.2.7:
#   12 steps 0.809 | diffusers' empirical mu 0.812 | guidance 2.5 0.647, 7 0.610 | seed 1 0.302 | other prompt 0.920
#   LoRA 1.0 vs none 0.639, 0.5 vs none 0.639, 1.0 vs 0.5 0.868 | qfloat8 transformer+TE 0.898 | JPEG q75 0.970
# (The previous build, drawn by the classes from the global RNG, measured 0.871 | 0.818 | 0.714, 0.681 | 0.287 |
# 0.910 | 0.667, 0.625, 0.853 | 0.937 | 0.959: same distributions, other draws.)
# Without the section-8 adjustments (cpu-stack-notes) these were all >= 0.999. Gates leave >= 0.03 margin.
GATES = {
    "steps 12 vs 20": 0.95,
    "diffusers empirical shift": 0.93,
    "guidance 2.5 vs 4": 0.8,
    "guidance 7 vs 4": 0.8,
    "seed 1 vs 0": 0.6,
    "other prompt": 0.95,
    "LoRA 1.0 vs none": 0.8,
    "LoRA 0.5 vs none": 0.8,
    "LoRA 1.0 vs 0.5": 0.93,
    "qfloat8": 0.97,
}


def test_every_knob_visibly_changes_the_picture(paths, pipe, base_image):
    from diffusers import FlowMatchEulerDiscreteScheduler

    got: dict[str, float] = {}
    got["steps 12 vs 20"] = _ssim(base_image, _render(pipe, steps=12))
    aitk = pipe.scheduler
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(aitk.config, use_dynamic_shifting=True)
    try:
        got["diffusers empirical shift"] = _ssim(base_image, _render(pipe))
    finally:
        pipe.scheduler = aitk
    got["guidance 2.5 vs 4"] = _ssim(base_image, _render(pipe, guidance=2.5))
    got["guidance 7 vs 4"] = _ssim(base_image, _render(pipe, guidance=7.0))
    got["seed 1 vs 0"] = _ssim(base_image, _render(pipe, seed=1))
    got["other prompt"] = _ssim(base_image, _render(pipe, prompt="a watercolor lighthouse on a rocky coast"))

    pipe.load_lora_weights(str(paths.lora), adapter_name="knob")
    try:
        full = _render(pipe)
        pipe.set_adapters(["knob"], [0.5])
        half = _render(pipe)
        pipe.set_adapters(["knob"], [0.0])
        assert np.array_equal(_render(pipe), base_image)  # scale 0 is the base model
    finally:
        pipe.unload_lora_weights()
    got["LoRA 1.0 vs none"] = _ssim(base_image, full)
    got["LoRA 0.5 vs none"] = _ssim(base_image, half)
    got["LoRA 1.0 vs 0.5"] = _ssim(full, half)

    from optimum.quanto import freeze, qfloat8, quantize

    qpipe = _load_pipe(paths.diffusers_dir)
    qpipe.scheduler = _aitk_scheduler(qpipe, SIZE)
    for module in (qpipe.transformer, qpipe.text_encoder):  # AI Toolkit's quantize + quantize_te pattern
        quantize(module, weights=qfloat8)
        freeze(module)
    got["qfloat8"] = _ssim(base_image, _render(qpipe))

    print("\nSSIM vs reference render: " + ", ".join(f"{k} {v:.3f}" for k, v in got.items()))
    assert _ssim(base_image, _render(pipe)) == 1.0
    failed = {k: round(v, 4) for k, v in got.items() if not v < GATES[k]}
    assert not failed, f"knobs the tiny model is too blind to (SSIM >= gate): {failed}"


def test_previews_survive_jpeg_like_real_ones(base_image):
    """Smooth colour fields, not pixel noise: JPEG q75 (AI Toolkit's preview format) costs little SSIM."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(base_image).save(buf, "JPEG", quality=75)
    decoded = np.asarray(Image.open(buf).convert("RGB"))
    assert _ssim(base_image, decoded) > 0.9  # measured 0.970
    assert (base_image == 0).mean() + (base_image == 255).mean() < 0.15  # measured 0.051 clipped


def test_not_chaotic_under_tiny_perturbations(pipe):
    """A 1e-4 relative perturbation of the initial noise or the text embeddings moves pixels by <= 2 levels."""
    shape = (1, 128, SIZE // 16, SIZE // 16)  # unpacked latents: 128 channels, 16 px per token
    noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(0))
    ref = _render(pipe, latents=noise).astype(int)
    jitter = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(99))
    moved = _render(pipe, latents=noise * (1 + 1e-4 * jitter)).astype(int)
    assert np.abs(moved - ref).max() <= 2  # measured 1
    embeds, _ = pipe.encode_prompt(prompt=PROMPT, max_sequence_length=64)
    jitter = torch.randn(embeds.shape, generator=torch.Generator("cpu").manual_seed(98))
    moved = _render(pipe, prompt=None, prompt_embeds=embeds * (1 + 1e-4 * jitter), latents=noise).astype(int)
    assert np.abs(moved - ref).max() <= 2  # measured 1
