"""compare(): one render against one preview file -> Comparison (metrics, variants, JPEG facts, ceiling, tier).

The render is encoded the way the preview was (JPEG quality and subsampling read from the file) before any
metric is computed, so a pipeline that reproduces the preview's pixels scores EXACT whatever the image content;
the JPEG ceiling (render vs its own re-encode) is recorded next to the scores for context
(peers-metrics-reports.md §0 finding 3, §2.2: JPEG q75 alone moves RGB SSIM to 0.82-0.96 depending on content).
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from parity.errors import ParityError
from parity.tier import ERROR

from . import metrics as M
from .jpeg import can_reencode, reencode
from .load import LoadedImage, load_image, orient
from .tiers import Thresholds, decide_tier

log = logging.getLogger(__name__)


@dataclass
class Comparison:
    tier: str
    metrics: dict[str, float] = field(default_factory=dict)
    variants: dict[str, str] = field(default_factory=dict)
    jpeg: dict[str, Any] | None = None        # {"quality", "subsampling", "standard_tables", "progressive"}
    ceiling: dict[str, float] | None = None   # render vs its own re-encode (JPEG previews only)
    size_mismatch: dict[str, list[int]] | None = None  # {"render": [w, h], "preview": [w, h]}
    heatmaps: dict[str, str] = field(default_factory=dict)  # kind ("diff", "ssim") -> PNG path
    error: str | None = None
    reason: str = ""                          # why this tier, in words
    name: str | None = None
    preview: str | None = None
    encode_matched: bool = False
    resampled: bool = False
    notes: list[str] = field(default_factory=list)
    thresholds: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (numpy scalars converted). Non-finite floats stay floats (PSNR of identical images is
        inf); writers turn them into JSON with parity.jsonio, the one policy for every file."""
        return _plain({
            "name": self.name,
            "preview": self.preview,
            "tier": self.tier,
            "reason": self.reason,
            "error": self.error,
            "metrics": self.metrics,
            "variants": self.variants,
            "jpeg": self.jpeg,
            "encode_matched": self.encode_matched,
            "ceiling": self.ceiling,
            "size_mismatch": self.size_mismatch,
            "resampled": self.resampled,
            "heatmaps": self.heatmaps,
            "notes": self.notes,
            "thresholds": self.thresholds,
        })


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _check_render(render: np.ndarray) -> np.ndarray:
    if not isinstance(render, np.ndarray) or render.dtype != np.uint8 or render.ndim != 3 or render.shape[2] != 3:
        desc = f"{render.dtype} {render.shape}" if isinstance(render, np.ndarray) else type(render).__name__
        raise ValueError(f"render must be an HxWx3 uint8 array, got {desc}")
    return np.ascontiguousarray(render)


def _resample(rgb: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    w, h = rgb.shape[1], rgb.shape[0]
    shrink = size_wh[0] * size_wh[1] < w * h
    f = Image.Resampling.BOX if shrink else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(rgb, "RGB").resize(size_wh, f))


def encode_matched(render: np.ndarray, preview: LoadedImage) -> tuple[np.ndarray, str | None]:
    """(render as the preview's encoder would have stored it, None) or (render, why not)."""
    if preview.jpeg is None:
        return render, f"none ({preview.format} preview compared as decoded)"
    why = can_reencode(preview.jpeg)
    if why:
        return render, f"none (JPEG preview, cannot mirror its encoding: {why})"
    # the JPEG blocks lie in the stored orientation: undo EXIF orientation, encode, decode, redo it
    stored = orient(render, preview.orientation, inverse=True)
    return orient(reencode(stored, preview.jpeg), preview.orientation), None


def _core_metrics(a: np.ndarray, b: np.ndarray, t: Thresholds, *, full: bool):
    s = M.ssim(a, b, luma=True, full=full)
    px = M.pixel_stats(a, b, tolerance=t.tolerance, window=t.window)
    m = {
        "ssim": s.ssim, "ssim_y": s.ssim_y, "psnr": px.psnr, "mae": px.mae, "max_abs": float(px.max_abs),
        "share_over_tol": px.share_over_tol, "window_density": px.window_density,
    }
    return m, s, px


def compare(
    render: np.ndarray,
    preview_path: str | Path,
    *,
    render_float: np.ndarray | None = None,
    thresholds: Thresholds | None = None,
    heatmap_dir: str | Path | None = None,
    name: str | None = None,
    resample: bool = False,
    flip: bool = True,
) -> Comparison:
    """Compare an HxWx3 uint8 render with a preview file. Problems with the preview (missing, truncated, corrupt,
    size mismatch, too small) give tier ERROR with the reason; a malformed `render` array raises ValueError.

    resample: when sizes differ, also score the render resampled to the preview's size (labelled; at best DRIFT).
    render_float: the render before uint8 rounding (HxWx3 in [0, 1]); adds `mae_float` against the preview.
    """
    t = thresholds or Thresholds()
    render = _check_render(render)
    out = Comparison(tier=ERROR.name, name=name, preview=str(preview_path), thresholds=t.to_dict())
    try:
        pv = load_image(preview_path)
    except ParityError as e:
        out.error = out.reason = str(e)
        return out
    out.notes = list(pv.notes)
    out.jpeg = pv.jpeg.to_dict() if pv.jpeg else None
    sized = _match_size(out, render, pv, resample)
    if sized is None:
        return out
    if sized is not render:
        render, render_float = sized, None
    if min(pv.size) < M.WIN:
        out.error = out.reason = f"{pv.path}: image {pv.size[0]}x{pv.size[1]} is smaller than the 11x11 SSIM window"
        return out
    matched, why_not = encode_matched(render, pv)
    out.encode_matched = why_not is None
    out.variants["encode"] = (
        f"render re-encoded with Pillow JPEG {pv.jpeg.describe()} like the preview, decoded, then compared"
        if why_not is None else why_not)
    s, px = _score(out, matched, pv, t, render_float, full=heatmap_dir is not None, flip=flip)
    if out.encode_matched:
        cm, _, _ = _core_metrics(render, matched, t, full=False)
        out.ceiling = {k: cm[k] for k in ("ssim", "ssim_y", "psnr", "mae", "max_abs")}
    out.tier, out.reason = decide_tier(
        out.metrics, t, ceiling_ssim_y=out.ceiling["ssim_y"] if out.ceiling else None, resampled=out.resampled)
    if heatmap_dir is not None:
        _write_heatmaps(out, s, px, pv, Path(heatmap_dir), name or Path(preview_path).stem)
    return out


