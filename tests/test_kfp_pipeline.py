"""`rlhfkit compile`: the Kubeflow Pipelines YAML, and one real run of it with kfp.local."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

pytest.importorskip("kfp")

from rlhfkit import kfp_pipeline as kp  # noqa: E402
from rlhfkit.errors import RlhfkitError  # noqa: E402
from rlhfkit.params import PipelineParams  # noqa: E402

COURSE_PARAMS = {  # the course's parameter_values, plus two rlhfkit extras
    "preference_dataset": "gs://bucket/preference.jsonl",
    "prompt_dataset": "gs://bucket/prompt.jsonl",
    "eval_dataset": "gs://bucket/eval.jsonl",
    "large_model_reference": "llama-2-7b",
    "reward_model_train_steps": 1410,
    "reinforcement_learning_train_steps": 320,
    "reward_model_learning_rate_multiplier": 1.0,
    "reinforcement_learning_rate_multiplier": 0.2,
    "kl_coeff": 0.1,
    "instruction": "Summarize in less than 50 words.",
    "batch_size": 32,
    "policy_lora_dim": 8,
}


def _compile(tmp_path, values=COURSE_PARAMS, image="example.com/team/rlhfkit:1.2", **kw):
    params = tmp_path / "params.json"
    params.write_text(json.dumps(values))
    out = tmp_path / "rlhf_pipeline.yaml"
    kp.compile_pipeline(PipelineParams.from_file(params, quiet=True), out, image=image, **kw)
    return yaml.safe_load(out.read_text())


def _inputs(spec) -> dict:
    return spec["root"]["inputDefinitions"]["parameters"]


def _all_tasks(spec) -> dict:
    """Every task of the root DAG and of nested (condition) DAGs: {name: task spec}."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    return tasks


def _upstream(task) -> set[str]:
    """Tasks whose artifacts this task reads, directly or through a condition's inputs."""
    ups = set(task.get("dependentTasks", []))
    for art in task.get("inputs", {}).get("artifacts", {}).values():
        if "taskOutputArtifact" in art:
            ups.add(art["taskOutputArtifact"]["producerTask"])
        elif "componentInputArtifact" in art:  # pipelinechannel--<task>-<output>
            ups.add(art["componentInputArtifact"])
    return ups


# Vertex's rlhf_pipeline interface (google_cloud_pipeline_components.preview.llm,
# rlhf/component.py), written out here independently of kfp_pipeline.VERTEX_INPUTS:
# name -> (KFP type, default); None = no default (required or Optional[...] = None).
VERTEX_INTERFACE = {
    "prompt_dataset": ("STRING", None),
    "preference_dataset": ("STRING", None),
    "large_model_reference": ("STRING", None),
    "model_display_name": ("STRING", None),
    "prompt_sequence_length": ("NUMBER_INTEGER", 512),
    "target_sequence_length": ("NUMBER_INTEGER", 64),
    "reward_model_learning_rate_multiplier": ("NUMBER_DOUBLE", 1.0),
    "reinforcement_learning_rate_multiplier": ("NUMBER_DOUBLE", 1.0),
    "reward_model_train_steps": ("NUMBER_INTEGER", 1000),
    "reinforcement_learning_train_steps": ("NUMBER_INTEGER", 1000),
    "kl_coeff": ("NUMBER_DOUBLE", 0.1),
    "instruction": ("STRING", None),
    "deploy_model": ("BOOLEAN", True),
    "eval_dataset": ("STRING", None),
    "project": ("STRING", "{{$.pipeline_google_cloud_project_id}}"),
    "accelerator_type": ("STRING", "GPU"),
    "location": ("STRING", "{{$.pipeline_google_cloud_location}}"),
    "encryption_spec_key_name": ("STRING", ""),
    "tensorboard_resource_id": ("STRING", ""),
}
VERTEX_REQUIRED = {"prompt_dataset", "preference_dataset", "large_model_reference"}
VERTEX_OUTPUTS = {"model_resource_name": "STRING", "endpoint_resource_name": "STRING"}
MINIMAL = {k: COURSE_PARAMS[k] for k in VERTEX_REQUIRED}  # a PARAMS file setting nothing else


