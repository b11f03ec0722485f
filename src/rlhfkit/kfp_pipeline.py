"""`rlhfkit compile`: the same stages as `rlhfkit run`, as a Kubeflow Pipelines v2 pipeline.

For users who outgrow one machine: Vertex AI Pipelines or a Kubeflow cluster runs each
stage as its own container, passing artifacts between them. The DAG (DESIGN.md):

    validate -> train-reward -> train-policy -> infer-tuned --+
             |                              `-> deploy        |
             `-------------------------------> infer-base  ---+-> compare

Every component is a *lightweight Python component* whose body does nothing but call
the rlhfkit CLI inside the user's image (`--image`, the components' base_image) and move
files between the CLI's run directory and KFP's artifact paths. So the YAML holds no
training logic of its own: the cluster runs exactly the code `rlhfkit run` runs. (Python
rather than container components also lets `kfp.local.SubprocessRunner` run the pipeline
without Docker, which is how the test proves it works end to end.)

Interface. The pipeline takes Vertex's 19 `rlhf_pipeline` inputs with Vertex's names,
types and defaults (`VERTEX_INPUTS`; the three datasets/model inputs are required, as in
Vertex) and returns Vertex's two outputs, `model_resource_name` (the URI of the tuned
model's artifact: the merged model with `deploy_model`, else the policy) and
`endpoint_resource_name` (always "": a cluster has no endpoint service; `rlhfkit serve`
is the endpoint). So the course's `parameter_values={...}` dict submits unchanged. Values
the PARAMS file sets become the defaults of the optional inputs. `project`, `location`,
`accelerator_type`, `encryption_spec_key_name` and `tensorboard_resource_id` are accepted
and unused: the hardware is chosen at compile time (`--accelerator`), logs are artifacts.

rlhfkit's extras (batch_size, LoRA ranks, PPO keys, ...) are ~25 more keys; as separate
inputs they would bury Vertex's in the submit form, so they travel together as one JSON
string input, `rlhfkit_parameters` (the PARAMS file's resolved extras). Each key has
exactly one home (a Vertex key inside the JSON is an error), so there is no precedence
rule to guess. The `validate` component merges the two, checks the result with the same
code as the local runner (`PipelineParams`, then `pipeline.validate`: every dataset and the
model names, before any training), and writes it as a `params.json` artifact that every
later stage reads: one resolved dict per run, visible in the UI, and the reason no two
stages can disagree about a value.

kfp is an optional extra, imported only here.
"""

# No `from __future__ import annotations`: kfp reads the component signatures' types,
# and it reads `Optional[str]` (not `str | None`) as an optional input.
# ruff: noqa: UP045

import json
from pathlib import Path
from typing import Any, NamedTuple, Optional

from rlhfkit.errors import RlhfkitError
from rlhfkit.params import PipelineParams

try:
    from kfp import compiler, dsl
except ImportError as _exc:  # one line, as every other user error
    raise RlhfkitError("Kubeflow Pipelines is not installed: pip install 'rlhfkit[kfp]'") \
        from _exc

PIPELINE_NAME = "rlhf-train-template"  # the name of Vertex's compiled RLHF pipeline
DEFAULT_IMAGE = "rlhfkit:latest"
PARAMETERS_INPUT = "rlhfkit_parameters"  # the JSON string input holding the extras
REQUIRED = object()  # an input without a default
# Vertex AI resolves these at run time to the job's project and region (as Vertex's own
# pipeline defaults them, google_cloud_pipeline_components._placeholders).
PROJECT_ID_PLACEHOLDER = "{{$.pipeline_google_cloud_project_id}}"
LOCATION_PLACEHOLDER = "{{$.pipeline_google_cloud_location}}"

# Vertex's rlhf_pipeline signature (google_cloud_pipeline_components.preview.llm,
# rlhf/component.py): (name, type, Vertex's default), in Vertex's order.
VERTEX_INPUTS = (
    ("prompt_dataset", str, REQUIRED),
    ("preference_dataset", str, REQUIRED),
    ("large_model_reference", str, REQUIRED),
    ("model_display_name", Optional[str], None),
    ("prompt_sequence_length", int, 512),
    ("target_sequence_length", int, 64),
    ("reward_model_learning_rate_multiplier", float, 1.0),
    ("reinforcement_learning_rate_multiplier", float, 1.0),
    ("reward_model_train_steps", int, 1000),
    ("reinforcement_learning_train_steps", int, 1000),
    ("kl_coeff", float, 0.1),
    ("instruction", Optional[str], None),
    ("deploy_model", bool, True),
    ("eval_dataset", Optional[str], None),
    ("project", str, PROJECT_ID_PLACEHOLDER),
    ("accelerator_type", str, "GPU"),
    ("location", str, LOCATION_PLACEHOLDER),
    ("encryption_spec_key_name", str, ""),
    ("tensorboard_resource_id", str, ""),
)
VERTEX_INPUT_NAMES = tuple(name for name, _, _ in VERTEX_INPUTS)


