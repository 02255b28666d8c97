"""Tiny, deterministic, randomly initialised FLUX.2 checkpoints in the real on-disk layouts, for tests, the demo
and `parity make-tiny`. Not part of the render path: the engine loads these files exactly as it loads real weights."""

from parity.tiny.flux2 import *  # noqa: F401,F403
from parity.tiny.flux2 import (  # noqa: F401  (names tests and benchmarks use that are not in __all__)
    _TOKENIZER_CORPUS, CHAT_TEMPLATE, SPECIAL_TOKENS, TOKENIZER_VOCAB,
)
from parity.tiny.klein import TinyKleinPaths, build_tiny_klein  # noqa: F401,E402


def build_member(arch: str, out_dir, *, seed: int = 0):
    """The tiny checkpoint of a family member (parity.family), in both layouts: a [klein] member gets the tiny
    [klein] base under its own pipeline class and single-file name; FLUX.2-dev the tiny FLUX.2-dev."""
    from parity.family import DEFAULT_ARCH, family

    if family(arch).klein:
        return build_tiny_klein(out_dir, seed=seed, arch=arch)
    if family(arch) is not family(DEFAULT_ARCH):
        raise ValueError(f"no tiny model for {arch!r}: only FLUX.2-dev and [klein] members have tiny shapes")
    return build_tiny(out_dir, seed=seed)  # noqa: F405
