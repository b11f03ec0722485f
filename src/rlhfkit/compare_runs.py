"""Several runs side by side: `rlhfkit compare RUN_A RUN_B ...`.

The comparison a user makes when choosing a method (PPO, RLOO, GRPO, DPO) or a setting:
one row per run, all on the same eval prompts: method, steps, the final KL to the base,
the reward-model and gold win rates over the base with their 95% intervals, mean words,
training time. The reward-model win rate of each run uses that run's own reward model
(different reward models are different yardsticks); the gold win rate (demo world) and
the human win rate use one yardstick for all.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from rlhfkit.errors import RlhfkitError

POLICY_META = Path("policy") / "rlhfkit.json"
TRAIN_LOGS = ("reinforcer-logs", "dpo-logs")
STEP_SECONDS_TAG = "time/step_seconds"


@dataclass
class RunInfo:
    """What a run directory says about its training (None where it does not say)."""

    run: str
    method: str | None = None  # ppo | rloo | grpo | dpo (+ value layout)
    steps: int | None = None
    final_kl: float | None = None  # nats per response, the last step's objective/kl
    training_seconds: float | None = None  # sum of the logged step times


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def run_info(run_dir: str | Path) -> RunInfo:
    from rlhfkit.report import read_scalars

    run = Path(run_dir)
    params = _json(run / "params.json")
    params = params.get("parameter_values", params)
    meta = _json(run / POLICY_META)
    if params.get("tuning_method") == "dpo":
        method = "dpo"
    else:
        method = params.get("rl_algorithm") or ("ppo" if params else None)
        if params.get("value_model") and method == "ppo":
            method = f"ppo ({params['value_model']} value)"
    steps = meta.get("train_steps", params.get("reinforcement_learning_train_steps"))
    kl = meta.get("final_kl")
    seconds = None
    for sub in TRAIN_LOGS:
        if (run / sub).is_dir():
            times = read_scalars(run / sub).get(STEP_SECONDS_TAG)
            if times:
                seconds = float(sum(v for _, v in times))
            if kl is None:
                kls = read_scalars(run / sub).get("objective/kl")
                kl = kls[-1][1] if kls else None
    return RunInfo(str(run), method, steps, None if kl is None else float(kl), seconds)


def runs_table(runs: list[tuple[RunInfo, dict]]) -> list[dict]:
    """One flat row per run: its RunInfo and the headline numbers of its summary."""
    keys = ("n", "win_rate", "win_rate_ci_low", "win_rate_ci_high", "gold_win_rate",
            "gold_win_rate_ci_low", "gold_win_rate_ci_high", "human_win_rate",
            "human_win_rate_ci_low", "human_win_rate_ci_high", "mean_words_base",
            "mean_words_tuned", "reward_tie_threshold")
    return [{**asdict(info), **{k: summary.get(k) for k in keys}} for info, summary in runs]


def check_same_prompts(tables) -> None:
    """Runs are comparable only on the same eval prompts."""
    first_run, first = tables[0][0], set(tables[0][1]["prompt"])
    for run, df in tables[1:]:
        prompts = set(df["prompt"])
        if prompts != first:
            raise RlhfkitError(
                f"{run}: its eval prompts differ from {first_run}'s ({len(prompts)} vs "
                f"{len(first)} prompts, {len(prompts & first)} shared); compare runs made on "
                "the same eval set")


def _ci(row: dict, prefix: str) -> str:
    rate = row.get(f"{prefix}win_rate")
    if rate is None:
        return "-"
    return (f"{rate:.3f} [{row[f'{prefix}win_rate_ci_low']:.2f}, "
            f"{row[f'{prefix}win_rate_ci_high']:.2f}]")


def cells(row: dict) -> dict[str, str]:
    """A row's values as the short strings the terminal and the report show."""
    def num(x, spec):
        return "-" if x is None else format(x, spec)
    words = "-" if row["mean_words_tuned"] is None else \
        f"{row['mean_words_base']:.1f} -> {row['mean_words_tuned']:.1f}"
    return {"run": Path(row["run"]).name or row["run"], "method": row["method"] or "-",
            "steps": num(row["steps"], "d"), "final KL (nats)": num(row["final_kl"], ".3f"),
            "reward-model win rate [95% CI]": _ci(row, ""),
            "gold win rate [95% CI]": _ci(row, "gold_"),
            "human win rate [95% CI]": _ci(row, "human_"),
            "mean words base -> tuned": words,
            "training time": "-" if row["training_seconds"] is None
            else f"{row['training_seconds'] / 60:.1f} min"}


