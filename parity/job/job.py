"""`load_job(path) -> Job`: one AI Toolkit FLUX.2 LoRA job, its resolved samples, previews and checkpoints."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

from parity.errors import ConfigError, InputFileError
from parity.job.config import JobFacts, job_facts, preprocess, process_of, read_config_file
from parity.job.previews import (
    CheckpointIndex,
    PreviewFormat,
    PreviewIndex,
    detect_format,
    index_checkpoints,
    index_previews,
)
from parity.job.samples import ResolvedSample, SampleBlock, parse_sample_block, resolve_samples
from parity.spec import RenderSpec, ResolvedSpec

StepArg = Union[str, int, Sequence[int]]


@dataclass
class PreviewItem:
    """One preview to reproduce: (step label, prompt index) with its files and exact render settings."""

    step: int
    index: int
    group: str                         # "sample" | "first_sample" (both render at label 0)
    preview: Path | None               # newest file for this slot; None if missing (non-strict only)
    checkpoint: Path | None            # LoRA file; None for the baseline or when missing
    baseline: bool                     # label-0 preview: rendered before training, no LoRA effect
    preview_format: PreviewFormat | None
    resolved: ResolvedSpec
    raw_prompt: str
    requested_width: int
    requested_height: int
    sample: ResolvedSample
    preview_ms: int | None = None
    superseded: tuple[Path, ...] = ()  # older files for the same slot (reruns, UI "sample now")
    missing: tuple[str, ...] = ()      # what is missing (non-strict only)
    notes: tuple[str, ...] = ()        # quirks that affect this preview (sample notes + label notes)

    @property
    def spec(self) -> RenderSpec:
        return self.resolved.spec


@dataclass
class Job:
    name: str                      # config.name: the checkpoint file prefix
    config_path: Path
    config_kind: str               # "config.yaml" | "job_json" | "yaml"
    folder: Path                   # {training_folder}/{process name}
    samples_dir: Path
    facts: JobFacts
    sample_block: SampleBlock
    first_sample_block: SampleBlock | None
    _previews: PreviewIndex | None = field(default=None, repr=False)
    _checkpoints: CheckpointIndex | None = field(default=None, repr=False)
    _resolved: dict = field(default_factory=dict, repr=False)

    # --- samples ------------------------------------------------------------------------------------------
    def resolved_samples(self, group: str = "sample") -> list[ResolvedSample]:
        """The prompts of the `sample` block (group "sample") or of `first_sample` (group "first_sample")."""
        if group in self._resolved:
            return list(self._resolved[group])
        if group == "final":  # the final sample() at label 0 when train.steps is 0: the `sample` block again
            return self.resolved_samples("sample")
        block = self.sample_block if group == "sample" else self.first_sample_block
        if block is None:
            return []
        where = "first_sample" if group == "first_sample" else "sample"
        out = resolve_samples(block, trigger_word=self.facts.trigger_word, group=group, path=str(self.config_path))
        if not out:
            raise ConfigError(f"process[0].{where} has no prompts (nothing AI Toolkit would render)", self.config_path)
        if group == "first_sample" and self.facts.caches_sample_prompts:
            out = self._cached_prompts(out)
        self._resolved[group] = out
        return list(out)

    def _cached_prompts(self, first: list[ResolvedSample]) -> list[ResolvedSample]:
        """With sample prompts pre-encoded (JobFacts.caches_sample_prompts), sample() reads embedding i from the
        cache of the `sample` block for first_sample too (base_model.py L544-546): the prompt and negative prompt
        of first_sample item i are those of sample item i; every other setting stays first_sample's."""
        from dataclasses import replace

        cached = self.resolved_samples("sample")
        if len(first) > len(cached):
            raise ConfigError(f"first_sample has {len(first)} prompts but the text embeddings are cached from the "
                              f"{len(cached)} of `sample` (unload_text_encoder / cache_text_embeddings): AI Toolkit "
                              "fails with an IndexError on prompt " + str(len(cached)), self.config_path)
        note = ("text embeddings cached (unload_text_encoder / cache_text_embeddings): the prompt rendered is the "
                "`sample` block's prompt {i}, not first_sample's (base_model.py L544-546)")
        return [replace(s, prompt=c.prompt, neg=c.neg, sources={**s.sources, "prompt": "job"},
                        notes=[*s.notes, note.format(i=s.index)]) if (s.prompt, s.neg) != (c.prompt, c.neg) else s
                for s, c in zip(first, cached)]

    def lora_application(self, samples: list[ResolvedSample]) -> str:
        """`merged` only when the network can merge (not quantized, no layer offloading; BaseSDTrainProcess.py
        L1995-2005) AND every sample of the sample() call shares one network_multiplier (base_model.py
        L426-433); otherwise the LoRA runs live (unmerged fp32 branch)."""
        if self.facts.quantize or self.facts.layer_offloading:
            return "live"
        if self.facts.network_type == "dora":  # merge_in returns early for DoRA (network_mixins.py L894-896)
            return "live"
        return "merged" if len({s.network_multiplier for s in samples}) <= 1 else "live"

    def working_dirs(self) -> list[Path]:
        """Where AI Toolkit may have run (its relative paths, e.g. ctrl_img, are opened from its working
        directory): the folder D with D/training_folder == this job's parent folder when training_folder is
        relative, then the config file's folder, then the job folder."""
        out: list[Path] = []
        tf = self.facts.training_folder
        if isinstance(tf, str) and tf and not Path(tf).is_absolute():
            parts = Path(tf).parts
            parent = self.folder.resolve().parent
            tail = parent.parts[len(parent.parts) - len(parts):]
            if tuple(tail) == tuple(parts):
                out.append(Path(*parent.parts[: len(parent.parts) - len(parts)]))
        out += [self.config_path.resolve().parent, self.folder.resolve()]
        return list(dict.fromkeys(out))

    def resolve_reference(self, written: str) -> str:
        """A ctrl_img path as AI Toolkit opens it: absolute as is; relative from its working directory (the
        first candidate of `working_dirs` where the file exists, else the first candidate, so a missing file
        is reported at the path AI Toolkit would have opened)."""
        p = Path(os.path.expanduser(written))
        if p.is_absolute():
            return str(p)
        dirs = self.working_dirs()
        for d in dirs:
            if (d / p).is_file():
                return str(d / p)
        return str(dirs[0] / p)

    def _numerics(self) -> tuple[tuple[str, str], ...]:
        """[klein] loads Qwen3 with `from_pretrained(torch_dtype=dtype)` and casts it again with `.to(device,
        dtype)` only when neither quantize_te nor low_vram is set (flux2_klein_model.py L41-53); without that
        second cast the rotary `inv_freq` buffer stays fp32: the te_cast switch's from_pretrained-only path.
        FLUX.2-dev always casts (flux2_model.py L98-104)."""
        f = self.facts
        if f.arch != "flux2" and (f.quantize_te or f.low_vram):
            return (("te_cast", "diffusers"),)
        return ()

    def render_spec(self, s: ResolvedSample, lora_path: Path | None, application: str) -> ResolvedSpec:
        f = self.facts
        spec = RenderSpec(
            prompt=s.prompt,
            width=s.width,
            height=s.height,
            seed=s.seed,
            sample_steps=s.sample_steps,
            guidance_scale=s.guidance_scale,
            lora_path=None if lora_path is None else str(lora_path),
            network_multiplier=s.network_multiplier,
            lora_application=application,
            dtype=f.dtype,
            # FLUX.2-dev quantizes the text encoder with `qtype`, [klein] with `qtype_te` (JobFacts.qtype_te)
            quantize=f.qtype if f.quantize else None,
            quantize_te=f.qtype_te,
            semantics="aitk",
            schedule="aitk",
            generator="cpu",
            control_images=tuple(self.resolve_reference(p) for p in s.control_images),
            numerics=self._numerics(),
            negative_prompt=s.neg if isinstance(s.neg, str) else "",
            arch=f.arch,
        )
        sources = dict(s.sources)
        sources.update(
            lora_path="job",
            lora_application="job",
            dtype=f.sources["dtype"],
            quantize=f.sources["quantize"],
            quantize_te=f.sources["quantize_te"],
            semantics="default",
            schedule="default",
            generator="default",
        )
        return ResolvedSpec(spec=spec, sources=sources)

    # --- files --------------------------------------------------------------------------------------------
    @property
    def previews(self) -> PreviewIndex:
        if self._previews is None:
            self._previews = index_previews(self.samples_dir)
        return self._previews

    @property
    def checkpoints(self) -> CheckpointIndex:
        if self._checkpoints is None:
            self._checkpoints = index_checkpoints(self.folder, self.name)
        return self._checkpoints

    def ignored(self) -> list[tuple[Path, str]]:
        """Files in samples/ that are not previews of this job's prompts, each with the reason."""
        out = list(self.previews.ignored)
        for (s, i), files in sorted(self.previews.files.items()):
            n = max((len(self.resolved_samples(g)) for g in self.groups_at(s)), default=0)
            if i >= n:
                out += [(f.path, f"prompt index {i} but the job has {n} prompts at step {s}") for f in files]
        return out

    def steps(self) -> list[int]:
        """Step labels that have at least one preview file, ascending."""
        return self.previews.steps()

    def pretrained_lora(self) -> tuple[Path | None, str | None]:
        """network.pretrained_lora_path as AI Toolkit loads it before the baseline when it exists
        (BaseSDTrainProcess.py L856-859, L2052-2056): (path, None), or (None, why) when it is not found here."""
        written = self.facts.pretrained_lora_path
        if not written:
            return None, None
        p = Path(self.resolve_reference(written))
        if p.is_file():
            return p, None
        return None, (f"network.pretrained_lora_path {written!r} not found (looked in {p.parent}); AI Toolkit "
                      "loads it before the baseline when it exists")

    def checkpoint_for(self, step: int) -> Path | None:
        """Label S -> `{name}_{S:09d}.safetensors`; label == train.steps -> `{name}.safetensors` (the numbered
        file if only that exists). None when neither exists. Label 0 is the baseline: no LoRA."""
        ck = self.checkpoints
        if step == self.facts.steps:
            return ck.final or ck.numbered.get(step)
        return ck.numbered.get(step)

    def groups_at(self, step: int) -> list[str]:
        """sample() calls that render at this label, in the order they run (BaseSDTrainProcess.py
        L2472-2481): at label 0 `first_sample` (if given) then the baseline (unless skip_first_sample)."""
        f = self.facts
        if f.disable_sampling:
            return []
        if step == 0:
            groups = ["first_sample"] if self.first_sample_block is not None else []
            if not f.skip_first_sample:
                groups.append("sample")
            if f.steps == 0:  # no training step: the final sample() after the loop runs at label 0
                groups.append("final")  # (BaseSDTrainProcess.py L2820-2821), skip_first_sample or not
            return groups
        return ["sample"]

    def expected_steps(self) -> list[int]:
        """The labels training will write previews at: 0 when a sample() runs there (baseline, first_sample, or
        the final one of a 0-step job), every scheduled label below train.steps, and the final label
        (BaseSDTrainProcess.py L2472-2481, L2555-2561, L2820-2821). Empty when sampling is disabled."""
        from parity.job.history import scheduled_sample_labels

        f = self.facts
        if f.disable_sampling:
            return []
        labels = set(scheduled_sample_labels(f.sample_every, f.sample_start_step, f.steps)) | {f.steps}
        if self.groups_at(0):
            labels.add(0)
        return sorted(labels)

    def _select_steps(self, step: StepArg, expected: bool = False) -> list[int]:
        have = self.expected_steps() if expected else self.steps()
        listing = ", ".join(map(str, have)) or "none"
        if isinstance(step, str):
            if step == "all":
                if not have:
                    raise InputFileError(f"no preview files (labels found: {listing})", self.samples_dir)
                return have
            if step == "latest":
                if not have:
                    raise InputFileError("no preview files named {ms}__{step:09d}_{i}.ext", self.samples_dir)
                return [have[-1]]
            try:
                step = int(step)
            except ValueError:
                raise ConfigError(f"step must be an integer, 'latest' or 'all', got {step!r}") from None
        wanted = [step] if isinstance(step, int) else list(step)
        for s in wanted:
            if s not in have:
                raise InputFileError(f"no previews at step {s} (step labels found: {listing})", self.samples_dir)
        return wanted

    def items(self, step: StepArg = "latest", *, strict: bool = True, detect: bool = True,
              expected: bool = False) -> list[PreviewItem]:
        """Items to reproduce at the chosen step label(s). strict: a missing preview or checkpoint raises
        InputFileError listing what exists; otherwise the item records it in `missing`. expected: choose among
        the labels training will write (`expected_steps`) instead of the previews present (for plans made
        before or during training; implies non-strict)."""
        out: list[PreviewItem] = []
        strict = strict and not expected
        for s in self._select_steps(step, expected):
            groups = self.groups_at(s)
            per_group = {g: self.resolved_samples(g) for g in groups}
            for g, samples in per_group.items():
                application = self.lora_application(samples)
                for rs in samples:
                    out.append(self._item(s, g, rs, groups, application, strict, detect))
        return out

    def _item(self, s, g, rs, groups, application, strict, detect) -> PreviewItem:
        files = list(self.previews.files.get((s, rs.index), []))
        # Groups sharing label 0 write the same names apart from the timestamp, first_sample first; the
        # newest file belongs to the last group covering this index, the one before to the group before.
        covering = [x for x in groups if rs.index < len(self.resolved_samples(x))]
        pos = len(covering) - 1 - covering.index(g)
        chosen = files[-1 - pos] if len(files) > pos else None
        superseded = tuple(f.path for f in files[: len(files) - len(covering)]) if chosen else ()
        missing: list[str] = []
        if chosen is None:
            have = sorted({i for (st, i) in self.previews.files if st == s})
            msg = f"no preview for step {s} index {rs.index} ({g}); indices at this step: {have or 'none'}"
            if strict:
                raise InputFileError(msg, self.samples_dir)
            missing.append(msg)
        baseline = s == 0 and g in ("sample", "first_sample")
        ckpt = None if baseline else self.checkpoint_for(s)
        if baseline and self.facts.pretrained_lora_path:
            ckpt, msg = self.pretrained_lora()
            if msg:
                if strict:
                    raise InputFileError(msg, self.config_path)
                missing.append(msg)
        if ckpt is None and not baseline:
            want = self.name + (".safetensors" if s == self.facts.steps else f"_{s:09d}.safetensors")
            msg = f"no checkpoint {want} for step {s}; checkpoints: {self.checkpoints.listing()}"
            if strict:
                raise InputFileError(msg, self.folder)
            missing.append(msg)
        fmt = detect_format(chosen.path) if (chosen and detect) else None
        notes = list(rs.notes)
        every, start = self.facts.sample_every, self.facts.sample_start_step
        if (s not in (0, self.facts.steps) and isinstance(every, int) and every > 0 and isinstance(start, int)
                and (s % every or s < start)):
            # not on the schedule (BaseSDTrainProcess.py L2555-2561): most likely the UI's "sample now", which
            # renders label S after S updates while a scheduled sample/checkpoint at S has S+1 (§B)
            notes.append(f"label {s} is off the sample_every={every} schedule (UI 'sample now'?): its weights are "
                         "one update behind a checkpoint saved at the same label")
        return PreviewItem(
            step=s,
            index=rs.index,
            group=g,
            preview=chosen.path if chosen else None,
            checkpoint=ckpt,
            baseline=baseline,
            preview_format=fmt,
            resolved=self.render_spec(rs, ckpt, application),
            raw_prompt=rs.raw_prompt,
            requested_width=rs.requested_width,
            requested_height=rs.requested_height,
            sample=rs,
            preview_ms=chosen.ms if chosen else None,
            superseded=superseded,
            missing=tuple(missing),
            notes=tuple(notes),
        )


