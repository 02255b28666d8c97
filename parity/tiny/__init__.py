"""Tiny, deterministic, randomly initialised FLUX.2 checkpoints in the real on-disk layouts, for tests, the demo
and `parity make-tiny`. Not part of the render path: the engine loads these files exactly as it loads real weights."""

from parity.tiny.flux2 import *  # noqa: F401,F403
from parity.tiny.flux2 import (  # noqa: F401  (names tests and benchmarks use that are not in __all__)
    _TOKENIZER_CORPUS, CHAT_TEMPLATE, SPECIAL_TOKENS, TOKENIZER_VOCAB,
)
from parity.tiny.klein import TinyKleinPaths, build_tiny_klein  # noqa: F401,E402


def build_member(arch: str, out_dir, *, seed: int = 0):
    """The tiny checkpoint of a family member (parity.family), in both layouts, under the member's pipeline class
    and single-file name: the tiny [klein] base for a [klein] member, else the tiny FLUX.2-dev."""
    from parity.family import family

    build = build_tiny_klein if family(arch).klein else build_tiny  # noqa: F405
    return build(out_dir, seed=seed, arch=arch)
