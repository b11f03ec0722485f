"""`rlhfkit train-dpo`: the DPO stage on its own (registered in cli.py)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from rlhfkit.errors import RlhfkitError


def train_dpo(
    params_file: Annotated[str, typer.Argument(
        metavar="PARAMS", help="parameter_values as a JSON or YAML file.")],
    output_dir: Annotated[Optional[str], typer.Option(  # noqa: UP045 (typer needs Optional)
        "--output-dir", help="The run directory RUN (default: output_dir in PARAMS). "
                             "Writes RUN/policy and RUN/dpo-logs.")] = None,
    merge: Annotated[bool, typer.Option(
        "--merge", help="Also write RUN/policy/merged: the adapter merged into a full "
                        "model that plain transformers loads.")] = False,
) -> None:
    """Tune the policy directly on the preference pairs with DPO (no reward model).

    dpo_beta, dpo_loss (sigmoid | ipo) and reinforcement_learning_train_steps come from
    PARAMS; tuning_method need not be set. Resumes from RUN/policy/checkpoint-N when
    interrupted; skips when RUN/policy/DONE holds the same parameters.
    Multi-process: torchrun --nproc_per_node N -m rlhfkit train-dpo PARAMS ...
    """
    from rlhfkit import dpo, log
    from rlhfkit.params import PipelineParams

    params = PipelineParams.from_file(params_file)
    run_dir = output_dir or params.output_dir
    if not run_dir:
        raise RlhfkitError(f"{params_file}: no run directory; pass --output-dir RUN or set "
                           "output_dir in the parameters")
    if merge:
        params.merge_adapter = True
    result = dpo.run(dpo.DPOConfig(params, str(run_dir)))
    if log.is_main_process():
        typer.echo(f"policy: {result['policy_dir']}")
        typer.echo(f"TensorBoard logs: {result['logs_dir']}")
        if result["final_loss"] is not None:
            typer.echo(f"final loss {result['final_loss']:.4f}, reward accuracy "
                       f"{result['final_reward_accuracy']:.3f} (training batch)")
