"""Lesson 4: compare the tuned model with the base model on the eval prompts.

The course reads `eval_results_tuned.jsonl` and `eval_results_untuned.jsonl` (Vertex's
bulk-inference output) and puts them side by side in a pandas table with the columns
`prompt`, `base_model`, `tuned_model`. This module builds that table, joined by prompt
text rather than line order (bulk inference on a cluster does not keep order), and adds
what the course leaves to eyeballing:

- length: `base_words`, `tuned_words` (whitespace-separated words);
- instruction adherence: a word limit stated in the instruction ("less than 50 words",
  "at most 50 words", ...) -> `word_limit`, `base_within_limit`, `tuned_within_limit`;
- the reward model's scores, when one is given: `base_reward`, `tuned_reward`,
  `reward_diff`, and the tuned model's win rate with a bootstrap confidence interval;
- ROUGE-L F1 against reference answers, when the eval data has them;
- on the offline demo world, the hidden gold annotator's scores (`base_gold`,
  `tuned_gold`, `gold_diff`) and the gold win rate: the pipeline's real effect, which
  the proxy reward can overstate (over-optimisation).

`run(Config)` writes `comparison.csv` and a self-contained `report.html` (see
rlhfkit.report) with the run's training curves; rlhfkit.compare_output prints the
terminal table and makes model text safe for the CSV and the terminal.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from rlhfkit import log
from rlhfkit.compare_metrics import (  # noqa: F401 (re-exported for Python users)
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    CI_LEVEL,
    TIE,
    bootstrap_ci,
    counts,
    lcs_length,
    outcomes,
    parse_word_limit,
    rouge_l,
    win_rate,
    within_limit,
    word_count,
)
from rlhfkit.compare_output import (  # noqa: F401 (re-exported for Python users)
    TABLE_MAX_ROWS,
    csv_safe,
    csv_safe_frame,
    format_summary,
    print_table,
    visible,
)
from rlhfkit.data import INSTRUCTION_SEPARATOR
from rlhfkit.errors import DataError, RlhfkitError
from rlhfkit.io import atomic_write_text, read_bytes
from rlhfkit.params import PipelineParams

MAX_NOTICES_SHOWN = 10  # per kind of mismatch; the rest are counted
TUNED_FILE, UNTUNED_FILE = "eval_results_tuned.jsonl", "eval_results_untuned.jsonl"
REWARD_MODEL_DIR, PARAMS_FILE = "reward_model", "params.json"
CSV_FILE, REPORT_FILE = "comparison.csv", "report.html"
DEFAULT_TIE_THRESHOLD = PipelineParams.reward_tie_threshold  # declared (and explained) there
RESULT_SHAPE = ('{"inputs": {"inputs_pretokenized": ..., "targets_pretokenized": ...}, '
                '"prediction": ...}')


@dataclass
class Config:
    tuned: str  # bulk-inference output of the tuned model
    untuned: str  # bulk-inference output of the base model
    reward_model: str | None = None  # directory for rlhfkit.reward.RewardScorer.load
    eval_dataset: str | None = None  # eval records (targets, demo-world gold facts)
    out_dir: str | None = None  # where comparison.csv and report.html go; None: none written
    run_dir: str | None = None  # holds reward-logs/, reinforcer-logs/; None: tuned's dir
    reward_tie_threshold: float = DEFAULT_TIE_THRESHOLD  # |reward diff| <= this: a tie
    human: str | None = None  # preference JSONL labelled on `rlhfkit label` pairs

    @classmethod
    def for_run(cls, run_dir: str | Path, **overrides) -> Config:
        """A run directory's files: RUN/eval_results_{tuned,untuned}.jsonl, RUN/reward_model/
        if present, the eval dataset named in RUN/params.json if any; outputs go to RUN."""
        run = Path(run_dir)
        if not run.is_dir():
            raise RlhfkitError(f"{run}: no such run directory")
        cfg = cls(tuned=str(run / TUNED_FILE), untuned=str(run / UNTUNED_FILE),
                  out_dir=str(run), run_dir=str(run))
        missing = [name for name in (TUNED_FILE, UNTUNED_FILE) if not (run / name).is_file()]
        if missing and not (overrides.get("tuned") and overrides.get("untuned")):
            raise RlhfkitError(f"{run}: no {' or '.join(missing)}; the pipeline writes them "
                               "after training (or run `rlhfkit infer`)")
        if (run / REWARD_MODEL_DIR).is_dir():
            cfg.reward_model = str(run / REWARD_MODEL_DIR)
        cfg.eval_dataset = _eval_dataset_of_run(run)
        cfg.reward_tie_threshold = _tie_threshold_of_run(run)
        for key, value in overrides.items():
            if value is not None:
                setattr(cfg, key, value)
        return cfg


@dataclass
class Comparison:
    table: pd.DataFrame
    summary: dict
    notices: list[str] = field(default_factory=list)
    csv_path: Path | None = None
    report_path: Path | None = None


def _eval_dataset_of_run(run: Path) -> str | None:
    """params.json's eval_dataset, if it can still be found (a relative path may be
    relative to where the run was started, or to the run's parent directory)."""
    params = run / PARAMS_FILE
    if not params.is_file():
        return None
    try:
        values = json.loads(params.read_text(encoding="utf-8"))
        spec = values.get("parameter_values", values).get("eval_dataset")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise RlhfkitError(f"{params}: not a JSON object of parameters: {exc}") from exc
    if not spec or "://" in spec or Path(spec).exists() or any(c in spec for c in "*?["):
        return spec or None
    if (run.parent / spec).exists():
        return str(run.parent / spec)
    log.notice(f"{params}: eval_dataset {spec} not found; comparing without it "
               "(pass --eval for targets and demo-world gold scores)")
    return None


