"""Run every benchmark in its own subprocess (peak RSS per benchmark from wait4), print a table, and rewrite the
figures table in benchmarks/README.md between the <!-- figures --> markers.   make bench  |  python benchmarks/run_all.py"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [("overhead.py", []), ("lora_switch.py", []), ("embed_cache.py", []), ("gpu_flux2.py", ["--tiny"]),
           ("cpu_numerics.py", []), ("compare.py", []), ("report.py", [])]


def run(script: str, args: list[str]) -> tuple[str, float, float, int]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, str(HERE / script), *args], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=env, cwd=HERE.parent)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return out, time.perf_counter() - t0, usage.ru_maxrss / 1024, p.returncode


def summary(script: str, out: str) -> str:
    m = re.search(r"^RESULT (.*)$", out, re.M)
    if not m:  # compare.py / report.py print tables: keep their key lines
        keep = [ln.strip() for ln in out.splitlines() if re.search(r"pairs/s|parity |first screen|x  ", ln)]
        return re.sub(r"\s{2,}", " ", "; ".join(keep[-4:]))[:300]  # table columns -> one readable line
    r = json.loads(m.group(1))
    if script == "overhead.py":
        return "; ".join(f"{k}: harness {v['harness_s']:.2f} s vs bare {v['bare_s']:.2f} s = {v['ratio']:.2f}"
                         for k, v in r["modes"].items()) + f" (max diff {r['max_abs_diff_uint8']} LSB)"
    if script == "lora_switch.py":
        s = r["seconds"]
        return (f"switch {s['engine switch']:.2f} s, engine reload {s['engine reload']:.2f} s, diffusers reload "
                f"{s['diffusers reload']:.2f} s; ratio {r['ratio_switch_vs_diffusers_reload']:.2f}; transformer loads "
                f"{r['transformer_loads']}")
    if script == "embed_cache.py":
        return (f"cold {r['seconds']['cold']:.2f} s, warm {r['seconds']['warm']:.2f} s, ratio "
                f"{r['ratio_warm_cold_total']:.2f}; text encoder built cold {r['text_encoder_loads']['cold']} / warm "
                f"{r['text_encoder_loads']['warm']}")
    if script == "report.py":
        return (f"{r['items']} items, median of {r['runs']}: cold {r['report_cold_s']:.2f} s, no thumbnails "
                f"{r['report_no_thumbs_s']:.2f} s, every thumbnail {r['report_all_thumbs_s']:.2f} s, warm "
                f"{r['report_warm_s']:.2f} s; first screen {r['first_screen_s'] or 0:.2f} s")
    if script == "gpu_flux2.py":
        return (f"{r['card']} {'tiny' if r['tiny'] else 'full'}: {r['s_per_step']:.3f} s/step, "
                f"{r['achieved_tflops']:.3g} TFLOP/s of {r['matmul_peak_tflops']:.3g} peak, overhead "
                f"{r['overhead_ratio']:.2f}")
    if script == "cpu_numerics.py":
        return "; ".join(f"{d}: portable {v['best_s']['portable']:.2f} s vs native ({v['capability']['native']}) "
                         f"{v['best_s']['native']:.2f} s = {v['ratio_portable_vs_native']:.2f}"
                         for d, v in r["dtypes"].items())
    return m.group(1)[:300]


def main(argv=None) -> int:
    import argparse

    from _common import smoke_option

    ap = argparse.ArgumentParser(description=__doc__)
    smoke_option(ap)  # one benchmark's smoke run through this driver; the README is left alone
    a = ap.parse_args(argv)
    rows = []
    for script, args in ([("compare.py", ["--smoke"])] if a.smoke else BENCHES):
        print(f"== {script} {' '.join(args)}", flush=True)
        out, wall, rss, rc = run(script, args)
        print(out)
        rows.append((f"benchmarks/{script} {' '.join(args)}".strip(), summary(script, out) if rc == 0 else
                     f"FAILED (exit {rc})", wall, rss))
    table = ["| command | result | wall s | peak RSS MiB |", "|---|---|---|---|"]
    table += [f"| `{c}` | {s} | {w:.0f} | {r:.0f} |" for c, s, w, r in rows]
    md = "\n".join(table)
    print(md)
    readme = HERE / "README.md"
    text = readme.read_text() if readme.exists() else ""
    stamp = f"<!-- figures -->\nMeasured {time.strftime('%Y-%m-%d')} by `make bench`:\n\n{md}\n<!-- /figures -->"
    if "<!-- figures -->" in text and not a.smoke:
        from parity.report.jsonfile import write_text_atomic

        text = re.sub(r"<!-- figures -->.*<!-- /figures -->", lambda _: stamp, text, flags=re.S)
        write_text_atomic(readme, text)
    return 0 if all(not s.startswith("FAILED") for _, s, _, _ in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
