"""Inference settings under test: what the user's inference stack would render for each preview.

Three ways to say it, plus explicit overrides on top:

- `preview` (default): the preview's own render spec -- a pure parity check of the reference pipeline.
- a request file in the reference inference server's JSON format (runcomfy-com/ai-toolkit-inference, model `flux2`;
  aitk-flux2-previews.md section D.4): prompt i of the request pairs with sample i of the job.
- a named profile: `reference-server` (that server's defaults applied to the job's own prompts) or `diffusers`
  (stock diffusers `Flux2Pipeline`).
- `--set KEY=VALUE` overrides (RenderSpec field names or friendly aliases), applied last.

Every value of the resulting spec records where it came from (parity.spec.SOURCES).
No torch here: this module only builds plain RenderSpecs.

Split by job: overrides.py (`--set` keys and values), request.py (request files), profiles.py (profiles as a
table); this module holds the settings object and builds the spec under test. The names below stay importable
from here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from parity import knobs
from parity.errors import ConfigError
from parity.spec import RenderSpec, ResolvedSpec

from .overrides import (  # noqa: F401 - re-exported
    QTYPES, canonical_key, coerce_value, parse_override_mapping, parse_overrides,
)
from .profiles import (  # noqa: F401 - re-exported
    DIFFUSERS_GUIDANCE, DIFFUSERS_STEPS, PROFILE_DIVISORS, PROFILE_SPECS, PROFILES, SERVER_GUIDANCE,
    SERVER_MULTIPLIER, SERVER_RESOLUTION_DIVISOR, SERVER_SEED, SERVER_SIZE, SERVER_STEPS, SPEC_FIELDS, floor_to,
    replace_trigger_server, server_spec,
)
from .request import Request, RequestPrompt, load_request, parse_request  # noqa: F401 - re-exported

# ----------------------------------------------------------------------------------------------------------------
# The settings object.


@dataclass(frozen=True)
class InferenceSettings:
    """What to render for each preview. `kind` is preview | request | profile; `name` the profile name or the
    request path; `overrides` canonical key -> typed value (applied last); `resolution_divisor` None = no extra
    floor beyond the engine's 16 (the preview kind), else sizes are floored to it."""

    kind: str = "preview"
    name: str = "preview"
    request: Request | None = None
    overrides: tuple[tuple[str, Any], ...] = ()
    resolution_divisor: int | None = None

    @property
    def override_dict(self) -> dict[str, Any]:
        return dict(self.overrides)

    def with_overrides(self, overrides: Mapping[str, Any]) -> "InferenceSettings":
        merged = dict(self.overrides)
        merged.update(overrides)
        div = merged.pop("resolution_divisor", None)
        return replace(self, overrides=tuple(merged.items()),
                       resolution_divisor=div if div is not None else self.resolution_divisor)

    def describe(self) -> str:
        text = {"preview": "the preview's own settings", "profile": f"profile {self.name}",
                "request": f"request {self.name}"}[self.kind]
        if self.overrides:
            text += " with " + ", ".join(f"{k}={v}" for k, v in self.overrides)
        if self.resolution_divisor is not None:
            text += f" (sizes floored to {self.resolution_divisor})"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "overrides": dict(self.overrides),
                "resolution_divisor": self.resolution_divisor}

    @classmethod
    def preview(cls) -> "InferenceSettings":
        return cls()

    @classmethod
    def profile(cls, name: str, where: str | None = None) -> "InferenceSettings":
        name = name.strip().lower()
        if name not in PROFILES:
            raise ConfigError(f"unknown inference profile {name!r}; expected preview, {', '.join(PROFILES)} or a request .json file", where)
        return cls(kind="profile", name=name, resolution_divisor=PROFILE_DIVISORS[name])

    @classmethod
    def from_request_file(cls, path: str | Path, base_dir: str | Path | None = None) -> "InferenceSettings":
        req = load_request(path, base_dir)
        return cls(kind="request", name=req.path, request=req, resolution_divisor=SERVER_RESOLUTION_DIVISOR)

    @classmethod
    def from_case_value(cls, value: Any, base_dir: str | Path | None = None, where: str | None = None) -> "InferenceSettings":
        """Interpret a case file's `inference:` value (or the CLI's --inference): None/"preview", a profile name,
        a path to a request .json, or a mapping {profile | request, set: {...}}. Relative paths resolve against
        `base_dir` (the case file's folder)."""
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        if value is None:
            return cls.preview()
        if isinstance(value, str):
            v = value.strip()
            if v.lower() in ("", "preview"):
                return cls.preview()
            if v.lower() in PROFILES:
                return cls.profile(v, where)
            if v.lower().endswith(".json") or "/" in v or "\\" in v:
                p = Path(v) if Path(v).is_absolute() else base / v
                return cls.from_request_file(p)
            raise ConfigError(f"inference: unknown value {value!r}; expected preview, {', '.join(PROFILES)} or a request .json file", where)
        if isinstance(value, Mapping):
            unknown = set(value) - {"profile", "request", "set"}
            if unknown:
                raise ConfigError(f"inference: unknown key(s) {', '.join(sorted(map(str, unknown)))}; expected profile, request, set", where)
            if "profile" in value and "request" in value:
                raise ConfigError("inference: give either profile or request, not both", where)
            if "request" in value:
                if not isinstance(value["request"], str):
                    raise ConfigError("inference.request: expected a path to a request .json file", where)
                rp = Path(value["request"])
                settings = cls.from_request_file(rp if rp.is_absolute() else base / rp)
            elif "profile" in value:
                if not isinstance(value["profile"], str):
                    raise ConfigError("inference.profile: expected a profile name", where)
                settings = cls.from_case_value(value["profile"], base, where)
            else:
                settings = cls.preview()
            sets = value.get("set") or {}
            if isinstance(sets, list):
                return settings.with_overrides(parse_overrides(sets, where))
            if not isinstance(sets, Mapping):
                raise ConfigError("inference.set: expected a mapping of KEY: VALUE", where)
            return settings.with_overrides(parse_override_mapping(sets, where))
        raise ConfigError(f"inference: expected preview, a profile name, a request file or a mapping, got {value!r}", where)

