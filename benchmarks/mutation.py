"""Mutation check: does the test suite notice when one numerics detail or job-reader rule is changed?

For each mutation below (one source edit that alters what AI Toolkit's arithmetic or rules would give), a copy of
the package is mutated in a temporary folder and the guard tests are run against it; a mutation is *killed* when
a test fails. Each mutation also renders the oracle probes (previews AI Toolkit rendered, `../shared/oracle`) in
the mutated copy and reports how far the image moves from the unmutated render on this machine: the detail's
measured effect. Results go to stdout as a markdown table (docs/numerics.md "Mutation check" holds the last run).

    make mutation                                   # all mutations
    python benchmarks/mutation.py euler lora_merge  # some, by name
    python benchmarks/mutation.py --list

A mutation that survives is a hole in the suite, unless its effect column shows that it does not change any
output at these sizes (then the row says why).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import smoke, smoke_option

REPO = Path(__file__).resolve().parents[1]
ORACLE = Path(os.environ.get("PARITY_ORACLE", REPO.parent / "shared" / "oracle"))

# Fast, hardware-independent tests first: with -x a killed mutant stops at its first failing test.
GUARD_TESTS = [
    "tests/test_numerics_details.py",
    "tests/test_golden_oracle.py::test_job_reader_derives_every_preview_as_ai_toolkit_rendered_it",
    "tests/test_golden_oracle.py::test_schedule_timesteps_and_noise_are_ai_toolkits",
    "tests/test_numerics.py",
    "tests/test_job_samples.py",
    "tests/test_job_config.py",
    "tests/test_job_previews.py",
    "tests/test_job_properties.py",
    "tests/test_lokr_aitk.py",
    "tests/test_golden_oracle.py::test_portable_render_is_ai_toolkits_image_bit_for_bit_and_exact",
]


@dataclass(frozen=True)
class Mutation:
    name: str      # short id (command-line selector)
    detail: str    # the numerics detail or job rule, as docs/numerics.md names it
    file: str      # path relative to the repository root
    old: str       # exact source text (must occur once)
    new: str       # its replacement
    change: str    # the change in words


MUTATIONS = [
    Mutation("timestep_path", "1 timestep path", "parity/engine/numerics.py",
             "        return torch.full((1,), t, dtype=dtype)\n",
             "        return torch.tensor([t * 1000.0]).to(dtype) / 1000\n",
             "t reaches the model as bf16(1000 t)/1000 instead of bf16(t)"),
    Mutation("euler", "6 Euler update", "parity/engine/numerics.py",
             "        return x + (t_next - t_cur) * v\n",
             "        return (x.float() + (t_next - t_cur) * v.float()).to(x.dtype)\n",
             "the update accumulated in fp32 and cast back once"),
    Mutation("lora_merge", "7 merged LoRA", "parity/engine/numerics.py",
             "        return (weight.float() + multiplier * delta_fp32 * scale).to(weight.dtype)\n",
             "        return weight + (multiplier * delta_fp32 * scale).to(weight.dtype)\n",
             "the merge computed in bf16 (delta rounded, bf16 add)"),
    Mutation("lora_live", "7 live LoRA", "parity/engine/numerics.py",
             "        return base_out + ((lora_out_fp32 * scale) * multiplier).to(base_out.dtype)\n",
             "        return (base_out.float() + (lora_out_fp32 * scale) * multiplier).to(base_out.dtype)\n",
             "the live branch added to the base output in fp32"),
    Mutation("lokr_merge_order", "7 merged LoKr", "parity/engine/lora.py",
             "        return self.delta() * torch.tensor(self.scale(), dtype=torch.float32), 1.0\n",
             "        return self.delta(), self.scale()\n",
             "LoKr merged as (m*kron)*scale instead of (kron*scale)*m"),
    Mutation("qfloat8_qtype", "2 qfloat8 scale and rounding", "parity/engine/quant.py",
             "    quanto.quantize(model, weights=getattr(quanto, qtype))\n",
             "    quanto.quantize(model, weights=quanto.qfloat8_e5m2 if qtype == 'qfloat8' else getattr(quanto, qtype))\n",
             "qfloat8 weights stored as e5m2 instead of e4m3"),
    Mutation("qfloat8_modules", "2 qfloat8 module selection", "parity/engine/quant.py",
             "    quanto.quantize(model, weights=getattr(quanto, qtype))\n",
             "    quanto.quantize(model, weights=getattr(quanto, qtype), exclude=['proj_out', 'lm_head'])\n",
             "the output projection left unquantized"),
    Mutation("te_cast", "3 text-encoder cast", "parity/engine/weights.py",
             "        te = te.to(dtype)\n", "        pass\n",
             "no .to(dtype) after from_pretrained (rotary inv_freq stays fp32)"),
    Mutation("qk_norm", "4 QK RMSNorm", "parity/engine/numerics.py",
             "        return (xf * rrms).to(x.dtype) * weight.to(x.dtype)\n",
             "        return ((xf * rrms) * weight.float()).to(x.dtype)\n",
             "one rounding after the scale instead of two"),
    Mutation("rope", "5 RoPE", "parity/engine/numerics.py",
             "        parts = [rope_1d(pos[..., i], d, self.theta, torch.float32) for i, d in enumerate(self.axes_dim)]\n",
             "        parts = [rope_1d(pos[..., i], d, self.theta, torch.float64) for i, d in enumerate(self.axes_dim)]\n",
             "angles and cos/sin in fp64"),
    Mutation("vae_silu", "9 VAE activation", "parity/engine/numerics.py",
             "        return x * torch.sigmoid(x) if self.mode == \"aitk\" else torch.nn.functional.silu(x)\n",
             "        return torch.nn.functional.silu(x)\n",
             "F.silu instead of x*sigmoid(x)"),
    Mutation("vae_attention", "9 VAE attention", "parity/engine/numerics.py",
             "        if self.mode != \"aitk\" or encoder_hidden_states is not None or attention_mask is not None:\n",
             "        if True:\n",
             "diffusers' attention processor instead of BFL's 1x1-conv AttnBlock"),
    Mutation("postprocess", "10 post-processing", "parity/engine/numerics.py",
             "        x = (decoded.float() / 2 + 0.5).clamp(0, 1)\n",
             "        x = (decoded / 2 + 0.5).clamp(0, 1).float()\n",
             "denormalise and clamp in bf16, then fp32"),
    Mutation("merge_history", "8 merge-history replay", "parity/engine/lora.py",
             "                    lin.weight.data.copy_(merge_lora_weight(w, d, -float(hm), scale, how))\n",
             "                    pass\n",
             "earlier rounds leave no residue (replay is a no-op)"),
    Mutation("packed_layout", "11 packed-latent layout", "parity/engine/sampling.py",
             "    return latents.reshape(b, c, h * w).permute(0, 2, 1).contiguous()\n",
             "    return latents.reshape(b, c, h * w).permute(0, 2, 1)\n",
             "the transformer gets the (h w) c tokens as a permuted view instead of AI Toolkit's stacked copy"),
    Mutation("vae_attention_layout", "12 VAE attention output layout", "parity/engine/numerics.py",
             "    return o.reshape(b, h, w, c).permute(0, 3, 1, 2)\n",
             "    return o.squeeze(1).permute(0, 2, 1).reshape(b, c, h, w)\n",
             "the SDPA output reaches proj_out through squeeze/permute/reshape (other strides) instead of einops' view"),
    Mutation("hidden_layers", "text-encoder hidden states", "parity/family.py",
             "hidden_layers=(10, 20, 30),", "hidden_layers=(10, 20, 29),",
             "the last stacked hidden state from layer 29 instead of 30"),
    Mutation("aitk_mu", "schedule (AI Toolkit mu)", "parity/engine/schedule.py",
             "AITK_MAX_SEQ, AITK_MAX_SHIFT = 4096, 1.15\n", "AITK_MAX_SEQ, AITK_MAX_SHIFT = 4096, 1.16\n",
             "max shift 1.16 instead of 1.15"),
    # (AI Toolkit's floor to 8 can never change a render: FLUX.2 floors to 16 afterwards. Only its minimum of 64
    # px can, so that is what is mutated.)
    Mutation("min64", "size floor 8 / min 64", "parity/job/samples.py",
             "    v8 = max(64, requested - requested % 8)\n", "    v8 = max(16, requested - requested % 8)\n",
             "minimum side 16 instead of 64"),
    Mutation("floor16", "FLUX.2 size floor 16", "parity/job/sizes.py",
             "    return int(width) // FLUX2_DIVISOR * FLUX2_DIVISOR, int(height) // FLUX2_DIVISOR * FLUX2_DIVISOR\n",
             "    return int(width) // 8 * 8, int(height) // 8 * 8\n",
             "render-time floor to 8 instead of 16"),
    Mutation("seed_walk", "seed walk", "parity/job/samples.py",
             "            self.current, self.source = self.start + i, \"walk\"\n",
             "            self.current, self.source = self.start, \"walk\"\n",
             "walk_seed ignored (every prompt seed = start)"),
    Mutation("flags_first_wins", "--flags in prompts", "parity/job/flags.py",
             "            values[name] = convert(content)\n",
             "            values.setdefault(name, convert(content))\n",
             "the first of a repeated flag wins instead of the last"),
    Mutation("trigger", "[trigger]", "parity/job/flags.py",
             "    a = prompt.replace(\"[name]\", trigger).replace(\"[trigger]\", trigger)\n"
             "    b = prompt.replace(\"[trigger]\", trigger).replace(\"[name]\", trigger)\n",
             "    a = b = prompt.replace(\"[name]\", trigger)\n",
             "[trigger] no longer replaced by the trigger word"),
]


def copy_tree(dst: Path) -> None:
    for part in ("parity", "tests", "pyproject.toml"):
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dst / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dst / part)


def apply(root: Path, m: Mutation) -> None:
    path = root / m.file
    text = path.read_text()
    if text.count(m.old) != 1:
        raise SystemExit(f"mutation {m.name}: the original text occurs {text.count(m.old)} times in {m.file} "
                         "(the code changed; update benchmarks/mutation.py)")
    path.write_text(text.replace(m.old, m.new))


def env_for(root: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(root), "PARITY_ORACLE": str(ORACLE), "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def run_guards(root: Path, timeout: int) -> tuple[bool, str, float]:
    """(killed, the first failing test or '', seconds)."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p",
                           "no:randomly", *GUARD_TESTS], cwd=root, env=env_for(root), capture_output=True,
                          text=True, timeout=timeout)
    failed = [ln.split(" ", 1)[1].split(" - ")[0] for ln in proc.stdout.splitlines() if ln.startswith("FAILED ")]
    errors = [ln for ln in proc.stdout.splitlines() if ln.startswith("ERROR ")]
    killed = proc.returncode != 0
    first = failed[0] if failed else (errors[0] if errors else ("" if not killed else proc.stdout[-300:]))
    return killed, first, time.perf_counter() - t


