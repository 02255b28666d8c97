"""Config readers (user YAML, UI job JSON, config.yaml copy), architecture check, model/train facts.
Expected values follow the reference §A.1, §A.5-A.7 and AI Toolkit's code defaults."""

from __future__ import annotations

import json
import textwrap

import pytest
import yaml

from parity.errors import ConfigError
from parity.job import load_job
from parity.job.layout import write_config_copy

USER_YAML = textwrap.dedent("""\
    job: extension
    config:
      name: "my_flux2_lora"
      process:
        - type: 'sd_trainer'
          training_folder: "output"
          device: cuda:0
          trigger_word: "p3r5on"
          network:
            type: "lora"
            linear: 16
            linear_alpha: 16
          save:
            save_every: 250
          train:
            steps: 2000
            lr: 1e-4
          model:
            name_or_path: "black-forest-labs/FLUX.2-dev"
            arch: "flux2"
          sample:
            sample_every: 250
            prompts:
              - "[trigger] holding a sign that says 'I LOVE PROMPTS!'"
              - "[name] at the beach --w 1024 --h 768"
            guidance_scale: 4e0
    meta:
      name: "[name]"
    """)


def test_user_yaml_code_defaults(tmp_path):
    p = tmp_path / "train.yaml"
    p.write_text(USER_YAML)
    job = load_job(p)
    f = job.facts
    assert (f.dtype, f.quantize, f.quantize_te, f.qtype, f.save_dtype) == ("fp32", False, False, None, "fp16")
    assert (f.steps, f.trigger_word, f.network_type, f.process_type) == (2000, "p3r5on", "lora", "sd_trainer")
    a, b = job.resolved_samples()
    # `4e0` is a float for AI Toolkit's YAML loader (toolkit/config.py L51-61), not the string "4e0"
    assert a.guidance_scale == 4.0 and b.guidance_scale == 4.0
    assert a.prompt == "p3r5on holding a sign that says 'I LOVE PROMPTS!'"
    assert (b.prompt, b.width, b.height) == ("my_flux2_lora at the beach", 1024, 768)
    # a config file outside its output folder: the folder is {training_folder}/{name}
    assert job.folder.as_posix().endswith("output/my_flux2_lora")
    spec = job.render_spec(a, None, job.lora_application([a, b])).spec
    assert (spec.dtype, spec.quantize, spec.quantize_te, spec.lora_application) == ("fp32", None, None, "merged")
    assert (spec.semantics, spec.schedule, spec.generator) == ("aitk", "aitk", "cpu")


def ui_job(**model):
    return {
        "job": "extension",
        "config": {"name": "ui_lora", "process": [{
            "type": "diffusion_trainer", "training_folder": "/app/output", "sqlite_db_path": "./aitk_db.db",
            "trigger_word": None,
            "network": {"type": "lokr", "linear": 32, "linear_alpha": 32, "lokr_full_rank": True},
            "save": {"dtype": "bf16", "save_every": 250, "max_step_saves_to_keep": 4},
            "train": {"steps": 3000, "dtype": "bf16", "skip_first_sample": False, "disable_sampling": False},
            "model": {"name_or_path": "black-forest-labs/FLUX.2-dev", "arch": "flux2:my-tag", "quantize": True,
                      "qtype": "qfloat8", "quantize_te": True, "qtype_te": "qfloat8", "low_vram": True, **model},
            "sample": {"sampler": "flowmatch", "sample_every": 250, "width": 1024, "height": 1024,
                       "samples": [{"prompt": "woman with red hair"}, {"prompt": "a bear"}], "neg": "", "seed": 42,
                       "walk_seed": True, "guidance_scale": 4, "sample_steps": 30, "num_frames": 1, "fps": 1},
        }]},
        "meta": {"name": "[name]", "version": "1.0"},
    }


def test_ui_job_json(tmp_path):
    folder = tmp_path / "ui_lora"
    (folder / "samples").mkdir(parents=True)
    (folder / ".job_config.json").write_text(json.dumps(ui_job(), indent=2))
    job = load_job(folder)
    f = job.facts
    assert job.config_path.name == ".job_config.json" and job.folder == folder
    assert (f.arch, f.dtype, f.quantize, f.quantize_te, f.qtype, f.network_type, f.save_dtype) == \
        ("flux2", "bf16", True, True, "qfloat8", "lokr", "bf16")
    a, b = job.resolved_samples()
    assert [(s.seed, s.width, s.sample_steps, s.guidance_scale) for s in (a, b)] == [(42, 1024, 30, 4.0), (43, 1024, 30, 4.0)]
    spec = job.render_spec(a, None, job.lora_application([a, b])).spec
    # quantized transformer -> the LoRA cannot be merged and runs live (BaseSDTrainProcess.py L1995-2005)
    assert (spec.lora_application, spec.quantize, spec.quantize_te, spec.dtype) == ("live", "qfloat8", "qfloat8", "bf16")


@pytest.mark.parametrize("model,expect", [
    ({"quantize": False, "quantize_te": False}, (None, None, "merged")),
    ({"quantize": False, "quantize_te": True}, (None, "qfloat8", "merged")),   # TE quantized with `qtype`
    ({"quantize": True, "qtype": "qfloat8|ostris/ara"}, ("qfloat8", "qfloat8", "live")),
    ({"quantize": True, "layer_offloading": True}, ("float8", "float8", "live")),  # quanto -> torchao name
    ({"quantize": False, "quantize_te": False, "layer_offloading": True}, (None, None, "live")),
])
def test_quantization_and_lora_application(tmp_path, model, expect):
    folder = tmp_path / "ui_lora"
    (folder / "samples").mkdir(parents=True)
    (folder / ".job_config.json").write_text(json.dumps(ui_job(**model)))
    job = load_job(folder)
    s = job.resolved_samples()
    spec = job.render_spec(s[0], None, job.lora_application(s)).spec
    assert (spec.quantize, spec.quantize_te, spec.lora_application) == expect


