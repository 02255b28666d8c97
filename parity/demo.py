"""The built-in demo: a tiny FLUX.2 (and a tiny FLUX.2 [klein]), realistic AI Toolkit job folders, and three cases.

`build_demo(root)` writes
    root/tiny-flux2/                   the tiny model in both on-disk layouts (parity.tiny)
    root/output/tiny-portrait/         an AI Toolkit job folder as the trainer leaves it:
        config.yaml                    the job as users write it (code defaults left implicit on purpose:
                                       guidance 7 comes from AI Toolkit's code default, not the file)
        tiny-portrait_000000100.safetensors, tiny-portrait.safetensors   LoRA checkpoints (step 100, final 200)
        samples/{ms}__{step:09d}_{i}.jpg   previews at steps 0, 100, 200 rendered with AI Toolkit's preview
                                       semantics and saved as AI Toolkit saves them (Pillow defaults: JPEG q75)
    root/request.json                  an inference request in the reference server's format for the same prompts
    root/tiny-flux2-klein/             a tiny FLUX.2 [klein] base (parity.tiny.klein)
    root/output/tiny-klein/            a klein job: true CFG with a negative prompt, one prompt with a reference
                                       image (ctrl/ref.png in the job folder), previews at steps 0 and 200
and the repository ships cases/demo-parity.yaml (previews' own settings: passes),
cases/demo-reference-server.yaml (the reference server's defaults: drifts, with its causes) and
cases/demo-klein.yaml (the [klein] job with its own settings: passes).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from parity import fileio

log = logging.getLogger("parity")

JOB_NAME = "tiny-portrait"
TRAIN_STEPS = 200
CHECKPOINT_STEPS = (100,)   # plus the final file at TRAIN_STEPS
SAMPLE_EVERY = 100
BASE_MS = 1764100000000     # fixed "save time" stamps keep the demo byte-reproducible
DEMO_VERSION = "5"          # bump to rebuild existing demo folders
KLEIN_LORA_SEED = 11        # the dev job's LoRA uses write_job's default seed 7
KLEIN_JOB_NAME = "tiny-klein"

PROMPTS = [
    "[trigger] portrait of a woman, soft window light",
    "a red fox in deep snow --w 96 --h 64",
    "[trigger] holding a sign that says hello --seed 1234",
]


def demo_config(training_folder: Path) -> dict:
    """The job as a user writes it (AI Toolkit's YAML form). Sizes are tiny so the demo runs on a CPU."""
    return {
        "job": "extension",
        "config": {
            "name": JOB_NAME,
            "process": [
                {
                    "type": "sd_trainer",
                    "training_folder": str(training_folder),
                    "device": "cuda:0",
                    "trigger_word": "p3rs0n",
                    "network": {"type": "lora", "linear": 4, "linear_alpha": 4},
                    "save": {"dtype": "bf16", "save_every": 100, "max_step_saves_to_keep": 4},
                    "datasets": [{"folder_path": "/data/portraits", "caption_ext": "txt", "resolution": [512]}],
                    "train": {
                        "batch_size": 1, "steps": TRAIN_STEPS, "gradient_accumulation_steps": 1,
                        "train_unet": True, "train_text_encoder": False, "noise_scheduler": "flowmatch",
                        "optimizer": "adamw8bit", "lr": 1e-4,
                        # dtype left out: AI Toolkit's code default fp32 (bf16 kernels are slow on CPUs)
                    },
                    "model": {"name_or_path": "black-forest-labs/FLUX.2-dev", "arch": "flux2", "quantize": False},
                    "sample": {
                        "sampler": "flowmatch",
                        "sample_every": SAMPLE_EVERY,
                        "width": 64,
                        "height": 64,
                        "prompts": PROMPTS,
                        "neg": "",
                        "seed": 42,
                        "walk_seed": True,
                        "sample_steps": 8,
                        # guidance_scale left out: AI Toolkit's code default (7) applies
                    },
                }
            ],
        },
        "meta": {"name": "[name]", "version": "1.0"},
    }


def klein_demo_config(training_folder: Path) -> dict:
    """A FLUX.2 [klein] base job (`arch: flux2_klein_4b`): guidance 4 runs true CFG, prompt 1 has a negative
    prompt, prompt 2 a reference image (a path relative to the job folder)."""
    cfg = demo_config(training_folder)
    proc = cfg["config"]["process"][0]
    proc["model"] = {"name_or_path": "black-forest-labs/FLUX.2-klein-base-4B", "arch": "flux2_klein_4b",
                     "quantize": False}
    proc["sample"].pop("prompts")
    proc["sample"].update(guidance_scale=4.0, samples=[
        {"prompt": "[trigger] portrait of a woman, soft window light"},
        {"prompt": "a red fox in deep snow", "neg": "blurry, watermark"},
        {"prompt": "[trigger] the same woman, in the style of the reference", "ctrl_img": "ctrl/ref.png"},
    ])
    return cfg


def _write_reference(path: Path) -> None:
    """A smooth 80x96 colour field as the demo's reference image (deterministic)."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:96, 0:80]
    rgb = np.stack([x * 3, y * 2, 255 - x * 2 - y], axis=-1).clip(0, 255).astype("uint8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fileio.save_image(path, Image.fromarray(rgb))


def demo_request() -> dict:
    """What a user sends the reference inference server for the same prompts: sizes given, everything else left
    to the server's defaults (25 steps, guidance 4.0, seed 42 + i, prompt flags not parsed)."""
    return {
        "model": "flux2",
        "trigger_word": "p3rs0n",
        "prompts": [{"prompt": p, "width": 64, "height": 64} for p in PROMPTS],
        "loras": [{"path": f"output/{JOB_NAME}/{JOB_NAME}.safetensors", "network_multiplier": 1.0}],
    }


@dataclass
class DemoPaths:
    root: Path
    base_model: Path
    job: Path
    request: Path
    klein_base_model: Path
    klein_job: Path


def write_job(
    save_root: Path,
    base_model: Path,
    *,
    config: dict | None = None,
    checkpoints: dict[int, float] | None = None,
    preview_steps: tuple[int, ...] | None = None,
    lora_seed: int = 7,
    engine=None,
    base_ms: int = BASE_MS,
    lora_dtype: str = "bf16",
) -> Path:
    """Write an AI Toolkit job folder as the trainer leaves it: config.yaml, LoRA checkpoints and previews rendered
    with AI Toolkit's preview semantics (saved like AI Toolkit saves them). Used by the demo and the tests.

    `config` defaults to `demo_config` (its name is set to the folder name); `checkpoints` maps a step label to the
    LoRA strength at that step (the label equal to train.steps is written as the final `{name}.safetensors`);
    previews are rendered at label 0 (baseline, no LoRA) and every checkpoint label unless `preview_steps` says.
    `lora_dtype` ("bf16" or "fp32") is the precision the checkpoints are written in."""
    from PIL import Image

    from parity.engine import Engine
    from parity.tiny import TRANSFORMER_CONFIG, make_lora, save_aitk_lora
    from parity.engine.weights import torch_dtype
    from parity.job import checkpoint_filename, load_job
    from parity.job.layout import write_config_copy, write_preview

    save_root = Path(save_root)
    name = save_root.name
    config = config or demo_config(save_root.parent)
    config["config"]["name"] = name
    train_steps = int(config["config"]["process"][0].get("train", {}).get("steps", 1000))
    write_config_copy(save_root, config)
    checkpoints = checkpoints if checkpoints is not None else {s: s / TRAIN_STEPS for s in (*CHECKPOINT_STEPS,
                                                                                               TRAIN_STEPS)}
    # LoRA checkpoints: one fixed direction whose strength grows with training, as a LoRA's effect does.
    for step, strength in checkpoints.items():
        sd = make_lora(TRANSFORMER_CONFIG, seed=lora_seed, strength=strength,
                       dtype=torch_dtype(lora_dtype))
        fname = checkpoint_filename(name, final=True) if step == train_steps else checkpoint_filename(name, step)
        save_aitk_lora(save_root / fname, sd, step=step, name=name)
    job = load_job(save_root)
    engine = engine or Engine(base_model, device="cpu")
    samples = job.resolved_samples()
    application = job.lora_application(samples)
    for step in preview_steps if preview_steps is not None else (0, *sorted(checkpoints)):
        lora = None if step == 0 else job.checkpoint_for(step)
        for s in samples:
            spec = job.render_spec(s, lora, application).spec
            log.info("rendering preview step %d prompt %d", step, s.index)
            image = Image.fromarray(engine.render(spec).image)
            write_preview(job.samples_dir, image, ms=base_ms + step * 1000 + s.index, step=step, index=s.index)
    return save_root


def build_demo(root: str | Path, *, force: bool = False) -> DemoPaths:
    """Build (or reuse) the demo under `root`; idempotent and quick when already built."""
    root = Path(root).resolve()
    paths = DemoPaths(root, root / "tiny-flux2", root / "output" / JOB_NAME, root / "request.json",
                      root / "tiny-flux2-klein", root / "output" / KLEIN_JOB_NAME)
    stamp = root / ".built"
    if stamp.exists() and stamp.read_text().strip() == DEMO_VERSION and not force:
        return paths
    import shutil

    from parity.tiny import build_tiny

    for sub in ("tiny-flux2", "tiny-flux2-klein", "output"):
        shutil.rmtree(root / sub, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    log.info("building the tiny FLUX.2 model in %s", paths.base_model)
    build_tiny(paths.base_model)
    write_job(paths.job, paths.base_model, config=demo_config(root / "output"))
    fileio.write_text(paths.request, json.dumps(demo_request(), indent=2) + "\n")
    from parity.tiny import build_tiny_klein

    log.info("building the tiny FLUX.2 [klein] in %s", paths.klein_base_model)
    build_tiny_klein(paths.klein_base_model)
    _write_reference(paths.klein_job / "ctrl" / "ref.png")
    # its own LoRA direction (seed), so a dev LoRA given to the klein job (or the reverse) is caught by its tensors
    write_job(paths.klein_job, paths.klein_base_model, config=klein_demo_config(root / "output"),
              checkpoints={TRAIN_STEPS: 1.0}, lora_seed=KLEIN_LORA_SEED)
    fileio.write_text(stamp, DEMO_VERSION + "\n")
    return paths
