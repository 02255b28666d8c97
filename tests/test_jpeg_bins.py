"""parity.compare.dct against libjpeg itself (Pillow's encoder): the bins it reads from a file are the bins the
encoder chose, and its forward path computes the very same bins for the image that was saved."""

import io

import numpy as np
import pytest
from PIL import Image

from parity.compare import dct


def _saved(img: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", **kwargs)
    return buf.getvalue()


def _smooth(rng, h, w):
    small = (rng.random((h // 4 + 2, w // 4 + 2, 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC))


def _decoded_from_bins(c: dct.Coefficients) -> np.ndarray:
    """The luma plane rebuilt from the bins with a float inverse DCT (an independent check of the reader)."""
    n = np.arange(8)
    basis = np.sqrt(2 / 8) * np.cos((2 * n[None, :] + 1) * n[:, None] * np.pi / 16)
    basis[0] /= np.sqrt(2)
    blocks = basis.T @ (c.bins[0] * c.tables[0]) @ basis + 128
    return blocks.transpose(0, 2, 1, 3).reshape(blocks.shape[0] * 8, blocks.shape[1] * 8)[:c.height, :c.width]


@pytest.mark.parametrize("quality,subsampling", [(75, 2), (75, 0), (90, 1), (30, 2)])
@pytest.mark.parametrize("size", [(64, 64), (48, 80), (40, 72), (37, 53), (17, 9), (1, 1)])
def test_the_bins_read_from_a_file_are_the_bins_the_forward_path_computes(quality, subsampling, size):
    rng = np.random.default_rng(sum(size) * quality + subsampling)
    for img in ((rng.random(size + (3,)) * 255).astype(np.uint8), _smooth(rng, *size)):
        coeffs = dct.read_coefficients(_saved(img, quality=quality, subsampling=subsampling))
        assert coeffs is not None and (coeffs.width, coeffs.height) == (size[1], size[0])
        for ours, stored in zip(dct.quantise(img, coeffs), coeffs.bins):
            np.testing.assert_array_equal(ours, stored)
        assert not dct.bin_misses(img, coeffs).any()


def test_the_bins_rebuild_the_picture_pillow_decodes():
    img = _smooth(np.random.default_rng(3), 64, 64)
    data = _saved(img)
    coeffs = dct.read_coefficients(data)
    luma = np.asarray(Image.open(io.BytesIO(data)).convert("YCbCr"))[..., 0].astype(float)
    gap = np.abs(_decoded_from_bins(coeffs) - luma)   # the decoded RGB's own rounding and clipping: a level or so
    assert gap.mean() < 1.0 and np.percentile(gap, 99) < 3.0
    assert np.abs(coeffs.bins[0]).max() > 3   # not an empty picture


@pytest.mark.parametrize("kwargs", [{"optimize": True}, {"restart_marker_blocks": 3}, {"restart_marker_rows": 1}])
def test_optimised_tables_and_restart_markers_are_read(kwargs):
    img = (np.random.default_rng(7).random((40, 72, 3)) * 255).astype(np.uint8)
    coeffs = dct.read_coefficients(_saved(img, **kwargs))
    assert coeffs is not None
    for ours, stored in zip(dct.quantise(img, coeffs), coeffs.bins):
        np.testing.assert_array_equal(ours, stored)


def test_a_render_misses_its_bins_by_less_the_closer_it_is():
    rng = np.random.default_rng(11)
    img = _smooth(rng, 64, 64)
    coeffs = dct.read_coefficients(_saved(img))
    away = rng.normal(0, 1, img.shape)
    sizes = []
    for scale in (8.0, 4.0, 2.0):
        moved = np.clip(img + scale * away, 0, 255).round().astype(np.uint8)
        sizes.append(float((dct.bin_misses(moved, coeffs) ** 2).sum()))
    assert sizes[0] > sizes[1] > sizes[2] > 0


def test_files_it_does_not_decode_give_none(tmp_path):
    img = _smooth(np.random.default_rng(1), 32, 32)
    assert dct.read_coefficients(_saved(img, progressive=True)) is None
    grey = io.BytesIO()
    Image.fromarray(img[..., 0]).save(grey, "JPEG")
    assert dct.read_coefficients(grey.getvalue()) is None
    data = _saved(img)
    for cut in (200, len(data) // 2, len(data) - 10):               # truncated: no guessed coefficients
        assert dct.read_coefficients(data[:cut]) is None
    assert dct.read_coefficients(b"not a jpeg") is None
    png = tmp_path / "x.png"
    Image.fromarray(img).save(png)
    assert dct.read_coefficients(png) is None
    assert dct.read_coefficients(tmp_path / "missing.jpg") is None


def test_a_render_of_another_size_has_no_misses():
    img = _smooth(np.random.default_rng(2), 32, 32)
    coeffs = dct.read_coefficients(_saved(img))
    assert dct.bin_misses(img[:16], coeffs) is None
