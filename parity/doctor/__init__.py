"""`parity doctor`: is this runner ready for these cases? Checks the environment and the inputs without rendering
(weights are read as safetensors headers only) and plans the resources of each case on the device.

    report = examine(cases, device=resolve_device("cuda", None, None))
    report.ready   # False when a case will not fit or an input is incomplete
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from parity.doctor.environment import Device, Environment, determinism_check, disk_check, host_memory, versions
from parity.doctor.inputs import Check, check_lora, check_text_encoder, check_transformer, check_vae
from parity.doctor.plan import CasePlan, case_plan
from parity.errors import ConfigError, ParityError
from parity.family import family
from parity.jsonio import read_json

__all__ = ["DoctorReport", "examine", "Check", "CasePlan"]


@dataclass
class DoctorReport:
    environment: Environment
    checks: list[Check] = field(default_factory=list)        # inputs, per case
    plans: list[CasePlan] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        failed = any(c.status == "fail" for c in self.checks + self.environment.checks)
        return not failed and all(p.plan.fits for p in self.plans)

    def to_dict(self) -> dict:
        d = self.environment.device
        return {
            "schema": "parity.doctor/1", "ready": self.ready, "versions": self.environment.versions,
            "device": None if d is None else {k: v for k, v in d.__dict__.items() if k != "card"},
            "host_memory_bytes": self.environment.host_memory_bytes,
            "checks": [c.to_dict() for c in self.environment.checks + self.checks],
            "cases": [p.to_dict() for p in self.plans],
        }


def _read_config(folder: Path | None) -> dict | None:
    if folder is None or not (folder / "config.json").is_file():
        return None
    try:
        return read_json(folder / "config.json")
    except (OSError, ValueError, ParityError):
        return None


_ARCH_KEYS = ("num_layers", "num_single_layers", "num_attention_heads", "attention_head_dim", "joint_attention_dim",
              "in_channels", "guidance_embeds")


def architecture_check(tcfg: dict, arch: str, base_arch: str | None = None) -> Check:
    """The base model is the architecture the job trained: the family the engine detects in the folder
    (`base_arch`: a FLUX.2-dev base for a [klein] job is refused at render time, so it fails here too), then the
    pinned config of the job's `model.arch`."""
    from parity.engine import fullsize

    if base_arch is not None and not family(arch).renders_like(family(base_arch)):
        return Check("architecture", "fail", f"the base model is {base_arch!r} but the job trained {arch!r} "
                     "(model.arch): parity would render another model")

    want = family(arch).transformer_config
    have = next((n for n, c in fullsize.TRANSFORMER_CONFIGS.items()
                 if all(c.get(k) == tcfg.get(k) for k in _ARCH_KEYS)), None)
    if have == want:
        return Check("architecture", "ok", f"{want}, the model the job trained on (model.arch {arch})")
    if have is None:
        return Check("architecture", "warn", f"not a published FLUX.2 configuration (a tiny or custom model); "
                     f"the job trained on {want}")
    return Check("architecture", "fail", f"the base model is {have} but the job trained on {want} "
                 f"(model.arch {arch})")


def _base_checks(layout, arch: str, loras: list[str]) -> list[Check]:
    """Input checks of one base model and the LoRA files used with it."""
    from parity.doctor.inputs import expected_transformer

    checks = [architecture_check(layout.transformer_config, arch, getattr(layout, "arch", None))]
    try:
        needed = expected_transformer(layout.transformer_config, "diffusers")
    except (TypeError, ValueError, KeyError) as exc:  # a config.json the model class cannot be built from
        return checks + [Check("transformer config", "fail", f"cannot build the model ({type(exc).__name__}: {exc})",
                               str(layout.root))]
    for name, fn in (("transformer weights", check_transformer), ("VAE weights", check_vae),
                     ("text encoder weights", check_text_encoder)):
        try:
            result = fn(layout)
        except ParityError as exc:
            result = Check(name, "fail", str(exc))
        checks += result if isinstance(result, list) else [result]
    from parity.lora_audit import doctor_status

    return checks + [c for p in loras
                     for c in (check_lora(Path(p), needed), Check("LoRA audit", *doctor_status(p, arch), p))]


def _quanto_check(vers: dict) -> Check:
    """A quantized render needs optimum-quanto (AI Toolkit's qfloat8)."""
    have = vers.get("optimum.quanto", "missing")
    if have == "missing":
        return Check("quantization", "fail", "the case renders with qfloat8 but optimum-quanto is not installed "
                     "(pip install optimum-quanto)")
    return Check("quantization", "ok", f"optimum-quanto {have}")




