import json
import math
import re

import pytest

from rlhfkit.errors import RlhfkitError
from rlhfkit.params import PipelineParams, steps_for_epochs

# The course's lesson-3 dict, exactly as passed to aiplatform.PipelineJob.
COURSE = {
    "preference_dataset": "gs://vertex-ai/generative-ai/rlhf/text_small/"
                          "summarize_from_feedback_tfds/comparisons/train/*.jsonl",
    "prompt_dataset": "gs://vertex-ai/generative-ai/rlhf/text_small/reddit_tfds/train/*.jsonl",
    "eval_dataset": "gs://vertex-ai/generative-ai/rlhf/text_small/reddit_tfds/val/*.jsonl",
    "large_model_reference": "llama-2-7b",
    "reward_model_train_steps": 1410,
    "reinforcement_learning_train_steps": 320,
    "reward_model_learning_rate_multiplier": 1.0,
    "reinforcement_learning_rate_multiplier": 1.0,
    "kl_coeff": 0.1,
    "instruction": "Summarize in less than 50 words",
}
# Its full-data variant: the whole datasets, 10,000 steps each, RL multiplier 0.2.
COURSE_FULL = {**COURSE,
               "preference_dataset": COURSE["preference_dataset"].replace("text_small", "text"),
               "prompt_dataset": COURSE["prompt_dataset"].replace("text_small", "text"),
               "eval_dataset": COURSE["eval_dataset"].replace("text_small", "text"),
               "reward_model_train_steps": 10000,
               "reinforcement_learning_train_steps": 10000,
               "reinforcement_learning_rate_multiplier": 0.2}


def test_course_dict_and_vertex_defaults():
    p = PipelineParams.from_dict(COURSE)
    assert p.reward_model_train_steps == 1410 and p.reinforcement_learning_train_steps == 320
    assert p.instruction == "Summarize in less than 50 words"
    # Vertex's defaults and hidden constants for everything the dict leaves out.
    assert (p.prompt_sequence_length, p.target_sequence_length) == (512, 64)
    assert (p.batch_size, p.policy_lora_dim, p.reward_lora_dim) == (64, 1, 4)
    assert p.inference_temperature == 0.0  # greedy bulk inference


def test_course_full_variant():
    p = PipelineParams.from_dict(COURSE_FULL)
    assert p.reinforcement_learning_rate_multiplier == 0.2
    assert p.reward_model_train_steps == p.reinforcement_learning_train_steps == 10000


def test_the_shipped_course_example_is_the_course_dict():
    from pathlib import Path

    shipped = json.loads((Path(__file__).parents[1] / "examples/course/params.json").read_text())
    assert shipped == COURSE