def _tie_threshold_of_run(run: Path) -> float:
    """params.json's reward_tie_threshold (checked like any parameter), else the default."""
    try:
        values = json.loads((run / PARAMS_FILE).read_text(encoding="utf-8"))
        values = values.get("parameter_values", values)
    except (OSError, json.JSONDecodeError, AttributeError):
        return DEFAULT_TIE_THRESHOLD
    value = values.get("reward_tie_threshold", DEFAULT_TIE_THRESHOLD)
    return check_tie_threshold(value, f"{run / PARAMS_FILE}: reward_tie_threshold")


def check_tie_threshold(value, where: str = "reward_tie_threshold") -> float:
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value < 0:
        raise RlhfkitError(f"{where} must be a finite number >= 0, got {value!r}")
    return float(value)


# -- reading bulk-inference output -------------------------------------------------------

def read_results(path: str) -> list[tuple[str, dict]]:
    """(`path:line`, record) pairs of an eval_results file, every line checked."""
    try:
        data = read_bytes(path)
    except OSError as exc:
        raise RlhfkitError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    out, problems, shapeless = [], [], 0
    for no, raw in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{no}"
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        inputs = rec.get("inputs") if isinstance(rec, dict) else None
        if not isinstance(inputs, dict) or not isinstance(
                inputs.get("inputs_pretokenized"), str) or "prediction" not in rec:
            shapeless += not (isinstance(rec, dict) and "inputs" in rec)
            problems.append(f"{where}: expected " + RESULT_SHAPE)
            continue
        if not isinstance(rec["prediction"], str):
            problems.append(f"{where}: prediction must be a string")
            continue
        out.append((where, rec))
    if not out and problems and shapeless == len(problems):
        raise RlhfkitError(f"{path}: not bulk-inference output (no line has inputs and "
                           f"prediction); expected lines {RESULT_SHAPE}. For an eval dataset, "
                           "run `rlhfkit infer` on it first.")
    if problems:
        raise DataError(problems)
    if not out:
        raise RlhfkitError(f"{path}: no predictions in this file")
    return out


def _capped(lines: list[str]) -> list[str]:
    extra = len(lines) - MAX_NOTICES_SHOWN
    return lines[:MAX_NOTICES_SHOWN] + ([f"... and {extra} more"] if extra > 0 else [])


