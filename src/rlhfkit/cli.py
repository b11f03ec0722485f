"""The `rlhfkit` command line: thin wrappers over the stage functions.

Heavy imports (torch, transformers) happen inside commands so `rlhfkit --help` is quick.
Every user error is an `RlhfkitError`, printed without a traceback by `main()`.
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from rlhfkit import __version__
from rlhfkit.cli_plan import plan_cmd
from rlhfkit.errors import RlhfkitError

app = typer.Typer(
    help="rlhfkit: the Vertex AI RLHF tuning pipeline, open and on your own hardware.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)
data_app = typer.Typer(help="Explore, validate and convert datasets (course lesson 2).",
                       no_args_is_help=True)
demo_app = typer.Typer(help="The offline demo world: synthetic data and a small model.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(demo_app, name="demo")
from rlhfkit.cli_label import label_app  # noqa: E402 (the label sub-app, its own module)

app.add_typer(label_app, name="label")
app.command("plan")(plan_cmd)  # rlhfkit.cli_plan: the memory plan of a run


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rlhfkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option(  # noqa: UP045 (typer needs Optional)
        "--version", callback=_version, is_eager=True, help="Print the version.")] = None,
) -> None:
    pass


@app.command()
def steps(
    dataset_size: Annotated[int, typer.Option(help="Examples in the dataset.")],
    batch_size: Annotated[int, typer.Option(help="Examples per step (Vertex: 64).")] = 64,
    epochs: Annotated[int, typer.Option(help="Passes over the dataset.")] = 1,
) -> None:
    """Turn epochs into train steps: ceil(dataset_size / batch_size) * epochs."""
    from rlhfkit.params import steps_for_epochs

    typer.echo(steps_for_epochs(dataset_size, batch_size, epochs))


# == data (lesson 2) ===================================================================
_DATASET_HELP = "A dataset: a JSONL file, a directory, a glob or an fsspec URL."
_KIND_HELP = "preference, prompt or eval (default: preference if any line has its fields)."


@data_app.command("inspect")
def data_inspect(
    file: Annotated[str, typer.Argument(help=_DATASET_HELP)],
    index: Annotated[int, typer.Option("--index", "-i",
                                       help="Which record: 0 = first, -1 = last.")] = 0,
    render: Annotated[bool, typer.Option(help="Show the text the model sees instead.")] = False,
    model: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="With --render: the model whose tokenizer (chat template) renders.")] = None,
    instruction: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="With --render: the run's instruction.")] = None,
) -> None:
    """Print one record key by key, like the course's print_d (--render: as the model sees it)."""
    from rlhfkit.data_tools import inspect_record, render_record

    typer.echo(render_record(file, index, model, instruction) if render else
               inspect_record(file, index))


@data_app.command("validate")
def data_validate(
    file: Annotated[str, typer.Argument(help=_DATASET_HELP)],
    kind: Annotated[Optional[str], typer.Option(help=_KIND_HELP)] = None,  # noqa: UP045
) -> None:
    """Check a dataset; print every problem as path:line (exit 1) or a one-line ok."""
    from rlhfkit.data_tools import validate
    from rlhfkit.errors import DataError

    try:
        typer.echo(validate(file, kind))
    except DataError as exc:  # an invalid file is this command's normal answer
        typer.echo(str(exc), err=True)
        n = len(exc.problems)
        typer.echo(f"invalid: {n} problem{'s' if n != 1 else ''}", err=True)
        raise typer.Exit(1) from None


@data_app.command("stats")
def data_stats(
    file: Annotated[str, typer.Argument(help=_DATASET_HELP)],
    kind: Annotated[Optional[str], typer.Option(help=_KIND_HELP)] = None,  # noqa: UP045
) -> None:
    """Rows, word-length distributions, choice balance and duplicate prompts."""
    from rich.console import Console

    from rlhfkit.data_tools import stats

    table, lines = stats(file, kind)
    console = Console(highlight=False)
    console.print(table)
    for line in lines:
        console.print(line, markup=False)


@data_app.command("convert")
def data_convert(
    src: Annotated[str, typer.Argument(help=_DATASET_HELP)],
    out: Annotated[str, typer.Option("--output", "-o", help="The course-format JSONL to write.")],
    kind: Annotated[Optional[str], typer.Option(help=_KIND_HELP)] = None,  # noqa: UP045
) -> None:
    """Convert TRL-style (or any accepted) records to the course format, atomically."""
    from rlhfkit.data_tools import convert

    typer.echo(convert(src, out, kind))