def _find_config(folder: Path) -> Path:
    for name in ("config.yaml", ".job_config.json"):
        if (folder / name).is_file():
            return folder / name
    present = sorted(p.name for p in folder.iterdir())[:20] if folder.is_dir() else []
    raise ConfigError(
        f"no config.yaml or .job_config.json in the job folder (found: {', '.join(present) or 'nothing'})", folder
    )


def load_job(path: str | Path) -> Job:
    """Read a job from its output folder (`{training_folder}/{name}`, config.yaml preferred over
    .job_config.json) or from a config file. For a config file outside its output folder, the folder is
    `{training_folder}/{name}` as written in the config (relative paths from the current directory)."""
    path = Path(path)
    if path.is_dir():
        config_path, folder = _find_config(path), path
    elif path.is_file():
        config_path, folder = path, None
    else:
        raise ConfigError("no such job folder or config file", path)
    raw, kind = read_config_file(config_path)
    data = preprocess(raw, config_path, apply=(kind != "config.yaml"))
    facts = job_facts(data, config_path)
    proc = process_of(data, config_path)
    if folder is None:
        beside = config_path.parent
        if config_path.name in ("config.yaml", ".job_config.json") or (beside / "samples").is_dir():
            folder = beside
        elif facts.training_folder:
            folder = Path(facts.training_folder) / facts.process_name
        else:
            folder = beside
    if "sample" not in proc or proc.get("sample") is None:
        raise ConfigError("process[0] has no `sample` block, so AI Toolkit renders no previews", config_path)
    block = parse_sample_block(proc["sample"], block_name="sample", path=str(config_path))
    first = proc.get("first_sample")
    first_block = parse_sample_block(first, block_name="first_sample", path=str(config_path)) \
        if first is not None else None
    job = Job(
        name=facts.job_name,
        config_path=config_path,
        config_kind=kind,
        folder=folder,
        samples_dir=folder / "samples",
        facts=facts,
        sample_block=block,
        first_sample_block=first_block,
    )
    job.resolved_samples("sample")  # fail early: no prompts, bad flags, bad values
    if first_block is not None:
        job.resolved_samples("first_sample")
    return job
