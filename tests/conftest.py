"""Test-wide settings: offline hub, one torch thread (stable timings and bits on a 2-core box)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

# the golden tests' session-wide parity processes (tests/aitk_oracle.py), for every test module
from aitk_oracle import golden_quick_started_early, oracle_runs  # noqa: E402,F401


def pytest_configure(config):
    # pytest-xdist's own marker, known also when xdist is not loaded (-p no:xdist): the golden tests group by job
    config.addinivalue_line("markers", "xdist_group(name): run these tests in one xdist worker (--dist loadgroup)")
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency; keep pure tests importable anyway
        return
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The tiny FLUX.2 checkpoint (both on-disk layouts + LoRA files), built once per test session."""
    from parity.tiny import build_tiny

    root = tmp_path_factory.mktemp("tiny-flux2")
    build_tiny(root)
    return root


@pytest.fixture(scope="session")
def smooth_tiny_model_dir(tmp_path_factory):
    """The tiny FLUX.2 whose transformer responds smoothly to guidance and multiplier as a trained model does
    (`build_tiny(smooth=True)`; steps and shift less so, docs/parameter-recovery.md): what parameter recovery needs."""
    from parity.tiny import build_tiny

    root = tmp_path_factory.mktemp("tiny-flux2-smooth")
    build_tiny(root, smooth=True)
    return root