@data_app.command("compare")
def data_compare(
    preference: Annotated[str, typer.Argument(help="The preference dataset.")],
    prompt: Annotated[str, typer.Argument(help="The prompt dataset.")],
    seed: Annotated[int, typer.Option(help="Seed of the random re-splits.")] = 0,
) -> None:
    """Are the two datasets' prompts from the same distribution? Exit 0 same, 1 different."""
    from rlhfkit.data_tools import compare

    result, lines = compare(preference, prompt, seed)
    for line in lines:
        typer.echo(line)
    if not result["same"]:
        raise typer.Exit(1)


# == demo world =========================================================================

@demo_app.command("data")
def demo_data(
    output_dir: Annotated[str, typer.Argument(help="Directory to write the data sets to.")],
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 0,
    preference_size: Annotated[int, typer.Option(help="Preference pairs.")] = 3000,
    prompt_size: Annotated[int, typer.Option(help="Prompts for RL.")] = 2000,
    eval_size: Annotated[int, typer.Option(
        help="Eval prompts (each also a held-out preference pair).")] = 200,
) -> None:
    """Write the demo world's preference.jsonl, prompt.jsonl and eval.jsonl (+ README.md,
    world.json with the noise ceiling) to OUTPUT_DIR."""
    from rlhfkit.demo import world
    from rlhfkit.io import check_output_dir

    check_output_dir(output_dir)
    info = world.run(world.Config(output_dir, seed, preference_size, prompt_size, eval_size))
    typer.echo(f"wrote {output_dir}: {info['sizes']['preference']} preference pairs, "
               f"{info['sizes']['prompt']} prompts, {info['sizes']['eval']} eval records; "
               f"noise ceiling {info['noise_ceiling_preference']:.3f} (eval "
               f"{info['noise_ceiling_eval']:.3f}); instruction: {info['instruction']!r}")


@demo_app.command("model")
def demo_model(
    output_dir: Annotated[str, typer.Argument(help="Directory to write the model to.")],
    preset: Annotated[str, typer.Option(
        help="demo (~1M parameters, ~4 min on 2 cores), tiny (seconds, tests) or bench-3m.")] = "demo",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    steps: Annotated[Optional[int], typer.Option(  # noqa: UP045 (typer needs Optional)
        help="Pretraining steps (default: the preset's).")] = None,
    arch: Annotated[str, typer.Option(
        help="llama (causal LM) or t5 (encoder-decoder, for examples/demo-t5).")] = "llama",
) -> None:
    """Build the demo world's small Llama (or T5) offline: tokenizer, pretraining, safetensors.

    The same seed gives the same bytes on any number of cores and under any load on one CPU
    model (the build pins its torch threads and AVX2 kernels); CPUs of other vendors can
    round differently (an AMD EPYC and an Intel Xeon build different models)."""
    from rlhfkit.demo import model
    from rlhfkit.io import check_output_dir

    check_output_dir(output_dir)
    code = model.build(model.Config(output_dir, preset, seed, steps, arch))
    if code:
        raise typer.Exit(code)

# == stage commands: one run directory, checked and locked before any work ============

def _run_dir(params_file: str, run_dir: str | None) -> str:
    from rlhfkit.io import check_output_dir

    if not run_dir:
        raise RlhfkitError(f"{params_file}: no run directory; pass --output-dir RUN or set "
                           "output_dir in the parameters")
    check_output_dir(run_dir)
    return run_dir


def _locked(run_dir: str):
    from rlhfkit.runstate import run_lock

    return run_lock(run_dir)


# == reward model ========================================================================

@app.command("train-reward")
def train_reward(
    params_file: Annotated[str, typer.Argument(
        metavar="PARAMS", help="parameter_values as a JSON or YAML file.")],
    output_dir: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--output-dir", help="The run directory (default: output_dir in PARAMS).")] = None,
    progress: Annotated[bool, typer.Option(help="Show the live progress bar.")] = True,
) -> None:
    """Train the reward model (Bradley-Terry, LoRA rank 4) -> RUN/reward_model/.

    Resumes from RUN/reward_model/checkpoint-N/ when interrupted; skips when RUN/reward_model/
    DONE holds the same parameters. Multi-process: `torchrun --nproc_per_node N -m rlhfkit
    train-reward PARAMS`.
    """
    from rlhfkit import log, reward
    from rlhfkit.params import PipelineParams

    params = PipelineParams.from_file(params_file)
    run_dir = _run_dir(params_file, output_dir or params.output_dir)
    with _locked(run_dir):
        result = reward.run(reward.RewardConfig.from_params(params, run_dir, progress=progress))
    if log.is_main_process():
        typer.echo(f"reward model: {result['reward_model_dir']}")
        typer.echo(f"TensorBoard logs: {result['logs_dir']}")
        typer.echo(f"held-out accuracy: {result['eval_accuracy']:.3f} "
                   f"({result['eval_source']}, rank_loss {result['eval_rank_loss']:.4f})")


