"""Inference profiles: how a named inference stack renders a preview item, as a table (`PROFILE_SPECS`).

`reference-server`: the reference inference server's defaults applied to the job's own prompts;
`diffusers`: stock diffusers `Flux2Pipeline`. Each entry maps the preview's resolved spec to the stack's spec and
the source of every value (parity.spec.SOURCES).
"""

from __future__ import annotations

from typing import Any, Callable

from parity.spec import SPEC_FIELDS, RenderSpec, ResolvedSpec

from .request import RequestPrompt

# The reference inference server's defaults (aitk-flux2-previews.md section D.1/D.2).
# flux2.py L66-73: resolution_divisor=16, default_steps=25, default_guidance_scale=4.0, lora_merge_method=CUSTOM.
# base.py L114-118: width/height 1024, default_seed=42, default_network_multiplier=1.0.
SERVER_STEPS = 25
SERVER_GUIDANCE = 4.0
SERVER_SIZE = 1024
SERVER_SEED = 42
SERVER_MULTIPLIER = 1.0
# The server floors sizes to 16 since commit f89a43c (2026-01-29); its docs and the class docstring (flux2.py L62)
# still say 32. We follow the code and let users pick the divisor (docs/inference-settings.md).
SERVER_RESOLUTION_DIVISOR = 16

# diffusers' Flux2Pipeline.__call__ defaults: num_inference_steps=50, guidance_scale=4.0 (section E / G).
DIFFUSERS_STEPS = 50
DIFFUSERS_GUIDANCE = 4.0


def replace_trigger_server(prompt: str, trigger_word: str | None) -> str:
    """The server's prompt processing (executor.py L682-689): only the literal `[trigger]`, only when a trigger
    word is set; `[name]` stays, `--flags` are not parsed and the prompt is not stripped (section D.5)."""
    if not trigger_word:
        return prompt
    return prompt.replace("[trigger]", trigger_word)


def floor_to(value: int, divisor: int) -> int:
    """The server's `(w // divisor) * divisor` (executor.py L599-629, base.py L800-810)."""
    return (value // divisor) * divisor


def _reference_server(prev: ResolvedSpec, index: int, raw_prompt: str | None,
                      trigger_word: str | None) -> tuple[RenderSpec, dict[str, str]]:
    """The job's own prompt (processed as the server does) with the server's defaults for everything else."""
    prompt = replace_trigger_server(raw_prompt, trigger_word) if raw_prompt is not None else prev.spec.prompt
    # the job's own model and negative prompt go with its prompts (the server passes negative_prompt=neg or "")
    spec = server_spec(prompt, None, index, prev.spec.lora_path, None).with_(
        arch=prev.spec.arch, negative_prompt=prev.spec.negative_prompt)
    sources = {k: "profile" for k in SPEC_FIELDS}
    sources["prompt"] = "item" if raw_prompt is not None else prev.source("prompt")
    sources["seed"] = "walk"
    sources["lora_path"] = prev.source("lora_path")
    return spec, sources


_DIFFUSERS_FIELDS = ("sample_steps", "guidance_scale", "semantics", "schedule", "generator", "lora_application",
                     "dtype", "quantize", "quantize_te", "numerics")


def _diffusers(prev: ResolvedSpec, index: int, raw_prompt: str | None,
               trigger_word: str | None) -> tuple[RenderSpec, dict[str, str]]:
    """Stock Flux2Pipeline called with the job's prompt, size and seed and a CPU generator: its own defaults for
    steps (50) and guidance (4.0), empirical mu, PEFT adapters (unfused = live), bf16, nothing quantized."""
    spec = prev.spec.with_(sample_steps=DIFFUSERS_STEPS, guidance_scale=DIFFUSERS_GUIDANCE, semantics="diffusers",
                           schedule="empirical", generator="cpu", lora_application="live", dtype="bf16",
                           quantize=None, quantize_te=None, numerics=())
    return spec, dict(prev.sources, **{k: "profile" for k in _DIFFUSERS_FIELDS})


ProfileSpec = Callable[[ResolvedSpec, int, "str | None", "str | None"], "tuple[RenderSpec, dict[str, str]]"]

# profile name -> (preview's resolved spec, prompt index, raw prompt, trigger word) -> (spec, sources)
PROFILE_SPECS: dict[str, ProfileSpec] = {"reference-server": _reference_server, "diffusers": _diffusers}
PROFILES: tuple[str, ...] = tuple(PROFILE_SPECS)
# the resolution divisor each profile floors sizes to (diffusers floors to 16, section G)
PROFILE_DIVISORS: dict[str, int] = {"reference-server": SERVER_RESOLUTION_DIVISOR, "diffusers": 16}


def server_spec(prompt: str, p: RequestPrompt | None, index: int, lora_path: str | None,
                 multiplier: float | None) -> RenderSpec:
    """The reference server's render for one prompt: its defaults where a field is missing (section D.1/D.2),
    AI Toolkit's own sampling (it imports ai-toolkit's Flux2Pipeline: flux2.py L124-144), the saved LoRA merged into
    bf16 weights (flux2.py L377-432), bf16, nothing quantized (TE quantization commented out, flux2.py L262-268),
    a CPU generator (base.py L816-817)."""
    def pick(name: str, default: Any) -> Any:
        v = getattr(p, name) if p is not None else None
        return default if v is None else v

    return RenderSpec(
        prompt=prompt,
        width=pick("width", SERVER_SIZE),
        height=pick("height", SERVER_SIZE),
        seed=pick("seed", SERVER_SEED + index),  # executor.py L621-623: 42 + prompt index
        sample_steps=pick("sample_steps", SERVER_STEPS),
        guidance_scale=float(pick("guidance_scale", SERVER_GUIDANCE)),
        lora_path=lora_path,
        network_multiplier=SERVER_MULTIPLIER if multiplier is None else multiplier,
        lora_application="merged",
        dtype="bf16",
        quantize=None,
        quantize_te=None,
        semantics="aitk",
        schedule="aitk",
        generator="cpu",
        numerics=(),
    )