def test_compiled_interface_is_vertexs(tmp_path):
    spec = _compile(tmp_path, MINIMAL)
    assert spec["pipelineInfo"]["name"] == "rlhf-train-template"
    inputs = _inputs(spec)
    assert len(VERTEX_INTERFACE) == 19
    assert set(inputs) == set(VERTEX_INTERFACE) | {"rlhfkit_parameters"}
    for name, (kind, default) in VERTEX_INTERFACE.items():
        got = inputs[name]
        assert got["parameterType"] == kind, name
        assert got.get("defaultValue") == default, name  # 512.0 == 512: YAML numbers
        assert got.get("isOptional", False) == (name not in VERTEX_REQUIRED), name
    outputs = spec["root"]["outputDefinitions"]["parameters"]
    assert {k: v["parameterType"] for k, v in outputs.items()} == VERTEX_OUTPUTS
    for name in VERTEX_OUTPUTS:  # both come from the deploy step
        src = spec["root"]["dag"]["outputs"]["parameters"][name]["valueFromParameter"]
        assert src == {"outputParameterKey": name, "producerSubtask": "deploy"}


def test_compiled_defaults_come_from_the_params_file(tmp_path):
    spec = _compile(tmp_path, {**COURSE_PARAMS, "project": "my-proj", "deploy_model": False})
    inputs = _inputs(spec)
    # Required as in Vertex, whatever the PARAMS file says: parameter_values passes them.
    assert not {"defaultValue", "isOptional"} & set(inputs["preference_dataset"])
    assert inputs["reward_model_train_steps"]["defaultValue"] == 1410
    assert inputs["reinforcement_learning_rate_multiplier"]["defaultValue"] == 0.2
    assert inputs["instruction"]["defaultValue"] == "Summarize in less than 50 words."
    assert inputs["eval_dataset"]["defaultValue"] == "gs://bucket/eval.jsonl"
    assert inputs["project"]["defaultValue"] == "my-proj"
    assert inputs["deploy_model"]["defaultValue"] is False
    # The extras travel as one JSON string, with no Vertex key in it (one home per key)
    # and nothing that means nothing in a cluster.
    extras = json.loads(inputs["rlhfkit_parameters"]["defaultValue"])
    assert extras["batch_size"] == 32 and extras["policy_lora_dim"] == 8
    assert extras["reward_lora_dim"] == 4  # a default written out
    assert not set(extras) & set(VERTEX_INTERFACE)
    assert "output_dir" not in extras


def test_compiled_pipeline_dag_and_image(tmp_path):
    spec = _compile(tmp_path, image="example.com/team/rlhfkit:1.2", accelerator="NVIDIA_L4",
                    accelerator_count=2)
    tasks = _all_tasks(spec)
    for name in ("validate", "train-reward", "train-policy", "infer-tuned", "infer-base",
                 "compare", "deploy"):
        assert name in tasks, name
    assert _upstream(tasks["train-reward"]) == {"validate"}
    assert _upstream(tasks["train-policy"]) == {"validate", "train-reward"}
    assert "pipelinechannel--train-policy-policy" in _upstream(tasks["infer-tuned"])
    assert "pipelinechannel--train-policy-policy" not in _upstream(tasks["infer-base"])
    assert {"infer-tuned", "infer-base", "pipelinechannel--train-reward-reward_model"} \
        <= _upstream(tasks["compare"])
    assert _upstream(tasks["deploy"]) == {"validate", "train-policy"}
    # Inference and comparison run only with an eval dataset (validate says), as in Vertex.
    cond = spec["root"]["dag"]["tasks"]["condition-1"]
    assert "validate-Output" in cond["triggerPolicy"]["condition"]
    # Every component runs in the user's image, without a runtime pip install.
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == 7
    for name, ex in executors.items():
        assert ex["container"]["image"] == "example.com/team/rlhfkit:1.2"
        assert "pip install" not in " ".join(ex["container"]["command"])
        # Every step that runs a model asks for the accelerator; validate does not.
        acc = ex["container"].get("resources", {}).get("accelerator")
        if name == "exec-validate":
            assert acc is None
        else:
            assert (acc["resourceType"], acc["resourceCount"]) == ("NVIDIA_L4", "2"), name
    outputs = spec["components"]["comp-compare"]["outputDefinitions"]["artifacts"]
    assert outputs["report"]["artifactType"]["schemaTitle"] == "system.HTML"
    assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"


