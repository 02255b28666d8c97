"""`parity compare` through parity.cli.main."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from parity.cli import main
from parity.compare.synth import natural_image


def test_compare_json(tmp_path, capsys):
    a = natural_image(4, 64, 80)
    Image.fromarray(a).save(tmp_path / "r.png")
    Image.fromarray(a).save(tmp_path / "p.jpg")
    assert main(["compare", str(tmp_path / "r.png"), str(tmp_path / "p.jpg"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    for k in ("tier", "ssim", "ssim_y", "psnr", "mae", "max_abs", "size_mismatch"):
        assert k in d
    assert d["tier"] == "EXACT" and d["ssim"] == 1.0 and d["psnr"] == "inf" and d["size_mismatch"] is None
    assert d["jpeg"]["quality"] == 75 and "ssim" in d["variants"]


def test_compare_text_heatmap_tolerance(tmp_path, capsys):
    a = natural_image(4, 64, 80)
    b = np.roll(a, 2, axis=1)
    Image.fromarray(b).save(tmp_path / "r.png")
    Image.fromarray(a).save(tmp_path / "p.png")
    rc = main(["compare", str(tmp_path / "r.png"), str(tmp_path / "p.png"), "--heatmap", str(tmp_path / "hm"),
               "--tolerance", "4"])
    out = capsys.readouterr().out
    assert rc == 1 and "tier: DRIFT" in out and "ssim_y" in out
    assert (tmp_path / "hm" / "p.diff.png").exists() and (tmp_path / "hm" / "p.ssim.png").exists()


def test_compare_size_mismatch_and_bad_files(tmp_path, capsys):
    a = natural_image(4, 64, 80)
    Image.fromarray(a).save(tmp_path / "r.png")
    Image.fromarray(a[:, :64]).save(tmp_path / "p.png")
    assert main(["compare", str(tmp_path / "r.png"), str(tmp_path / "p.png"), "--json"]) == 2
    d = json.loads(capsys.readouterr().out)
    assert d["tier"] == "ERROR" and d["size_mismatch"] == {"render": [80, 64], "preview": [64, 64]}
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    (tmp_path / "bad.png").write_bytes(buf.getvalue()[:100])
    assert main(["compare", str(tmp_path / "bad.png"), str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert "bad.png" in err and "Traceback" not in err
