"""Comparison engine: preview loading, JPEG-matched metrics, heatmaps, tiered verdicts.

Imports numpy, scipy and Pillow only (never torch), so `parity report` and the job reader can use it.
"""

from .engine import Comparer, Comparison, compare, encode_matched, twin_metrics
from .jpeg import JpegInfo, detect_quality, reencode
from .load import LoadedImage, load_image
from .metrics import VARIANTS, SsimResult, phash_distance, pixel_stats, ssim, window_density
from .tiers import Thresholds, decide_floor_tier, decide_tier

__all__ = [
    "Comparer", "Comparison", "compare", "encode_matched", "twin_metrics", "decide_floor_tier",
    "JpegInfo", "detect_quality", "reencode",
    "LoadedImage", "load_image", "VARIANTS", "SsimResult", "phash_distance", "pixel_stats", "ssim",
    "window_density", "Thresholds", "decide_tier",
]