def test_compile_cli(tmp_path):
    from typer.testing import CliRunner

    from rlhfkit.cli import app

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(COURSE_PARAMS))
    out = tmp_path / "p.yaml"
    res = CliRunner().invoke(app, ["compile", str(params), "-o", str(out), "--image", "x:2"])
    assert res.exit_code == 0, res.output
    spec = yaml.safe_load(out.read_text())
    assert {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()} \
        == {"x:2"}
    # A bad PARAMS file is a one-line user error and no YAML is written.
    params.write_text(yaml.safe_dump({**COURSE_PARAMS, "kl_coef": 0.1}))
    out.unlink()
    res = CliRunner().invoke(app, ["compile", str(params), "-o", str(out)])
    assert res.exit_code != 0
    assert "did you mean 'kl_coeff'" in str(res.exception)
    assert not out.exists()


def test_missing_kfp_is_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "kfp", None)  # makes `import kfp` fail
    monkeypatch.delitem(sys.modules, "rlhfkit.kfp_pipeline")
    with pytest.raises(RlhfkitError, match=r"rlhfkit\[kfp\]"):
        importlib.import_module("rlhfkit.kfp_pipeline")


def _validate_args(tmp_path, rlhfkit_parameters, values=COURSE_PARAMS, **overrides):
    """Arguments for the validate component's function, called as plain Python."""
    import inspect

    taken = inspect.signature(kp.validate).parameters
    defaults = kp.pipeline_defaults(PipelineParams.from_dict(values))
    args = {k: v for k, v in {**defaults, **values, **overrides}.items() if k in taken}
    args["rlhfkit_parameters"] = rlhfkit_parameters
    out = SimpleNamespace(name="parameters", path=str(tmp_path / "params.json"))
    return {**args, "parameters": out}


def test_validate_component_rejects_a_key_set_twice(tmp_path):
    extras = json.dumps({"batch_size": 8, "kl_coeff": 0.5})
    with pytest.raises(SystemExit, match="kl_coeff have pipeline inputs of their own"):
        kp.validate(**_validate_args(tmp_path, extras))
    assert not (tmp_path / "params.json").exists()


def test_validate_component_reports_bad_values_without_traceback(tmp_path):
    with pytest.raises(SystemExit, match="kl_coeff must be >= 0, got -1.0"):
        kp.validate(**_validate_args(tmp_path, "{}", kl_coeff=-1.0))
    assert not (tmp_path / "params.json").exists()


def test_validate_component_checks_model_names_before_training(tmp_path):
    data = _tiny_data(tmp_path)
    values = {**COURSE_PARAMS, **data, "large_model_reference": "text-bison@001"}
    with pytest.raises(SystemExit, match="proprietary PaLM model"):
        kp.validate(**_validate_args(tmp_path, "{}", values))
    # The hub is offline in the tests (conftest): an uncached id fails here, in one line.
    values = {**values, "large_model_reference": "some-org/not-downloaded-7b"}
    with pytest.raises(SystemExit, match="not in the local Hugging Face cache"):
        kp.validate(**_validate_args(tmp_path, "{}", values))
    assert not (tmp_path / "params.json").exists()
    # A good run resolves the parameters and says whether there is an eval set.
    values = {**values, "large_model_reference": str(tmp_path)}
    assert kp.validate(**_validate_args(tmp_path, "{}", values)) is True
    assert json.loads((tmp_path / "params.json").read_text())["deploy_model"] is True


# -- end to end: the compiled pipeline, run by kfp.local without Docker ----------------

def _write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _tiny_data(tmp_path: Path) -> dict:
    posts = [f"My roommate keeps eating my food, day {i}. How do I bring it up? [summary]: "
             for i in range(8)]
    pref = [{"input_text": p, "candidate_0": "Talk to the roommate.",
             "candidate_1": "My dog chewed the couch and the landlord wants the deposit.",
             "choice": i % 2} for i, p in enumerate(posts)]
    return {
        "preference_dataset": _write_jsonl(tmp_path / "pref.jsonl", pref),
        "prompt_dataset": _write_jsonl(tmp_path / "prompt.jsonl",
                                       [{"input_text": p} for p in posts]),
        "eval_dataset": _write_jsonl(tmp_path / "eval.jsonl",
                                     [{"input_text": p} for p in posts[:3]]),
    }


def _find(root: Path, task: str, output: str) -> Path:
    found = sorted(root.glob(f"*/{task}/{output}"))
    assert len(found) == 1, (task, output, list(root.rglob("*"))[:50])
    return found[0]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You may be attemping to run a task")