class PipelineOutput(NamedTuple):  # Vertex's two outputs
    model_resource_name: str
    endpoint_resource_name: str



# Not part of the pipeline: artifacts live under the pipeline root, not in output_dir.
_DROPPED = ("output_dir",)


# == components =======================================================================
# KFP copies each function's source into the YAML and runs it in the image, so a body
# imports what it needs and calls nothing defined outside itself. Each talks to rlhfkit
# through its CLI (`python -m rlhfkit ...`), the one interface kept stable.

def validate(
    rlhfkit_parameters: str,
    preference_dataset: str, prompt_dataset: str, large_model_reference: str,
    prompt_sequence_length: int, target_sequence_length: int,
    reward_model_learning_rate_multiplier: float,
    reinforcement_learning_rate_multiplier: float,
    reward_model_train_steps: int, reinforcement_learning_train_steps: int,
    kl_coeff: float, deploy_model: bool,
    parameters: dsl.Output[dsl.Artifact],
    model_display_name: Optional[str] = None, instruction: Optional[str] = None,
    eval_dataset: Optional[str] = None,
) -> bool:
    """Resolve and check the run's parameters, every dataset and the model names, up
    front (pipeline.validate, as `rlhfkit run`). Returns whether there is an eval set."""
    import json
    import sys

    from rlhfkit.errors import RlhfkitError
    from rlhfkit.params import CLOUD_ONLY, PipelineParams
    from rlhfkit.pipeline import validate as check_inputs

    values = json.loads(rlhfkit_parameters)
    named = dict(
        preference_dataset=preference_dataset, prompt_dataset=prompt_dataset,
        eval_dataset=eval_dataset or None, large_model_reference=large_model_reference,
        model_display_name=model_display_name or None,
        prompt_sequence_length=prompt_sequence_length,
        target_sequence_length=target_sequence_length,
        reward_model_learning_rate_multiplier=reward_model_learning_rate_multiplier,
        reinforcement_learning_rate_multiplier=reinforcement_learning_rate_multiplier,
        reward_model_train_steps=reward_model_train_steps,
        reinforcement_learning_train_steps=reinforcement_learning_train_steps,
        kl_coeff=kl_coeff, instruction=instruction or None, deploy_model=deploy_model)
    twice = sorted(set(values) & (set(named) | set(CLOUD_ONLY)))
    if twice:  # one place per key: no precedence rule for users to guess
        sys.exit(f"rlhfkit_parameters: {', '.join(twice)} have pipeline inputs of their "
                 f"own; set them there and keep only rlhfkit's extras in this JSON")
    values.update(named)
    try:
        resolved = PipelineParams.from_dict(values, source=parameters.name, quiet=True)
        check_inputs(resolved)  # datasets (path:line errors) and model names
    except RlhfkitError as exc:
        sys.exit(str(exc))  # the message alone, no traceback
    with open(parameters.path, "w", encoding="utf-8") as f:
        json.dump(resolved.to_dict(), f, indent=2)
    return bool(resolved.eval_dataset)


