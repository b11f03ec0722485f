"""`rlhfkit compile`: the same stages as `rlhfkit run`, as a Kubeflow Pipelines v2 pipeline.

For users who outgrow one machine: Vertex AI Pipelines or a Kubeflow cluster runs each
stage as its own container, passing artifacts between them. The DAG (DESIGN.md):

    validate -> train-reward -> train-policy -> infer-tuned --+
             `-------------------------------> infer-base  ---+-> compare

Every component is a *lightweight Python component* whose body does nothing but call
the rlhfkit CLI inside the user's image (`--image`, the components' base_image) and move
files between the CLI's run directory and KFP's artifact paths. So the YAML holds no
training logic of its own: the cluster runs exactly the code `rlhfkit run` runs. (Python
rather than container components also lets `kfp.local.SubprocessRunner` run the pipeline
without Docker, which is how the test proves it works end to end.)

Parameters. The pipeline's inputs carry Vertex's names and the defaults of the PARAMS
file given to `compile`, so the course's `parameter_values={...}` dict submits unchanged.
rlhfkit's extras (batch_size, LoRA ranks, PPO keys, ...) are ~25 more keys; as separate
inputs they would bury Vertex's dozen in the submit form, so they travel together as one
JSON string input, `rlhfkit_parameters` (the PARAMS file's resolved extras). Each key has
exactly one home (a Vertex key inside the JSON is an error), so there is no precedence
rule to guess. The `validate` component merges the two, checks the result with the same
`PipelineParams` code as the local runner, and writes it as a `params.json` artifact that
every later stage reads: one resolved dict per run, visible in the UI, and the reason no
two stages can disagree about a value.

kfp is an optional extra, imported only here.
"""

# No `from __future__ import annotations`: kfp reads the component signatures' types.

import json
from pathlib import Path
from typing import Any

from rlhfkit import log
from rlhfkit.errors import RlhfkitError
from rlhfkit.params import CLOUD_ONLY, PipelineParams

try:
    from kfp import compiler, dsl
except ImportError as _exc:  # one line, as every other user error
    raise RlhfkitError("Kubeflow Pipelines is not installed: pip install 'rlhfkit[kfp]'") \
        from _exc

PIPELINE_NAME = "rlhf-train-template"  # the name of Vertex's compiled RLHF pipeline
DEFAULT_IMAGE = "rlhfkit:latest"
PARAMETERS_INPUT = "rlhfkit_parameters"  # the JSON string input holding the extras

# Vertex's parameters that are pipeline inputs of their own, in Vertex's order. The
# cloud-only ones (project, location, deploy_model, ...) belong to the PipelineJob or mean
# nothing here, so the pipeline does not take them.
VERTEX_INPUTS = (
    "preference_dataset", "prompt_dataset", "eval_dataset", "large_model_reference",
    "model_display_name", "prompt_sequence_length", "target_sequence_length",
    "reward_model_learning_rate_multiplier", "reinforcement_learning_rate_multiplier",
    "reward_model_train_steps", "reinforcement_learning_train_steps", "kl_coeff",
    "instruction",
)
# Not part of the pipeline: artifacts live under the pipeline root, not in output_dir.
_DROPPED = ("output_dir", *CLOUD_ONLY)


# == components =======================================================================
# KFP copies each function's source into the YAML and runs it in the image, so a body
# imports what it needs and calls nothing defined outside itself. Each talks to rlhfkit
# through its CLI (`python -m rlhfkit ...`), the one interface kept stable.

