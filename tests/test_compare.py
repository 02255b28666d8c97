"""Comparison engine: SSIM against scikit-image, loading, JPEG matching, tiers, heatmaps, background comparer."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.metrics import structural_similarity

from parity.compare import Comparer, Thresholds, compare, detect_quality, load_image, ssim, window_density
from parity.compare.metrics import phash_distance
from parity.compare.synth import natural_image
from parity.errors import InputFileError


def sk_ssim(a, b, **kw):
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=255, **kw)


def luma(x):  # BT.601, computed independently of the engine
    x = x.astype(np.float64)
    return 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]


def u8(x):
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def nat():
    return natural_image(0, 96, 128, as_float=True)


def _pairs():
    rng = np.random.default_rng(7)
    r1, r2 = rng.integers(0, 256, (2, 64, 72, 3), dtype=np.uint8)
    n1 = natural_image(1, 120, 100)
    n2 = u8(natural_image(1, 120, 100, as_float=True) + rng.normal(0, 3, (120, 100, 3)))
    n3 = natural_image(2, 120, 100)
    hc = np.zeros((40, 50, 3), np.uint8)
    hc[:, 25:] = 255  # high contrast: worst case for float32 cancellation
    hc2 = hc.copy()
    hc2[10:30, 10:30] = 128
    return [(r1, r2), (r1, u8(r1 * 0.9 + 5)), (n1, n2), (n1, n3), (hc, hc2), (n1, np.roll(n1, 1, axis=0))]


@pytest.mark.parametrize("i", range(6))
def test_ssim_matches_skimage(i):
    a, b = _pairs()[i]
    r = ssim(a, b)
    assert abs(r.ssim - sk_ssim(a, b, channel_axis=-1)) < 1e-4
    assert abs(r.ssim_y - sk_ssim(luma(a), luma(b))) < 1e-4


def test_ssim_map_matches_skimage():
    a, b = _pairs()[2]
    r = ssim(a, b, full=True)
    _, smap = sk_ssim(luma(a), luma(b), full=True)
    assert np.abs(r.map_y - smap[5:-5, 5:-5]).max() < 1e-4


def test_identical_is_exactly_one():
    for a, _ in _pairs():
        r = ssim(a, a.copy())
        assert r.ssim == 1.0 and r.ssim_y == 1.0


def test_ssim_rejects_tiny_and_mismatched():
    with pytest.raises(ValueError):
        ssim(np.zeros((10, 40, 3), np.uint8), np.zeros((10, 40, 3), np.uint8))
    with pytest.raises(ValueError):
        ssim(np.zeros((20, 40, 3), np.uint8), np.zeros((20, 41, 3), np.uint8))


def test_window_density_brute_force():
    rng = np.random.default_rng(3)
    m = rng.random((23, 31)) < 0.2
    m[5:12, 9:16] = True
    n = 7
    brute = max(m[i:i + n, j:j + n].mean() for i in range(23 - n + 1) for j in range(31 - n + 1))
    assert window_density(m, n) == pytest.approx(brute)
    assert window_density(m, 100) == pytest.approx(m.mean())  # window clamped to the image
    brute25 = max(m[:, j:j + 25].mean() for j in range(31 - 25 + 1))  # 23x25 windows (height clamped)
    assert window_density(m, 25) == pytest.approx(brute25)
    assert window_density(np.zeros((5, 5), bool), 3) == 0.0


@pytest.mark.parametrize("q", [20, 50, 75, 90, 95])
def test_jpeg_quality_detection(tmp_path, q):
    p = tmp_path / "q.jpg"
    Image.fromarray(natural_image(0, 64, 64)).save(p, quality=q)
    info = load_image(p).jpeg
    assert info.quality == q and info.standard_tables
    assert info.subsampling == 2


@pytest.mark.parametrize("sub,name", [(0, "4:4:4"), (1, "4:2:2"), (2, "4:2:0")])
def test_jpeg_subsampling_detection(tmp_path, sub, name):
    p = tmp_path / "s.jpg"
    Image.fromarray(natural_image(0, 64, 64)).save(p, quality=80, subsampling=sub)
    assert load_image(p).jpeg.to_dict()["subsampling"] == name


def test_detect_quality_custom_tables_is_not_exact():
    tables = {0: [3] * 64, 1: [5] * 64}
    q, exact = detect_quality(tables)
    assert not exact and 1 <= q <= 100


def test_pillow_default_jpeg_of_same_render_is_exact(tmp_path, nat):
    r = u8(nat)
    p = tmp_path / "preview.jpg"
    Image.fromarray(r).save(p)  # AI Toolkit's image.save(path): q75 4:2:0
    c = compare(r, p)
    assert c.tier == "EXACT", c.reason
    assert c.jpeg["quality"] == 75 and c.jpeg["subsampling"] == "4:2:0"
    assert c.metrics["max_abs"] == 0 and c.metrics["ssim"] == 1.0
    # the ceiling is the JPEG's own loss, not a perfect score
    assert c.ceiling["ssim"] < 0.999 and c.ceiling["max_abs"] > 1
    # without encode matching, the raw comparison would not be exact
    assert sk_ssim(r, load_image(p).rgb, channel_axis=-1) < 0.999


@pytest.mark.parametrize("q,sub", [(90, 0), (60, 1)])
def test_other_jpeg_settings_still_exact(tmp_path, nat, q, sub):
    r = u8(nat)
    p = tmp_path / "p.jpg"
    Image.fromarray(r).save(p, quality=q, subsampling=sub)
    assert compare(r, p).tier == "EXACT"


def _tier(tmp_path, preview_src, render, fmt="jpg"):
    p = tmp_path / f"preview.{fmt}"
    Image.fromarray(u8(preview_src)).save(p)
    return compare(u8(render), p)


def test_tier_near_sublevel_noise(tmp_path, nat):
    noisy = nat + np.random.default_rng(0).normal(0, 0.3, nat.shape)
    c = _tier(tmp_path, nat, noisy)
    assert c.metrics["max_abs"] > 1  # JPEG amplified the sub-level differences
    assert c.tier == "NEAR", c.reason


def test_tier_near_sublevel_noise_png(tmp_path, nat):
    noisy = nat + np.random.default_rng(1).normal(0, 0.5, nat.shape)
    c = _tier(tmp_path, nat, noisy, "png")
    assert c.tier == "NEAR", c.reason
    assert c.ceiling is None and not c.encode_matched


@pytest.mark.parametrize("how", ["blur", "shift1", "shift2", "patch"])
def test_tier_drift(tmp_path, nat, how):
    if how == "blur":
        r = ndimage.gaussian_filter(nat, (1.0, 1.0, 0))
    elif how == "patch":  # a broken region in an otherwise identical image
        r = nat.copy()
        r[30:62, 40:72] = natural_image(77, 32, 32, as_float=True)
    else:
        r = np.roll(nat, int(how[-1]), axis=1)
    c = _tier(tmp_path, nat, r)
    assert c.tier == "DRIFT", c.reason
    if how == "patch":
        assert c.metrics["window_density"] > 0.5


def test_tier_different(tmp_path, nat):
    c = _tier(tmp_path, nat, natural_image(1234, 96, 128, as_float=True))
    assert c.tier == "DIFFERENT", c.reason
    assert c.metrics["phash_distance"] >= 20


def test_tier_error_truncated(tmp_path, nat):
    p = tmp_path / "t.jpg"
    buf = io.BytesIO()
    Image.fromarray(u8(nat)).save(buf, "JPEG")
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    c = compare(u8(nat), p)
    assert c.tier == "ERROR" and "t.jpg" in c.error and "truncated" in c.error
    assert c.to_dict()["error"] == c.error


def test_missing_file_error(tmp_path, nat):
    with pytest.raises(InputFileError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    c = compare(u8(nat), tmp_path / "nope.png")
    assert c.tier == "ERROR" and "not found" in c.error


def test_size_mismatch_reported_not_resized(tmp_path, nat):
    p = tmp_path / "p.png"
    Image.fromarray(u8(nat)[:, :112]).save(p)
    c = compare(u8(nat), p)
    assert c.tier == "ERROR"
    assert c.size_mismatch == {"render": [128, 96], "preview": [112, 96]}
    assert c.metrics == {}
    r = compare(u8(nat), p, resample=True)
    assert r.resampled and "resampled" in r.variants and r.tier in ("DRIFT", "DIFFERENT")
    assert r.size_mismatch == c.size_mismatch


def test_exif_rotated_preview(tmp_path, nat):
    r = u8(nat)
    stored = np.rot90(r, k=1)  # what a camera would store; orientation 6 = rotate 90 CW to display
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "rot.jpg"
    Image.fromarray(np.ascontiguousarray(stored)).save(p, exif=exif)
    loaded = load_image(p)
    assert loaded.orientation == 6 and loaded.rgb.shape == r.shape
    c = compare(r, p)
    assert c.tier == "EXACT", c.reason  # encode matching happened in the stored orientation


def test_rgba_and_palette_previews(tmp_path, nat):
    r = u8(nat)
    opaque = np.dstack([r, np.full(r.shape[:2], 255, np.uint8)])
    p = tmp_path / "a.png"
    Image.fromarray(opaque, "RGBA").save(p)
    assert np.array_equal(load_image(p).rgb, r)
    assert compare(r, p).tier == "EXACT"
    half = opaque.copy()
    half[..., 3] = 128
    Image.fromarray(half, "RGBA").save(p)
    got = load_image(p)
    expect = u8(r * (128 / 255) + 255 * (1 - 128 / 255))  # composited on white
    assert np.abs(got.rgb.astype(int) - expect).max() <= 1 and got.notes
    pal = tmp_path / "pal.png"
    Image.fromarray(r).quantize(256).save(pal)
    lp = load_image(pal)
    assert lp.mode == "P" and lp.rgb.shape == r.shape
    assert compare(r, pal).tier in ("NEAR", "DRIFT")
    gray = tmp_path / "g.png"
    Image.fromarray(r).convert("L").save(gray)
    assert load_image(gray).rgb.shape == r.shape


def test_metrics_and_variants_named(tmp_path, nat):
    c = _tier(tmp_path, nat, nat + 2.0, "png")
    for k in ("ssim", "ssim_y", "psnr", "mae", "max_abs", "share_over_tol", "window_density", "phash_distance"):
        assert k in c.metrics and k in c.variants
    assert "sigma=1.5" in c.variants["ssim"] and "population" in c.variants["ssim"]
    assert c.metrics["mae"] == pytest.approx(2.0, abs=0.05)
    mse = np.mean((u8(nat + 2.0).astype(float) - u8(nat)) ** 2)
    assert c.metrics["psnr"] == pytest.approx(10 * np.log10(255**2 / mse))


def test_phash_independent_dct():
    """pHash against a DCT written with an explicit cosine matrix (no scipy)."""
    a = natural_image(5, 80, 80)
    b = natural_image(6, 80, 80)

    def ref_hash(x):
        px = np.asarray(Image.fromarray(x).convert("L").resize((32, 32), Image.Resampling.LANCZOS), float)
        n = np.arange(32)
        C = np.cos(np.pi * np.outer(n, 2 * n + 1) / 64)  # DCT-II basis (unnormalised)
        coef = (C @ px @ C.T)[:8, :8]
        return coef > np.median(coef)

    assert phash_distance(a, b) == int((ref_hash(a) != ref_hash(b)).sum())
    assert phash_distance(a, a) == 0


def test_heatmaps_written_only_when_asked(tmp_path, nat):
    r = nat.copy()
    r[20:40, 20:40] += 40
    p = tmp_path / "p.png"
    Image.fromarray(u8(nat)).save(p)
    c = compare(u8(r), p)
    assert c.heatmaps == {}
    c = compare(u8(r), p, heatmap_dir=tmp_path / "hm", name="item/1")
    assert set(c.heatmaps) == {"diff", "ssim"}
    for kind, path in c.heatmaps.items():
        with Image.open(path) as im:
            # exactly the render's size, so it lines up with preview and render under linked zoom
            assert im.format == "PNG" and im.size == (nat.shape[1], nat.shape[0])
            assert "levels" in im.text["parity:scale"] if kind == "diff" else "SSIM" in im.text["parity:scale"]
            hm = np.asarray(im.convert("RGB")).astype(int)
        # the changed square is where the diff map is bright
        inside, outside = hm[22:38, 22:38].sum(-1).mean(), hm[60:, 60:].sum(-1).mean()
        assert inside > outside + 100, (kind, inside, outside)


def test_thresholds_configurable():
    t = Thresholds.from_mapping({"tolerance": 4, "window": 8})
    assert t.tolerance == 4 and t.window == 8
    from parity.errors import ConfigError
    with pytest.raises(ConfigError, match="bogus"):
        Thresholds.from_mapping({"bogus": 1})


def test_render_float_metric(tmp_path, nat):
    p = tmp_path / "p.png"
    Image.fromarray(u8(nat)).save(p)
    c = compare(u8(nat), p, render_float=nat / 255.0)
    assert 0 < c.metrics["mae_float"] <= 0.5


def test_bad_render_array_raises(tmp_path):
    with pytest.raises(ValueError):
        compare(np.zeros((20, 20, 3), np.float32), tmp_path / "x.png")


def test_comparer_runs_in_background(tmp_path, nat):
    p = tmp_path / "p.jpg"
    r = u8(nat)
    Image.fromarray(r).save(p)
    with Comparer(max_workers=1) as cmp:
        futs = [cmp.submit(r, p, name=f"i{i}") for i in range(3)]
        r[:] = 0  # caller reuses its buffer at once: submit copied it
        results = [f.result(timeout=60) for f in futs]
    assert [c.tier for c in results] == ["EXACT"] * 3
    assert [c.name for c in results] == ["i0", "i1", "i2"]


@pytest.mark.slow  # another Python process
def test_package_imports_without_torch():
    code = ("import sys; import parity.compare, parity.commands.compare; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
