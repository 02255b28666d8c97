"""Which device renders run on, and the name of its hardware (what a case's `preview_hardware` is matched
against). torch is imported only when asked."""

from __future__ import annotations


def default_device() -> str:
    """cuda when torch sees a GPU, else cpu."""
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def hardware_name(device: str) -> str:
    """The device renders run on, as the `hardware` knob names it: "cpu", or the CUDA device's name (what
    torch.cuda.get_device_name reports, e.g. "NVIDIA H100 80GB HBM3"), which a case's `preview_hardware` can match."""
    if device.startswith("cuda"):
        try:
            import torch

            if torch.cuda.is_available():
                return torch.cuda.get_device_name(torch.device(device))
        except Exception:  # noqa: BLE001 - fall back to the device string
            pass
    return device.split(":")[0]
