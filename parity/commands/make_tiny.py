"""`parity make-tiny DIR`: write the tiny FLUX.2-dev checkpoint (both layouts + AI Toolkit LoRA files)."""

from __future__ import annotations

HELP = "write a tiny random FLUX.2-dev checkpoint (diffusers + BFL layouts, LoRA/LoKr files) for CPU tests"
EXAMPLES = """
  parity make-tiny build/tiny-flux2
  parity make-tiny build/tiny-flux2 --seed 3
"""


def add_arguments(parser) -> None:
    parser.add_argument("dir", help="output folder (created if missing; existing tiny files are overwritten)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")


def run(args) -> int:
    from pathlib import Path

    from parity.errors import InputFileError

    out = Path(args.dir)
    if out.exists() and not out.is_dir():
        raise InputFileError("exists and is not a folder", out)
    from parity.tiny import build_tiny

    paths = build_tiny(out, seed=args.seed)
    quiet = getattr(args, "quiet", False)
    if not quiet:
        for f in paths.files:
            print(f"  {f.relative_to(paths.root)}  ({f.stat().st_size:,} bytes)")
    print(
        f"wrote tiny FLUX.2-dev to {paths.root} in {paths.seconds:.1f} s: diffusers layout (model_index.json), "
        f"{paths.bfl_transformer.name}, {paths.bfl_vae.name}, LoRA {paths.lora.relative_to(paths.root)}, "
        f"LoKr {paths.lokr.relative_to(paths.root)}"
    )
    return 0
