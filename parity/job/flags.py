"""Prompt-embedded flags and trigger substitution, exactly as AI Toolkit applies them to sample prompts.

Every quirk reproduced here is cited (paths into ostris/ai-toolkit; see
shared/reference/aitk-flux2-previews.md §A.3-A.4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from parity.errors import ConfigError

# flag -> (field name, converter). Names and conversions of GenerateImageConfig._process_prompt_string
# (toolkit/config_modules.py L1373-1455). Fields FLUX.2 text-to-image ignores are still converted, because a
# value that does not convert raises inside AI Toolkit and no preview is rendered at all.
FLAG_FIELDS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "p2": ("prompt_2", str),
    "n": ("negative_prompt", str),
    "n2": ("negative_prompt_2", str),
    "w": ("width", int),
    "h": ("height", int),
    "d": ("seed", int),
    "seed": ("seed", int),
    "l": ("guidance_scale", float),
    "cfg": ("guidance_scale", float),
    "s": ("sample_steps", int),
    "steps": ("sample_steps", int),
    "m": ("network_multiplier", float),
    "network_multiplier": ("network_multiplier", float),
    "gr": ("guidance_rescale", float),
    "a": ("adapter_conditioning_scale", float),
    "ref": ("refiner_start_at", float),
    "ev": ("extra_values", lambda c: [float(v) for v in c.split(",")]),
    "extra_values": ("extra_values", lambda c: [float(v) for v in c.split(",")]),
    "frames": ("num_frames", int),
    "num_frames": ("num_frames", int),
    "fps": ("fps", int),
    "ctrl_img": ("ctrl_img", str),
    "ctrl_idx": ("ctrl_idx", int),
}


@dataclass(frozen=True)
class ParsedPrompt:
    """Result of flag parsing. `values` maps field names (width, seed, ...) to the last flag's value;
    `flags` lists (flag, content) in order as found; `ignored` the flags AI Toolkit does not know."""

    prompt: str
    values: dict[str, Any] = field(default_factory=dict)
    flags: tuple[tuple[str, str], ...] = ()
    ignored: tuple[str, ...] = ()


def parse_prompt_flags(text: str, *, where: str = "", path: str | None = None) -> ParsedPrompt:
    """Split `text` the way AI Toolkit does and convert the flag values.

    - Nothing happens to an empty prompt (`len(prompt) > 0` guard, config_modules.py L1396).
    - `prompt.strip().split('--')`: element 0 stripped is the prompt, so ANY `--` starts a flag, also inside a
      word ("well--lit" -> prompt "well", flag "lit") (config_modules.py L1398-1400).
    - flag = `split.split(' ')[0].strip()`: only a SPACE ends a flag name, so "--w\\t512" is the unknown flag
      "w\\t512" (ignored); content = `split[len(flag):].strip()` is sliced by the stripped flag's length,
      which for a flag preceded by a tab/newline mis-slices exactly as AI Toolkit does (L1403-1405).
    - unknown flags are ignored; a repeated flag: the last one wins (assignments in order).
    - a value that int()/float() rejects raises ValueError in AI Toolkit, so the whole sample() call fails and
      no preview exists: we raise ConfigError naming the prompt.
    """
    if not isinstance(text, str):
        raise ConfigError(f"{where}prompt must be a string, got {type(text).__name__} {text!r}", path)
    if len(text) == 0:
        return ParsedPrompt(prompt=text)
    parts = text.strip().split("--")
    values: dict[str, Any] = {}
    flags: list[tuple[str, str]] = []
    ignored: list[str] = []
    for part in parts[1:]:
        flag = part.split(" ")[0].strip()
        content = part[len(flag):].strip()
        flags.append((flag, content))
        spec = FLAG_FIELDS.get(flag)
        if spec is None:
            ignored.append(flag)
            continue
        name, convert = spec
        try:
            values[name] = convert(content)
        except (ValueError, OverflowError):
            raise ConfigError(
                f"{where}prompt {text!r}: flag --{flag} has value {content!r}, which AI Toolkit cannot convert "
                f"with {'int' if convert is int else 'float'}() (it raises and renders no preview)",
                path,
            ) from None
    return ParsedPrompt(prompt=parts[0].strip(), values=values, flags=tuple(flags), ignored=tuple(ignored))


def inject_trigger(prompt: str, trigger: str | None, *, where: str = "", path: str | None = None) -> str:
    """`[trigger]` and `[name]` -> trigger word, only when a trigger word is set (BaseSDTrainProcess.py
    L326-329 calls toolkit/prompt_utils.py L715-748 with add_if_not_present=False, so the trigger is never
    prepended). With trigger_word None the call is skipped and `[trigger]` stays literally in the prompt.

    AI Toolkit replaces the two tokens in `set()` iteration order, which depends on Python's string hashing;
    when the two orders give different prompts (a trigger that itself contains a token) the preview's prompt
    is unknowable and we refuse."""
    if trigger is None:
        return prompt
    if not isinstance(trigger, str):
        raise ConfigError(f"trigger_word must be a string, got {type(trigger).__name__} {trigger!r}", path)
    a = prompt.replace("[name]", trigger).replace("[trigger]", trigger)
    b = prompt.replace("[trigger]", trigger).replace("[name]", trigger)
    if a != b:
        raise ConfigError(
            f"{where}prompt {prompt!r}: trigger_word {trigger!r} contains [name]/[trigger]; AI Toolkit's result "
            "depends on Python's hash order (prompt_utils.py L729-735), so the preview's prompt is unknown",
            path,
        )
    return a