def test_parameter_values_wrapper_and_yaml(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("parameter_values:\n  large_model_reference: llama-2-7b\n"
                 "  preference_dataset: a.jsonl\n  prompt_dataset: b.jsonl\n  kl_coeff: 0\n")
    p = PipelineParams.from_file(f)
    assert p.kl_coeff == 0.0 and isinstance(p.kl_coeff, float)


def test_unknown_key_names_the_closest():
    with pytest.raises(RlhfkitError, match="did you mean 'kl_coeff'"):
        PipelineParams.from_dict({**COURSE, "kl_coef": 0.2})


@pytest.mark.parametrize("key,value,words", [
    ("reward_model_train_steps", 0, "must be > 0"),
    ("reinforcement_learning_train_steps", -5, "must be > 0"),
    ("kl_coeff", -0.1, "must be >= 0"),
    ("prompt_sequence_length", 0, "must be > 0"),
    ("target_sequence_length", -1, "must be > 0"),
    ("reward_model_learning_rate_multiplier", 0, "must be > 0"),
    ("reinforcement_learning_rate_multiplier", -1.0, "must be > 0"),
    ("reward_model_train_steps", 10.5, "expected an integer"),
    ("reward_model_train_steps", True, "expected an integer, got True"),
    ("kl_coeff", "0.1", "expected a number"),
    ("preference_dataset", "", "preference_dataset is required"),
    ("cpu_allocator", "jemalloc", 'cpu_allocator must be "cache" or "release"'),
])
def test_invalid_values(key, value, words):
    with pytest.raises(RlhfkitError, match=words):
        PipelineParams.from_dict({**COURSE, key: value})


def test_missing_required_dataset():
    values = dict(COURSE)
    del values["prompt_dataset"]
    with pytest.raises(RlhfkitError, match="prompt_dataset is required"):
        PipelineParams.from_dict(values)


def test_cloud_only_keys_accepted_with_a_notice(capsys):
    p = PipelineParams.from_dict({**COURSE, "project": "my-proj", "location": "us-central1",
                                  "deploy_model": False, "accelerator_type": "GPU"})
    err = capsys.readouterr().err
    assert p.project == "my-proj"
    for key in ("project", "location", "accelerator_type"):
        assert f"notice: {key} is cloud-only" in err
    assert "deploy_model" not in err  # it has a local meaning: RUN/model/ (export.py)
    assert err.count("\n") == 3  # one line each


def test_bad_json_reports_the_line(tmp_path):
    f = tmp_path / "p.json"
    f.write_text('{\n  "kl_coeff": 0.1,\n  oops\n}\n')
    with pytest.raises(RlhfkitError, match=r"p\.json:3: invalid JSON"):
        PipelineParams.from_file(f)


def test_resolved_params_round_trip(tmp_path):
    p = PipelineParams.from_dict(COURSE)
    out = tmp_path / "params.json"
    out.write_text(json.dumps(p.to_dict()))
    written = json.loads(out.read_text())
    assert written["batch_size"] == 64 and written["prompt_sequence_length"] == 512
    assert PipelineParams.from_file(out, quiet=True) == p


@pytest.mark.parametrize("n,b,e", [(3000, 64, 30), (2000, 64, 10), (64, 64, 1), (65, 64, 2)])
def test_steps_formula(n, b, e):
    assert steps_for_epochs(n, b, e) == math.ceil(n / b) * e


def test_steps_course_values():
    # Written out by hand: ceil(3000/64) = 47, 47*30 = 1410; ceil(2000/64) = 32, 32*10 = 320.
    assert steps_for_epochs(3000, 64, 30) == 1410
    assert steps_for_epochs(2000, 64, 10) == 320


def test_instruction_is_prepended_in_one_place():
    from rlhfkit.data import format_prompt

    assert format_prompt("Summarize.", "post [summary]: ") == "Summarize.\n\n\npost [summary]: "
    assert format_prompt(None, "post") == "post"


# -- hostile parameters (issue 9, section 3); each case was accepted or crashed before --------

def _fields_of(kind):
    """Every PipelineParams field whose annotation is `kind` (or `kind | None`): derived
    from the type hints, so fields added later are covered without editing this test."""
    import typing
    from dataclasses import fields

    hints = typing.get_type_hints(PipelineParams)
    return [f.name for f in fields(PipelineParams)
            if hints[f.name] is kind or kind in typing.get_args(hints[f.name])]


FLOATS = _fields_of(float)


def test_the_float_fields_are_found():
    assert {"kl_coeff", "vf_coef", "target_kl", "temperature",
            "reward_model_learning_rate_multiplier"} <= set(FLOATS)


@pytest.mark.parametrize("key", FLOATS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 10**400])
def test_every_float_must_be_finite(key, value):
    with pytest.raises(RlhfkitError, match=f"{key}: must be a finite number"):
        PipelineParams.from_dict({**COURSE, key: value})


@pytest.mark.parametrize("key", _fields_of(int))
def test_every_int_is_in_range(key):
    with pytest.raises(RlhfkitError, match=f"{key}: must be between -2\\*\\*63 and 2\\*\\*63"):
        PipelineParams.from_dict({**COURSE, key: 2**63})


@pytest.mark.parametrize("seed,ok", [(0, True), (2**32 - 1, True), (2**32, False), (-1, False)])
def test_seed_must_fit_torch_and_numpy(seed, ok):
    if ok:
        assert PipelineParams.from_dict({**COURSE, "seed": seed}).seed == seed
    else:
        with pytest.raises(RlhfkitError, match=r"seed must be in \[0, 2\*\*32\)"):
            PipelineParams.from_dict({**COURSE, "seed": seed})