@app.command("score")
def score(
    file: Annotated[str, typer.Argument(help=(
        "Records to score: preference (adds reward_0, reward_1), bulk-inference output "
        "(prediction) or input_text/messages with prediction, completion or response "
        "(adds reward). A file, directory, glob or fsspec URL."))],
    reward_model: Annotated[str, typer.Option(
        "--reward-model", help="A reward-model directory (RUN/reward_model).")],
    output: Annotated[str, typer.Option("--output", "-o", help="The JSONL file to write.")],
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 16,
) -> None:
    """Add the reward model's score to every record (written atomically)."""
    from rlhfkit.data import read_lines
    from rlhfkit.errors import DataError
    from rlhfkit.io import atomic_write_jsonl, check_output_file, expand_paths
    from rlhfkit.reward import RewardScorer, score_records

    check_output_file(output)  # before any work
    problems: list[str] = []
    lines = [line for path in expand_paths(file) for line in read_lines(path, problems)]
    if problems:
        raise DataError(problems)
    if not lines:
        raise RlhfkitError(f"{file}: no records")
    scorer = RewardScorer.load(reward_model, batch_size=batch_size)
    records = score_records(scorer, lines)
    atomic_write_jsonl(output, records)
    keys = [k for r in records for k in ("reward", "reward_0", "reward_1") if k in r]
    typer.echo(f"scored {len(records)} records ({len(keys)} scores) -> {output}")

# == policy ==============================================================================
@app.command("train-policy")
def train_policy(
    params: Annotated[str, typer.Argument(help="parameter_values as JSON or YAML.")],
    output_dir: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="The run directory RUN (default: the params' output_dir). Reads "
             "RUN/reward_model, writes RUN/policy and RUN/reinforcer-logs.")] = None,
    merge: Annotated[bool, typer.Option(
        "--merge", help="Also write RUN/policy/merged: the adapter merged into a full "
                        "model that plain transformers loads.")] = False,
    reward_model: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="A reward model directory other than RUN/reward_model.")] = None,
) -> None:
    """Tune the policy with PPO, RLOO or GRPO (rl_algorithm) against the reward model
    (Vertex's reinforcer).

    Multi-process: torchrun --nproc_per_node N -m rlhfkit train-policy PARAMS ...
    """
    from rlhfkit import log, policy
    from rlhfkit.params import PipelineParams

    p = PipelineParams.from_file(params)
    overrides = {"reward_model_dir": reward_model}
    if merge:
        overrides["merge_adapter"] = True
    run_dir = _run_dir(params, output_dir or p.output_dir)
    with _locked(run_dir):
        out = policy.run(policy.PolicyConfig.from_params(p, run_dir, **overrides))
    if log.is_main_process():
        typer.echo(out["policy_dir"])

from rlhfkit.cli_dpo import train_dpo  # noqa: E402 (tuning_method dpo)

app.command("train-dpo")(train_dpo)

# == inference and evaluation ============================================================
@app.command("infer")
def infer_cmd(
    eval_dataset: Annotated[str, typer.Argument(help="Eval dataset: " + _DATASET_HELP)],
    output: Annotated[str, typer.Option("--output", "-o", help="eval_results JSONL to write.")],
    model: Annotated[str, typer.Option(
        help="Base model: Vertex name, Hugging Face id, or a directory (a merged model, "
             "or a LoRA adapter naming its base).")],
    adapter: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="A LoRA adapter directory (e.g. RUN/policy) applied to --model.")] = None,
    instruction: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help='Prepended to every input as instruction + "\\n\\n\\n" + input_text.')] = None,
    prompt_sequence_length: Annotated[Optional[int], typer.Option(  # noqa: UP045
        help="Prompt tokens kept (truncated from the left). [default: the pipeline's]")
    ] = None,
    target_sequence_length: Annotated[Optional[int], typer.Option(  # noqa: UP045
        help="Max new tokens. [default: the pipeline's]")] = None,
    temperature: Annotated[Optional[float], typer.Option(  # noqa: UP045
        help="The pipeline's inference_temperature: 0 = greedy (as Vertex's bulk "
             "inferrer); > 0 samples.")] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per generate call.")] = 16,
    seed: Annotated[Optional[int], typer.Option(help="Seed for sampling.")] = None,  # noqa: UP045
    trust_remote_code: Annotated[bool, typer.Option(
        help="Run model code shipped with the checkpoint.")] = False,
) -> None:
    """Bulk inference (Vertex's Bulk Inferrer): one prediction per eval prompt."""
    from rlhfkit import infer
    from rlhfkit.params import PipelineParams
    from rlhfkit.runstate import lock_if_run_dir

    # Options left out keep PipelineParams' defaults (declared there, once).
    given = {"instruction": instruction, "prompt_sequence_length": prompt_sequence_length,
             "target_sequence_length": target_sequence_length,
             "inference_temperature": temperature, "seed": seed,
             "trust_remote_code": trust_remote_code}
    params = PipelineParams(**{k: v for k, v in given.items() if v is not None})
    with lock_if_run_dir(Path(output).absolute().parent):
        infer.run(infer.Config(model=model, adapter=adapter, eval_dataset=eval_dataset,
                               output=output, params=params, batch_size=batch_size))


