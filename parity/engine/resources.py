"""What a render costs: bytes per component at a precision, activation estimates, FLOPs per step, named cards.

Weight bytes are exact (counted on the meta-device model: every parameter, tied ones once). qfloat8 / qint8 store
each quantized weight in 1 byte plus one scale per output row in the compute dtype (quanto's per-axis weight
scales; bit-exact-numerics.md detail 2); qint4 half a byte. Activation figures are estimates (stated as such):
they are small next to the weights at the sizes FLUX.2 renders.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2 ** 30
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
QTYPE_WEIGHT_BYTES = {"qfloat8": 1.0, "qfloat8_e4m3fn": 1.0, "qfloat8_e5m2": 1.0, "qint8": 1.0, "qint4": 0.5}


@dataclass(frozen=True)
class Card:
    """A GPU by name: memory (GB as sold, 1e9 bytes) and its dense bf16 tensor peak from the vendor datasheet
    (not measured here; benchmarks/gpu_flux2.py measures the real matmul peak on a lent card)."""

    key: str
    name: str
    memory_gb: float
    bf16_tflops: float


CARDS: dict[str, Card] = {c.key: c for c in (
    Card("rtx4090", "NVIDIA GeForce RTX 4090", 24, 165.2),
    Card("l4", "NVIDIA L4", 24, 121.0),
    Card("a100-40gb", "NVIDIA A100 40GB", 40, 312.0),
    Card("l40s", "NVIDIA L40S", 48, 362.0),
    Card("a100-80gb", "NVIDIA A100 80GB", 80, 312.0),
    Card("h100", "NVIDIA H100 80GB HBM3", 80, 989.0),
    Card("h200", "NVIDIA H200", 141, 989.0),
)}

# Assumptions of the time estimate, printed with it; replace with gpu_flux2.py's measured figures when a card is lent.
ASSUMED_MFU = 0.4              # fraction of the datasheet peak a FLUX.2 step reaches
ASSUMED_HOST_LINK_GBPS = 25.0  # host <-> device copy rate (PCIe 4 x16 in practice) for sequential offload


@dataclass(frozen=True)
class Footprint:
    """One component at one precision: parameters and the bytes its weights take on a device."""

    name: str
    params: int
    weight_bytes: int
    precision: str             # e.g. "bf16", "bf16+qfloat8"


def _quantizable(module) -> bool:
    import torch

    return type(module) in (torch.nn.Linear, torch.nn.Conv2d)


def footprint(name: str, model, dtype: str, qtype: str | None = None) -> Footprint:
    """Weight bytes of a (meta-device) model in `dtype`, with quanto `qtype` weights on every Linear/Conv2d."""
    elem = DTYPE_BYTES[dtype]
    seen: set[int] = set()
    params = 0
    total = 0.0
    for module in model.modules():
        quant = qtype is not None and _quantizable(module)
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            params += p.numel()
            if quant and pname == "weight":
                total += p.numel() * QTYPE_WEIGHT_BYTES[qtype] + p.shape[0] * elem  # + per-row scale
            else:
                total += p.numel() * elem
    for b in model.buffers():
        total += b.numel() * b.element_size()
    return Footprint(name, params, int(total), dtype + (f"+{qtype}" if qtype else ""))


def image_tokens(width: int, height: int) -> int:
    """Latent tokens of a FLUX.2 image (16 px per token after the 2x2 patch)."""
    return (height // 16) * (width // 16)


def step_flops(cfg: dict, n_img: int, n_txt: int, *, attention: bool = True) -> float:
    """FLOPs (2 x multiply-adds) of one Flux2 transformer forward, from the config alone.

    Per token and block, the linear layers cost (4 + 3r) D^2 MACs (r = mlp_ratio, D = heads x head_dim):
      double block, per stream: qkv 3 D^2 + out D^2 + SwiGLU in 2rD x D + out rD x D;
      single block: fused qkv+mlp-in (3D + 2rD) x D + fused out (D + rD) x D;
    attention: Q K^T and A V over all N = n_img + n_txt tokens, 2 N^2 D MACs per block.
    Plus x_embedder, context_embedder and proj_out. Modulation/time embeddings are per image (negligible)."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    r = cfg.get("mlp_ratio", 3.0)
    n = n_img + n_txt
    per_token = (4 + 3 * r) * d * d
    blocks = cfg["num_layers"] + cfg["num_single_layers"]
    macs = blocks * (per_token * n + (2 * n * n * d if attention else 0))
    macs += n_img * cfg["in_channels"] * d + n_txt * cfg["joint_attention_dim"] * d
    macs += n_img * d * (cfg.get("out_channels") or cfg["in_channels"])
    return 2.0 * macs


def denoise_activation_bytes(cfg: dict, n_img: int, n_txt: int, dtype: str, batch: int = 1) -> int:
    """Estimate of the transient memory of one forward: about 24 x D values per token live at the widest point
    (fused single-block projection 3D + 2rD, its input, q/k/v after RoPE in fp32, the MLP activation)."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    return int(batch * (n_img + n_txt) * d * 24 * DTYPE_BYTES[dtype])


def decode_activation_bytes(vae_cfg: dict, width: int, height: int, dtype: str) -> int:
    """Estimate of the VAE decoder's transient memory: 6 tensors of its largest level (channels x pixels; level i
    of block_out_channels works at 1/2^i of the image side)."""
    chans = list(vae_cfg.get("block_out_channels", [128, 256, 512, 512]))
    largest = max(c * (width >> i) * (height >> i) for i, c in enumerate(chans))
    return int(6 * largest * DTYPE_BYTES[dtype])


def encode_activation_bytes(te_cfg: dict, max_length: int, dtype: str) -> int:
    """Estimate for the text encoder: every hidden state kept (output_hidden_states) plus three MLP-wide tensors."""
    text = te_cfg.get("text_config", te_cfg)
    hidden, layers = text.get("hidden_size", 4096), text.get("num_hidden_layers", 32)
    inter = text.get("intermediate_size", 4 * hidden)
    return int(max_length * ((layers + 1) * hidden + 3 * inter) * DTYPE_BYTES[dtype])


def gib(n: float) -> str:
    """Bytes for people: GiB, or MiB below one GiB (tiny models)."""
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2 ** 20:.1f} MiB"
