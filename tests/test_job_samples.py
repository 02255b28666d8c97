"""Sample resolution rules, table-driven. Every expected value is written from the reference's description of
AI Toolkit (shared/reference/aitk-flux2-previews.md §A.2-A.4, §B) and ai-toolkit's code at the cited lines,
never from running parity. Each case is one where a wrong rule would change the rendered image."""

from __future__ import annotations

import json

import pytest

from parity.errors import ConfigError
from parity.job import load_job


def make_config(sample: dict | None, *, trigger=None, model=None, train=None, first_sample=None, name="mylora",
                extra_proc=None) -> dict:
    proc = {
        "type": "sd_trainer",
        "training_folder": "output",
        "model": model if model is not None else {"arch": "flux2", "name_or_path": "black-forest-labs/FLUX.2-dev"},
        "train": train if train is not None else {"steps": 100},
        "network": {"type": "lora", "linear": 16},
    }
    if trigger is not None:
        proc["trigger_word"] = trigger
    if sample is not None:
        proc["sample"] = sample
    if first_sample is not None:
        proc["first_sample"] = first_sample
    proc.update(extra_proc or {})
    return {"job": "extension", "config": {"name": name, "process": [proc]}, "meta": {"name": "[name]"}}


def resolve(tmp_path, sample, **kw):
    path = tmp_path / "job.json"
    path.write_text(json.dumps(make_config(sample, **kw)))
    return load_job(path).resolved_samples()


def fields(s):
    return (s.prompt, s.width, s.height, s.seed, s.sample_steps, s.guidance_scale, s.network_multiplier)


