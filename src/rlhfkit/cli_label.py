"""`rlhfkit label ...`: make pairs, label them in the browser, look at the labels.

Thin wrappers over rlhfkit.label (pairs), rlhfkit.label_server (the page) and
rlhfkit.label_store (the output and its statistics).
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

label_app = typer.Typer(help="The human in RLHF: make pairs, label them in a browser page, "
                             "train a reward model on the labels.", no_args_is_help=True)


@label_app.command("prepare")
def prepare(
    output: Annotated[str, typer.Option("--output", "-o", help="pairs.jsonl to write.")],
    model: Annotated[Optional[str], typer.Option(  # noqa: UP045 (typer needs Optional)
        help="Model directory (or a RUN/policy adapter): answers from it.")] = None,
    model_b: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--model-b", help="A second model: one answer from each (else two samples of "
                          "--model).")] = None,
    prompts: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Prompt dataset (input_text records).")] = None,
    from_run: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--from-run", help="A run directory: base vs tuned pairs from its "
                           "eval_results_*.jsonl, nothing generated.")] = None,
    instruction: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help='Prepended as instruction + "\\n\\n\\n" + input_text (shown on the page).')
    ] = None,
    temperature: Annotated[float, typer.Option(
        help="Sampling temperature (0 = greedy: only with --model-b).")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the sampling and of the left/right "
                                           "order.")] = 0,
    target_sequence_length: Annotated[int, typer.Option(help="Max new tokens.")] = 64,
    prompt_sequence_length: Annotated[int, typer.Option(help="Prompt tokens kept.")] = 512,
) -> None:
    """Write candidate pairs (random left/right order) and, apart, their sources."""
    from rlhfkit.label import prepare as prepare_

    pairs, sources, _ = prepare_(output, from_run=from_run, model=model, model_b=model_b,
                                 prompts=prompts, instruction=instruction,
                                 temperature=temperature, seed=seed,
                                 target_sequence_length=target_sequence_length,
                                 prompt_sequence_length=prompt_sequence_length)
    n = sum(1 for _ in open(pairs, encoding="utf-8"))
    typer.echo(f"wrote {n} pairs to {pairs} (sources, not for the labeller: {sources})")
    typer.echo(f"next: rlhfkit label serve {pairs} -o preference.jsonl")


@label_app.command("serve")
def serve(
    pairs: Annotated[str, typer.Argument(help="pairs.jsonl from `rlhfkit label prepare`.")],
    output: Annotated[str, typer.Option("--output", "-o",
                                        help="preference.jsonl to append choices to.")],
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 = any free port).")] = 0,
) -> None:
    """Serve the labeling page; prints one URL holding the access token."""
    from rlhfkit.label_server import serve as serve_

    serve_(pairs, output, host=host, port=port)


@label_app.command("stats")
def stats(
    preference: Annotated[str, typer.Argument(help="preference.jsonl written by the page.")],
) -> None:
    """Judgements per annotator, and Cohen's kappa on pairs labelled twice."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from rlhfkit.compare import visible
    from rlhfkit.label_store import stats as stats_

    counts, pairs = stats_(preference)
    console = Console(highlight=False)
    table = Table(title="judgements per annotator")
    for col in ("annotator", "choices", "ties", "skips"):
        table.add_column(col, justify="left" if col == "annotator" else "right")
    for name, c in counts.items():
        table.add_row(Text(visible(name)), str(c["choices"]), str(c["ties"]), str(c["skips"]))
    console.print(table)
    if not pairs:
        console.print("no pair labelled by two annotators: no agreement to report",
                      markup=False)
    for p in pairs:
        kappa = "n/a (one label only)" if p.kappa is None else f"{p.kappa:.3f}"
        console.print(Text(visible(
            f"{p.a} vs {p.b}: {p.n} pairs labelled by both, agreement {p.agreement:.3f}, "
            f"Cohen's kappa {kappa}")))