def test_different_multipliers_prevent_merging(tmp_path):
    # base_model.py L426-433: merge only if every sample of the call shares one network_multiplier
    cfg = ui_job(quantize=False, quantize_te=False)
    cfg["config"]["process"][0]["sample"]["samples"][1]["network_multiplier"] = 0.5
    (tmp_path / "j.json").write_text(json.dumps(cfg))
    job = load_job(tmp_path / "j.json")
    assert job.lora_application(job.resolved_samples()) == "live"


@pytest.mark.parametrize("spelling,dtype", [("float32", "fp32"), ("float", "fp32"), ("bfloat16", "bf16"),
                                            ("half", "fp16"), ("bf16", "bf16")])
def test_dtype_spellings(tmp_path, spelling, dtype):
    cfg = ui_job()
    cfg["config"]["process"][0]["train"]["dtype"] = spelling
    (tmp_path / "j.json").write_text(json.dumps(cfg))
    assert load_job(tmp_path / "j.json").facts.dtype == dtype


@pytest.mark.parametrize("model,found", [
    ({"arch": "flux"}, "FLUX.1"),
    ({"arch": "flex1"}, "FLUX.1"),
    ({"arch": None, "is_flux": True}, "FLUX.1"),
    ({"arch": "flux2_klein_base"}, "'flux2_klein_base'"),
    ({"arch": "qwen_image:x"}, "'qwen_image'"),
    ({"arch": None}, "'sd1'"),
])
def test_non_flux2_jobs_are_rejected_naming_the_arch(tmp_path, model, found):
    (tmp_path / "j.json").write_text(json.dumps(ui_job(**model)))
    with pytest.raises(ConfigError, match="not a FLUX.2 job") as e:
        load_job(tmp_path / "j.json")
    assert found in str(e.value)


def test_malformed_yaml_reports_line_and_column(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("job: extension\nconfig:\n  name: x\n  process: [\n    {type: sd_trainer\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML at line \d+, column \d+"):
        load_job(p)


def test_malformed_json_reports_line_and_column(tmp_path):
    folder = tmp_path / "j"
    folder.mkdir()
    (folder / ".job_config.json").write_text('{\n  "job": "extension",\n  "config": {,}\n}')
    with pytest.raises(ConfigError, match=r"\.job_config\.json: invalid JSON at line 3, column 14"):
        load_job(folder)


@pytest.mark.parametrize("data,needle", [
    ([1, 2], "top level must be a mapping"),
    ({"config": {"name": "x"}}, "'job'"),
    ({"job": "extension", "config": {"process": []}}, "config.name"),
    ({"job": "extension", "config": {"name": "x", "process": []}}, "non-empty list"),
    ({"job": "extension", "config": {"name": "x", "process": [{"type": "ui_traner"}]}}, "'ui_traner'"),
])
def test_structural_errors(tmp_path, data, needle):
    (tmp_path / "j.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=needle):
        load_job(tmp_path / "j.json")


def test_folder_without_config_lists_contents(tmp_path):
    (tmp_path / "samples").mkdir()
    (tmp_path / "log.txt").write_text("")
    with pytest.raises(ConfigError, match="found: log.txt, samples"):
        load_job(tmp_path)


def test_config_yaml_preferred_and_not_preprocessed_again(tmp_path, monkeypatch):
    folder = tmp_path / "out" / "copy_lora"
    (folder / "samples").mkdir(parents=True)
    cfg = ui_job()
    cfg["config"]["name"] = "copy_lora"
    # the copy is written after preprocessing: no ${VAR} or [name] left; a literal "${HOME}" stays as is
    cfg["config"]["process"][0]["sample"]["samples"][0]["prompt"] = "cost ${HOME} dollars"
    write_config_copy(folder, cfg)
    (folder / ".job_config.json").write_text("{ not json")
    job = load_job(folder)
    assert job.config_path.name == "config.yaml" and job.config_kind == "config.yaml"
    assert job.resolved_samples()[0].prompt == "cost ${HOME} dollars"


def test_user_yaml_env_placeholders(tmp_path, monkeypatch):
    p = tmp_path / "t.yaml"
    p.write_text(USER_YAML.replace('"black-forest-labs/FLUX.2-dev"', '"${PARITY_TEST_MODEL}"'))
    monkeypatch.delenv("PARITY_TEST_MODEL", raising=False)
    with pytest.raises(ConfigError, match="PARITY_TEST_MODEL is not set"):
        load_job(p)
    monkeypatch.setenv("PARITY_TEST_MODEL", "/models/flux2")
    assert load_job(p).facts.name_or_path == "/models/flux2"


def test_ordered_dict_tagged_yaml_is_read_safely(tmp_path):
    # a copy dumped by plain PyYAML from OrderedDicts (AI Toolkit's raw_config is one); read as data only
    import collections

    od = collections.OrderedDict
    cfg = od([("job", "extension"), ("config", od([("name", "od"), ("process", [od([
        ("type", "sd_trainer"), ("model", {"arch": "flux2", "name_or_path": "x"}),
        ("sample", od([("prompts", ["hello"])]))])])]))])
    p = tmp_path / "od.yaml"
    p.write_text(yaml.dump(cfg))
    assert "!!python/object/apply:collections.OrderedDict" in p.read_text()
    assert load_job(p).resolved_samples()[0].prompt == "hello"


def test_python_tags_are_refused(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("!!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_job(p)
