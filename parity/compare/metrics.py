"""Image metrics on HxWx3 uint8 pairs. numpy/scipy/Pillow only (no torch): `parity report` and the job reader
import this package.

SSIM is Wang et al. (2004) as scikit-image computes it with `gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=255`: an 11x11 Gaussian window (truncate 3.5 -> radius 5), population
(co)variances, K1=0.01, K2=0.03, the mean over the map after cropping the 5-pixel border, RGB = mean over
channels. Tests check agreement with skimage to 1e-4 (it is ~1e-7).

Why it is faster than skimage (benchmarks/compare.py prints the ratio):
- SSIM needs only mu_x*mu_y, mu_x^2+mu_y^2, sigma_xy and sigma_x^2+sigma_y^2. With s = x+y and d = x-y these are
  (mu_s^2-mu_d^2)/4, (mu_s^2+mu_d^2)/2, (v_s-v_d)/4 and (v_s+v_d)/2, so four filtered planes per channel
  (s, d, s^2, d^2) replace skimage's five, and luma reuses them: Y_s and Y_d are linear in s and d, so only
  Y_s^2 and Y_d^2 are filtered extra (14 planes for RGB + luma against skimage's 15 for RGB alone).
- float32 planes on data centred per channel (subtracting the global mean of s and d) keep E[s^2]-E[s]^2 from
  cancelling (cpu-stack-notes.md §6: centred float32 agrees with float64 to ~1e-7, uncentred to ~2.5e-6).
- the separable filter runs over bands of rows that stay in cache, computing only the valid (cropped) region.
Identical inputs give exactly 1.0: d is then exactly 0, so numerator and denominator are the same float.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIGMA = 1.5
TRUNCATE = 3.5
RADIUS = int(TRUNCATE * SIGMA + 0.5)  # 5 -> 11x11 window, as scipy.ndimage.gaussian_filter
WIN = 2 * RADIUS + 1
K1, K2 = 0.01, 0.03
DATA_RANGE = 255.0
LUMA_601 = (0.299, 0.587, 0.114)  # BT.601 Y' weights (full range, unrounded float)

VARIANTS = {
    "ssim": "gaussian sigma=1.5, 11x11 window (truncate 3.5), population covariance, data_range=255, "
    "K1=0.01 K2=0.03, mean over the map with the 5 px border cropped, RGB mean over channels (Wang et al. 2004; "
    "= skimage structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, "
    "data_range=255, channel_axis=-1))",
    "ssim_y": "as ssim, on BT.601 luma Y = 0.299R+0.587G+0.114B (unrounded float, 0-255)",
    "psnr": "10*log10(255^2/MSE), MSE over all pixels and RGB channels; infinite when identical (written 'inf' in JSON)",
    "mae": "mean |a-b| over all pixels and RGB channels, levels 0-255",
    "max_abs": "max |a-b| over all pixels and RGB channels, levels 0-255",
    "share_over_tol": "share of pixels whose max-over-RGB |a-b| exceeds the tolerance (levels)",
    "window_density": "share of over-tolerance pixels in the worst NxN window (stride 1, valid windows)",
    "phash_distance": "Hamming distance of 64-bit DCT pHashes (Pillow 'L', LANCZOS to 32x32, 2-D DCT-II, "
    "top-left 8x8 including DC, bit = coefficient > median; as imagehash.phash)",
    "flip": "FLIP mean error, LDR, flip-evaluator defaults (67 pixels per degree)",
    "mae_float": "mean |255*render_float - b| over all pixels and channels (render before uint8 rounding)",
}


def gaussian_kernel(sigma: float = SIGMA, radius: int = RADIUS) -> np.ndarray:
    """The 1-D kernel scipy.ndimage.gaussian_filter (hence skimage) uses, float64, sums to 1."""
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 / sigma**2 * x**2)
    return k / k.sum()


_K32 = gaussian_kernel().astype(np.float32)


def _filter_valid(x: np.ndarray, axis: int, tmp: np.ndarray | None = None) -> np.ndarray:
    """Correlate along `axis` (-1 or -2) with the symmetric 11-tap kernel, valid part only (length n-10)."""
    n = x.shape[axis] - 2 * RADIUS

    def sl(i):
        return x[..., i : i + n, :] if axis == -2 else x[..., i : i + n]

    out = sl(RADIUS) * _K32[RADIUS]
    if tmp is None or tmp.shape != out.shape:
        tmp = np.empty_like(out)
    for i in range(RADIUS):  # symmetric kernel: one multiply per pair of taps
        np.add(sl(i), sl(2 * RADIUS - i), out=tmp)
        tmp *= _K32[i]
        out += tmp
    return out


@dataclass
class SsimResult:
    ssim: float                       # RGB, mean over channels
    ssim_y: float | None              # luma
    map: np.ndarray | None = None     # (H-10)x(W-10) float32, mean over channels (when full=True)
    map_y: np.ndarray | None = None


def _as_float_hwc(a: np.ndarray) -> np.ndarray:
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise ValueError(f"expected an HxWxC image, got shape {a.shape}")
    return a


def ssim(a: np.ndarray, b: np.ndarray, *, luma: bool = True, full: bool = False,
         data_range: float = DATA_RANGE) -> SsimResult:
    """SSIM of two HxWxC images (uint8 or float in 0..data_range); C=3 for luma. See the module docstring."""
    a, b = _as_float_hwc(np.asarray(a)), _as_float_hwc(np.asarray(b))
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    H, W, C = a.shape
    if H < WIN or W < WIN:
        raise ValueError(f"image {W}x{H} is smaller than the {WIN}x{WIN} SSIM window")
    luma = luma and C == 3
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    ma = a.reshape(-1, C).mean(0, dtype=np.float64)
    mb = b.reshape(-1, C).mean(0, dtype=np.float64)
    cs = (ma + mb).astype(np.float32)[:, None, None]  # centring constants (any constant near the mean works)
    cd = (ma - mb).astype(np.float32)[:, None, None]
    wy = np.asarray(LUMA_601, dtype=np.float32)
    cys, cyd = float((wy[:, None, None] * cs).sum()), float((wy[:, None, None] * cd).sum())
    P = 4 * C + (2 if luma else 0)  # filtered planes: s, d, s^2, d^2 per channel (+ Ys^2, Yd^2)
    Ho, Wo = H - 2 * RADIUS, W - 2 * RADIUS
    # band height: keep the band's planes (P x (bh+10) x W float32) around 1.5 MB, in cache
    bh = int(np.clip((3 << 19) // (P * W * 4) - 2 * RADIUS, 8, 256))
    buf = np.empty((P, bh + 2 * RADIUS, W), np.float32)
    total, total_y = 0.0, 0.0
    smap = np.empty((Ho, Wo), np.float32) if full else None
    smap_y = np.empty((Ho, Wo), np.float32) if full and luma else None
    for r0 in range(0, Ho, bh):
        r1 = min(Ho, r0 + bh)
        h = r1 - r0 + 2 * RADIUS
        xa = a[r0 : r0 + h].astype(np.float32).transpose(2, 0, 1)  # C x h x W
        xb = b[r0 : r0 + h].astype(np.float32).transpose(2, 0, 1)
        B = buf[:, :h]
        s, d = B[0:C], B[C : 2 * C]
        np.add(xa, xb, out=s)
        s -= cs
        np.subtract(xa, xb, out=d)
        d -= cd
        np.multiply(s, s, out=B[2 * C : 3 * C])
        np.multiply(d, d, out=B[3 * C : 4 * C])
        if luma:
            ys = wy[0] * s[0] + wy[1] * s[1] + wy[2] * s[2]
            yd = wy[0] * d[0] + wy[1] * d[1] + wy[2] * d[2]
            np.multiply(ys, ys, out=B[4 * C])
            np.multiply(yd, yd, out=B[4 * C + 1])
        F = _filter_valid(_filter_valid(B, -2), -1)  # P x (r1-r0) x Wo
        mus, mud, es2, ed2 = F[0:C], F[C : 2 * C], F[2 * C : 3 * C], F[3 * C : 4 * C]
        S = _ssim_from_moments(mus, mud, es2, ed2, cs, cd, c1, c2)  # C x rows x Wo
        total += float(S.sum(dtype=np.float64))
        if full:
            smap[r0:r1] = S.mean(0)
        if luma:
            mys = wy[0] * mus[0] + wy[1] * mus[1] + wy[2] * mus[2]
            myd = wy[0] * mud[0] + wy[1] * mud[1] + wy[2] * mud[2]
            Sy = _ssim_from_moments(mys, myd, F[4 * C], F[4 * C + 1], cys, cyd, c1, c2)
            total_y += float(Sy.sum(dtype=np.float64))
            if full:
                smap_y[r0:r1] = Sy
    n = float(Ho * Wo)
    # mean of per-channel means == overall mean (equal counts); skimage averages the same way
    return SsimResult(total / (n * C), total_y / n if luma else None, smap, smap_y)


def _ssim_from_moments(mus, mud, es2, ed2, cs, cd, c1, c2):
    """SSIM map from filtered centred moments of s = x+y and d = x-y (see module docstring)."""
    vs = es2 - mus * mus  # local variance of s (shift-invariant, so centring does not change it)
    vd = ed2 - mud * mud
    ms = mus + cs
    md = mud + cd
    ms *= ms
    md *= md
    num = (0.5 * (ms - md) + c1) * (0.5 * (vs - vd) + c2)  # (2 mu_x mu_y + C1)(2 sigma_xy + C2)
    den = (0.5 * (ms + md) + c1) * (0.5 * (vs + vd) + c2)  # (mu_x^2+mu_y^2+C1)(sigma_x^2+sigma_y^2+C2)
    return num / den


@dataclass
class PixelStats:
    mae: float
    max_abs: int
    psnr: float            # inf when identical
    share_over_tol: float
    window_density: float
    diff_max: np.ndarray   # HxW uint8: max over channels of |a-b|


def pixel_stats(a: np.ndarray, b: np.ndarray, *, tolerance: int, window: int) -> PixelStats:
    """Absolute-difference statistics of two HxWx3 uint8 images."""
    diff = np.maximum(a, b) - np.minimum(a, b)  # HxWx3 uint8 |a-b| without widening
    hist = np.bincount(diff.reshape(-1), minlength=256).astype(np.int64)  # exact sums from the histogram
    levels = np.arange(256, dtype=np.int64)
    n = diff.size
    sq = int((hist * levels * levels).sum())
    psnr = float("inf") if sq == 0 else 10.0 * np.log10(DATA_RANGE**2 / (sq / n))
    dmax = np.maximum(np.maximum(diff[..., 0], diff[..., 1]), diff[..., 2])  # faster than .max(axis=2)
    over = dmax > tolerance
    return PixelStats(
        mae=int((hist * levels).sum()) / n,
        max_abs=int(np.flatnonzero(hist)[-1]),
        psnr=float(psnr),
        share_over_tol=float(np.count_nonzero(over)) / over.size,
        window_density=window_density(over, window),
        diff_max=dmax,
    )


def _box_sum(x: np.ndarray, n: int, axis: int) -> np.ndarray:
    """Sums of n consecutive elements along axis 0 or 1 (valid part), by binary decomposition of n:
    log2(n) vectorised adds instead of a sequential cumulative sum."""
    def sl(arr, start, length):
        return arr[start : start + length] if axis == 0 else arr[:, start : start + length]

    size = x.shape[axis]
    out, off, p, w = None, 0, x, 1  # p holds sums of w consecutive elements
    while True:
        if n & w:
            piece = sl(p, off, size - n + 1)
            out = piece.copy() if out is None else np.add(out, piece, out=out)
            off += w
        if 2 * w > n:
            return out
        q = size - 2 * w + 1
        p = sl(p, 0, q) + sl(p, w, q)
        w *= 2


def window_density(mask: np.ndarray, n: int) -> float:
    """Largest share of True pixels over all n x n windows (n clamped to the image size), stride 1."""
    H, W = mask.shape
    nh, nw = max(1, min(n, H)), max(1, min(n, W))
    x = mask.astype(np.uint16 if nh * nw < 65536 else np.int64)
    return float(_box_sum(_box_sum(x, nh, 0), nw, 1).max()) / (nh * nw)


def phash(rgb: np.ndarray) -> np.ndarray:
    """64-bit DCT perceptual hash (imagehash.phash's algorithm) as 64 bools."""
    from PIL import Image
    from scipy.fft import dct

    im = Image.fromarray(rgb, "RGB").convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    px = np.asarray(im, dtype=np.float64)
    coef = dct(dct(px, axis=0), axis=1)[:8, :8]
    return (coef > np.median(coef)).reshape(-1)


def phash_distance(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.count_nonzero(phash(a) != phash(b)))


def flip_mean(a: np.ndarray, b: np.ndarray) -> float | None:
    """FLIP mean error (reference a, test b) when flip-evaluator is installed, else None."""
    try:
        import flip_evaluator as flip
    except ImportError:
        return None
    ref = a.astype(np.float32) / 255.0
    test = b.astype(np.float32) / 255.0
    _, mean, *_ = flip.evaluate(ref, test, "LDR")
    return float(mean)