def _disk_need(plans: list[CasePlan], n_prompts: int) -> int:
    emb = n_prompts * 512 * 15360 * 2                       # a FLUX.2-dev embedding (bf16) per prompt
    img = sum(p.items * p.shape.width * p.shape.height * 3 * 2 for p in plans)  # PNG render + report copies
    return emb + img + 2 ** 28                              # + 256 MiB slack for reports and journals


def _case(case, device: Device, base_model: str | None, report: DoctorReport) -> None:
    """Checks and plan of one case, appended to `report`."""
    from parity.engine import fullsize, weights
    from parity.job import load_job
    from parity.run import plan_cases

    items, errors = plan_cases([case], base_model=base_model)
    for e in errors:
        if isinstance(e.error, ConfigError):   # the case's own input is wrong (its job is missing): exit 2
            raise ConfigError(f"case {case.name!r}: {e.error}", case.path) from None
        report.checks.append(Check(f"case {case.name}", "fail", e.message, str(e.case_path)))
    if not items:
        return
    facts = load_job(case.job_source).facts
    arch = facts.arch
    base, te = items[0].base_model, items[0].text_encoder
    base_src = "--base-model" if base_model else case.resolve_base_model(facts.name_or_path)[1]
    try:
        layout = weights.resolve_base(base, text_encoder=te)
    except ParityError as exc:
        if device.source == "this machine":  # a plan for a named card or size needs no weights: plan_before_download
            report.checks.append(Check(f"{case.name}: base model", "fail", f"{exc} (from {base_src})", base))
        else:
            _plan_before_download(case.name, items, arch, base, f"{exc} (from {base_src})", report)
        return
    te_src = case.resolve_text_encoder()[1] if te else "base model folder"
    report.checks.append(Check(f"{case.name}: base model", "ok", f"{layout.root} ({layout.kind} layout, from "
                               f"{base_src}); text encoder {layout.text_encoder} (from {te_src})"))
    loras = sorted({it.inference.spec.lora_path for it in items if it.inference.spec.lora_path})
    checks = _base_checks(layout, arch, loras)
    if any(it.inference.spec.quantize or it.inference.spec.quantize_te for it in items):
        checks.append(_quanto_check(report.environment.versions))
    report.checks += [Check(f"{case.name}: {c.name}", c.status, c.detail, c.where) for c in checks]
    te_cfg = _read_config(layout.text_encoder) or fullsize.TEXT_ENCODER_CONFIGS[family(arch).text_encoder_config]
    runnable = [it for it in items if not it.problem]
    from parity.engine.offload import lora_file_params

    report.plans.append(case_plan(case.name, str(layout.root), layout, te_cfg, runnable or items, device,
                                  lora_file_params(loras[0] if loras else None)))


def _plan_before_download(name: str, items, arch: str, base: str, problem: str, report: DoctorReport) -> None:
    """No base model on disk, a card to plan for: the plan from the published configuration (parity.doctor.published);
    only what will not fit, or a LoRA or package the run needs, fails."""
    from parity.doctor.published import published_checks, published_layout, published_plan

    layout = published_layout(arch, base)
    loras = sorted({it.inference.spec.lora_path for it in items if it.inference.spec.lora_path})
    report.checks += published_checks(name, layout, loras, problem)
    if any(it.inference.spec.quantize or it.inference.spec.quantize_te for it in items):
        report.checks.append(_quanto_check(report.environment.versions))
    runnable = [it for it in items if not it.problem]
    report.plans.append(published_plan(name, layout, arch, runnable or items, report.environment.device, loras))


def examine(cases, device: Device, *, base_model: str | None = None,
            out_dirs: list[Path] | None = None) -> DoctorReport:
    """The doctor's whole verdict for `cases` on `device` (nothing rendered, no weight data read)."""
    env = Environment(versions=versions(), device=device, host_memory_bytes=host_memory())
    env.checks.append(determinism_check(device))
    report = DoctorReport(env)
    for case in cases:
        _case(case, device, base_model, report)
    prompts = sum(p.items for p in report.plans)
    from parity.session import embedding_cache_dir

    env.checks.append(disk_check([embedding_cache_dir(), *(out_dirs or [Path("reports")])],
                                 _disk_need(report.plans, prompts)))
    host = max((p.host_bytes for p in report.plans), default=0)
    if host and env.host_memory_bytes and device.source == "this machine" and host > env.host_memory_bytes:
        env.checks.append(Check("host memory", "warn", f"the plan keeps {host / 2**30:.1f} GiB in host memory; "
                                f"this machine has {env.host_memory_bytes / 2**30:.1f} GiB"))
    return report
