"""Files that could exhaust memory or hang a run (issue 17, finding 8): a small PNG that decodes to 81 megapixels,
a FIFO named like a preview. Each ends quickly with a clear message, under a 2 GB address-space limit."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from parity.compare.load import load_image
from parity.errors import InputFileError
from parity.job.previews import index_previews


def _limit_memory():
    limit = 2 * 1024 ** 3
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    Image.new("L", (9000, 9000)).save(path)   # one flat colour: a few hundred KB on disk, 81 Mpx decoded
    assert path.stat().st_size < 2 * 1024 ** 2
    return path


def test_a_huge_image_is_refused_from_its_header(huge_png):
    with pytest.raises(InputFileError, match=r"huge\.png.*9000x9000.*at most 16777216 pixels"):
        load_image(huge_png)


def test_parity_compare_on_a_huge_preview_under_2gb(huge_png, tmp_path):
    small = tmp_path / "render.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(small)
    proc = subprocess.run([sys.executable, "-m", "parity.cli", "compare", str(small), str(huge_png)],
                          capture_output=True, text=True, timeout=30, preexec_fn=_limit_memory)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 2, said
    assert "huge.png" in said and "9000x9000" in said and "Traceback" not in said


def test_a_fifo_named_like_a_preview_is_skipped_not_opened(tmp_path):
    samples = tmp_path / "samples"
    samples.mkdir()
    fifo = samples / "1700000000000__000000100_0.jpg"
    os.mkfifo(fifo)
    idx = index_previews(samples)
    assert idx.files == {}
    assert (fifo, "not a regular file") in idx.ignored
    with pytest.raises(InputFileError, match="not a regular file"):
        load_image(fifo)   # would block forever on open() if it were opened
