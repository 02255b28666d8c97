"""`load_job(path) -> Job`: one AI Toolkit FLUX.2 LoRA job, its resolved samples, previews and checkpoints."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from parity.errors import ConfigError, InputFileError
from parity.family import family
from parity.job.config import JobFacts, job_facts, preprocess, process_of, read_config_file
from parity.job.previews import (
    CheckpointIndex,
    PreviewFormat,
    PreviewIndex,
    detect_format,
    index_checkpoints,
    index_previews,
)
from parity.job import labels, specs
from parity.job.labels import StepArg
from parity.job.pairing import checkpoint_for, choose_preview, missing_checkpoint
from parity.job.references import resolve_reference, working_dirs
from parity.job.samples import ResolvedSample, SampleBlock, parse_sample_block, resolve_samples
from parity.spec import RenderSpec, ResolvedSpec


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

    def never_rendered(self) -> str | None:
        """Why AI Toolkit will write none of the planned previews (a FLUX.2-dev prompt whose negative prompt is
        not text: sample() fails on it, and the first failing sample() ends the run), or None."""
        if family(self.facts.arch).klein:  # the Mistral prompt formatter is what fails, not [klein]'s Qwen3 one
            return None
        groups = {"sample" if g == "final" else g for s in self.expected_steps() for g in self.groups_at(s)}
        for g in sorted(groups):
            for s in self.resolved_samples(g):
                if not isinstance(s.neg, str):
                    return (f"process[0].{g} prompt {s.index}: " + _NEG_NOT_TEXT.format(neg=s.neg)
                            + ", so sample() fails and training writes no preview; set `neg: \"\"`")
        return None

    def lora_application(self, samples: list[ResolvedSample]) -> str:
        """How the sample() call applies the LoRA: `merged` or `live` (parity.job.specs.lora_application)."""
        return specs.lora_application(self.facts, samples)

    def working_dirs(self) -> list[Path]:
        """Where AI Toolkit may have run (parity.job.references.working_dirs)."""
        return working_dirs(self.facts.training_folder, self.folder, self.config_path)

    def resolve_reference(self, written: str) -> str:
        """A ctrl_img (or pretrained LoRA) path as AI Toolkit opens it, from its working directory."""
        return resolve_reference(written, self.working_dirs())

    def render_spec(self, s: ResolvedSample, lora_path: Path | None, application: str) -> ResolvedSpec:
        return specs.render_spec(self.facts, s, lora_path, application, self.resolve_reference)

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
        """The LoRA file of label `step` (parity.job.pairing.checkpoint_for); None when there is none."""
        return checkpoint_for(self.checkpoints, self.facts, step)

    def groups_at(self, step: int) -> list[str]:
        """sample() calls that render at this label, in run order (parity.job.labels.groups_at)."""
        return labels.groups_at(self.facts, self.first_sample_block is not None, step)

    def expected_steps(self) -> list[int]:
        """The labels training will write previews at (parity.job.labels.expected_steps)."""
        return labels.expected_steps(self.facts, bool(self.groups_at(0)))

    def items(self, step: StepArg = "latest", *, strict: bool = True, detect: bool = True,
              expected: bool = False) -> list[PreviewItem]:
        """Items to reproduce at the chosen step label(s). strict: a missing preview or checkpoint raises
        InputFileError listing what exists; otherwise the item records it in `missing`. expected: choose among
        the labels training will write (`expected_steps`) instead of the previews present (for plans made
        before or during training; implies non-strict)."""
        out: list[PreviewItem] = []
        strict = strict and not expected
        for s in labels.select_steps(step, self.expected_steps() if expected else self.steps(), self.samples_dir):
            groups = self.groups_at(s)
            per_group = {g: self.resolved_samples(g) for g in groups}
            for g, samples in per_group.items():
                application = self.lora_application(samples)
                for rs in samples:
                    out.append(self._item(s, g, rs, groups, application, strict, detect))
        return out

    def _item(self, s, g, rs, groups, application, strict, detect) -> PreviewItem:
        files = list(self.previews.files.get((s, rs.index), []))
        covering = [x for x in groups if rs.index < len(self.resolved_samples(x))]
        chosen, superseded = choose_preview(files, covering, g)
        missing: list[str] = []
        if chosen is None:
            have = sorted({i for (st, i) in self.previews.files if st == s})
            msg = f"no preview for step {s} index {rs.index} ({g}); indices at this step: {have or 'none'}"
            self._missing(msg, self.samples_dir, strict, missing)
        baseline = s == 0 and g in ("sample", "first_sample")
        ckpt = None if baseline else self.checkpoint_for(s)
        pretrained = bool(self.facts.pretrained_lora_path) and labels.before_training(self.facts, s, g)
        if pretrained:   # the untrained network is the loaded one (a later save of it may differ in dtype)
            ckpt, msg = self.pretrained_lora()
            if msg:
                self._missing(msg, self.config_path, strict, missing)
        if ckpt is None and not baseline and not pretrained:
            self._missing(missing_checkpoint(self.name, self.facts, self.checkpoints, s), self.folder, strict,
                          missing)
        off_schedule = labels.off_schedule_note(self.facts, s)
        return PreviewItem(
            step=s,
            index=rs.index,
            group=g,
            preview=chosen.path if chosen else None,
            checkpoint=ckpt,
            baseline=baseline,
            preview_format=detect_format(chosen.path) if (chosen and detect) else None,
            resolved=self.render_spec(rs, ckpt, application),
            raw_prompt=rs.raw_prompt,
            requested_width=rs.requested_width,
            requested_height=rs.requested_height,
            sample=rs,
            preview_ms=chosen.ms if chosen else None,
            superseded=superseded,
            missing=tuple(missing),
            notes=tuple(rs.notes) + ((off_schedule,) if off_schedule else ()),
        )

    @staticmethod
    def _missing(msg: str, where: Path, strict: bool, missing: list[str]) -> None:
        """strict: a missing file is an error naming `where`; otherwise the item records it."""
        if strict:
            raise InputFileError(msg, where)
        missing.append(msg)


# FLUX.2-dev: sample() encodes every negative prompt, and the Mistral prompt formatter calls
# `prompt.replace("[IMG]", "")` on it (extensions_built_in/diffusion_models/flux2/src/pipeline.py L80, reached through
# base_model.py L627-631 -> flux2_model.py L470). A negative prompt that is not text (SampleConfig's default `neg` is
# False, config_modules.py L86) raises AttributeError there: AI Toolkit 27a03a91 writes no preview for such a job.
# A `--n` flag in the prompt gives a string and is fine. Previews that exist anyway came from another AI Toolkit
# version; FLUX.2-dev discards the negative prompt, so they are reproduced as usual (only `parity plan` before any
# preview says that none will be written: Job.never_rendered).
_NEG_NOT_TEXT = ("the negative prompt is {neg!r} (`neg` not set: AI Toolkit's default is False), which AI Toolkit's "
                 "FLUX.2 prompt encoder cannot encode (str.replace on it, flux2/src/pipeline.py L80)")


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
