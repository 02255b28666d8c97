"""`parity make-tiny DIR`: write the tiny FLUX.2-dev checkpoint (both layouts + AI Toolkit LoRA files);
`--klein` writes the tiny FLUX.2 [klein] base 4B instead (parity.tiny.klein)."""

from __future__ import annotations

HELP = "write a tiny random FLUX.2-dev (or --klein: FLUX.2 [klein]) checkpoint in both layouts for CPU tests"
EXAMPLES = """
  parity make-tiny build/tiny-flux2
  parity make-tiny build/tiny-flux2 --seed 3
  parity make-tiny build/tiny-flux2-klein --klein
"""


def add_arguments(parser) -> None:
    parser.add_argument("dir", help="output folder (created if missing; existing tiny files are overwritten)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.add_argument("--smooth", action="store_true",
                        help="a transformer that responds smoothly to guidance and the LoRA multiplier like a trained "
                             "model (what parameter recovery needs); steps and shift still jump with the LoRA applied "
                             "(docs/parameter-recovery.md)")
    parser.add_argument("--klein", action="store_true",
                        help="write a tiny FLUX.2 [klein] base 4B (Qwen3 text encoder, no guidance embedding)")


def run(args) -> int:
    from pathlib import Path

    from parity.errors import InputFileError

    out = Path(args.dir)
    if out.exists() and not out.is_dir():
        raise InputFileError("exists and is not a folder", out)
    if args.klein:
        from parity.tiny import build_tiny_klein

        k = build_tiny_klein(out, seed=args.seed)
        print(f"wrote tiny FLUX.2 [klein] base 4B to {k.root} in {k.seconds:.1f} s: diffusers layout "
              f"(Flux2KleinPipeline), {k.bfl_transformer.name}, {k.bfl_vae.name}, LoRA {k.lora.relative_to(k.root)}")
        return 0
    from parity.tiny import build_tiny

    paths = build_tiny(out, seed=args.seed, smooth=args.smooth)
    if not args.quiet:
        for f in paths.files:
            print(f"  {f.relative_to(paths.root)}  ({f.stat().st_size:,} bytes)")
    print(
        f"wrote tiny FLUX.2-dev to {paths.root} in {paths.seconds:.1f} s: diffusers layout (model_index.json), "
        f"{paths.bfl_transformer.name}, {paths.bfl_vae.name}, LoRA {paths.lora.relative_to(paths.root)}, "
        f"LoKr {paths.lokr.relative_to(paths.root)}"
    )
    return 0