def shown_columns(rows: list[dict]) -> list[str]:
    """Columns with a value in at least one row (no all-dash human column)."""
    all_cells = [cells(r) for r in rows]
    return [c for c in all_cells[0] if any(x[c] != "-" for x in all_cells)]


def print_runs(rows: list[dict], console=None) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from rlhfkit.compare import visible

    console = console or Console()
    cols = shown_columns(rows)
    table = Table(title=f"{len(rows)} runs on the same {rows[0]['n']} eval prompts")
    for c in cols:
        table.add_column(c, justify="left" if c in ("run", "method") else "right")
    for r in rows:
        shown = cells(r)
        table.add_row(*(Text(visible(shown[c])) for c in cols))
    console.print(table)


# -- the command -------------------------------------------------------------------------

def main(run_dirs: list[str], tuned: str | None, untuned: str | None,
         reward_model: str | None, eval_dataset: str | None, out_dir: str | None,
         as_json: bool, reward_tie_threshold: float | None, human: str | None) -> None:
    """`rlhfkit compare`: one run (or --tuned/--untuned files), or several runs."""
    import typer

    from rlhfkit import compare

    overrides = dict(reward_model=reward_model, eval_dataset=eval_dataset, out_dir=out_dir,
                     reward_tie_threshold=reward_tie_threshold, human=human)
    if run_dirs and (tuned or untuned):
        raise RlhfkitError("give either run directories or --tuned and --untuned, not both")
    if len(run_dirs) > 1:
        if out_dir or human:
            raise RlhfkitError("with several runs each run's report goes into its own "
                               "directory, and --human labels belong to one run: compare "
                               "that run alone with --human")
        return _many(run_dirs, overrides, as_json)
    if run_dirs:
        cfg = compare.Config.for_run(run_dirs[0], **overrides)
    elif tuned and untuned:
        cfg = compare.Config(tuned=tuned, untuned=untuned, **{
            k: v for k, v in overrides.items() if v is not None})
    else:
        raise RlhfkitError("give a run directory, or both --tuned A.jsonl and --untuned B.jsonl")
    result = compare.run(cfg)
    if as_json:
        typer.echo(compare.summary_json(result.summary))
    else:
        compare.print_table(result.table, result.summary)
    for path in (result.csv_path, result.report_path):
        if path is not None:
            typer.echo(f"wrote {path}", err=True)


def _many(run_dirs: list[str], overrides: dict, as_json: bool) -> None:
    import typer

    from rlhfkit import compare

    cfgs = [compare.Config.for_run(r, **overrides) for r in run_dirs]
    results = [compare.build(c) for c in cfgs]
    check_same_prompts([(c.run_dir, r.table) for c, r in zip(cfgs, results, strict=True)])
    rows = runs_table([(run_info(c.run_dir), r.summary) for c, r in
                       zip(cfgs, results, strict=True)])
    for cfg, result in zip(cfgs, results, strict=True):
        compare.write(cfg, result, runs=rows)
    if as_json:
        typer.echo(json.dumps({"runs": [
            {**row, "summary": json.loads(compare.summary_json(r.summary))}
            for row, r in zip(rows, results, strict=True)]}))
    else:
        print_runs(rows)
    for r in results:
        typer.echo(f"wrote {r.report_path}", err=True)
