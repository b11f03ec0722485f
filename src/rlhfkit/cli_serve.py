"""`rlhfkit serve` and `rlhfkit export`: the deploy step of the pipeline (course: the
endpoint Vertex deploys). Thin wrappers over serve.py and export.py."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

_SOURCE_HELP = ("A run directory (RUN/model/ if exported, else the policy adapter on its "
                "base), a policy or adapter directory, a model directory or a hub id.")


def serve(
    source: Annotated[str, typer.Argument(metavar="RUN_OR_MODEL", help=_SOURCE_HELP)],
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback "
                                           "needs --api-key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[Optional[str], typer.Option(  # noqa: UP045 (typer needs Optional)
        envvar="RLHFKIT_API_KEY",
        help="Clients must send 'Authorization: Bearer KEY' (env RLHFKIT_API_KEY).")] = None,
    instruction: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Prepended to prompts instead of the run's instruction.")] = None,
    model_name: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="The model id clients send (default: the run's directory name).")] = None,
    max_batch_size: Annotated[int, typer.Option(
        help="Completions generated together, across clients.")] = 16,
    max_tokens_limit: Annotated[int, typer.Option(
        help="The largest max_tokens a request may ask for.")] = 1024,
    trust_remote_code: Annotated[bool, typer.Option(
        help="Run model code shipped with the checkpoint.")] = False,
) -> None:
    """Serve the tuned model with OpenAI's API: /v1/completions, /v1/chat/completions."""
    from rlhfkit import serve as serve_mod

    serve_mod.run(serve_mod.ServeConfig(
        source=source, host=host, port=port, api_key=api_key, instruction=instruction,
        model_name=model_name, max_batch_size=max_batch_size,
        max_tokens_limit=max_tokens_limit, trust_remote_code=trust_remote_code))


def export(
    source: Annotated[str, typer.Argument(metavar="RUN", help=_SOURCE_HELP)],
    output: Annotated[str, typer.Option("--output", "-o", help="Directory to write.")],
    overwrite: Annotated[bool, typer.Option(help="Replace OUTPUT if it is not empty.")
                         ] = False,
    trust_remote_code: Annotated[bool, typer.Option(
        help="Run model code shipped with the checkpoint.")] = False,
) -> None:
    """Write the tuned policy as one merged, plain transformers model (safetensors)."""
    from rlhfkit import export as export_mod

    result = export_mod.export(source, output, overwrite=overwrite,
                               trust_remote_code=trust_remote_code)
    typer.echo(export_mod.describe(result))
    typer.echo(f"serve it with: rlhfkit serve {output}")