def join_by_prompt(tuned: list[tuple[str, dict]], untuned: list[tuple[str, dict]]
                   ) -> tuple[list[dict], list[str]]:
    """Pair predictions by `inputs_pretokenized`, in the tuned file's order.

    A prompt found in one file only, or more than once in a file, cannot be paired
    honestly: it is left out and reported as a notice (returned, and logged).
    """
    def index(recs):
        by_prompt = defaultdict(list)
        for where, rec in recs:
            by_prompt[rec["inputs"]["inputs_pretokenized"]].append((where, rec))
        return by_prompt

    t_idx, u_idx = index(tuned), index(untuned)
    notices = []
    for idx in (t_idx, u_idx):
        dups = [f"{entries[0][0]}: prompt appears {len(entries)} times in this file (lines "
                f"{', '.join(w.rsplit(':', 1)[1] for w, _ in entries)}); excluded"
                for entries in idx.values() if len(entries) > 1]
        notices += _capped(dups)
    for a, b in ((t_idx, u_idx), (u_idx, t_idx)):
        other = (untuned if a is t_idx else tuned)[0][0].rsplit(":", 1)[0]
        notices += _capped([f"{entries[0][0]}: prompt not in {other}; excluded"
                            for p, entries in a.items() if p not in b])
    rows = []
    for prompt, entries in t_idx.items():
        if len(entries) != 1 or len(u_idx.get(prompt, ())) != 1:
            continue
        t_rec, u_rec = entries[0][1], u_idx[prompt][0][1]
        target = t_rec["inputs"].get("targets_pretokenized") or \
            u_rec["inputs"].get("targets_pretokenized") or ""
        rows.append({"prompt": prompt, "base_model": u_rec["prediction"],
                     "tuned_model": t_rec["prediction"], "target": str(target)})
    for n in notices:
        log.notice(n)
    if not rows:
        raise RlhfkitError("no prompt appears exactly once in both files; nothing to compare")
    return rows, notices


# -- aggregates --------------------------------------------------------------------------

def _mean(df: pd.DataFrame, col: str) -> float | None:
    if col not in df or df[col].notna().sum() == 0:
        return None
    return float(df[col].astype(float).mean())


def _win_keys(prefix: str, rows: pd.DataFrame, diff_col: str, threshold: float,
              suffix: str = "") -> dict:
    """{prefix}win_rate{suffix} and its interval, and the wins / ties / losses counts."""
    keys = [f"{prefix}win_rate{suffix}", f"{prefix}win_rate{suffix}_ci_low",
            f"{prefix}win_rate{suffix}_ci_high"]
    name = prefix or "reward_"
    count_keys = [f"{name}{k}{suffix}" for k in ("wins", "ties", "losses")]
    if not len(rows):
        return dict.fromkeys(keys + count_keys)
    res = outcomes(rows[diff_col], rows["base_model"] == rows["tuned_model"], threshold)
    return dict(zip(keys, (float(res.mean()), *bootstrap_ci(res)), strict=True)) | \
        dict(zip(count_keys, counts(res), strict=True))


def summarize(df: pd.DataFrame, tie_threshold: float = DEFAULT_TIE_THRESHOLD) -> dict:
    """The comparison in numbers. Every key is always present (a stable schema for
    `--json` readers); a value is None (JSON null) when its input is missing: the reward
    keys without a reward model, the ROUGE keys without targets, the gold keys off the demo
    world, the adherence rates when no instruction states a word limit. Rates and means
    are over the rows that have the input (`n_word_limit`, `n_gold` rows).

    The reward-model win rate counts |reward_diff| <= `tie_threshold` as a tie
    (`win_rate`, `reward_wins/ties/losses`); `win_rate_strict` is the same with threshold
    0. Gold scores are exact, so gold ties are exact ties."""
    s: dict = {"n": len(df)}
    for prefix, col in (("", "reward"), ("gold_", "gold")):
        diff_col = f"{col}_diff"
        rows = df[df[diff_col].notna()] if diff_col in df else df.iloc[0:0]
        if prefix:
            s["n_gold"] = len(rows)
            s.update(_win_keys(prefix, rows, diff_col, 0.0))
        else:
            s["reward_tie_threshold"] = tie_threshold
            s.update(_win_keys("", rows, diff_col, tie_threshold))
            s.update(_win_keys("", rows, diff_col, 0.0, "_strict"))
        s[f"mean_{col}_base"] = _mean(rows, f"base_{col}")
        s[f"mean_{col}_tuned"] = _mean(rows, f"tuned_{col}")
    s["mean_words_base"] = _mean(df, "base_words")
    s["mean_words_tuned"] = _mean(df, "tuned_words")
    limited = df[df["word_limit"].notna()] if "word_limit" in df else df.iloc[0:0]
    s["n_word_limit"] = len(limited)
    s["within_limit_rate_base"] = _mean(limited, "base_within_limit")
    s["within_limit_rate_tuned"] = _mean(limited, "tuned_within_limit")
    s["mean_rouge_l_base"] = _mean(df, "base_rouge_l")
    s["mean_rouge_l_tuned"] = _mean(df, "tuned_rouge_l")
    from rlhfkit.label_eval import HUMAN_KEYS

    s.update(dict.fromkeys(HUMAN_KEYS))  # filled by `--human` (label_eval.add_human)
    return s


