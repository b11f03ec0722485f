"""`rlhfkit plan PARAMS`: the memory plan of a run (rlhfkit.plan), from the config alone."""

from __future__ import annotations

from typing import Annotated, Optional

import typer


def plan_cmd(
    params_file: Annotated[str, typer.Argument(
        metavar="PARAMS", help="parameter_values as a JSON or YAML file.")],
    device: Annotated[Optional[str], typer.Option(  # noqa: UP045 (typer needs Optional)
        help="Plan for cpu or cuda (default: the device here).")] = None,
    memory_gib: Annotated[Optional[float], typer.Option(  # noqa: UP045
        "--memory-gib", help="The device's memory in GiB (default: measured here), e.g. "
                             "24 to plan a 24 GB GPU run from a laptop.")] = None,
    model: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Read the model's shape from this directory's config.json instead of "
             "large_model_reference (plan a hub model from its config alone).")] = None,
    processes: Annotated[int, typer.Option(
        help="Processes sharing each batch (torchrun --nproc_per_node).")] = 1,
) -> None:
    """Estimate each stage's peak memory (weights, gradients, optimizer, activations,
    logits, KV cache) against the device, reading only the model's config.

    Exits with status 1 when a stage will not fit, after saying what to change."""
    from rlhfkit import plan
    from rlhfkit.errors import RlhfkitError
    from rlhfkit.params import PipelineParams

    params = PipelineParams.from_file(params_file, quiet=True)
    if processes < 1:
        raise RlhfkitError(f"--processes must be >= 1, got {processes}")
    shape = plan.load_shape(model, params.trust_remote_code) if model else None
    p = plan.make_plan(params, shape=shape, reward_shape=shape,
                       device=plan.detect_device(device, memory_gib), processes=processes)
    typer.echo(plan.format_plan(p, params))
    problems = p.problems()
    if problems:
        raise RlhfkitError("\n".join(problems))