def train_reward(
    parameters: dsl.Input[dsl.Artifact],
    reward_model: dsl.Output[dsl.Model],
    reward_logs: dsl.Output[dsl.Artifact],
):
    """`rlhfkit train-reward`: the Bradley-Terry reward model, and its TensorBoard logs."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rlhfkit-run-") as run:  # the stage's RUN
        code = subprocess.run([sys.executable, "-m", "rlhfkit", "train-reward",
                               parameters.path, "--output-dir", run, "--no-progress"]).returncode
        if code:
            sys.exit(f"rlhfkit train-reward failed (exit code {code})")
        # The finished model only: interrupted-run checkpoints stay behind.
        shutil.copytree(os.path.join(run, "reward_model"), reward_model.path,
                        dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoint-*"))
        os.makedirs(os.path.join(run, "reward-logs"), exist_ok=True)
        shutil.copytree(os.path.join(run, "reward-logs"), reward_logs.path, dirs_exist_ok=True)


def train_policy(
    parameters: dsl.Input[dsl.Artifact],
    reward_model: dsl.Input[dsl.Model],
    policy: dsl.Output[dsl.Model],
    reinforcer_logs: dsl.Output[dsl.Artifact],
):
    """`rlhfkit train-policy` (PPO / RLOO / GRPO against the reward model) or, with
    tuning_method dpo, `rlhfkit train-dpo` (on the preference pairs): the tuned adapter
    (or model) and its TensorBoard logs."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    with open(parameters.path, encoding="utf-8") as f:
        dpo = json.load(f).get("tuning_method") == "dpo"
    command, logs = (["train-dpo"], "dpo-logs") if dpo else \
        (["train-policy", "--reward-model", reward_model.path], "reinforcer-logs")
    with tempfile.TemporaryDirectory(prefix="rlhfkit-run-") as run:  # the stage's RUN
        code = subprocess.run([sys.executable, "-m", "rlhfkit", command[0], parameters.path,
                               "--output-dir", run, *command[1:]]).returncode
        if code:
            sys.exit(f"rlhfkit {command[0]} failed (exit code {code})")
        shutil.copytree(os.path.join(run, "policy"), policy.path, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("checkpoint-*"))
        os.makedirs(os.path.join(run, logs), exist_ok=True)
        shutil.copytree(os.path.join(run, logs), reinforcer_logs.path, dirs_exist_ok=True)


def infer_tuned(
    parameters: dsl.Input[dsl.Artifact],
    policy: dsl.Input[dsl.Model],
    eval_results_tuned: dsl.Output[dsl.Dataset],
):
    """`rlhfkit infer` with the tuned policy: eval_results_tuned.jsonl (Vertex's format)."""
    import json
    import os

    from rlhfkit.kfp_steps import run_infer

    with open(parameters.path, encoding="utf-8") as f:
        p = json.load(f)
    # A LoRA policy is an adapter over the base model; a fully tuned one is the model.
    if os.path.exists(os.path.join(policy.path, "adapter_config.json")):
        model = ["--model", p["large_model_reference"], "--adapter", policy.path]
    else:
        model = ["--model", policy.path]
    run_infer(p, model, eval_results_tuned.path)


def infer_base(
    parameters: dsl.Input[dsl.Artifact],
    eval_results_untuned: dsl.Output[dsl.Dataset],
):
    """`rlhfkit infer` with the base model: eval_results_untuned.jsonl, the baseline."""
    import json

    from rlhfkit.kfp_steps import run_infer

    with open(parameters.path, encoding="utf-8") as f:
        p = json.load(f)
    run_infer(p, ["--model", p["large_model_reference"]], eval_results_untuned.path)


