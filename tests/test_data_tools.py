"""`rlhfkit data ...` (inspect, validate, stats, convert, compare) and the statistics of
rlhfkit.data_compare, on the course samples and on generated data."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rlhfkit import cli
from rlhfkit.data import load_dataset
from rlhfkit.data_compare import (
    _BagOfWords,
    _fisher_greater,
    _ks,
    _perm_p,
    _resplits,
    compare_datasets,
)
from rlhfkit.data_tools import dataset_stats, format_record
from rlhfkit.errors import RlhfkitError

COURSE = Path(os.environ.get("RLHFKIT_COURSE_SAMPLES", "/work/shared/course_samples"))
needs_course = pytest.mark.skipif(not COURSE.is_dir(), reason="course samples not present")
PREF, PROMPT = str(COURSE / "sample_preference.jsonl"), str(COURSE / "sample_prompt.jsonl")
runner = CliRunner()


def run(*args: str):
    return runner.invoke(cli.app, ["data", *args])


def write(path: Path, records: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


# -- generated prompt sets: Reddit-like posts (the course's domain) and recipe requests ------------

OPENERS = ["So this happened last week.", "Throwaway account for obvious reasons.",
           "Long time lurker, first post here.", "I really need some outside perspective.",
           "Sorry for the wall of text.", "Not sure if this is the right sub, but here goes."]
WHO = ["my girlfriend", "my boyfriend", "my roommate", "my boss", "my sister", "my best friend",
       "a coworker", "my landlord", "my dad", "my mom"]
WHAT = ["keeps borrowing money and never pays it back", "wants me to move across the country",
        "forgot my birthday again", "started ignoring my texts", "told everyone my secret",
        "asked me to cover their shifts", "wants to adopt a dog", "keeps eating my food"]
DETAILS = ["We have known each other for {n} years.", "I am {a} and they are {b}.",
           "This has happened {n} times now.", "At first I thought it was nothing.",
           "I tried talking about it once but it went badly.",
           "Everyone says I should just let it go.",
           "We live in a small apartment so it is hard to avoid each other.",
           "I don't want to ruin the friendship over this."]
ASK = ["What should I do?", "Am I overreacting?", "How do I bring this up without a fight?",
       "Any advice would be appreciated.", "Is this normal?"]
DISHES = ["lentil soup", "banana bread", "chicken curry", "tomato pasta", "vegetable stir fry",
          "pancakes", "beef stew", "guacamole"]
INGREDIENTS = ["garlic", "onions", "fresh basil", "coconut milk", "brown sugar", "olive oil",
               "ginger", "butter"]


def reddit_posts(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = [rng.choice(OPENERS), f"{rng.choice(WHO).capitalize()} {rng.choice(WHAT)}."]
        parts += [d.format(n=rng.randint(2, 9), a=rng.randint(18, 40), b=rng.randint(18, 40))
                  for d in rng.sample(DETAILS, rng.randint(2, 6))]
        out.append({"input_text": " ".join([*parts, rng.choice(ASK)]) + " [summary]: "})
    return out


def recipe_requests(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"input_text": f"Write a recipe for {rng.choice(DISHES)} with "
             f"{rng.choice(INGREDIENTS)} and {rng.choice(INGREDIENTS)}. It should serve "
             f"{rng.randint(2, 8)} people and take under {rng.choice([20, 30, 45, 60])} minutes."}
            for _ in range(n)]


def as_pairs(prompts: list[dict]) -> list[dict]:
    return [{**p, "candidate_0": "short", "candidate_1": "a longer summary", "choice": i % 2}
            for i, p in enumerate(prompts)]


# -- inspect -----------------------------------------------------------------------------------------

def test_format_record_like_print_d():
    rec = {"inputs": {"inputs_pretokenized": "Do.\n\n\npost", "targets_pretokenized": ""},
           "prediction": "text\nmore", "n": 3}
    assert format_record(rec) == (
        "key:inputs\n"
        "  key:inputs_pretokenized\n  val:Do.\n\n\n  post\n\n"
        "  key:targets_pretokenized\n  val:\n\n"
        "key:prediction\nval:text\nmore\n\n"
        "key:n\nval:3\n")


@needs_course
def test_inspect_course_files():
    first = json.loads(Path(PREF).read_text().splitlines()[0])
    result = run("inspect", PREF)
    assert result.exit_code == 0
    assert result.stdout.startswith(f"# record 0 of 5 ({PREF}:1)\n\nkey:input_text\n"
                                    f"val:{first['input_text']}\n")
    assert f"key:choice\nval:{first['choice']}\n" in result.stdout
    result = run("inspect", str(COURSE / "eval_results_tuned.jsonl"), "--index", "-1")
    assert result.stdout.startswith("# record 4 of 5")
    assert "key:inputs\n  key:inputs_pretokenized\n  val:Summarize in less than 50 words." \
        in result.stdout


def test_inspect_errors_and_broken_files(tmp_path):
    path = write(tmp_path / "x.jsonl", [{"input_text": "a"}, "{broken", {"input_text": "b"}])
    result = run("inspect", path, "-i", "1")
    assert result.exit_code == 0 and "val:b" in result.stdout
    assert "1 lines could not be read" in result.stderr
    result = run("inspect", path, "--index", "2")
    assert isinstance(result.exception, RlhfkitError)  # main() prints it without traceback
    assert str(result.exception) == (
        f"{path}: index 2 is out of range: 2 records (valid indices: 0..1 or -2..-1)")


# -- validate --------------------------------------------------------------------------------------

@needs_course
@pytest.mark.parametrize("name,args,out", [
    ("sample_preference.jsonl", [], "ok: 5 preference records in 1 file"),
    ("sample_prompt.jsonl", [], "ok: 6 prompt records in 1 file"),
    ("sample_eval.jsonl", ["--kind", "eval"], "ok: 5 eval records in 1 file"),
    ("sample_preference.jsonl", ["--kind", "eval"],
     "ok: 5 eval records (with preference pairs: also a reward-model eval set) in 1 file"),
])
def test_validate_course_files(name, args, out):
    result = run("validate", str(COURSE / name), *args)
    assert (result.exit_code, result.stdout) == (0, out + "\n")


@needs_course
def test_validate_rejects_bulk_inference_output():
    path = str(COURSE / "eval_results_untuned.jsonl")
    result = run("validate", path)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"{path}: looks like bulk-inference output")
    assert result.stderr.endswith("invalid: 1 problem\n")


def test_validate_reports_every_problem(tmp_path):
    path = write(tmp_path / "p.jsonl", [
        {"input_text": "x", "candidate_0": "a", "candidate_1": "b", "choice": 1},
        {"input_text": "x", "candidate_0": "a", "candidate_1": "b", "choice": "1"},
        "", {"input_text": "x", "candidate_0": "a", "candidate_1": "a", "choice": 0}])
    result = run("validate", path)
    assert result.exit_code == 1 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert [ln.split(": ")[0] for ln in lines[:2]] == [f"{path}:2", f"{path}:4"]
    assert lines[2] == "invalid: 2 problems"


def test_real_cli_on_a_bad_file_has_no_traceback(tmp_path):
    path = write(tmp_path / "bad.jsonl", [{"input_text": "x"}, "{nope"])
    exe = Path(sys.executable).with_name("rlhfkit")
    proc = subprocess.run([str(exe), "data", "validate", path, "--kind", "prompt"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"{path}:2: invalid JSON")


def test_main_prints_user_errors_without_traceback(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["rlhfkit", "data", "stats", "gs://bucket/p.jsonl"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and "gcsfs" in err


# -- stats -----------------------------------------------------------------------------------------

def test_dataset_stats_by_hand():
    recs = [{"input_text": "one two", "candidate_0": "a b c", "candidate_1": "d", "choice": 0},
            {"input_text": "one two", "candidate_0": "a", "candidate_1": "b c", "choice": 1},
            {"input_text": "x y z w", "candidate_0": "a b", "candidate_1": "c", "choice": 1}]
    s = dataset_stats(recs, pairs=True)
    assert s["rows"] == 3 and s["choice"] == {0: 1, 1: 2}
    # prompt words 2, 2, 4: median 2, mean 8/3, p90 = 2 + 0.8 * (4 - 2) (linear interpolation)
    assert s["distributions"]["prompt"] == {"min": 2, "median": 2, "mean": pytest.approx(8 / 3),
                                            "p90": pytest.approx(3.6), "max": 4}
    # chosen: "a b c" (3) vs "d" (1); "b c" (2) vs "a" (1); "c" (1) vs "a b" (2): longer 2 of 3
    assert s["words"]["chosen"] == [3, 2, 1] and s["chosen_longer"] == pytest.approx(2 / 3)
    assert (s["duplicate_prompts"], s["duplicate_rows"]) == (1, 1)


@needs_course
def test_stats_cli_on_course_preferences():
    choices = [json.loads(line)["choice"] for line in Path(PREF).read_text().splitlines()]
    result = run("stats", PREF)
    assert result.exit_code == 0
    ones = choices.count(1)
    assert f"choice: 0: {5 - ones} ({(5 - ones) / 5:.0%}), 1: {ones} ({ones / 5:.0%})" \
        in result.stdout
    for word in ("rows: 5", "prompt", "candidate_0", "chosen", "p90", "duplicate prompts: 0"):
        assert word in result.stdout


# -- convert ---------------------------------------------------------------------------------------

def test_convert_trl_to_course_format(tmp_path):
    src = write(tmp_path / "trl.jsonl", [{"prompt": f"p{i}", "chosen": f"c{i}",
                                          "rejected": f"r{i}"} for i in range(3)])
    out = tmp_path / "out" / "prefs.jsonl"
    result = run("convert", src, "-o", str(out))
    assert (result.exit_code, result.stdout) == (0, f"wrote 3 preference records to {out}\n")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[1] == {"input_text": "p1", "candidate_0": "r1", "candidate_1": "c1", "choice": 1}
    assert load_dataset(str(out), "preference") == rows
    assert os.listdir(out.parent) == ["prefs.jsonl"]  # no temporary file left behind


def test_convert_bad_input_writes_nothing(tmp_path):
    src = write(tmp_path / "trl.jsonl", [{"prompt": "p", "chosen": "c"}, "{"])
    result = run("convert", src, "-o", str(tmp_path / "out.jsonl"))
    assert result.exit_code != 0 and not (tmp_path / "out.jsonl").exists()


# -- compare: the statistics by hand ---------------------------------------------------------------

def test_ks_and_exact_permutation_p():
    values = np.array([1.0, 2.0, 3.0, 4.0])
    masks, exact = _resplits(4, 2, 999, np.random.default_rng(0))
    assert exact and len(masks) == math.comb(4, 2)
    # {1,2} vs {3,4}: CDFs 1 vs 0 at 2 -> D = 1. {1,3} vs {2,4}: the CDFs never differ by
    # more than 1/2. Of the 6 splits only {1,2}|{3,4} and {3,4}|{1,2} reach D = 1.
    assert _ks(values, np.array([[True, True, False, False],
                                 [True, False, True, False]])).tolist() == [1.0, 0.5]
    null = _ks(values, masks)
    assert sorted(null.tolist()) == [0.5] * 4 + [1.0] * 2
    assert _perm_p(1.0, null, exact=True) == pytest.approx(2 / 6)
    # Monte-Carlo p-values count the observed split: (1 + k) / (1 + B), never 0.
    assert _perm_p(2.0, null, exact=False) == pytest.approx(1 / 7)
    # Ties: with values (1, 1, 2) the CDFs are compared only after the tie at 1.
    assert _ks(np.array([1.0, 1.0, 2.0]), np.array([[True, False, False]])).tolist() == [0.5]


def test_jsd_and_fisher_by_hand():
    assert _BagOfWords(["apple", "pear"]).jsd(np.array([True, False])) == pytest.approx(1.0)
    bow = _BagOfWords(["apple", "pear", "Apple pear", "apple, PEAR"])
    # {apple} vs the rest: p = (1, 0), q = (2/5, 3/5), m = (0.7, 0.3);
    # KL(p||m) = log2(1/0.7), KL(q||m) = 0.4 log2(0.4/0.7) + 0.6 log2(0.6/0.3).
    kl_p, kl_q = math.log2(1 / 0.7), 0.4 * math.log2(0.4 / 0.7) + 0.6 * math.log2(2)
    assert bow.jsd(np.array([True, False, False, False])) == pytest.approx((kl_p + kl_q) / 2)
    assert bow.jsd(np.array([False, False, True, False])) == pytest.approx(0.0)
    # 3 truly-A of 6 held out, 3 predicted A, all 3 right: P = 1 / C(6, 3) = 1/20.
    assert _fisher_greater(3, 3, 3, 6) == pytest.approx(1 / 20)
    # 2 right: (C(3,2) C(3,1) + 1) / 20 = 10/20.
    assert _fisher_greater(2, 3, 3, 6) == pytest.approx(0.5)
    assert _fisher_greater(0, 3, 3, 6) == 1.0 and _fisher_greater(0, 0, 0, 0) == 1.0


# -- compare: verdicts -----------------------------------------------------------------------------

@needs_course
def test_compare_course_samples_same():
    result = run("compare", PREF, PROMPT)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1].startswith("verdict: same distribution")
    assert "prompts: 5 in the preference dataset, 6 in the prompt dataset" in result.stdout


def test_compare_other_domain_is_different(tmp_path):
    pref = write(tmp_path / "pref.jsonl", as_pairs(reddit_posts(40, seed=1)))
    recipes = write(tmp_path / "recipes.jsonl", recipe_requests(40, seed=2))
    result = run("compare", pref, recipes)
    assert result.exit_code == 1
    assert result.stdout.splitlines()[-1].startswith("verdict: different distributions")
    evidence = compare_datasets(load_dataset(pref, "preference"),
                                load_dataset(recipes, "prompt"))
    assert evidence["different_by"] == ["length", "vocabulary", "classifier"]
    assert evidence["classifier"]["balanced_accuracy"] > 0.9


@needs_course
def test_compare_course_posts_vs_recipes_is_different(tmp_path):
    recipes = write(tmp_path / "recipes.jsonl", recipe_requests(30, seed=3))
    result = run("compare", PREF, recipes)
    assert result.exit_code == 1, result.output


def test_compare_larger_same_domain_split_is_same(tmp_path):
    posts = reddit_posts(120, seed=4)
    pref = write(tmp_path / "pref.jsonl", as_pairs(posts[:60]))
    prompts = write(tmp_path / "prompts.jsonl", posts[60:])
    result = run("compare", pref, prompts)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "verdict: same distribution (no test found a difference)"


def test_compare_is_calibrated_on_same_distribution_splits():
    # Under H0 each run says "different" with probability <= 1%: ten independent same-domain
    # splits (different data and seeds) should all be "same"; every p-value is a probability.
    for seed in range(10):
        posts = reddit_posts(40, seed=100 + seed)
        evidence = compare_datasets(posts[:20], posts[20:], seed=seed)
        assert evidence["same"], (seed, evidence)
        assert all(0 < evidence[t]["p_value"] <= 1
                   for t in ("length", "vocabulary", "classifier"))


def test_compare_datasets_accepts_chat_records():
    chat = [{"messages": [{"role": "user", "content": r["input_text"]}]}
            for r in recipe_requests(12, seed=5)]
    evidence = compare_datasets(chat, recipe_requests(12, seed=6))
    assert evidence["n_a"] == evidence["n_b"] == 12 and evidence["same"]
    assert evidence["verdict"] == "same distribution"
