"""Cheap checks before extra renders: what the initial-noise and prompt-embedding hashes of the two sides prove.

The engine reports `noise_sha256` (the initial latent noise, after shape/dtype/generator) and `embedding_sha256`
(the prompt embedding fed to the transformer). Equal hashes prove the inputs agree bit for bit, whatever the
parameter table says (e.g. two prompts that differ only in case a tokenizer ignores, or seeds that happen to give
the same noise); unequal hashes narrow the cause down to the knobs that feed that input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from parity import knobs

# Which knobs decide the initial noise and the prompt embedding is declared per knob in the registry
# (`Knob.feeds`; `Knob.arithmetic` for those that also change the transformer's arithmetic).


def _proven_equal(engine_input: str) -> list[str]:
    """Knobs an equal hash of `engine_input` rules out: those feeding it that no arithmetic change hides behind."""
    return [k for k in knobs.feeding(engine_input) if not knobs.knob(k).arithmetic]


@dataclass
class HashCheck:
    ruled_out: list[str] = field(default_factory=list)    # knobs proven not to matter for this item
    suspects: list[str] = field(default_factory=list)     # knobs one of which must differ (an input differs)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"ruled_out": list(self.ruled_out), "suspects": list(self.suspects), "notes": list(self.notes)}


def check_hashes(preview_noise: str | None, inference_noise: str | None,
                 preview_embedding: str | None, inference_embedding: str | None,
                 *, mismatches: list[str] | None = None) -> HashCheck:
    """Compare the hashes of the preview-side render (our re-render of the preview spec) and the inference render.

    Identical noise rules out seed, generator and resolution; identical embeddings rule out the prompt and the
    text-encoder identity. dtype and quantization are never ruled out: they also change the transformer's arithmetic,
    which no input hash sees. A missing hash proves nothing. `mismatches` (the parameter diff's)
    adds a note when a hash contradicts the table, e.g. a different prompt text that encodes identically."""
    out = HashCheck()
    mism = set(mismatches or ())
    noise_same = preview_noise is not None and preview_noise == inference_noise
    emb_same = preview_embedding is not None and preview_embedding == inference_embedding
    if noise_same:
        out.ruled_out += _proven_equal(knobs.NOISE)
    elif preview_noise is not None and inference_noise is not None:
        out.suspects += list(knobs.feeding(knobs.NOISE))
        out.notes.append("the initial noise differs: seed, generator device, size or noise dtype differ")
    if emb_same:
        out.ruled_out += _proven_equal(knobs.EMBEDDING)
    elif preview_embedding is not None and inference_embedding is not None:
        out.suspects += [k for k in knobs.feeding(knobs.EMBEDDING) if k not in out.suspects]
        out.notes.append("the prompt embedding differs: prompt text, text encoder, its quantization or dtype differ")
    for k in out.ruled_out:
        if k in mism:
            out.notes.append(f"{k} differs in the settings but the hashes show it does not change the inputs")
    out.suspects = [k for k in out.suspects if k not in out.ruled_out]
    return out