def compare(
    parameters: dsl.Input[dsl.Artifact],
    tuned: dsl.Input[dsl.Dataset],
    untuned: dsl.Input[dsl.Dataset],
    reward_model: dsl.Input[dsl.Model],
    reward_logs: dsl.Input[dsl.Artifact],
    reinforcer_logs: dsl.Input[dsl.Artifact],
    run_name: str,
    report: dsl.Output[dsl.HTML],
    summary: dsl.Output[dsl.Markdown],
    comparison: dsl.Output[dsl.Dataset],
    metrics: dsl.Output[dsl.Metrics],
):
    """`rlhfkit compare`: the HTML report, a Markdown summary, the table and metrics."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    # Lay the upstream artifacts out as a run directory (links, no copies) so the report
    # is the one `rlhfkit compare RUN` writes locally, training curves included. The
    # report is titled after its directory: name that after the pipeline run.
    with tempfile.TemporaryDirectory(prefix="rlhfkit-compare-") as tmp:
        run, out = os.path.join(tmp, "run"), os.path.join(tmp, run_name.replace("/", "-"))
        os.mkdir(run)
        for name, artifact in (
                ("params.json", parameters), ("reward_model", reward_model),
                ("eval_results_tuned.jsonl", tuned), ("eval_results_untuned.jsonl", untuned),
                ("reward-logs", reward_logs), ("reinforcer-logs", reinforcer_logs)):
            os.symlink(os.path.abspath(artifact.path), os.path.join(run, name))
        proc = subprocess.run([sys.executable, "-m", "rlhfkit", "compare", run,
                               "--out-dir", out, "--json"], stdout=subprocess.PIPE, text=True)
        if proc.returncode:
            sys.exit(f"rlhfkit compare failed (exit code {proc.returncode})")
        shutil.copyfile(os.path.join(out, "report.html"), report.path)
        shutil.copyfile(os.path.join(out, "comparison.csv"), comparison.path)

    # Every number of the JSON summary becomes a KFP metric (nested keys joined by "/"),
    # so runs can be compared side by side in the Vertex / Kubeflow UI; null = no input.
    def numbers(obj, prefix=""):
        if isinstance(obj, dict):
            for key, value in obj.items():
                yield from numbers(value, f"{prefix}{key}/")
        elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
            yield prefix.rstrip("/"), float(obj)

    found = dict(numbers(json.loads(proc.stdout)))
    for name, value in found.items():
        metrics.log_metric(name, value)
    rows = "\n".join(f"| {name} | {value:.4g} |" for name, value in found.items())
    with open(summary.path, "w", encoding="utf-8") as f:
        f.write(f"# Tuned vs untuned\n\n| metric | value |\n| --- | --- |\n{rows}\n")


def deploy(
    parameters: dsl.Input[dsl.Artifact],
    policy: dsl.Input[dsl.Model],
    deploy_model: bool,
    model: dsl.Output[dsl.Model],
) -> NamedTuple("Outputs", [("model_resource_name", str), ("endpoint_resource_name", str)]):
    """Vertex's "Upload and Deploy Tuned Model": with deploy_model, `rlhfkit export` merges
    the policy into a plain transformers model (the `model` artifact). Returns Vertex's two
    outputs; there is no endpoint service in a cluster (serve with `rlhfkit serve`)."""
    import collections
    import json
    import subprocess
    import sys

    outputs = collections.namedtuple("Outputs", ["model_resource_name",
                                                 "endpoint_resource_name"])
    if not deploy_model:
        return outputs(policy.uri, "")
    with open(parameters.path, encoding="utf-8") as f:
        p = json.load(f)
    flags = ["--trust-remote-code"] if p["trust_remote_code"] else []
    code = subprocess.run([sys.executable, "-m", "rlhfkit", "export", policy.path, "-o",
                           model.path, "--overwrite", *flags]).returncode
    if code:
        sys.exit(f"rlhfkit export failed (exit code {code})")
    return outputs(model.uri, "")


# == the pipeline =====================================================================

def pipeline_defaults(params: PipelineParams) -> dict[str, Any]:
    """Each input's default: REQUIRED for the three Vertex requires, else the PARAMS
    file's value where it sets one, else Vertex's default; then the extras' JSON."""
    values = params.to_dict()
    defaults = {}
    for name, _, vertex_default in VERTEX_INPUTS:
        if vertex_default is REQUIRED:
            defaults[name] = REQUIRED
        else:
            defaults[name] = vertex_default if values[name] is None else values[name]
    extras = {k: v for k, v in values.items() if k not in _DROPPED + VERTEX_INPUT_NAMES}
    defaults[PARAMETERS_INPUT] = json.dumps(extras, sort_keys=True)
    return defaults