@app.command("compare")
def compare_cmd(
    run_dirs: Annotated[Optional[list[str]], typer.Argument(  # noqa: UP045
        metavar="[RUN]...", help="A run directory (its eval_results_*.jsonl, reward_model/, "
                                 "logs); several runs give one table, a row per run.")] = None,
    tuned: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Tuned model's eval_results JSONL (instead of RUN).")] = None,
    untuned: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Base model's eval_results JSONL (instead of RUN).")] = None,
    reward_model: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Reward model directory to score both columns.")] = None,
    eval_dataset: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--eval", help="Eval records: targets for ROUGE-L, gold scores on the demo world.")
    ] = None,
    out_dir: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Write comparison.csv and report.html here (default: RUN; none with files).")
    ] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print only the aggregates, as one JSON object.")] = False,
    reward_tie_threshold: Annotated[Optional[float], typer.Option(  # noqa: UP045
        help="A tie for the reward-model win rate when |score difference| <= this "
             "(default: the run's reward_tie_threshold, 0.1).")] = None,
    human: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="preference.jsonl from `rlhfkit label serve` on `label prepare --from-run "
             "RUN` pairs: adds the blind human win rate.")] = None,
) -> None:
    """Lesson 4: tuned vs base side by side, reward win rate, length and adherence."""
    from rlhfkit.compare_runs import main as compare_main

    compare_main(run_dirs or [], tuned, untuned, reward_model, eval_dataset, out_dir,
                 as_json, reward_tie_threshold, human)

# == pipeline ============================================================================
# (run, compile go here)


@app.command("run")
def run_cmd(
    params: Annotated[str, typer.Argument(help="parameter_values as a JSON or YAML file.")],
    output_dir: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--output-dir", help="The run directory (default: output_dir in the file).")] = None,
    cache: Annotated[bool, typer.Option(
        help="Reuse finished stages (--no-cache reruns every stage, as Vertex's "
             "enable_caching=False).")] = True,
    force: Annotated[bool, typer.Option(
        "--force", help="Start even when the memory plan says a stage will not fit.")] = False,
) -> None:
    """Run the whole pipeline: validate, reward model, PPO / RLOO / GRPO (or DPO), bulk
    inference, compare.

    Running it again skips finished stages and resumes an interrupted one. One process at
    a time per run directory (RUN/.lock). Prints the memory plan first (`rlhfkit plan`)."""
    from rlhfkit.pipeline import run_from_file

    run_from_file(params, output_dir, enable_caching=cache, force=force)


@app.command("compile")
def compile_pipeline(
    params: Annotated[str, typer.Argument(help="parameter_values as a JSON or YAML file.")],
    output: Annotated[str, typer.Option("--output", "-o", help="The pipeline YAML to write.")
                      ] = "rlhf_pipeline.yaml",
    image: Annotated[str, typer.Option(help="Container image with rlhfkit[kfp] installed; "
                                            "every component runs in it.")
                     ] = "rlhfkit:latest",
    accelerator: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Accelerator for the model steps, e.g. NVIDIA_L4 (Vertex AI) or "
             "nvidia.com/gpu (Kubeflow). Default: none (CPU).")] = None,
    accelerator_count: Annotated[int, typer.Option(help="Accelerators per model step.")] = 1,
) -> None:
    """Write a Kubeflow Pipelines v2 YAML (Vertex AI Pipelines or a Kubeflow cluster)."""
    from rlhfkit.kfp_pipeline import compile_pipeline as compile_
    from rlhfkit.params import PipelineParams

    typer.echo(compile_(PipelineParams.from_file(params, quiet=True), output, image=image,
                        accelerator=accelerator, accelerator_count=accelerator_count))


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
from rlhfkit import cli_serve  # noqa: E402 (deploy: serve, export)

app.command("serve")(cli_serve.serve)
app.command("export")(cli_serve.export)


def main() -> None:
    import warnings

    # Deprecation chatter between transformers and peft versions is not the user's business.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")
    try:
        app()
    except RlhfkitError as exc:
        typer.echo(str(exc), err=True)
        sys.exit(exc.exit_code)
    except OSError as exc:
        if exc.errno not in _WRITE_ERRNOS:
            raise
        # A full disk (or a read-only / over-quota one) outside rlhfkit's own writers, e.g.
        # in a library's save_pretrained: one line naming the file; no stage is marked
        # done, because DONE is written last.
        typer.echo(f"{exc.filename or 'a file'}: cannot write: {exc.strerror}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)

