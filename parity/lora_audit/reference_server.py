"""The reference inference server's treatment of an AI Toolkit FLUX.2 adapter file, as rules (torch-free).

runcomfy-com/ai-toolkit-inference at commit af4aec18dcd05e89abc2fcdefebeed8b5a35da70, src/pipelines/flux2.py
`Flux2Pipeline._merge_adapter_to_transformer` (L321-432) and `_merge_lokr_to_transformer` (L434-565); the klein
pipelines (src/pipelines/flux2_klein.py L14, L39) subclass it. The transformer there is AI Toolkit's BFL `Flux2`
(flux2.py L135-136), so a key maps when `<name>.weight` is one of its BFL state-dict keys.
tests/data/lora_audit/reference-server-af4aec18.json is what that code did on the tiny files.
"""

from __future__ import annotations

from parity.lora_audit.adapter_file import AdapterFile
from parity.lora_audit.result import StackResult

COMMIT = "af4aec18dcd05e89abc2fcdefebeed8b5a35da70"
VERSION = f"runcomfy-com/ai-toolkit-inference@{COMMIT[:8]}"
WHERE = ("src/pipelines/flux2.py L355 (`diffusion_model.` removed), L369 (LoKr when any key has `lokr_w`), "
         "L378-382 (one rank: the first lora_A), L406 (only keys naming a transformer weight), L410-418 "
         "(scale alpha / that rank), L476 and L533-543 (LoKr)")


def _server_name(key: str) -> str:
    return key.replace("diffusion_model.", "")           # flux2.py L355: anywhere in the key


def _lora(f: AdapterFile, res: StackResult) -> set[str]:
    """LoRA path (L377-427): rank from the first `lora_A.weight` key in load order (safetensors lists keys sorted);
    each `X.lora_A.weight` with `X.lora_B.weight` and a transformer weight `X.weight` is merged with scale
    alpha_X / rank (alpha_X = rank without an alpha key). lora_down/lora_up and DoRA magnitudes are never read."""
    first = next((k for k in f.order if "lora_A.weight" in k), None)
    if first is None:
        return set()
    mod_of = {k: b for b, m in f.modules.items() for k in m.keys.values()}
    rank = f.modules[mod_of[first]].shapes["A"][0]
    consumed: set[str] = set()
    for bfl, m in sorted(f.modules.items()):
        a = m.keys.get("A")
        if a is None or not a.endswith(".lora_A.weight") or _server_name(a) != f"{bfl}.lora_A.weight":
            continue
        if "B" not in m.keys:
            continue
        alpha = m.alpha if m.alpha is not None else rank
        res.applied.append(bfl)
        res.scales[bfl] = (alpha / rank) / m.aitk_scale()
        consumed |= {a, m.keys["B"]} | ({m.keys["alpha"]} if "alpha" in m.keys else set())
    return consumed


def _lokr(f: AdapterFile, res: StackResult) -> set[str]:
    """LoKr path (L434-565): every module with a transformer weight `X.weight`; scale 1 when w1 and w2 are both full,
    else alpha / rank (rank = w1_a's columns, else w2_a's; alpha = rank without an alpha key)."""
    consumed: set[str] = set()
    for bfl, m in sorted(f.modules.items()):
        names = {_server_name(k) for k in m.keys.values()}
        if not any(n.startswith(f"{bfl}.lokr_w") for n in names):
            continue   # keys not named `<BFL module>.lokr_*` after the rename: `X.weight` is no transformer weight
        full = "w1" in m.shapes and "w2" in m.shapes
        rank = m.shapes["w1_a"][1] if "w1_a" in m.shapes else m.shapes["w2_a"][1] if "w2_a" in m.shapes else None
        alpha = m.alpha if m.alpha is not None else float(rank or 1)
        scale = 1.0 if full else (alpha / rank if rank else 1.0)
        res.applied.append(bfl)
        res.scales[bfl] = scale / m.aitk_scale()
        consumed |= set(m.keys.values())
    return consumed


def audit(f: AdapterFile) -> StackResult:
    res = StackResult("reference-server", VERSION, len(f.modules), where=WHERE)
    is_lokr = any("lokr_w" in k for k in f.order)       # L369
    consumed = _lokr(f, res) if is_lokr else _lora(f, res)
    res.dropped = [k for k in f.order if k not in consumed]
    return res