def build_pipeline(params: PipelineParams, image: str = DEFAULT_IMAGE,
                   accelerator: str | None = None, accelerator_count: int = 1):
    """The `rlhf-train-template` pipeline, every component running in `image`.

    `accelerator` (e.g. "NVIDIA_L4" on Vertex AI, "nvidia.com/gpu" on Kubeflow) is
    requested, `accelerator_count` per task, by every step that runs a model; validate
    stays on a CPU node. Each step is one process, so one accelerator is what it uses.
    """
    def component(func):
        # kfp must already be in the image (rlhfkit[kfp]): no pip install at run time,
        # so clusters without internet access work and every step runs pinned versions.
        return dsl.component(func, base_image=image, install_kfp_package=False)

    c_validate, c_reward, c_policy = map(component, (validate, train_reward, train_policy))
    c_tuned, c_base, c_compare = map(component, (infer_tuned, infer_base, compare))
    c_deploy = component(deploy)
    d = pipeline_defaults(params)

    def on_accelerator(task):
        if accelerator:
            task.set_accelerator_type(accelerator).set_accelerator_limit(accelerator_count)
        return task

    @dsl.pipeline(name=PIPELINE_NAME,
                  description="RLHF (reward model + PPO) with rlhfkit, as Vertex AI's "
                              "rlhf_pipeline: same inputs, same outputs.")
    def rlhf_train_template(  # Vertex's signature, then rlhfkit's extras
        prompt_dataset: str,
        preference_dataset: str,
        large_model_reference: str,
        model_display_name: Optional[str] = d["model_display_name"],
        prompt_sequence_length: int = d["prompt_sequence_length"],
        target_sequence_length: int = d["target_sequence_length"],
        reward_model_learning_rate_multiplier: float =
            d["reward_model_learning_rate_multiplier"],
        reinforcement_learning_rate_multiplier: float =
            d["reinforcement_learning_rate_multiplier"],
        reward_model_train_steps: int = d["reward_model_train_steps"],
        reinforcement_learning_train_steps: int = d["reinforcement_learning_train_steps"],
        kl_coeff: float = d["kl_coeff"],
        instruction: Optional[str] = d["instruction"],
        deploy_model: bool = d["deploy_model"],
        eval_dataset: Optional[str] = d["eval_dataset"],
        project: str = d["project"],  # accepted, unused (the job's project on Vertex)
        accelerator_type: str = d["accelerator_type"],  # unused: see --accelerator
        location: str = d["location"],  # accepted, unused
        encryption_spec_key_name: str = d["encryption_spec_key_name"],  # unused
        tensorboard_resource_id: str = d["tensorboard_resource_id"],  # unused: artifacts
        rlhfkit_parameters: str = d[PARAMETERS_INPUT],
    ) -> PipelineOutput:
        checked = c_validate(
            rlhfkit_parameters=rlhfkit_parameters, preference_dataset=preference_dataset,
            prompt_dataset=prompt_dataset, eval_dataset=eval_dataset,
            large_model_reference=large_model_reference,
            model_display_name=model_display_name,
            prompt_sequence_length=prompt_sequence_length,
            target_sequence_length=target_sequence_length,
            reward_model_learning_rate_multiplier=reward_model_learning_rate_multiplier,
            reinforcement_learning_rate_multiplier=reinforcement_learning_rate_multiplier,
            reward_model_train_steps=reward_model_train_steps,
            reinforcement_learning_train_steps=reinforcement_learning_train_steps,
            kl_coeff=kl_coeff, instruction=instruction, deploy_model=deploy_model)
        resolved = checked.outputs["parameters"]
        reward = on_accelerator(c_reward(parameters=resolved))
        policy = on_accelerator(c_policy(parameters=resolved,
                                         reward_model=reward.outputs["reward_model"]))
        # As in Vertex, bulk inference runs only when there is an eval dataset.
        with dsl.If(checked.outputs["Output"] == True, name="has-eval-dataset"):  # noqa: E712
            tuned = on_accelerator(c_tuned(parameters=resolved,
                                           policy=policy.outputs["policy"]))
            base = on_accelerator(c_base(parameters=resolved))
            compared = c_compare(parameters=resolved,
                                 tuned=tuned.outputs["eval_results_tuned"],
                                 untuned=base.outputs["eval_results_untuned"],
                                 reward_model=reward.outputs["reward_model"],
                                 reward_logs=reward.outputs["reward_logs"],
                                 reinforcer_logs=policy.outputs["reinforcer_logs"],
                                 run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)
            on_accelerator(compared)  # scores both columns with the reward model
        deployed = on_accelerator(c_deploy(parameters=resolved, deploy_model=deploy_model,
                                           policy=policy.outputs["policy"]))
        return PipelineOutput(
            model_resource_name=deployed.outputs["model_resource_name"],
            endpoint_resource_name=deployed.outputs["endpoint_resource_name"])

    return rlhf_train_template


def compile_pipeline(params: PipelineParams, output: str | Path, image: str = DEFAULT_IMAGE,
                     accelerator: str | None = None, accelerator_count: int = 1) -> Path:
    """Write the pipeline's YAML to `output` (atomically) and return its path."""
    from rlhfkit.io import atomic_write_text

    if not image.strip():
        raise RlhfkitError("--image must name a container image, e.g. rlhfkit:latest")
    if accelerator_count < 1:
        raise RlhfkitError(f"--accelerator-count must be >= 1, got {accelerator_count}")
    if params.tuning_method == "dpo" and params.reward_model_train_steps == 0:
        # Its compare step scores both columns with the reward model (`rlhfkit run` can
        # skip it: it has no fixed DAG).
        raise RlhfkitError("a compiled pipeline with tuning_method dpo trains the reward "
                           "model too: set reward_model_train_steps > 0, or use rlhfkit run")
    output = Path(output)
    tmp = output.with_name(f".{output.name}.compiling.yaml")
    try:
        pipeline = build_pipeline(params, image, accelerator, accelerator_count)
        compiler.Compiler().compile(pipeline, str(tmp))
        atomic_write_text(output, tmp.read_text(encoding="utf-8"))
    finally:
        tmp.unlink(missing_ok=True)
    return output
