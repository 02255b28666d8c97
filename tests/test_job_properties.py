"""Property tests: the flag parser and the preview filename parser either give the documented result or raise
ConfigError (flags) / return None (names), for any string. The documented results are restated here from the
reference §A.3 and §B, independently of parity's code."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from parity.errors import ConfigError
from parity.job import parse_preview_filename, parse_prompt_flags, preview_filename

INT_FIELDS = {"w": "width", "h": "height", "d": "seed", "seed": "seed", "s": "sample_steps",
              "steps": "sample_steps", "frames": "num_frames", "num_frames": "num_frames", "fps": "fps",
              "ctrl_idx": "ctrl_idx"}
FLOAT_FIELDS = {"l": "guidance_scale", "cfg": "guidance_scale", "m": "network_multiplier",
                "network_multiplier": "network_multiplier", "gr": "guidance_rescale", "a": "adapter_conditioning_scale",
                "ref": "refiner_start_at"}
STR_FIELDS = {"n": "negative_prompt", "p2": "prompt_2", "n2": "negative_prompt_2", "ctrl_img": "ctrl_img"}
LIST_FIELDS = {"ev": "extra_values", "extra_values": "extra_values"}

words = st.sampled_from(["--", "-", " ", "\t", "\n", "w", "h", "seed", "d", "cfg", "l", "s", "steps", "m", "n",
                         "ev", "network_multiplier", "512", "-1", "1.5", "abc", "1e3", "nan", ",", "x", "é", "٣"])
prompt_text = st.one_of(st.text(max_size=60), st.lists(words, max_size=14).map("".join))


def oracle(text: str):
    """§A.3 restated: strip, split on '--', element 0 stripped is the prompt; each further element: flag = up
    to the first space, stripped; content = the rest after len(flag) chars, stripped; known flags convert with
    int()/float()/str; the last occurrence wins; a failing conversion means no preview (error)."""
    if text == "":
        return "", {}
    parts = text.strip().split("--")
    values = {}
    for part in parts[1:]:
        flag = part.split(" ")[0].strip()
        content = part[len(flag):].strip()
        try:
            if flag in INT_FIELDS:
                values[INT_FIELDS[flag]] = int(content)
            elif flag in FLOAT_FIELDS:
                values[FLOAT_FIELDS[flag]] = float(content)
            elif flag in STR_FIELDS:
                values[STR_FIELDS[flag]] = content
            elif flag in LIST_FIELDS:
                values[LIST_FIELDS[flag]] = [float(v) for v in content.split(",")]
        except ValueError:
            return None
    return parts[0].strip(), values


def same(a, b):
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:  # nan
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b and type(a) is type(b)


@settings(max_examples=400, deadline=None)
@given(prompt_text)
def test_flag_parser_matches_documented_algorithm(text):
    expected = oracle(text)
    try:
        got = parse_prompt_flags(text)
    except ConfigError as e:
        assert expected is None, f"unexpected error {e}"
        assert repr(text) in str(e)
        return
    assert expected is not None
    prompt, values = expected
    assert got.prompt == prompt
    assert set(got.values) == set(values)
    assert all(same(got.values[k], values[k]) for k in values)
    assert "--" not in got.prompt


NAME_RE = re.compile(r"^([0-9]+)__([0-9]{9,})_([0-9]+)\.(jpg|jpeg|png|webp)$", re.ASCII | re.IGNORECASE)

name_parts = st.sampled_from(["_", "__", ".", "jpg", "png", "webp", "jpeg", "gif", "000000100", "12", "0",
                              "1763563000704", "a", "٣", ".jpg"])
names = st.one_of(st.text(max_size=40), st.lists(name_parts, max_size=8).map("".join))


@settings(max_examples=400, deadline=None)
@given(names)
def test_preview_name_parser(name):
    # §B: regex ^(\d+)__(\d{9})_(\d+)\.(jpg|jpeg|png|webp)$ on ASCII digits; steps >= 1e9 have more digits
    got = parse_preview_filename(name)
    m = NAME_RE.match(name)
    if m is None:
        assert got is None
    else:
        assert (got.ms, got.step, got.index, got.ext) == (int(m[1]), int(m[2]), int(m[3]), m[4])


@given(st.integers(0, 2**45), st.integers(0, 10**10), st.integers(0, 10**4), st.sampled_from(["jpg", "png", "webp"]))
def test_preview_name_round_trip(ms, step, index, ext):
    got = parse_preview_filename(preview_filename(ms, step, index, ext))
    assert (got.ms, got.step, got.index, got.ext) == (ms, step, index, ext)
