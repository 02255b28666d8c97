"""AI Toolkit job reader: configs, exact sample settings, preview index, checkpoint pairing (no torch)."""

from parity.job.config import JobFacts
from parity.job.flags import ParsedPrompt, inject_trigger, parse_prompt_flags
from parity.job.job import Job, PreviewItem, load_job
from parity.job.previews import (
    PreviewFormat,
    PreviewName,
    checkpoint_filename,
    detect_format,
    estimate_jpeg_quality,
    parse_preview_filename,
    preview_filename,
)
from parity.job.samples import ResolvedSample, floor_size

__all__ = [
    "Job", "JobFacts", "PreviewItem", "PreviewFormat", "PreviewName", "ParsedPrompt", "ResolvedSample",
    "load_job", "preview_filename", "checkpoint_filename", "parse_preview_filename", "parse_prompt_flags",
    "inject_trigger", "floor_size", "detect_format", "estimate_jpeg_quality",
]
