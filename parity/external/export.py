"""`parity plan JOB --export-requests DIR`: what to render, for any inference stack.

One JSON per item (`<id>.json`: the item id, prompt, size, seed, steps, guidance, LoRA file and multiplier; a
render saved as `<id>.png|jpg|webp` is what `parity diff --renders DIR` looks for) and, per step label, one
request file in the reference inference server's format (runcomfy-com/ai-toolkit-inference
src/schemas/request.py; aitk-flux2-previews.md D.4) that parity's own request parser
(parity.diagnose.request.parse_request) reads back to the same settings. Torch-free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parity.errors import ConfigError
from parity.family import family
from parity.spec import RenderSpec

if TYPE_CHECKING:
    from parity.items import PlannedItem
    from parity.job.job import PreviewItem


@dataclass(frozen=True)
class RenderRequest:
    """One preview as a stack-neutral render request (what the user's stack must render to reproduce it)."""

    id: str
    step: int
    index: int
    prompt: str
    width: int
    height: int
    seed: int
    sample_steps: int
    guidance_scale: float
    lora: str | None                # absolute path of the LoRA file the preview sampled, None for the baseline
    network_multiplier: float
    arch: str                       # the reference server's model id (equal to AI Toolkit's arch)
    negative_prompt: str | None     # only where true CFG reads it ([klein] base)
    preview: str | None

    @property
    def file_stem(self) -> str:
        return render_stem(self.id)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["file_stem"] = self.file_stem
        return d


def render_stem(item_id: str) -> str:
    """The file name (without extension) a render of `item_id` is saved under: the id itself when it is a safe
    file name on every common file system, else parity's safe form of it (both are looked up)."""
    from parity.ids import safe_name

    unsafe = set('/\\:*?"<>|') | {chr(c) for c in range(32)}
    if item_id and not item_id.startswith(".") and not any(c in unsafe for c in item_id) and len(item_id) <= 120:
        return item_id
    return safe_name(item_id)


def render_request(item_id: str, it: PreviewItem | PlannedItem, spec: RenderSpec | None = None) -> RenderRequest:
    """The request of one parity.job PreviewItem (or a parity.items.PlannedItem), for the preview's own spec or
    `spec` (e.g. the settings under test)."""
    from parity.job.job import PreviewItem

    if isinstance(it, PreviewItem):
        s, preview = spec if spec is not None else it.resolved.spec, it.preview
    else:
        s, preview = spec if spec is not None else it.preview.spec, it.preview_path
    return RenderRequest(
        id=item_id, step=it.step, index=it.index, prompt=s.prompt, width=s.width, height=s.height, seed=s.seed,
        sample_steps=s.sample_steps, guidance_scale=float(s.guidance_scale),
        lora=None if not s.lora_path else str(Path(s.lora_path).resolve()),
        network_multiplier=float(s.network_multiplier), arch=s.arch,
        negative_prompt=s.negative_prompt if family(s.arch).true_cfg else None,
        preview=None if preview is None else str(Path(preview).resolve()))


def server_request(requests: list[RenderRequest]) -> tuple[dict[str, Any] | None, str | None]:
    """The reference server's request for the items of one step label: prompt i pairs with sample i (as
    parity.diagnose.settings reads a request file), every value explicit so the server's defaults (25 steps,
    guidance 4, seed 42 + i) never apply. (None, why) when one request cannot hold them."""
    rows = sorted(requests, key=lambda r: r.index)
    if [r.index for r in rows] != list(range(len(rows))):
        return None, "prompt indices are not 0..n-1 (the request pairs prompt i with sample i)"
    if len({r.lora for r in rows}) > 1 or len({r.network_multiplier for r in rows}) > 1:
        return None, "the prompts use different LoRA files or multipliers (one request holds one LoRA)"
    return request_document(rows), None


def request_document(rows: list[RenderRequest]) -> dict[str, Any]:
    """The reference server's InferenceInput for `rows` (same LoRA and multiplier), every value explicit."""
    prompts = []
    for r in rows:
        p: dict[str, Any] = {"prompt": r.prompt, "width": r.width, "height": r.height, "seed": r.seed,
                             "sample_steps": r.sample_steps, "guidance_scale": r.guidance_scale}
        if r.negative_prompt:
            p["neg"] = r.negative_prompt
        prompts.append(p)
    loras = [{"path": rows[0].lora, "network_multiplier": rows[0].network_multiplier}] if rows[0].lora else []
    return {"model": rows[0].arch, "prompts": prompts, "loras": loras}


def export_requests(out: Path, requests: list[RenderRequest]) -> list[str]:
    """Write the per-item JSONs and one request file per step into `out`; returns notes (requests not written)."""
    if out.exists() and not out.is_dir():
        raise ConfigError("--export-requests: not a folder", out)
    out.mkdir(parents=True, exist_ok=True)
    notes = []
    for r in requests:
        _write(out / f"{r.file_stem}.json", r.to_dict())
    for step in sorted({r.step for r in requests}):
        doc, why = server_request([r for r in requests if r.step == step])
        if doc is None:
            notes.append(f"step {step}: no reference-server request file: {why}")
            continue
        if not doc["loras"]:
            notes.append(f"step {step}: baseline previews have no LoRA; the reference server refuses a request "
                         "without one (LORA_FILE_REQUIRED), other stacks can render them")
        _write(out / f"request-step{step}.json", doc)
    return notes


def _write(path: Path, doc: dict[str, Any]) -> None:
    """Temporary file + rename: a symlink planted at DIR/<id>.json is replaced, never followed (issue 35)."""
    from parity import fileio

    fileio.write_text(path, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