def _match_size(out: Comparison, render: np.ndarray, pv: LoadedImage, resample: bool) -> np.ndarray | None:
    """The render at the preview's size: itself, a labelled resampled copy (`resample`), or None (an ERROR
    recorded in `out`) when the sizes differ and resampling was not asked for."""
    rh, rw = render.shape[:2]
    if (rw, rh) == pv.size:
        return render
    out.size_mismatch = {"render": [rw, rh], "preview": list(pv.size)}
    if not resample:
        out.error = out.reason = (
            f"size mismatch: render {rw}x{rh}, preview {pv.size[0]}x{pv.size[1]} (not resized; "
            "`parity compare --resample` gives a labelled resampled score)")
        return None
    out.resampled = True
    out.variants["resampled"] = (f"render resampled {rw}x{rh} -> {pv.size[0]}x{pv.size[1]} with Pillow "
                                 f"{'BOX (area)' if pv.size[0] * pv.size[1] < rw * rh else 'BICUBIC'}; "
                                 "scores are not pixel-exact comparisons")
    return _resample(render, pv.size)


def _score(out: Comparison, matched: np.ndarray, pv: LoadedImage, t: Thresholds, render_float: np.ndarray | None,
           *, full: bool, flip: bool):
    """Every metric of the encode-matched render against the preview into `out.metrics`, each with its exact
    variant in `out.variants`. Returns the SSIM and pixel results (their maps feed the heatmaps)."""
    m, s, px = _core_metrics(matched, pv.rgb, t, full=full)
    m["phash_distance"] = float(M.phash_distance(matched, pv.rgb))
    if flip:
        try:
            f = M.flip_mean(pv.rgb, matched)
        except Exception as e:  # optional extra: never let it break a comparison
            log.debug("FLIP failed: %s", e)
            f = None
        if f is not None:
            m["flip"] = f
    if render_float is not None:
        rf = np.asarray(render_float, dtype=np.float64)
        if rf.shape != matched.shape:
            raise ValueError(f"render_float shape {rf.shape} differs from render {matched.shape}")
        m["mae_float"] = float(np.abs(rf * 255.0 - pv.rgb).mean())
    out.metrics = m
    for k in m:
        out.variants[k] = M.VARIANTS[k]
    out.variants["share_over_tol"] += f" (tolerance {t.tolerance})"
    out.variants["window_density"] = out.variants["window_density"].replace("NxN", f"{t.window}x{t.window}") + (
        f", tolerance {t.tolerance}")
    return s, px


def _write_heatmaps(out: Comparison, s: Any, px: Any, pv: LoadedImage, d: Path, stem: str) -> None:
    from .heatmap import diff_heatmap, ssim_heatmap

    d.mkdir(parents=True, exist_ok=True)
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)
    out.heatmaps["diff"] = str(diff_heatmap(px.diff_max, d / f"{stem}.diff.png"))
    out.heatmaps["ssim"] = str(ssim_heatmap(s.map, pv.rgb.shape[:2], d / f"{stem}.ssim.png"))


def twin_metrics(render: np.ndarray, twin: np.ndarray, preview_path: str | Path, *,
                 thresholds: Thresholds | None = None) -> dict[str, float]:
    """Metrics of `render` against `twin` (another render of the same item), both encoded the way the preview was,
    so they live in the same space as the item's own scores (noise-floor measurement). Raises ParityError when the
    preview cannot be read and ValueError on malformed arrays or different sizes."""
    t = thresholds or Thresholds()
    a, b = _check_render(render), _check_render(twin)
    if a.shape != b.shape:
        raise ValueError(f"twin render {b.shape[1]}x{b.shape[0]} differs in size from the render "
                         f"{a.shape[1]}x{a.shape[0]}")
    pv = load_image(preview_path)
    if (a.shape[1], a.shape[0]) != pv.size:  # the item's scores were resampled: measure in the same space
        a, b = _resample(a, pv.size), _resample(b, pv.size)
    a, _ = encode_matched(a, pv)
    b, _ = encode_matched(b, pv)
    m, _, _ = _core_metrics(a, b, t, full=False)
    return m


class Comparer:
    """Runs compare() on worker threads so comparing one item never blocks rendering the next
    (numpy, scipy and Pillow release the GIL in the heavy parts)."""

    def __init__(self, max_workers: int = 1, **defaults: Any):
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="parity-compare")
        self._defaults = defaults

    def submit(self, render: np.ndarray, preview_path: str | Path, **kwargs: Any) -> "Future[Comparison]":
        """Schedule a comparison; the render is copied, so the caller may reuse its buffer at once."""
        render = np.array(_check_render(render), copy=True)
        rf = kwargs.get("render_float")
        if rf is not None:
            kwargs["render_float"] = np.array(rf, copy=True)
        return self._pool.submit(compare, render, preview_path, **{**self._defaults, **kwargs})

    def close(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait)

    def __enter__(self) -> "Comparer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