# (case id, sample block, trigger, expected per prompt: (prompt, w, h, seed, steps, guidance, multiplier))
CASES = [
    # code defaults: 512x512, seed 0 for every prompt (no walk), 20 steps, guidance 7, multiplier 1
    ("code-defaults", {"prompts": ["a cat", "a dog"]}, None,
     [("a cat", 512, 512, 0, 20, 7.0, 1.0), ("a dog", 512, 512, 0, 20, 7.0, 1.0)]),
    # UI-style block: 1024 px, seed 42 walked (+i), guidance 4, 30 steps
    ("ui-style", {"samples": [{"prompt": "p0"}, {"prompt": "p1"}, {"prompt": "p2"}], "width": 1024, "height": 1024,
                  "seed": 42, "walk_seed": True, "guidance_scale": 4, "sample_steps": 30, "neg": ""}, None,
     [("p0", 1024, 1024, 42, 30, 4.0, 1.0), ("p1", 1024, 1024, 43, 30, 4.0, 1.0), ("p2", 1024, 1024, 44, 30, 4.0, 1.0)]),
    # walk_seed off: a per-item seed carries over to every later prompt
    ("carry-over", {"samples": [{"prompt": "a"}, {"prompt": "b", "seed": 7}, {"prompt": "c"}], "seed": 3}, None,
     [("a", 512, 512, 3, 20, 7.0, 1.0), ("b", 512, 512, 7, 20, 7.0, 1.0), ("c", 512, 512, 7, 20, 7.0, 1.0)]),
    # walk_seed on: the item seed applies to its prompt only; walking resumes at start+i
    ("walk-item-seed", {"samples": [{"prompt": "a"}, {"prompt": "b", "seed": 7}, {"prompt": "c"}], "seed": 3,
                        "walk_seed": True}, None,
     [("a", 512, 512, 3, 20, 7.0, 1.0), ("b", 512, 512, 7, 20, 7.0, 1.0), ("c", 512, 512, 5, 20, 7.0, 1.0)]),
    # a flag seed is per prompt and does not carry
    ("flag-seed-no-carry", {"prompts": ["a --seed 9", "b"], "seed": 1}, None,
     [("a", 512, 512, 9, 20, 7.0, 1.0), ("b", 512, 512, 1, 20, 7.0, 1.0)]),
    # precedence: block < item < flag
    ("precedence", {"samples": [{"prompt": "x --w 640 --cfg 2.5 --steps 12 --m 0.5", "width": 768, "height": 896,
                                 "guidance_scale": 3, "sample_steps": 25, "network_multiplier": 0.8}],
                    "width": 1024, "height": 1024, "guidance_scale": 4, "sample_steps": 30}, None,
     [("x", 640, 896, 0, 12, 2.5, 0.5)]),
    ("item-over-block", {"samples": [{"prompt": "x", "width": 768, "sample_steps": 25, "guidance_scale": 3.5}],
                         "width": 1024, "sample_steps": 30}, None,
     [("x", 768, 512, 0, 25, 3.5, 1.0)]),
    # alias flags --h --d --l --s --network_multiplier; the last of two flags wins
    ("alias-flags", {"prompts": ["y --h 768 --d 11 --l 3 --s 8 --network_multiplier 1.5 --s 9"]}, None,
     [("y", 512, 768, 11, 9, 3.0, 1.5)]),
    # any `--` starts a flag, also inside a word: "well--lit room" -> prompt "well", unknown flag "lit" ignored
    ("dashdash-in-word", {"prompts": ["a well--lit room --w 768"]}, None, [("a well", 768, 512, 0, 20, 7.0, 1.0)]),
    # unknown flags are ignored; --n sets the (unused) negative prompt and is removed from the prompt
    ("unknown-and-neg", {"prompts": ["  z --foo bar --n blurry  "]}, None, [("z", 512, 512, 0, 20, 7.0, 1.0)]),
    # floors: floor 8 with min 64, then floor 16 for FLUX.2: 57 -> 56 -> 64, 72 -> 72 -> 64, 1000 -> 992
    ("floor-57-72", {"prompts": ["f"], "width": 57, "height": 72}, None, [("f", 64, 64, 0, 20, 7.0, 1.0)]),
    ("floor-1000", {"prompts": ["f --w 1000 --h 1020"]}, None, [("f", 992, 1008, 0, 20, 7.0, 1.0)]),
    ("floor-negative", {"prompts": ["f --w -100"]}, None, [("f", 64, 512, 0, 20, 7.0, 1.0)]),
    # no trigger word: [trigger] stays literally in the prompt
    ("no-trigger", {"prompts": ["photo of [trigger]"]}, None, [("photo of [trigger]", 512, 512, 0, 20, 7.0, 1.0)]),
    ("trigger", {"prompts": ["photo of [trigger], [trigger]"]}, "sks",
     [("photo of sks, sks", 512, 512, 0, 20, 7.0, 1.0)]),
    # [name] is replaced by the JOB NAME when AI Toolkit loads the config (toolkit/config.py L36-47),
    # with or without a trigger word
    ("name-no-trigger", {"prompts": ["[name] style"]}, None, [("mylora style", 512, 512, 0, 20, 7.0, 1.0)]),
    ("name-with-trigger", {"prompts": ["[name] [trigger]"]}, "sks", [("mylora sks", 512, 512, 0, 20, 7.0, 1.0)]),
    # flags are parsed after trigger substitution: a trigger with `--w 640` in it sets the width
    ("trigger-then-flags", {"prompts": ["a [trigger]"]}, "tok --w 640", [("a tok", 640, 512, 0, 20, 7.0, 1.0)]),
    # network_multiplier strings are float()-ed; an unparsable one becomes 1.0
    ("multiplier-string", {"samples": [{"prompt": "a", "network_multiplier": "0.75"},
                                        {"prompt": "b", "network_multiplier": "lots"}]}, None,
     [("a", 512, 512, 0, 20, 7.0, 0.75), ("b", 512, 512, 0, 20, 7.0, 1.0)]),
    # `samples` wins over legacy `prompts` when both are present
    ("samples-over-prompts", {"prompts": ["legacy"], "samples": [{"prompt": "new"}]}, None,
     [("new", 512, 512, 0, 20, 7.0, 1.0)]),
    # a prompt-less entry is dropped from the prompt list but settings still come from samples[i]
    ("promptless-misalign", {"samples": [{"width": 768}, {"prompt": "b", "width": 1024}]}, None,
     [("b", 768, 512, 0, 20, 7.0, 1.0)]),
    # empty prompt stays empty (no flag parsing)
    ("empty-prompt", {"prompts": [""]}, None, [("", 512, 512, 0, 20, 7.0, 1.0)]),
    # a space is the only separator between flag and value: "--w\t640" is the unknown flag "w\t640"
    ("tab-after-flag", {"prompts": ["q --w\t640"]}, None, [("q", 512, 512, 0, 20, 7.0, 1.0)]),
]


@pytest.mark.parametrize("case,sample,trigger,expected", CASES, ids=[c[0] for c in CASES])
def test_resolution_rules(tmp_path, case, sample, trigger, expected):
    got = resolve(tmp_path, sample, trigger=trigger)
    assert [fields(s) for s in got] == expected


