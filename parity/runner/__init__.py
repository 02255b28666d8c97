"""Running planned items: the per-item pipeline (pipeline.Runner), the engine cache (engines.EnginePool), render
files (renders: save, submit the comparison, read back on resume), the
record builders (records) and the follow-up policies (policies: determinism guard, noise floor, attribution)."""

from .engines import EnginePool
from .pipeline import Runner
from .policies import DETERMINISM_MODES, Attribution, DeterminismGuard, NoiseFloor
from .records import case_error_record, error_record, failure_message, rendered_record

__all__ = ["DETERMINISM_MODES", "Attribution", "DeterminismGuard", "EnginePool", "NoiseFloor", "Runner",
           "case_error_record", "error_record", "failure_message", "rendered_record"]