def validate(
    rlhfkit_parameters: str,
    preference_dataset: str, prompt_dataset: str, eval_dataset: str,
    large_model_reference: str, model_display_name: str,
    prompt_sequence_length: int, target_sequence_length: int,
    reward_model_learning_rate_multiplier: float,
    reinforcement_learning_rate_multiplier: float,
    reward_model_train_steps: int, reinforcement_learning_train_steps: int,
    kl_coeff: float, instruction: str,
    parameters: dsl.Output[dsl.Artifact],
):
    """Resolve and check the run's parameters, then validate every dataset up front."""
    import json
    import subprocess
    import sys

    from rlhfkit.errors import RlhfkitError
    from rlhfkit.params import CLOUD_ONLY, PipelineParams

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
        kl_coeff=kl_coeff, instruction=instruction or None)
    twice = sorted(set(values) & set(named))
    if twice:  # one place per key: no precedence rule for users to guess
        sys.exit(f"rlhfkit_parameters: {', '.join(twice)} have pipeline inputs of their "
                 f"own; set them there and keep only rlhfkit's extras in this JSON")
    values.update(named)
    try:
        resolved = PipelineParams.from_dict(values, source=parameters.name, quiet=True)
    except RlhfkitError as exc:
        sys.exit(str(exc))  # the message alone, no traceback
    # Cloud-only keys mean nothing inside the pipeline; left in, every stage would print
    # a notice about each of them.
    resolved = {k: v for k, v in resolved.to_dict().items() if k not in CLOUD_ONLY}
    with open(parameters.path, "w", encoding="utf-8") as f:
        json.dump(resolved, f, indent=2)

    checks = [(preference_dataset, "preference"), (prompt_dataset, "prompt")]
    if eval_dataset:
        checks.append((eval_dataset, "eval"))
    for path, kind in checks:
        code = subprocess.run([sys.executable, "-m", "rlhfkit", "data", "validate", path,
                               "--kind", kind]).returncode
        if code:
            sys.exit(f"{kind} dataset {path}: validation failed (exit code {code})")


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
    """`rlhfkit train-policy`: PPO against the reward model; the tuned adapter (or model)."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rlhfkit-run-") as run:  # the stage's RUN
        code = subprocess.run([sys.executable, "-m", "rlhfkit", "train-policy",
                               parameters.path, "--output-dir", run,
                               "--reward-model", reward_model.path]).returncode
        if code:
            sys.exit(f"rlhfkit train-policy failed (exit code {code})")
        shutil.copytree(os.path.join(run, "policy"), policy.path, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("checkpoint-*"))
        os.makedirs(os.path.join(run, "reinforcer-logs"), exist_ok=True)
        shutil.copytree(os.path.join(run, "reinforcer-logs"), reinforcer_logs.path,
                        dirs_exist_ok=True)


def infer_tuned(
    parameters: dsl.Input[dsl.Artifact],
    policy: dsl.Input[dsl.Model],
    eval_results_tuned: dsl.Output[dsl.Dataset],
):
    """`rlhfkit infer` with the tuned policy: eval_results_tuned.jsonl (Vertex's format)."""
    import json
    import os
    import subprocess
    import sys

    with open(parameters.path, encoding="utf-8") as f:
        p = json.load(f)
    # A LoRA policy is an adapter over the base model; a fully tuned one is the model.
    if os.path.exists(os.path.join(policy.path, "adapter_config.json")):
        model = ["--model", p["large_model_reference"], "--adapter", policy.path]
    else:
        model = ["--model", policy.path]
    flags = ["--prompt-sequence-length", str(p["prompt_sequence_length"]),
             "--target-sequence-length", str(p["target_sequence_length"]),
             "--temperature", str(p["inference_temperature"]), "--seed", str(p["seed"])]
    flags += ["--instruction", p["instruction"]] if p["instruction"] else []
    flags += ["--trust-remote-code"] if p["trust_remote_code"] else []
    code = subprocess.run([sys.executable, "-m", "rlhfkit", "infer", *model, *flags,
                           p["eval_dataset"], "-o", eval_results_tuned.path]).returncode
    if code:
        sys.exit(f"rlhfkit infer failed (exit code {code})")


def infer_base(
    parameters: dsl.Input[dsl.Artifact],
    eval_results_untuned: dsl.Output[dsl.Dataset],
):
    """`rlhfkit infer` with the base model: eval_results_untuned.jsonl, the baseline."""
    import json
    import subprocess
    import sys

    with open(parameters.path, encoding="utf-8") as f:
        p = json.load(f)
    flags = ["--prompt-sequence-length", str(p["prompt_sequence_length"]),
             "--target-sequence-length", str(p["target_sequence_length"]),
             "--temperature", str(p["inference_temperature"]), "--seed", str(p["seed"])]
    flags += ["--instruction", p["instruction"]] if p["instruction"] else []
    flags += ["--trust-remote-code"] if p["trust_remote_code"] else []
    code = subprocess.run([sys.executable, "-m", "rlhfkit", "infer",
                           "--model", p["large_model_reference"], *flags,
                           p["eval_dataset"], "-o", eval_results_untuned.path]).returncode
    if code:
        sys.exit(f"rlhfkit infer failed (exit code {code})")


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


# == the pipeline =====================================================================

def pipeline_defaults(params: PipelineParams) -> dict[str, Any]:
    """The pipeline's inputs and their defaults: the named Vertex inputs, then the JSON."""
    values = params.to_dict()
    # KFP parameters are typed scalars: Vertex's optional strings become "" (= not set).
    defaults = {name: "" if values[name] is None else values[name] for name in VERTEX_INPUTS}
    extras = {k: v for k, v in values.items() if k not in _DROPPED + VERTEX_INPUTS}
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
    d = pipeline_defaults(params)

    def on_accelerator(task):
        if accelerator:
            task.set_accelerator_type(accelerator).set_accelerator_limit(accelerator_count)
        return task

    @dsl.pipeline(name=PIPELINE_NAME,
                  description="RLHF (reward model + PPO) with rlhfkit, as Vertex AI's "
                              "rlhf_pipeline: same inputs, same outputs.")
    def rlhf_train_template(
        preference_dataset: str = d["preference_dataset"],
        prompt_dataset: str = d["prompt_dataset"],
        eval_dataset: str = d["eval_dataset"],
        large_model_reference: str = d["large_model_reference"],
        model_display_name: str = d["model_display_name"],
        prompt_sequence_length: int = d["prompt_sequence_length"],
        target_sequence_length: int = d["target_sequence_length"],
        reward_model_learning_rate_multiplier: float =
            d["reward_model_learning_rate_multiplier"],
        reinforcement_learning_rate_multiplier: float =
            d["reinforcement_learning_rate_multiplier"],
        reward_model_train_steps: int = d["reward_model_train_steps"],
        reinforcement_learning_train_steps: int = d["reinforcement_learning_train_steps"],
        kl_coeff: float = d["kl_coeff"],
        instruction: str = d["instruction"],
        rlhfkit_parameters: str = d[PARAMETERS_INPUT],
    ):
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
            kl_coeff=kl_coeff, instruction=instruction)
        resolved = checked.outputs["parameters"]
        reward = on_accelerator(c_reward(parameters=resolved))
        policy = on_accelerator(c_policy(parameters=resolved,
                                         reward_model=reward.outputs["reward_model"]))
        # As in Vertex, bulk inference runs only when there is an eval dataset.
        with dsl.If(eval_dataset != "", name="has-eval-dataset"):
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

    return rlhf_train_template