# -- the table ---------------------------------------------------------------------------

def load_scorer(reward_model):
    """An object with `.score(prompts, responses) -> list[float]`: passed through, or
    loaded from a reward-model directory."""
    if reward_model is None or hasattr(reward_model, "score"):
        return reward_model
    from rlhfkit.reward import RewardScorer

    return RewardScorer.load(str(reward_model))


def _gold_functions():
    """(is_demo_record, gold_score) of the demo world (a seam for tests)."""
    from rlhfkit.demo.world import gold_score, is_demo_record

    return is_demo_record, gold_score


def match_eval_records(prompts: list[str], records: list[dict]) -> list[dict | None]:
    """The eval record behind each prompt: its input_text is the whole prompt, or the
    part after the instruction (format_prompt: instruction + "\\n\\n\\n" + input_text)."""
    by_text = {}
    for rec in records:
        if isinstance(rec.get("input_text"), str):
            by_text.setdefault(rec["input_text"], rec)
    out = []
    for p in prompts:
        rec = by_text.get(p)
        if rec is None and INSTRUCTION_SEPARATOR in p:
            rec = by_text.get(p.split(INSTRUCTION_SEPARATOR, 1)[1])
        out.append(rec)
    return out


def side_by_side(tuned_path: str, untuned_path: str, reward_model=None,
                 eval_dataset: str | list[dict] | None = None) -> pd.DataFrame:
    """The course's side-by-side table plus the metric columns (see the module doc).

    `reward_model`: a reward-model directory or any object with `.score(prompts,
    responses)`. `eval_dataset`: a dataset spec or loaded eval records. Notices about
    excluded rows are in `df.attrs["notices"]`.
    """
    rows, notices = join_by_prompt(read_results(str(tuned_path)), read_results(str(untuned_path)))
    df = pd.DataFrame(rows)
    prompts = df["prompt"].tolist()
    for who in ("base", "tuned"):
        df[f"{who}_words"] = df[f"{who}_model"].map(word_count)
    limits = [parse_word_limit(p) for p in prompts]
    df["word_limit"] = pd.array([lim[0] if lim else None for lim in limits], dtype="Int64")
    for who in ("base", "tuned"):
        df[f"{who}_within_limit"] = pd.array(
            [within_limit(w, lim) if lim else None
             for w, lim in zip(df[f"{who}_words"], limits, strict=True)], dtype="boolean")

    more = []  # notices of this function (join_by_prompt logged its own)
    scorer = load_scorer(reward_model)
    if scorer is not None:
        n = len(df)
        scores = list(scorer.score(prompts + prompts,
                                   df["base_model"].tolist() + df["tuned_model"].tolist()))
        if len(scores) != 2 * n:
            raise RlhfkitError(f"reward model returned {len(scores)} scores for {2 * n} texts")
        df["base_reward"], df["tuned_reward"] = scores[:n], scores[n:]
        df["reward_diff"] = df["tuned_reward"] - df["base_reward"]
    else:
        more.append("no reward model given: reward scores and win rate left out "
                    "(pass --reward-model DIR)")

    records = _eval_records(eval_dataset)
    matched = match_eval_records(prompts, records) if records else [None] * len(df)
    if records and not any(matched):
        more.append("no eval record matches a prompt in the results; eval data unused")
    elif records and not all(matched):
        more.append(f"{sum(m is None for m in matched)} of {len(df)} prompts have no "
                    "matching eval record")
    targets = [t or (m or {}).get("output_text") or "" for t, m in
               zip(df["target"], matched, strict=True)]
    df["target"] = [str(t) for t in targets]
    if any(df["target"]):
        for who in ("base", "tuned"):
            df[f"{who}_rouge_l"] = [rouge_l(y, t) if t else np.nan for y, t in
                                    zip(df[f"{who}_model"], df["target"], strict=True)]
    else:
        df = df.drop(columns="target")
    if records:
        _add_gold(df, matched)

    for n in more:
        log.notice(n)
    df.attrs["notices"] = notices + more
    return df


