"""Will a stack apply this LoRA as AI Toolkit trained it? One adapter file audited against the loaders people run
AI Toolkit FLUX.2 files in: diffusers (its own loader, run for real), ComfyUI and the reference inference server
(their key mapping and scaling as rules, each citing the file, commit and line it follows). docs/lora-audit.md.

    report = audit_file("my_lora.safetensors")           # every stack
    report.lines()                                        # one line per stack
    report.ok                                             # every stack applies it as trained
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from parity.lora_audit.adapter_file import AdapterFile, read_adapter
from parity.lora_audit.result import APPLIED, MIS_SCALED, NOT_AT_ALL, PARTLY, StackResult

__all__ = ["STACKS", "AuditReport", "audit_file", "audit_line", "StackResult", "APPLIED", "PARTLY", "NOT_AT_ALL",
           "MIS_SCALED", "read_adapter"]

STACKS = ("diffusers", "comfyui", "reference-server")


@dataclass
class AuditReport:
    file: AdapterFile
    arch: str
    results: list[StackResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.verdict == APPLIED for r in self.results)

    def lines(self) -> list[str]:
        return [r.line() for r in self.results]

    def to_dict(self) -> dict:
        return {"schema": "parity.lora-check/1", "file": str(self.file.path), "kind": self.file.kind,
                "arch": self.arch, "modules": len(self.file.modules), "key_form": self.file.prefix,
                "ranks": self.file.ranks, "unknown_keys": self.file.unknown, "ok": self.ok,
                "stacks": [r.to_dict() for r in self.results]}


def _run(stack: str, f: AdapterFile, arch: str | None) -> StackResult:
    if stack == "diffusers":
        from parity.lora_audit import diffusers_stack

        return diffusers_stack.audit(f, arch)
    if stack == "comfyui":
        from parity.lora_audit import comfyui

        return comfyui.audit(f)
    from parity.lora_audit import reference_server

    return reference_server.audit(f)


def audit_file(path: str | Path, stacks: tuple[str, ...] = STACKS, arch: str | None = None) -> AuditReport:
    """Audit one file for `stacks`. InputFileError (one line naming the file) when it is not a readable
    safetensors adapter file; a stack whose loader refuses the file is a finding (verdict "not at all")."""
    from parity.lora_audit.arch import infer_arch

    arch = arch.split(":", 1)[0] if arch else None   # an AI Toolkit arch may carry a `:tag`
    f = read_adapter(path)
    used_arch = arch or infer_arch(f)
    return AuditReport(f, used_arch, [_run(s, f, arch) for s in stacks])


def doctor_status(path: str | Path, arch: str | None = None) -> tuple[str, str]:
    """(status, line) for `parity doctor`: ok when every stack applies the file as trained, else warn (the base
    model is still ready; the line says which stacks will not reproduce the previews, and why)."""
    report, line = _summary(path, STACKS, arch)
    return ("ok" if report is not None and report.ok else "warn"), line


def audit_line(path: str | Path, stacks: tuple[str, ...] = STACKS, arch: str | None = None) -> str:
    """One line for doctor and external explanations: `LoRA audit of NAME (lora (160 modules, ...)): diffusers
    applied as trained; comfyui partly (...); reference-server mis-scaled (...)`."""
    return _summary(path, stacks, arch)[1]


def _summary(path: str | Path, stacks: tuple[str, ...], arch: str | None) -> tuple[AuditReport | None, str]:
    from parity.errors import ParityError

    try:
        report = audit_file(path, stacks, arch)
    except ParityError as exc:
        return None, f"LoRA audit of {Path(path).name}: not audited ({exc.message})"
    verdicts = []
    for r in report.results:
        detail = r.line().split(": ", 2)[-1]
        verdicts.append(f"{r.stack} {r.verdict}" + ("" if r.verdict == APPLIED else f" ({detail})"))
    return report, f"LoRA audit of {Path(path).name} ({report.file.describe()}): " + "; ".join(verdicts)
