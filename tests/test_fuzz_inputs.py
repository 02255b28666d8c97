"""Fuzz the parsers users feed files to: job configs, case files, preview images. Whatever the bytes, the only
exception allowed is the project's own ParityError (one line naming the file)."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parity.errors import ParityError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# YAML-ish text: the syntax characters that break parsers, keys the readers look for, tags and anchors.
TOKENS = st.sampled_from([
    "job:", "config:", "process:", "- ", "  ", "\n", "sample:", "prompts:", "name:", "type: sd_trainer", "arch:",
    "flux2", "model:", "name_or_path:", "width: ", "height:", "sample_steps:", "[", "]", "{", "}", ",", ":", "'",
    '"', "&a", "*a", "!!python/object:os.system", "!!binary", "~", "null", "1e309", "-1", "0", "nan", "yes",
    "steps:", "expect:", "min_tier:", "NEAR", "inference:", "\t", "#", "|", ">", "%YAML 1.1", "---", "...", "\x00",
    "é", "[name]", "--w 16", "lora:", "base_model:", "../x",
])
YAMLISH = st.one_of(st.lists(TOKENS, max_size=30).map("".join), st.text(max_size=200))


def _write(dirpath: str, name: str, text: str | bytes) -> Path:
    p = Path(dirpath) / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    return p


@FAST
@given(YAMLISH)
def test_load_job_random_config_text(text):
    from parity.job import load_job

    with tempfile.TemporaryDirectory() as d:
        _write(d, "config.yaml", text)
        try:
            load_job(d)
        except ParityError as e:
            assert "\n" not in str(e).strip() or "config.yaml" in str(e)
            assert d in str(e)


@FAST
@given(st.one_of(YAMLISH, st.binary(max_size=100)))
def test_load_job_random_json_config(text):
    from parity.job import load_job

    with tempfile.TemporaryDirectory() as d:
        _write(d, ".job_config.json", text)
        try:
            load_job(d)
        except ParityError as e:
            assert d in str(e)


@FAST
@given(st.one_of(YAMLISH, st.binary(max_size=100)))
def test_load_case_random_text(text):
    from parity.cases import load_case

    with tempfile.TemporaryDirectory() as d:
        p = _write(d, "case.yaml", text)
        try:
            case = load_case(p)
        except ParityError as e:
            assert str(p) in str(e)
        else:
            assert case.job_source is not None and case.job_source.is_absolute()


def _jpeg_bytes() -> bytes:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


JPEG = _jpeg_bytes()


@FAST
@given(st.one_of(
    st.binary(max_size=300),
    st.integers(0, len(JPEG)).map(lambda n: JPEG[:n]),                            # truncations
    st.tuples(st.integers(0, len(JPEG) - 1), st.binary(min_size=1, max_size=8))  # corruptions
    .map(lambda t: JPEG[: t[0]] + t[1] + JPEG[t[0] + len(t[1]):]),
))
def test_load_image_random_bytes(data):
    from parity.compare import load_image

    with tempfile.TemporaryDirectory() as d:
        p = _write(d, "x.jpg", data)
        try:
            img = load_image(p)
        except ParityError as e:
            assert str(p) in str(e) and "\n" not in str(e)
        else:
            assert img.rgb.ndim == 3 and img.rgb.shape[2] == 3 and img.rgb.dtype.name == "uint8"
