"""The `rlhfkit` command line: thin wrappers over the stage functions.

Heavy imports (torch, transformers) happen inside commands so `rlhfkit --help` is quick.
Every user error is an `RlhfkitError`, printed without a traceback by `main()`.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from rlhfkit import __version__
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
# (commands of rlhfkit.data / rlhfkit.data_tools go here)

# == demo world =========================================================================
# (commands of rlhfkit.demo go here)

# == reward model ========================================================================
# (train-reward, score go here)

# == policy ==============================================================================
# (train-policy goes here)

# == inference and evaluation ============================================================
# (infer, compare go here)

# == pipeline ============================================================================
# (run, compile go here)


def main() -> None:
    try:
        app()
    except RlhfkitError as exc:
        typer.echo(str(exc), err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)