def test_direct_construction_gets_the_same_checks():
    p = PipelineParams(**{**COURSE, "kl_coeff": math.nan})
    with pytest.raises(RlhfkitError, match="kl_coeff: must be a finite number, got nan"):
        p.validate()


def test_grammar_and_strings():
    with pytest.raises(RlhfkitError, match="kl_coeff: expected a number, got True"):
        PipelineParams.from_dict({**COURSE, "kl_coeff": True})
    with pytest.raises(RlhfkitError, match="instruction: must be text"):
        PipelineParams.from_dict({**COURSE, "instruction": "a\ud800"})


def _write(tmp_path, name, text: str, bom: bool = False):
    f = tmp_path / name
    f.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return f


YAML = ("large_model_reference: llama-2-7b\npreference_dataset: a.jsonl\n"
        "prompt_dataset: b.jsonl\n")


@pytest.mark.parametrize("text,words", [
    (YAML + "kl_coeff: .nan\n", "kl_coeff: must be a finite number, got nan"),
    (YAML + "vf_coef: .inf\n", "vf_coef: must be a finite number, got inf"),
    (YAML + "target_kl: -.Inf\n", "target_kl: must be a finite number, got -inf"),
    (YAML + "kl_coeff: 0.1\nkl_coeff: 0.2\n", "p.yaml:5: invalid YAML: duplicate key 'kl_coeff'"),
    (YAML + "seed: " + "9" * 5000 + "\n", "p.yaml: invalid YAML"),
    (YAML + "1: x\n", "parameter names are strings, got 1"),
])
def test_hostile_yaml(tmp_path, text, words):
    with pytest.raises(RlhfkitError, match=re.escape(words)):
        PipelineParams.from_file(_write(tmp_path, "p.yaml", text))


REQUIRED = '"large_model_reference": "m", "preference_dataset": "a", "prompt_dataset": "b"'


@pytest.mark.parametrize("text,words", [
    ('{"kl_coeff": NaN, REQ}', "kl_coeff: must be a finite number, got nan"),
    ('{"kl_coeff": -Infinity, REQ}', "kl_coeff: must be a finite number, got -inf"),
    ('{"kl_coeff": 1e999, REQ}', "kl_coeff: must be a finite number, got inf"),
    ('{\n "kl_coeff": 0.1,\n "kl_coeff": 0.2, REQ\n}', "p.json:3: duplicate key 'kl_coeff'"),
    ('{"seed": ' + "9" * 5000 + ", REQ}", "p.json: invalid JSON: an integer of 5000 digits"),
    ("[" * 100_000, "p.json: invalid JSON: nested too deeply"),
])
def test_hostile_json(tmp_path, text, words):
    text = text.replace("REQ", REQUIRED)
    with pytest.raises(RlhfkitError, match=re.escape(words)):
        PipelineParams.from_file(_write(tmp_path, "p.json", text))


@pytest.mark.parametrize("name", ["p.YAML", "p.yml", "p.Yml", "p.yaml"])
def test_yaml_suffix_any_case_and_a_bom(tmp_path, name):
    p = PipelineParams.from_file(_write(tmp_path, name, YAML + "kl_coeff: 0.2\n", bom=True))
    assert p.kl_coeff == 0.2
    f = _write(tmp_path, "q.json", json.dumps({**COURSE, "seed": 3}), bom=True)
    assert PipelineParams.from_file(f).seed == 3


@pytest.mark.parametrize("line", ['"kl_coeff": NaN', '"seed": 4294967296',
                                  '"kl_coeff": 0.1, "kl_coeff": 0.2'])
def test_run_refuses_before_writing_anything(tmp_path, line):
    """Through the real CLI: one clear line, exit 1, no traceback, and no RUN directory
    (so no params.json) created."""
    import subprocess
    import sys

    f = tmp_path / "p.json"
    f.write_text('{"large_model_reference": "m", "preference_dataset": "a.jsonl", '
                 f'"prompt_dataset": "b.jsonl", {line}}}')
    run = tmp_path / "RUN"
    res = subprocess.run([sys.executable, "-m", "rlhfkit", "run", str(f), "--output-dir",
                          str(run)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.startswith(f"{f}"), res.stderr
    assert not run.exists()
