"""`parity compare RENDER PREVIEW`: score one render against one preview file and print the tier."""

from __future__ import annotations

from parity.tier import DEFAULT_GATE

HELP = "compare one render with one preview (JPEG-matched SSIM, pixel diffs, tier)"
EXAMPLES = """
  parity compare render.png output/my_lora/samples/1712345678__000000250_0.jpg
  parity compare render.png preview.jpg --json
  parity compare render.png preview.jpg --heatmap heatmaps/ --tolerance 24 --gate NEAR
exit code: 0 when the tier meets --gate (default NEAR), 1 when it does not, 2 when the images could not be compared
"""

# keys the --json object carries at the top level (contract in docs/design.md), besides the full comparison
TOP_LEVEL = ("ssim", "ssim_y", "psnr", "mae", "max_abs")


def add_arguments(p) -> None:
    p.add_argument("render", help="the re-rendered image (PNG recommended)")
    p.add_argument("preview", help="the preview file (JPEG, PNG or WebP)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--heatmap", metavar="DIR", help="write diff and SSIM heatmap PNGs into DIR")
    p.add_argument("--tolerance", type=int, metavar="N", help="levels a pixel may differ before it counts (default 16)")
    p.add_argument("--window", type=int, metavar="N", help="size of the worst-window density window (default 32)")
    p.add_argument("--resample", action="store_true",
                   help="when sizes differ, also score the render resampled to the preview size (labelled)")
    p.add_argument("--gate", default=DEFAULT_GATE, help=f"minimum tier for exit code 0 (default {DEFAULT_GATE})")


def run(args) -> int:
    from parity.compare import Thresholds, compare, load_image
    from parity.jsonio import dumps
    from parity.errors import ParityError
    from parity.tier import ERROR, meets_gate, parse_gate

    try:
        gate = parse_gate(args.gate)  # checked before any image is read
    except ValueError as e:
        raise ParityError(f"--gate {e}") from None
    overrides = {k: v for k, v in (("tolerance", args.tolerance), ("window", args.window)) if v is not None}
    thresholds = Thresholds.from_mapping(overrides, source="--tolerance/--window")
    render = load_image(args.render).rgb  # InputFileError (exit 2) when the render itself is unreadable
    c = compare(render, args.preview, thresholds=thresholds, heatmap_dir=args.heatmap, resample=args.resample)
    d = c.to_dict()
    if args.json:
        flat = {"tier": d["tier"], **{k: d["metrics"].get(k) for k in TOP_LEVEL},
                "size_mismatch": d["size_mismatch"], **d}
        print(dumps(flat, indent=2))  # strict JSON: an infinite PSNR is "inf" (parity.jsonio)
    else:
        print(_text(c))
    if c.tier == ERROR.name:
        return 2
    return 0 if meets_gate(c.tier, gate) else 1


def _fmt(v: float) -> str:
    if v != v or v in (float("inf"), float("-inf")):
        return "inf" if v == float("inf") else str(v)
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.4f}"


def _text(c) -> str:
    lines = [f"tier: {c.tier}  ({c.reason})"]
    if c.size_mismatch:
        r, p = c.size_mismatch["render"], c.size_mismatch["preview"]
        lines.append(f"size mismatch: render {r[0]}x{r[1]}, preview {p[0]}x{p[1]}")
    if c.jpeg:
        lines.append(f"preview JPEG: quality {c.jpeg['quality']}{'' if c.jpeg['standard_tables'] else ' (nearest)'}, "
                     f"subsampling {c.jpeg['subsampling']}; encode-matched: {'yes' if c.encode_matched else 'no'}")
    for k, v in c.metrics.items():
        lines.append(f"  {k:15s} {_fmt(v)}")
    if c.ceiling:
        lines.append("JPEG ceiling (render vs its own re-encode): "
                     + ", ".join(f"{k} {_fmt(v)}" for k, v in c.ceiling.items()))
    for kind, path in c.heatmaps.items():
        lines.append(f"heatmap {kind}: {path}")
    for n in c.notes:
        lines.append(f"note: {n}")
    return "\n".join(lines)
