"""The numbers behind `rlhfkit compare`, as pure functions with hand-checkable results.

- word counts and adherence to a word limit stated in the instruction;
- ROUGE-L F1 (Lin 2004, "ROUGE: A Package for Automatic Evaluation of Summaries"), LCS
  based, on lower-cased alphanumeric tokens like Google's rouge_score (no stemming);
- win rate of the tuned model over the base model, ties counted half, with a percentile
  bootstrap confidence interval (Efron & Tibshirani 1993, ch. 13);
- agreement between two judges, and Cohen's kappa (Cohen 1960) for two annotators.
"""

from __future__ import annotations

import re

import numpy as np

from rlhfkit.data import INSTRUCTION_SEPARATOR

CI_LEVEL = 0.95  # two-sided confidence level of every interval reported
BOOTSTRAP_RESAMPLES = 10_000  # percentile bootstrap resamples
BOOTSTRAP_SEED = 0  # fixed: the same files give the same interval every time
TIE = 0.5  # a tie counts as half a win


# -- length and adherence ----------------------------------------------------------------

def word_count(text: str) -> int:
    """Whitespace-separated words, the way a reader counts them."""
    return len(text.split())


_LIMIT_PATTERNS = [  # (regex with one number group, strict "<" rather than "<=")
    (r"\b(?:less|fewer) than (\d+) words?\b", True),
    (r"\bunder (\d+) words?\b", True),
    (r"\bbelow (\d+) words?\b", True),
    (r"\b(?:at most|no more than|not more than|up to|maximum of|max(?:imum)?|within) "
     r"(\d+) words?\b", False),
    (r"\b(\d+) words? (?:or less|or fewer|max(?:imum)?|at most)\b", False),
]


def parse_word_limit(prompt: str) -> tuple[int, bool] | None:
    """(limit, strict) for a word limit stated in the instruction, else None.

    The instruction is the text before the first "\\n\\n\\n" (a prompt without one has no
    instruction, and a limit inside the user's post is not an instruction to the model).
    "less than 50 words" is strict (< 50); "under"/"below"/"fewer than" too; "at most",
    "no more than", "up to", "within", "50 words or less" are inclusive (<= 50).
    """
    if INSTRUCTION_SEPARATOR not in prompt:
        return None
    instruction = prompt.split(INSTRUCTION_SEPARATOR, 1)[0].lower()
    instruction = re.sub(r"\s+", " ", instruction)
    for pattern, strict in _LIMIT_PATTERNS:
        m = re.search(pattern, instruction)
        if m:
            return int(m.group(1)), strict
    return None


def within_limit(words: int, limit: tuple[int, bool]) -> bool:
    n, strict = limit
    return words < n if strict else words <= n


# -- ROUGE-L -------------------------------------------------------------------------------

def rouge_tokens(text: str) -> list[str]:
    """Lower-cased alphanumeric runs (the tokenisation of Google's rouge_score, no stemming)."""
    return re.findall(r"[a-z0-9]+", text.lower())


def lcs_length(a: list[str], b: list[str]) -> int:
    """Longest common subsequence length, O(len(a) * len(b)) time, O(len(b)) memory."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (Lin 2004): LCS-based precision and recall, harmonic mean; 0 if empty."""
    p, r = rouge_tokens(prediction), rouge_tokens(reference)
    lcs = lcs_length(p, r) if p and r else 0
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


# -- win rate ------------------------------------------------------------------------------

def outcomes(diff, identical=None, tie_threshold: float = 0.0) -> np.ndarray:
    """Per-row result of tuned vs base: 1 win (diff > tie_threshold), 0 loss (diff <
    -tie_threshold), 0.5 tie (|diff| <= tie_threshold). Identical responses are a tie
    whatever a scorer's float noise (different padding in a batch) says."""
    d = np.asarray(diff, dtype=float)
    out = np.where(d > tie_threshold, 1.0, np.where(d < -tie_threshold, 0.0, TIE))
    if identical is not None:
        out = np.where(np.asarray(identical, dtype=bool), TIE, out)
    return out


def win_rate(diff, identical=None, tie_threshold: float = 0.0) -> float:
    """Share of rows the tuned model wins, ties counted half."""
    return float(outcomes(diff, identical, tie_threshold).mean())


def counts(results) -> tuple[int, int, int]:
    """(wins, ties, losses) of per-row results in {1, 0.5, 0}."""
    r = np.asarray(results, dtype=float)
    return int((r == 1.0).sum()), int((r == TIE).sum()), int((r == 0.0).sum())


def bootstrap_ci(results, level: float = CI_LEVEL, resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of per-row results in {0, 0.5, 1}.

    Resampling n rows with replacement only changes how many wins, ties and losses the
    resample holds, and those counts are Multinomial(n, observed shares): drawing the
    counts is the same bootstrap, exactly, in O(resamples) memory for any n.
    """
    r = np.asarray(results, dtype=float)
    n = len(r)
    if n == 0:
        return float("nan"), float("nan")
    shares = [np.mean(r == 1.0), np.mean(r == TIE), np.mean(r == 0.0)]
    counts = np.random.default_rng(seed).multinomial(n, shares, size=resamples)
    means = (counts[:, 0] + TIE * counts[:, 1]) / n
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


# -- agreement -----------------------------------------------------------------------------

def agreement(a, b) -> tuple[float | None, int]:
    """(share of items on which two judges give the same verdict, items compared)."""
    pairs = [(x, y) for x, y in zip(a, b, strict=True)]
    if not pairs:
        return None, 0
    return sum(x == y for x, y in pairs) / len(pairs), len(pairs)


def cohen_kappa(a, b) -> float | None:
    """Cohen's kappa of two annotators' labels of the same items (Cohen 1960):
    (p_o - p_e) / (1 - p_e), p_o the observed agreement, p_e the agreement expected by
    chance from each annotator's own label shares. None without items, or when both
    always give one and the same label (p_e = 1: kappa is undefined)."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError("both annotators must label the same items")
    if not a:
        return None
    n = len(a)
    p_o = sum(x == y for x, y in zip(a, b, strict=True)) / n
    p_e = sum((a.count(k) / n) * (b.count(k) / n) for k in set(a) | set(b))
    if p_e == 1:
        return None
    return (p_o - p_e) / (1 - p_e)