PROBE = r"""
import json, sys, numpy as np, torch
torch.set_num_threads(1)
sys.path.insert(0, "tests")
from aitk_oracle import DEV_BASE, previews
from test_golden_oracle import render_preview
from parity.engine.render import Engine
out = {}
engine = Engine(DEV_BASE, cache_dir=None)
for case, pid in (("bf16", "bf16-step500-p2"), ("fp8", "fp8-step500-p2"), ("fp32", "fp32-step500-p2")):
    pv = next(p for p in previews(case) if p.id == pid)
    try:
        out[pid] = render_preview(engine, case, pv).image.tolist()
    except Exception as exc:  # a mutation may make a render impossible: that is an effect too
        out[pid] = f"{type(exc).__name__}: {exc}"
json.dump(out, open(sys.argv[1], "w"))
"""


def probe(root: Path, dst: Path, timeout: int) -> dict:
    subprocess.run([sys.executable, "-c", PROBE, str(dst)], cwd=root, env=env_for(root), check=True,
                   capture_output=True, timeout=timeout)
    return json.loads(dst.read_text())


def effect(base: dict, mutated: dict) -> str:
    import numpy as np

    parts = []
    for pid, img in mutated.items():
        if isinstance(img, str) or isinstance(base[pid], str):
            parts.append(f"{pid.split('-')[0]}: {img if isinstance(img, str) else 'renders'}"[:60])
            continue
        d = np.abs(np.asarray(img, dtype=np.int16) - np.asarray(base[pid], dtype=np.int16))
        parts.append(f"{pid.split('-')[0]} {int(d.max())}")
    return ", ".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="mutations to run (default: all)")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--no-effect", action="store_true", help="skip the probe renders (effects)")
    ap.add_argument("--timeout", type=int, default=1500, help="seconds per mutation's test run")
    smoke_option(ap)  # one row: the first mutation, without the probe renders
    args = smoke(ap.parse_args(argv), names=[MUTATIONS[0].name], no_effect=True)
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name:18s} {m.detail:28s} {m.change}")
        return 0
    if not (ORACLE / "README.md").is_file():
        print(f"the AI Toolkit oracle is needed at {ORACLE} (set PARITY_ORACLE)", file=sys.stderr)
        return 2
    chosen = [m for m in MUTATIONS if not args.names or m.name in args.names]
    unknown = set(args.names) - {m.name for m in MUTATIONS}
    if unknown:
        print(f"unknown mutation(s): {', '.join(sorted(unknown))} (see --list)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="parity-mutation-") as tmp:
        tmp = Path(tmp)
        clean = tmp / "clean"
        copy_tree(clean)
        base = None if args.no_effect else probe(clean, tmp / "base.json", args.timeout)
        print("| detail | mutation | killed by | max abs delta vs unmutated render (levels) |")
        print("|---|---|---|---|")
        survivors = 0
        for m in chosen:
            root = tmp / m.name
            copy_tree(root)
            apply(root, m)
            killed, first, secs = run_guards(root, args.timeout)
            survivors += not killed
            eff = "" if base is None else effect(base, probe(root, tmp / f"{m.name}.json", args.timeout))
            who = f"`{first.replace('tests/', '')}`" if killed else "**survived**"
            print(f"| {m.detail} | {m.change} | {who} | {eff} |", flush=True)
            shutil.rmtree(root, ignore_errors=True)
        print(f"\n{len(chosen) - survivors} of {len(chosen)} mutations killed")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
