import json
import math

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
    ("reward_model_train_steps", True, "expected a int"),
    ("kl_coeff", "0.1", "expected a number"),
    ("preference_dataset", "", "preference_dataset is required"),
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