def _eval_records(eval_dataset) -> list[dict]:
    if eval_dataset is None:
        return []
    if isinstance(eval_dataset, list):
        return eval_dataset
    from rlhfkit.data import load_dataset

    return load_dataset(str(eval_dataset), "eval")


def _add_gold(df: pd.DataFrame, matched: list[dict | None]) -> None:
    """Gold annotator scores where the matched eval record is a demo-world record."""
    if not any(matched):
        return
    is_demo_record, gold_score = _gold_functions()
    demo = [m is not None and is_demo_record(m) for m in matched]
    if not any(demo):
        return
    for who in ("base", "tuned"):
        df[f"{who}_gold"] = [float(gold_score(m, y)) if d else np.nan for m, y, d in
                             zip(matched, df[f"{who}_model"], demo, strict=True)]
    df["gold_diff"] = df["tuned_gold"] - df["base_gold"]


# -- the stage ---------------------------------------------------------------------------

def build(cfg: Config, scorer=None) -> Comparison:
    """The table and the aggregates (with the human judgements when cfg.human is set).

    `scorer` (any object with `.score`) overrides cfg.reward_model, e.g. an already
    loaded reward model in the pipeline.
    """
    df = side_by_side(cfg.tuned, cfg.untuned, reward_model=scorer or cfg.reward_model,
                      eval_dataset=cfg.eval_dataset)
    threshold = check_tie_threshold(cfg.reward_tie_threshold)
    summary = summarize(df, threshold)
    notices = list(df.attrs.get("notices", []))
    if cfg.human is not None:
        from rlhfkit.label_eval import add_human

        more = add_human(df, summary, cfg.human, threshold)
        for n in more:
            log.notice(n)
        notices += more
    return Comparison(df, summary, notices)


def write(cfg: Config, result: Comparison, runs: list[dict] | None = None) -> None:
    """comparison.csv and report.html into cfg.out_dir (nothing when it is None); `runs`:
    the several-runs table (compare_runs.runs_table) to put at the top of the report."""
    from rlhfkit import report
    from rlhfkit.compare_runs import run_info

    if cfg.out_dir is None:
        return
    out = Path(cfg.out_dir)
    result.csv_path = out / CSV_FILE
    # CRLF rows (RFC 4180): the csv writer then quotes any cell holding a CR
    atomic_write_text(result.csv_path,
                      csv_safe_frame(result.table).to_csv(index=False, lineterminator="\r\n"))
    run_dir = cfg.run_dir or str(Path(cfg.tuned).parent)
    html = report.render(result.table, result.summary, result.notices,
                         report.read_run_curves(run_dir),
                         title=f"rlhfkit: tuned vs base ({out.name or out.resolve().name})",
                         summary_lines=format_summary(result.summary),
                         info=run_info(run_dir) if cfg.run_dir else None, runs=runs)
    result.report_path = out / REPORT_FILE
    atomic_write_text(result.report_path, html)


def run(cfg: Config, scorer=None) -> Comparison:
    """Build the table and the aggregates; write comparison.csv and report.html into
    cfg.out_dir when it is set (`print_table` prints them)."""
    result = build(cfg, scorer)
    write(cfg, result)
    return result


def summary_json(summary: dict) -> str:
    """One JSON object; NaN (no rows) becomes null."""
    clean = {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
             for k, v in summary.items()}
    return json.dumps(clean)
