"""Reference images ("control images") for FLUX.2 previews, as AI Toolkit conditions a render on them.

AI Toolkit (ostris/ai-toolkit 27a03a91, paths under extensions_built_in/diffusion_models/flux2/):
  - flux2_model.py L302-319: `Image.open(path).convert("RGB")` for ctrl_img (else ctrl_img_1), ctrl_img_2,
    ctrl_img_3, in that order, passed as `control_img_list`;
  - src/pipeline.py L360-366: `encode_image_refs(vae, control_img_list)` once per preview, after the noise draw;
  - src/sampling.py `encode_image_refs` / `default_prep`: each image checked (min side 64, aspect <= 8), scaled
    down with LANCZOS to at most 1024*1024 pixels (`int(w*s)`), centre-cropped to a multiple of 16, ToTensor,
    `2x-1`, VAE-encoded in the VAE dtype (encoder -> mean -> 2x2 patchify -> latent batch norm), packed
    row-major with position ids (t = 10 + 10*i, row, col, 0), all references concatenated and cast to bf16
    (also in an fp32 run: the oracle's facts.json `dtype_returned_by_encode_image_refs`);
  - src/pipeline.py L380-427: every step the reference tokens follow the image tokens (`cat(dim=1)`, so in fp32
    the bf16 values are promoted back to fp32) and the prediction is sliced to the image tokens.
Pure functions; `load_reference` and `prepare_reference` need no VAE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from parity.errors import InputFileError

LIMIT_PIXELS = 1024 * 1024   # encode_image_refs(limit_pixels=1024**2)
MIN_SIDE = 64                # cap_min_pixels(min_sidelength=64)
MAX_ASPECT = 8               # cap_min_pixels(max_ar=8)
MULTIPLE = 16                # default_prep(ensure_multiple=16)
T_SCALE = 10                 # encode_image_refs(scale=10): reference i sits at time coordinate 10 + 10*i


@dataclass(frozen=True)
class ReferenceTokens:
    """All reference images of one preview, ready to append to the image tokens."""

    tokens: torch.Tensor          # (1, sum h_i*w_i, 128) bf16
    ids: torch.Tensor             # (1, sum h_i*w_i, 4) int64 (t, row, col, 0)
    per_image: tuple[tuple[int, int], ...]  # latent (h, w) of each reference

    @property
    def count(self) -> int:
        return self.tokens.shape[1]


def load_reference(path: str | Path):
    """PIL RGB image; InputFileError naming the file when it is missing or not an image."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise InputFileError("reference image (ctrl_img) not found", p)
    try:
        with Image.open(p) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise InputFileError(f"reference image is not a readable image ({exc})", p) from None
    except Image.DecompressionBombError as exc:   # not an OSError: it escaped as an unnamed item error (issue 35)
        raise InputFileError(f"reference image is too large to open safely ({exc})", p) from None


def prepare_reference(img, path: str | Path = "", limit_pixels: int = LIMIT_PIXELS) -> torch.Tensor:
    """PIL RGB -> (1, 3, H, W) fp32 in [-1, 1], H and W multiples of 16 (sampling.py `default_prep`)."""
    from PIL import Image

    w, h = img.size
    if w < MIN_SIDE or h < MIN_SIDE:  # AI Toolkit raises ValueError here: the whole sample() call fails
        raise InputFileError(f"reference image is {w}x{h}; AI Toolkit requires both sides >= {MIN_SIDE}", path)
    if w / h > MAX_ASPECT or h / w > MAX_ASPECT:
        raise InputFileError(f"reference image is {w}x{h}; AI Toolkit refuses an aspect ratio above {MAX_ASPECT}",
                             path)
    if w * h > limit_pixels:
        s = math.sqrt(limit_pixels / (w * h))
        img = img.resize((int(w * s), int(h * s)), Image.Resampling.LANCZOS)
        w, h = img.size
    nw, nh = w // MULTIPLE * MULTIPLE, h // MULTIPLE * MULTIPLE
    left, top = (w - nw) // 2, (h - nh) // 2
    img = img.crop((left, top, left + nw, top + nh))
    # torchvision ToTensor on a uint8 RGB image: HWC -> CHW, float, / 255
    x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous().float().div(255)
    return (2 * x - 1).unsqueeze(0)


def patchify(z: torch.Tensor) -> torch.Tensor:
    """(B, C, 2h, 2w) -> (B, 4C, h, w): einops `c (i pi) (j pj) -> (c pi pj) i j` (src/autoencoder.py encode)."""
    b, c, hh, ww = z.shape
    z = z.reshape(b, c, hh // 2, 2, ww // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return z.reshape(b, c * 4, hh // 2, ww // 2)


@torch.no_grad()
def encode_reference(vae, x: torch.Tensor) -> torch.Tensor:
    """(1, 3, H, W) in [-1, 1] -> (128, H/16, W/16) normalised latent in the VAE dtype: BFL `AutoEncoder.encode`
    (encoder incl. quant_conv, the mean half of the moments, patchify, `bn` in eval mode)."""
    p = next(vae.parameters())
    moments = vae.quant_conv(vae.encoder(x.to(p.device, p.dtype)))
    mean = torch.chunk(moments, 2, dim=1)[0]
    vae.bn.eval()
    return vae.bn(patchify(mean))[0]


def pack_references(latents: list[torch.Tensor]) -> ReferenceTokens:
    """[(128, h_i, w_i)] -> tokens (1, N, 128) bf16 and ids (1, N, 4) (sampling.py `listed_prc_img`)."""
    toks, ids, shapes = [], [], []
    for i, z in enumerate(latents):
        c, h, w = z.shape
        t = torch.tensor([T_SCALE + T_SCALE * i])
        ids.append(torch.cartesian_prod(t, torch.arange(h), torch.arange(w), torch.arange(1)))
        toks.append(z.reshape(c, h * w).permute(1, 0))
        shapes.append((h, w))
    tokens = torch.cat(toks, dim=0).unsqueeze(0).to(torch.bfloat16)
    return ReferenceTokens(tokens=tokens, ids=torch.cat(ids, dim=0).unsqueeze(0), per_image=tuple(shapes))


def encode_references(vae, paths: tuple[str, ...] | list[str]) -> ReferenceTokens | None:
    """Every reference image of a preview, in AI Toolkit's order; None when there are none."""
    if not paths:
        return None
    latents = [encode_reference(vae, prepare_reference(load_reference(p), p)).cpu() for p in paths]
    return pack_references(latents)