SOURCE_CASES = [
    ("defaults", {"prompts": ["a"]}, {"width": "default", "seed": "default", "sample_steps": "default",
                                      "guidance_scale": "default", "network_multiplier": "default"}),
    ("block", {"prompts": ["a"], "width": 768, "seed": 5, "sample_steps": 9},
     {"width": "block", "seed": "block", "sample_steps": "block"}),
    ("item", {"samples": [{"prompt": "a", "width": 768, "seed": 4, "guidance_scale": 2}]},
     {"width": "item", "seed": "item", "guidance_scale": "item", "prompt": "item"}),
    ("flag", {"prompts": ["a --w 768 --seed 3 --m 0.5"]}, {"width": "flag", "seed": "flag",
                                                          "network_multiplier": "flag", "prompt": "block"}),
    ("floor", {"prompts": ["a --w 1000"]}, {"width": "floor"}),
]


@pytest.mark.parametrize("case,sample,expected", SOURCE_CASES, ids=[c[0] for c in SOURCE_CASES])
def test_sources(tmp_path, case, sample, expected):
    s = resolve(tmp_path, sample)[0]
    for key, src in expected.items():
        assert s.sources[key] == src, key


def test_seed_sources_walk_and_carry(tmp_path):
    got = resolve(tmp_path, {"samples": [{"prompt": "a"}, {"prompt": "b", "seed": 7}, {"prompt": "c"}]})
    assert [s.sources["seed"] for s in got] == ["default", "item", "carry"]
    got = resolve(tmp_path, {"prompts": ["a", "b"], "walk_seed": True, "seed": 10})
    assert [s.sources["seed"] for s in got] == ["walk", "walk"]


def test_requested_size_is_kept_before_floors(tmp_path):
    s = resolve(tmp_path, {"prompts": ["a --w 57 --h 1000"]})[0]
    assert (s.requested_width, s.requested_height, s.width, s.height) == (57, 1000, 64, 992)


def test_seed_minus_one_is_random_unless_a_flag_sets_it(tmp_path):
    # block seed -1: AI Toolkit draws random.randint before the flags are parsed (config_modules.py L1165 < L1192)
    a, b, c = resolve(tmp_path, {"prompts": ["a", "b --seed 5", "c --seed -1"], "seed": -1})
    assert not a.seed_reproducible
    assert (b.seed, b.seed_reproducible) == (5, True)
    assert (c.seed, c.seed_reproducible) == (-1, True)  # torch.manual_seed(-1) is deterministic


@pytest.mark.parametrize("prompt,flag", [("a --w abc", "--w"), ("b --steps 2.5", "--steps"), ("c --cfg x", "--cfg"),
                                         ("d --seed", "--seed"), ("e --ev 1,,2", "--ev")])
def test_unparsable_flag_value_is_a_config_error_naming_the_prompt(tmp_path, prompt, flag):
    # AI Toolkit calls int()/float() on the flag content; a ValueError aborts sample() (no preview at all)
    with pytest.raises(ConfigError) as e:
        resolve(tmp_path, {"prompts": [prompt]})
    assert repr(prompt) in str(e.value) and flag in str(e.value) and "job.json" in str(e.value)


@pytest.mark.parametrize("sample,needle", [
    ({"prompts": []}, "no prompts"),
    ({"samples": [{"width": 512}]}, "no prompts"),
    ({"prompts": ["a"], "width": "wide"}, "width"),
    ({"prompts": ["a"], "seed": "x"}, "seed"),
    ({"samples": ["not a dict"]}, r"samples\[0\] must be a mapping"),
    ({"prompts": [123]}, "prompt must be a string"),
])
def test_bad_sample_blocks(tmp_path, sample, needle):
    with pytest.raises(ConfigError, match=needle):
        resolve(tmp_path, sample)


def test_no_sample_block(tmp_path):
    with pytest.raises(ConfigError, match="no `sample` block"):
        resolve(tmp_path, None)


def test_first_sample_has_its_own_code_defaults(tmp_path):
    # first_sample is a full SampleConfig: it does not inherit width/seed/steps from `sample`
    path = tmp_path / "job.json"
    path.write_text(json.dumps(make_config({"prompts": ["main"], "width": 1024, "seed": 42, "sample_steps": 30},
                                           first_sample={"prompts": ["first", "second"], "walk_seed": True})))
    job = load_job(path)
    first = job.resolved_samples("first_sample")
    assert [fields(s) for s in first] == [("first", 512, 512, 0, 20, 7.0, 1.0), ("second", 512, 512, 1, 20, 7.0, 1.0)]
    assert [s.group for s in first] == ["first_sample", "first_sample"]
    assert [fields(s) for s in job.resolved_samples()] == [("main", 1024, 512, 42, 30, 7.0, 1.0)]