def compile_pipeline(params: PipelineParams, output: str | Path, image: str = DEFAULT_IMAGE,
                     accelerator: str | None = None, accelerator_count: int = 1) -> Path:
    """Write the pipeline's YAML to `output` (atomically) and return its path."""
    from rlhfkit.io import atomic_write_text

    if not image.strip():
        raise RlhfkitError("--image must name a container image, e.g. rlhfkit:latest")
    if accelerator_count < 1:
        raise RlhfkitError(f"--accelerator-count must be >= 1, got {accelerator_count}")
    defaults = {f.name: f.default for f in PipelineParams.__dataclass_fields__.values()}
    for key, meaning in CLOUD_ONLY.items():
        if getattr(params, key) != defaults[key]:
            log.notice(f"{key} is not a pipeline input ({meaning.split(';')[0]}): set it "
                       f"when you submit the pipeline (see docs/kubeflow.md)")
    for key in ("preference_dataset", "prompt_dataset", "eval_dataset"):
        path = getattr(params, key)
        if path and "://" not in path:
            log.notice(f"{key} {path!r} is a local path: the pipeline's containers must "
                       f"be able to read it (use gs://... on Vertex AI)")
    output = Path(output)
    tmp = output.with_name(f".{output.name}.compiling.yaml")
    try:
        pipeline = build_pipeline(params, image, accelerator, accelerator_count)
        compiler.Compiler().compile(pipeline, str(tmp))
        atomic_write_text(output, tmp.read_text(encoding="utf-8"))
    finally:
        tmp.unlink(missing_ok=True)
    return output