def test_pipeline_runs_end_to_end_with_kfp_local(tmp_path, tiny_llama_dir):
    for module in ("rlhfkit.reward", "rlhfkit.policy", "rlhfkit.infer"):
        pytest.importorskip(module, reason=f"{module} (a pipeline stage) is not written yet")
    from kfp import local

    instruction = "Summarize in less than 50 words."
    data = _tiny_data(tmp_path)
    params = PipelineParams.from_dict({
        **data, "large_model_reference": str(tiny_llama_dir),
        "instruction": instruction, "reward_model_train_steps": 2,
        "reinforcement_learning_train_steps": 2, "batch_size": 4, "ppo_epochs": 1,
        "prompt_sequence_length": 32, "target_sequence_length": 8,
    })
    root = tmp_path / "pipeline_root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               workspace_root=str(tmp_path / "workspace"))
    try:
        # Vertex's required inputs, passed as the course passes parameter_values.
        job = kp.build_pipeline(params)(  # runs every task, raising if one fails
            preference_dataset=data["preference_dataset"],
            prompt_dataset=data["prompt_dataset"],
            large_model_reference=str(tiny_llama_dir),
            # kfp.local (2.17) cannot leave out an optional input that has no default.
            model_display_name="tiny")
    finally:
        local.config.LocalExecutionConfig.instance = None

    resolved = json.loads(_find(root, "validate", "parameters").read_text())
    assert resolved["batch_size"] == 4 and resolved["reward_model_train_steps"] == 2
    assert _find(root, "train-reward", "reward_model").is_dir()
    # policy_lora_dim 1 (Vertex's): an adapter, which infer-tuned applies to the base.
    assert (_find(root, "train-policy", "policy") / "adapter_config.json").is_file()
    for task, output in (("infer-tuned", "eval_results_tuned"),
                         ("infer-base", "eval_results_untuned")):
        lines = _find(root, task, output).read_text().splitlines()
        assert len(lines) == 3
        for line in lines:
            rec = json.loads(line)
            assert set(rec) == {"inputs", "prediction"}
            assert rec["inputs"]["inputs_pretokenized"].startswith(instruction + "\n\n\n")
            assert rec["inputs"]["targets_pretokenized"] == ""
            assert isinstance(rec["prediction"], str)
    assert "<html" in _find(root, "compare", "report").read_text().lower()
    assert "| n | 3 |" in _find(root, "compare", "summary").read_text()
    # KFP keeps logged metrics in the artifact's metadata (the executor output locally).
    out = json.loads(_find(root, "compare", "executor_output.json").read_text())
    metrics = out["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert metrics["n"] == 3 and 0 <= metrics["win_rate"] <= 1
    # Vertex's outputs: deploy_model (default true) exported a plain transformers model.
    model = _find(root, "deploy", "model")
    assert job.outputs["model_resource_name"] == str(model)
    assert job.outputs["endpoint_resource_name"] == ""
    assert (model / "config.json").is_file() and not (model / "adapter_config.json").exists()


@pytest.mark.parametrize("method", ["rlhf", "dpo"])
def test_policy_component_runs_the_stage_of_the_tuning_method(tmp_path, monkeypatch, method):
    # Before: the compiled pipeline ran train-policy whatever tuning_method said.
    import subprocess

    params = tmp_path / "params.json"
    params.write_text(json.dumps({"tuning_method": method}))
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        run = Path(cmd[cmd.index("--output-dir") + 1])
        (run / "policy").mkdir()
        (run / "policy" / "adapter_model.safetensors").write_bytes(b"x")
        return SimpleNamespace(returncode=0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    art = {k: SimpleNamespace(path=str(tmp_path / k)) for k in ("rm", "policy", "logs")}
    kp.train_policy(SimpleNamespace(path=str(params)), art["rm"], art["policy"], art["logs"])
    stage = calls[0][3]
    assert stage == ("train-dpo" if method == "dpo" else "train-policy")
    assert ("--reward-model" in calls[0]) == (method == "rlhf")
    assert (tmp_path / "policy" / "adapter_model.safetensors").exists()


def test_dpo_without_a_reward_model_is_refused_at_compile(tmp_path):
    values = {**COURSE_PARAMS, "tuning_method": "dpo", "reward_model_train_steps": 0}
    with pytest.raises(RlhfkitError, match="reward_model_train_steps > 0"):
        _compile(tmp_path, values)
    assert not (tmp_path / "rlhf_pipeline.yaml").exists()

