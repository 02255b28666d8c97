"""Corrupt previews: compare() returns ERROR (or the loader raises InputFileError), never another exception."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from parity.compare import compare, load_image
from parity.compare.synth import natural_image
from parity.errors import InputFileError

RENDER = natural_image(9, 48, 48)


def _valid(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(RENDER).save(buf, fmt)
    return buf.getvalue()


VALID = {"JPEG": _valid("JPEG"), "PNG": _valid("PNG"), "WEBP": _valid("WEBP")}
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _check(tmp_path, data: bytes):
    p = tmp_path / "fuzz.img"
    p.write_bytes(data)
    try:
        load_image(p)
    except InputFileError as e:
        assert "fuzz.img" in str(e)
    c = compare(RENDER, p)
    if c.tier == "ERROR":
        assert c.error
    else:
        assert c.metrics


@SETTINGS
@given(st.sampled_from(sorted(VALID)), st.floats(0, 1, exclude_max=True))
def test_truncated(tmp_path, fmt, frac):
    data = VALID[fmt]
    _check(tmp_path, data[: int(len(data) * frac)])


@SETTINGS
@given(st.sampled_from(sorted(VALID)), st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                                                min_size=1, max_size=8))
def test_corrupted_bytes(tmp_path, fmt, edits):
    data = bytearray(VALID[fmt])
    for pos, val in edits:
        data[int(pos * len(data))] = val
    _check(tmp_path, bytes(data))


@SETTINGS
@given(st.binary(max_size=2048))
def test_random_bytes(tmp_path, data):
    _check(tmp_path, data)
