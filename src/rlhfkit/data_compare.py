"""Are two prompt sets from the same distribution? (course lesson 2)

The course insists that the preference dataset and the prompt dataset share one prompt
distribution: the reward model learns to score answers to the first, then the RL stage
asks it to score answers to the second, and a reward model is only trustworthy on the
kind of prompt it was trained on. `compare_datasets` tests H0 "both sets of prompts are
samples of one distribution" three ways, each with a p-value that is exact at any sample
size:

(a) length: the Kolmogorov-Smirnov statistic D between the prompts' word-length
    distributions, with a permutation p-value (no asymptotic formula, so 5 prompts are
    as safe as 5,000).
(b) vocabulary: the Jensen-Shannon divergence (bits) between the two unigram word
    distributions. Two finite samples of one distribution never have JSD 0, and small
    ones look very different, so the observed JSD is compared with its values over random
    re-splits of the pooled prompts into groups of the same sizes: the within-data
    baseline, done as a permutation test. Its median is printed as the baseline.
(c) classifier: multinomial naive Bayes on bag of words, trained on a random half of each
    set and predicting the other half (Lopez-Paz & Oquab 2017, "Revisiting classifier
    two-sample tests"). Under H0 its held-out predictions are independent of which set a
    prompt came from, so Fisher's exact test on the 2x2 table (true set x predicted set)
    is exact. Balanced accuracy is the effect size (0.5 = chance).

Decision: "different distributions" iff some p <= ALPHA / 3 (Bonferroni over the three
tests; for this global "any difference?" question Holm's procedure gives the same answer).
Every p-value is exact, with re-splits enumerated when there are at most `permutations`
of them, else drawn at random with the (1 + k) / (1 + B) correction, so under H0 the
chance of a "different" verdict is at most ALPHA = 1% whatever the sample sizes: small
samples cannot produce "different" by chance. They produce "same" meaning "no evidence of
a difference": with n prompts a permutation p-value cannot go below 1 / C(n_a + n_b, n_a),
and the classifier sees only half of them. Conversely, with thousands of prompts even a
small real difference is detected; the effect sizes (D, JSD over baseline, balanced
accuracy) say whether it matters.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter

import numpy as np

ALPHA = 0.01  # family-wise false "different" rate
N_TESTS = 3
PERMUTATIONS = 999  # random re-splits per permutation test (p-value resolution 0.001)
# Larger sets are randomly subsampled (still samples of their distribution, so the tests
# stay valid) to keep `rlhfkit data compare` within seconds; 1,000 a side is ample power.
MAX_PROMPTS_PER_SET = 1000
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def prompt_of(record: dict) -> str:
    """The prompt a record asks (its input_text, or its turns' contents), no instruction."""
    if "input_text" in record:
        return record["input_text"]
    return "\n\n".join(m["content"] for m in record["messages"])


def compare_datasets(a_records: list[dict], b_records: list[dict], *, alpha: float = ALPHA,
                     permutations: int = PERMUTATIONS, seed: int = 0) -> dict:
    """The evidence that the prompts of two datasets share one distribution (see module doc).

    Returns {"n_a", "n_b", "subsampled", "length": {...}, "vocabulary": {...},
    "classifier": {...}, "alpha", "threshold", "different_by": [test names], "same",
    "verdict"}; each test's dict has its effect size and "p_value".
    """
    rng = np.random.default_rng(seed)
    a, b = [prompt_of(r) for r in a_records], [prompt_of(r) for r in b_records]
    subsampled = len(a) > MAX_PROMPTS_PER_SET or len(b) > MAX_PROMPTS_PER_SET
    a, b = _subsample(a, rng), _subsample(b, rng)
    texts, is_a = a + b, np.array([True] * len(a) + [False] * len(b))
    masks, exact = _resplits(len(texts), len(a), permutations, rng)
    bow = _BagOfWords(texts)

    lengths = np.array([len(t.split()) for t in texts], dtype=float)
    ks = _ks(lengths, is_a[None])[0]
    vocab_null = np.array([bow.jsd(m) for m in masks])
    jsd = bow.jsd(is_a)
    tests = {
        "length": {"ks": ks, "p_value": _perm_p(ks, _ks(lengths, masks), exact),
                   "median_a": float(np.median(lengths[is_a])) if len(a) else math.nan,
                   "median_b": float(np.median(lengths[~is_a])) if len(b) else math.nan},
        "vocabulary": {"jsd": jsd, "baseline_jsd": float(np.median(vocab_null)),
                       "p_value": _perm_p(jsd, vocab_null, exact)},
        "classifier": _classifier_test(bow, is_a, rng),
    }
    threshold = alpha / N_TESTS
    different_by = [name for name, t in tests.items() if t["p_value"] <= threshold]
    return {"n_a": len(a_records), "n_b": len(b_records), "subsampled": subsampled, **tests,
            "alpha": alpha, "threshold": threshold, "different_by": different_by,
            "same": not different_by,
            "verdict": "different distributions" if different_by else "same distribution"}


def format_comparison(result: dict, name_a: str = "A", name_b: str = "B") -> list[str]:
    """Human-readable evidence, ending with the `verdict: ...` line."""
    ln, vo, cl = result["length"], result["vocabulary"], result["classifier"]
    sub = f" (tests on random subsets of {MAX_PROMPTS_PER_SET})" if result["subsampled"] else ""
    lines = [
        f"prompts: {result['n_a']} in {name_a}, {result['n_b']} in {name_b}{sub}",
        f"length:     median {ln['median_a']:g} vs {ln['median_b']:g} words; "
        f"KS D = {ln['ks']:.2f}, p = {ln['p_value']:.3g}",
        f"vocabulary: Jensen-Shannon divergence {vo['jsd']:.3f} bits vs {vo['baseline_jsd']:.3f}"
        f" for random re-splits of the pooled prompts; p = {vo['p_value']:.3g}",
        f"classifier: naive Bayes tells them apart with balanced accuracy "
        f"{cl['balanced_accuracy']:.2f} on {cl['n_test']} held-out prompts (chance 0.50); "
        f"p = {cl['p_value']:.3g}",
        f"rule: different if any p <= {result['threshold']:.2g} "
        f"(alpha {result['alpha']:g} over {N_TESTS} tests, Bonferroni)",
    ]
    if result["same"]:
        few = min(result["n_a"], result["n_b"]) < 30
        lines.append("verdict: same distribution" + (
            " (no evidence of a difference, but with this few prompts only large differences"
            " are detectable)" if few else " (no test found a difference)"))
    else:
        lines.append(f"verdict: different distributions ({', '.join(result['different_by'])});"
                     " the reward model would score prompts unlike those it was trained on")
    return lines


# -- the tests --------------------------------------------------------------------------------

def _subsample(texts: list[str], rng: np.random.Generator) -> list[str]:
    if len(texts) <= MAX_PROMPTS_PER_SET:
        return texts
    keep = np.sort(rng.choice(len(texts), MAX_PROMPTS_PER_SET, replace=False))
    return [texts[i] for i in keep]


def _resplits(n: int, n_a: int, permutations: int, rng) -> tuple[np.ndarray, bool]:
    """Boolean masks (S, n) of re-splits into n_a + (n - n_a): every one of them when
    there are at most `permutations` (exact test), else `permutations` random ones."""
    if math.comb(n, n_a) <= permutations:
        combos = list(itertools.combinations(range(n), n_a))
        masks = np.zeros((len(combos), n), dtype=bool)
        for i, idx in enumerate(combos):
            masks[i, list(idx)] = True
        return masks, True
    return rng.permuted(np.tile(np.arange(n) < n_a, (permutations, 1)), axis=1), False


def _perm_p(observed: float, null: np.ndarray, exact: bool) -> float:
    k = int(np.sum(null >= observed - 1e-12))  # tolerance: float noise on equal statistics
    return k / len(null) if exact else (1 + k) / (1 + len(null))


def _ks(values: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Two-sample KS statistic for each row of masks (True = group A), vectorised."""
    order = np.argsort(values, kind="stable")
    v, m = values[order], masks[:, order]
    n_a, n_b = m.sum(axis=1, keepdims=True), (~m).sum(axis=1, keepdims=True)
    gap = np.cumsum(m, axis=1) / np.maximum(n_a, 1) - np.cumsum(~m, axis=1) / np.maximum(n_b, 1)
    last_of_ties = np.append(v[1:] != v[:-1], True)  # compare CDFs only between values
    return np.abs(gap[:, last_of_ties]).max(axis=1)


class _BagOfWords:
    """Word counts of n documents as sparse (doc, term, count) triples."""

    def __init__(self, texts: list[str]):
        vocab: dict[str, int] = {}
        doc, term, count = [], [], []
        for i, text in enumerate(texts):
            for word, c in Counter(_WORD.findall(text.lower())).items():
                doc.append(i)
                term.append(vocab.setdefault(word, len(vocab)))
                count.append(c)
        self.doc, self.term = np.array(doc, dtype=np.int64), np.array(term, dtype=np.int64)
        self.count, self.n_docs, self.n_terms = np.array(count, float), len(texts), len(vocab)
        self.total = self.group_counts(np.ones(len(texts), dtype=bool))

    def group_counts(self, mask: np.ndarray) -> np.ndarray:
        return np.bincount(self.term, weights=self.count * mask[self.doc], minlength=self.n_terms)

    def jsd(self, mask: np.ndarray) -> float:
        """Jensen-Shannon divergence (bits, in [0, 1]) between the two groups' unigrams."""
        ca = self.group_counts(mask)
        cb = self.total - ca
        if ca.sum() == 0 or cb.sum() == 0:
            return 0.0
        p, q = ca / ca.sum(), cb / cb.sum()
        m = (p + q) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            kl_p = np.where(p > 0, p * np.log2(p / m), 0.0).sum()
            kl_q = np.where(q > 0, q * np.log2(q / m), 0.0).sum()
        return float((kl_p + kl_q) / 2)

    def doc_scores(self, log_theta: np.ndarray) -> np.ndarray:
        return np.bincount(self.doc, weights=self.count * log_theta[self.term],
                           minlength=self.n_docs)


def _classifier_test(bow: _BagOfWords, is_a: np.ndarray, rng) -> dict:
    """Naive Bayes on a stratified half, Fisher's exact test on the other half."""
    train = np.zeros(len(is_a), dtype=bool)
    for cls in (True, False):
        idx = rng.permutation(np.flatnonzero(is_a == cls))
        train[idx[: len(idx) // 2]] = True
    log_theta = []
    for cls in (True, False):  # Laplace-smoothed word probabilities per class
        counts = bow.group_counts(train & (is_a == cls))
        log_theta.append(np.log((counts + 1) / (counts.sum() + bow.n_terms)))
    # Equal class priors: predicting the majority set would waste the test's power.
    pred_a = bow.doc_scores(log_theta[0]) > bow.doc_scores(log_theta[1])
    test = ~train
    y, p = is_a[test], pred_a[test]
    hits_a, hits_b = int((y & p).sum()), int((~y & ~p).sum())
    recall = [hits_a / max(int(y.sum()), 1), hits_b / max(int((~y).sum()), 1)]
    return {"balanced_accuracy": float(np.mean(recall)), "n_test": int(test.sum()),
            "p_value": _fisher_greater(hits_a, int(y.sum()), int(p.sum()), int(test.sum()))}


def _fisher_greater(hits: int, n_true: int, n_pred: int, n: int) -> float:
    """P(X >= hits) for X ~ Hypergeometric(n, n_true, n_pred): one-sided Fisher exact test
    that predicted-A and truly-A go together more than chance. Exact integer arithmetic."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n_true, x) * math.comb(n - n_true, n_pred - x)
               for x in range(hits, min(n_true, n_pred) + 1))
    return tail / math.comb(n, n_pred)