# ----------------------------------------------------------------------------------------------------------------
# Building the spec under test for one preview item.


@dataclass
class InferenceResolved(ResolvedSpec):
    """A ResolvedSpec plus the size asked for before the divisor floor (None when no floor applied)."""

    requested_size: tuple[int, int] | None = None


def inference_spec(
    item_resolved: ResolvedSpec,
    index: int,
    settings: InferenceSettings,
    *,
    raw_prompt: str | None = None,
    trigger_word: str | None = None,
) -> InferenceResolved:
    """The spec the inference stack under test renders for the preview item `index` (prompt index within its step).

    `item_resolved` is the preview's own spec (the job reader's); `raw_prompt` the sample's prompt text as written in
    the job (before trigger substitution, flag parsing and stripping) and `trigger_word` the job's trigger word,
    both used by the reference-server profile, which sends the job's own prompts to the server."""
    if settings.kind == "preview":
        spec, sources = item_resolved.spec, dict(item_resolved.sources)
    elif settings.kind == "profile":
        spec, sources = PROFILE_SPECS[settings.name](item_resolved, index, raw_prompt, trigger_word)
    elif settings.kind == "request":
        assert settings.request is not None
        spec, sources = _request_spec(settings.request, index)
    else:  # pragma: no cover - constructors guard this
        raise ConfigError(f"unknown inference settings kind {settings.kind!r}")
    # Overrides last (source "override").
    ov = settings.override_dict
    if ov:
        spec = knobs.with_settings(spec, **ov)
        sources.update({k: "override" for k in ov})
    return _floored(spec, sources, settings.resolution_divisor)


def _request_spec(req: Request, index: int) -> tuple[RenderSpec, dict[str, str]]:
    """Prompt `index` of a request file, with the server's defaults where the request leaves a value out."""
    if index < 0 or index >= len(req.prompts):
        raise ConfigError(
            f"prompts[{index}]: missing; the request has {len(req.prompts)} prompt(s) but the job has a sample "
            f"at index {index} (prompt i of the request pairs with sample i of the job)", req.path)
    p = req.prompts[index]
    prompt = replace_trigger_server(p.prompt, p.trigger_word or req.trigger_word)
    spec = knobs.with_settings(server_spec(prompt, p, index, req.lora_path, req.network_multiplier),
                               arch=req.model, negative_prompt=p.neg or "", **dict(p.extra))
    sources = {k: "profile" for k in SPEC_FIELDS}
    sources["prompt"] = "request"
    for k in ("width", "height", "sample_steps", "guidance_scale"):
        if getattr(p, k) is not None:
            sources[k] = "request"
    sources.update({k: "request" for k, _ in p.extra})
    sources["seed"] = "request" if p.seed is not None else "walk"
    sources["lora_path"] = "request"
    if req.network_multiplier is not None:
        sources["network_multiplier"] = "request"
    return spec, sources


def _floored(spec: RenderSpec, sources: dict[str, str], div: int | None) -> InferenceResolved:
    """Size floor to the divisor (the server floors before calling the pipeline; the engine floors to 16 after)."""
    requested = None
    if div is not None:
        w, h = floor_to(spec.width, div), floor_to(spec.height, div)
        if w < div or h < div:
            raise ConfigError(f"resolution_divisor {div}: the size {spec.width}x{spec.height} floors to {w}x{h}")
        if (w, h) != (spec.width, spec.height):
            requested = (spec.width, spec.height)
            if w != spec.width:
                sources["width"] = "floor"
            if h != spec.height:
                sources["height"] = "floor"
            spec = spec.with_(width=w, height=h)
    return InferenceResolved(spec=spec, sources=sources, requested_size=requested)
