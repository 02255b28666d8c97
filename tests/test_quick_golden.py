"""`make quick`: one golden render per precision and family member (fp32, bf16, fp8, reference images, [klein]),
AI Toolkit's own previews rendered by ONE `parity run` that enters portable CPU numerics through
`PARITY_CPU_NUMERICS=portable` (the environment route of the mode; tests/test_golden_oracle.py uses the option) in a
clean environment, held bit for bit like the full golden tests. The process starts with the test session
(aitk_oracle.golden_quick_started_early) and renders while the in-process quick tests run; this module's name
sorts after theirs.
"""

from __future__ import annotations

import pytest

from aitk_oracle import ORACLE, QUICK, assert_bit_exact, golden_param, needs_oracle, preview

pytestmark = [needs_oracle, pytest.mark.quick]


@pytest.mark.parametrize("pv", [golden_param(preview(i)) for i in QUICK] if (ORACLE / "fp32").is_dir() else [])
def test_one_render_per_precision_and_family_member_is_bit_exact(oracle_runs, pv):
    run = oracle_runs.quick()
    assert run.results["run"]["cpu_numerics"]["aten_capability"] == "AVX2", run.stderr[-2000:]
    assert_bit_exact(pv, run)
