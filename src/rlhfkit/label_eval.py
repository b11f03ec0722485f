"""Blind human evaluation: `rlhfkit compare RUN --human preference.jsonl`.

After people label `rlhfkit label prepare --from-run RUN` pairs (base vs tuned, sides
randomised, sources hidden), their choices say which model a person prefers, the
judgement lesson 4 of the course makes by reading the table. Each judgement is matched to
the run's comparison row by its texts (the post and the two answers), so no sidecar is
needed and a label for anything else is reported, not guessed.

- human win rate of tuned over base: a choice of the tuned answer is 1, of the base 0,
  a tie (from the page's sidecar) 0.5; the 95% interval is the same bootstrap as the
  other win rates, over judgements (two annotators on one pair are two judgements);
- agreement of the human with the reward model and with the demo world's gold annotator,
  on the judgements where both sides express a preference (ties of either side left out;
  the reward model's tie threshold applies, as in its win rate).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from rlhfkit.compare_metrics import TIE, agreement, bootstrap_ci, counts
from rlhfkit.data import INSTRUCTION_SEPARATOR
from rlhfkit.errors import DataError, RlhfkitError
from rlhfkit.label_store import undecided_path

HUMAN_KEYS = ("human_n", "human_prompts", "human_unmatched", "human_win_rate",
              "human_win_rate_ci_low", "human_win_rate_ci_high", "human_wins", "human_ties",
              "human_losses", "human_reward_agreement", "human_reward_agreement_n",
              "human_gold_agreement", "human_gold_agreement_n")


def read_human(path: str | Path) -> list[dict]:
    """Preference records (any course-format file) plus the page's ties; skips dropped."""
    path = Path(path)
    if not path.is_file():
        raise RlhfkitError(f"{path}: no such file (the output of `rlhfkit label serve`)")
    out, problems = [], []
    for p, undecided in ((path, False), (undecided_path(path), True)):
        if not p.is_file():
            continue
        for no, raw in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
                texts = tuple(str(rec[k]) for k in ("input_text", "candidate_0", "candidate_1"))
                verdict = rec.get("verdict") if undecided else int(rec["choice"])
            except (ValueError, KeyError, TypeError):
                problems.append(f"{p}:{no}: expected input_text, candidate_0, candidate_1 and "
                                f"{'verdict' if undecided else 'choice'}")
                continue
            if verdict == "skip":
                continue
            if verdict not in (0, 1, "tie"):
                problems.append(f"{p}:{no}: choice must be 0 or 1 (verdict tie or skip)")
                continue
            out.append({"texts": texts, "verdict": verdict})
    if problems:
        raise DataError(problems)
    return out


def _post(prompt: str) -> str:
    return prompt.split(INSTRUCTION_SEPARATOR, 1)[1] if INSTRUCTION_SEPARATOR in prompt \
        else prompt


def match(df: pd.DataFrame, judgements: list[dict]) -> tuple[list[tuple[int, float]], int]:
    """[(row index, outcome for tuned: 1 / 0.5 / 0)], and how many judgements matched no
    row (the post and the set of its two answers must be the row's)."""
    rows = {}
    for i, r in enumerate(df[["prompt", "base_model", "tuned_model"]].itertuples(index=False)):
        for text in {r.prompt, _post(r.prompt)}:
            rows[(text, frozenset((r.base_model, r.tuned_model)))] = (i, r.tuned_model)
    out, unmatched = [], 0
    for j in judgements:
        text, c0, c1 = j["texts"]
        hit = rows.get((text, frozenset((c0, c1))))
        if hit is None or c0 == c1:
            unmatched += 1
            continue
        i, tuned = hit
        tuned_index = 0 if c0 == tuned else 1
        out.append((i, TIE if j["verdict"] == "tie" else float(j["verdict"] == tuned_index)))
    return out, unmatched


def _agreement_with(judged: list[tuple[int, float]], diff, threshold: float):
    """Agreement with a scorer's per-row difference (tuned - base), decisive pairs only."""
    pairs = []
    for i, outcome in judged:
        d = diff[i]
        if outcome == TIE or d is None or np.isnan(d) or abs(d) <= threshold:
            continue
        pairs.append((outcome == 1.0, d > 0))
    return agreement([a for a, _ in pairs], [b for _, b in pairs])


def add_human(df: pd.DataFrame, summary: dict, path: str | Path, tie_threshold: float
              ) -> list[str]:
    """Add `human` (mean outcome of the row's judgements) and `human_n` columns to df and
    the HUMAN_KEYS to summary; return notices."""
    judged, unmatched = match(df, read_human(path))
    notices = []
    if unmatched:
        notices.append(f"{path}: {unmatched} judgement(s) match no prompt and answer pair of "
                       "this comparison (label pairs made by `rlhfkit label prepare "
                       "--from-run` on this run); left out")
    summary.update(dict.fromkeys(HUMAN_KEYS))
    summary.update(human_n=len(judged), human_unmatched=unmatched)
    if not judged:
        notices.append(f"{path}: no judgement of this run's pairs; no human win rate")
        summary["human_prompts"] = 0
        return notices
    res = np.array([o for _, o in judged])
    by_row: dict[int, list[float]] = {}
    for i, o in judged:
        by_row.setdefault(i, []).append(o)
    df["human"] = [float(np.mean(by_row[i])) if i in by_row else np.nan for i in range(len(df))]
    df["human_n"] = [len(by_row.get(i, ())) for i in range(len(df))]
    low, high = bootstrap_ci(res)
    wins, ties, losses = counts(res)
    summary.update(human_prompts=len(by_row), human_win_rate=float(res.mean()),
                   human_win_rate_ci_low=low, human_win_rate_ci_high=high,
                   human_wins=wins, human_ties=ties, human_losses=losses)
    for name, col, thr in (("reward", "reward_diff", tie_threshold), ("gold", "gold_diff", 0.0)):
        if col in df:
            rate, n = _agreement_with(judged, df[col].astype(float).tolist(), thr)
            summary[f"human_{name}_agreement"] = rate
            summary[f"human_{name}_agreement_n"] = n
    return notices


def format_human(s: dict) -> list[str]:
    """The human lines of the terminal summary and the report."""
    if s.get("human_win_rate") is None:
        return []
    lines = [f"human win rate of tuned over base (blind, {s['human_n']} judgements of "
             f"{s['human_prompts']} prompts): {s['human_win_rate']:.3f} (95% CI "
             f"{s['human_win_rate_ci_low']:.3f}-{s['human_win_rate_ci_high']:.3f}; "
             f"{s['human_wins']}/{s['human_ties']}/{s['human_losses']})"]
    for name, who in (("reward", "the reward model"), ("gold", "the gold annotator")):
        rate = s.get(f"human_{name}_agreement")
        if rate is not None:
            lines.append(f"  human agrees with {who} on {rate:.3f} of "
                         f"{s[f'human_{name}_agreement_n']} pairs where both prefer one answer")
    return lines
