import csv
import io
import json
import random
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from rlhfkit import compare, report
from rlhfkit.cli import app
from rlhfkit.errors import RlhfkitError

INSTRUCTION = "Summarize in less than 50 words."


def line(prompt, prediction, target=""):
    return {"inputs": {"inputs_pretokenized": prompt, "targets_pretokenized": target},
            "prediction": prediction}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


class LengthScorer:
    """A fake reward model: shorter responses score higher (reward = -words)."""

    def __init__(self):
        self.calls = 0

    def score(self, prompts, responses):
        self.calls += 1
        assert len(prompts) == len(responses)
        return [-float(len(r.split())) for r in responses]


# -- metrics by hand ---------------------------------------------------------------------

@pytest.mark.parametrize("pred,ref,expected", [
    # LCS "the cat on the mat" = 5 of 6 tokens each way: P = R = F = 5/6.
    ("the cat sat on the mat", "the cat is on the mat", 5 / 6),
    # LCS "b d" = 2: P = 2/4, R = 2/3, F = 2PR/(P+R) = (2/3)/(7/6) = 4/7.
    ("a b c d", "b d e", 4 / 7),
    ("The CAT, sat!", "the cat sat", 1.0),  # lower-cased, punctuation dropped
    ("", "the cat", 0.0),
    ("dog", "cat", 0.0),
])
def test_rouge_l_hand_checked(pred, ref, expected):
    assert compare.rouge_l(pred, ref) == pytest.approx(expected)


@pytest.mark.parametrize("prompt,expected", [
    ("Summarize in less than 50 words.\n\n\npost", (50, True)),
    ("Summarize in fewer than 30 words\n\n\npost", (30, True)),
    ("Write a summary under 20 words.\n\n\npost", (20, True)),
    ("Summarize in at most 50 words.\n\n\npost", (50, False)),
    ("Summarize in no more than 25 words\n\n\npost", (25, False)),
    ("Summarize in 50 words or less.\n\n\npost", (50, False)),
    ("SUMMARIZE IN LESS THAN\n60 WORDS\n\n\npost", (60, True)),  # case, line break
    ("Summarize.\n\n\nI wrote less than 50 words here", None),  # the post is not the instruction
    ("no instruction at all, less than 50 words", None),
    ("Summarize in one sentence.\n\n\npost", None),
])
def test_parse_word_limit(prompt, expected):
    assert compare.parse_word_limit(prompt) == expected


def test_within_limit_is_strict_only_for_strict_limits():
    assert not compare.within_limit(50, (50, True))
    assert compare.within_limit(49, (50, True))
    assert compare.within_limit(50, (50, False))
    assert not compare.within_limit(51, (50, False))


def test_win_rate_counts_ties_half():
    # win, loss, tie, win -> (1 + 0 + 0.5 + 1) / 4
    assert compare.win_rate([0.3, -2.0, 0.0, 5.0]) == 0.625
    # identical texts are a tie even if the scorer's float noise says otherwise
    assert compare.win_rate([0.3, -2.0, 1e-7], identical=[False, False, True]) == 0.5


def test_summarize_hand_made_frame():
    df = pd.DataFrame({
        "base_model": ["a", "b", "same", "d"], "tuned_model": ["x", "y", "same", "z"],
        "base_words": [10, 20, 30, 40], "tuned_words": [5, 5, 30, 60],
        "word_limit": pd.array([50, 50, None, 50], dtype="Int64"),
        "base_within_limit": pd.array([True, True, None, True], dtype="boolean"),
        "tuned_within_limit": pd.array([True, True, None, False], dtype="boolean"),
        "base_reward": [0.0, 1.0, 2.0, 0.0], "tuned_reward": [1.0, 0.0, 2.0, 3.0],
    })
    df["reward_diff"] = df["tuned_reward"] - df["base_reward"]
    s = compare.summarize(df)
    assert s["n"] == 4
    assert s["win_rate"] == (1 + 0 + 0.5 + 1) / 4
    assert s["win_rate_ci_low"] <= s["win_rate"] <= s["win_rate_ci_high"]
    assert s["mean_reward_base"] == 0.75 and s["mean_reward_tuned"] == 1.5
    assert s["mean_words_base"] == 25 and s["mean_words_tuned"] == 25
    assert s["n_word_limit"] == 3
    assert s["within_limit_rate_base"] == 1.0 and s["within_limit_rate_tuned"] == 2 / 3
    # inputs missing -> the keys are there, with None
    assert s["gold_win_rate"] is None and s["mean_rouge_l_base"] is None and s["n_gold"] == 0


def test_bootstrap_ci_brackets_the_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    widths = []
    for n in (20, 200, 2000):
        results = rng.choice([1.0, 0.5, 0.0], size=n, p=[0.55, 0.1, 0.35])
        low, high = compare.bootstrap_ci(results)
        assert low < results.mean() < high
        widths.append(high - low)
        assert compare.bootstrap_ci(results) == (low, high)  # fixed seed
    assert widths[0] > widths[1] > widths[2]
    # ~ 2 * 1.96 * sd / sqrt(n) for the largest n (sd of {1,.5,0} with those shares ~ .47)
    assert widths[2] == pytest.approx(2 * 1.96 * 0.47 / np.sqrt(2000), rel=0.15)
    assert compare.BOOTSTRAP_RESAMPLES == 10_000


# -- joining -----------------------------------------------------------------------------

def test_join_by_prompt_text_not_line_order(tmp_path):
    prompts = [f"{INSTRUCTION}\n\n\npost number {i}" for i in range(6)]
    tuned = [line(p, f"tuned {i}") for i, p in enumerate(prompts)]
    untuned = [line(p, f"base {i}") for i, p in enumerate(prompts[:5])]  # 5 missing
    untuned.append(line(prompts[3], "base 3 again"))  # 3 duplicated
    random.Random(0).shuffle(untuned)
    df = compare.side_by_side(write_jsonl(tmp_path / "t.jsonl", tuned),
                              write_jsonl(tmp_path / "u.jsonl", untuned))
    assert list(df.columns[:3]) == ["prompt", "base_model", "tuned_model"]
    assert df["prompt"].tolist() == [prompts[i] for i in (0, 1, 2, 4)]  # tuned file's order
    for _, row in df.iterrows():
        i = row["prompt"].rsplit(" ", 1)[1]
        assert row["base_model"] == f"base {i}" and row["tuned_model"] == f"tuned {i}"
    notices = "\n".join(df.attrs["notices"])
    assert re.search(r"u\.jsonl:\d+: prompt appears 2 times", notices)
    assert "t.jsonl:6: prompt not in" in notices
    assert "reward" not in "".join(df.columns)


def test_bad_results_file_names_path_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(line("p", "x")) + "\n" + '{"input_text": "p"}\n')
    with pytest.raises(RlhfkitError, match=r"bad\.jsonl:2: expected"):
        compare.read_results(str(bad))
    res = CliRunner().invoke(app, ["compare", "--tuned", str(bad), "--untuned", str(bad)])
    assert res.exit_code != 0 and isinstance(res.exception, RlhfkitError)


def test_reward_scores_rouge_and_gold(tmp_path, monkeypatch):
    posts = ["a post about a dog", "a post about a cat", "not in the eval set"]
    prompts = [f"{INSTRUCTION}\n\n\n{p}" for p in posts]
    tuned = [line(prompts[0], "dog chewed"), line(prompts[1], "the cat sat on a mat"),
             line(prompts[2], "same")]
    untuned = [line(prompts[0], "the dog chewed the couch"), line(prompts[1], "cat"),
               line(prompts[2], "same")]
    records = [{"input_text": posts[0], "output_text": "dog chewed couch", "facts": 1},
               {"input_text": posts[1], "output_text": "the cat sat", "facts": 2}]
    # stand-in gold annotator: counts words shared with the hidden facts' reference
    monkeypatch.setattr(compare, "_gold_functions", lambda: (
        lambda rec: "facts" in rec,
        lambda rec, summary: float(len(set(summary.split()) & set(rec["output_text"].split())))))
    scorer = LengthScorer()
    df = compare.side_by_side(write_jsonl(tmp_path / "t.jsonl", tuned),
                              write_jsonl(tmp_path / "u.jsonl", untuned),
                              reward_model=scorer, eval_dataset=records)
    assert scorer.calls == 1  # both columns in one call
    assert df["base_reward"].tolist() == [-5.0, -1.0, -1.0]
    assert df["tuned_reward"].tolist() == [-2.0, -6.0, -1.0]
    assert df["reward_diff"].tolist() == [3.0, -5.0, 0.0]
    assert df["target"].tolist() == ["dog chewed couch", "the cat sat", ""]
    assert df["tuned_rouge_l"][1] == pytest.approx(2 * 0.5 * 1 / 1.5)  # LCS 3: P 3/6, R 3/3
    assert np.isnan(df["tuned_rouge_l"][2])
    assert df["base_gold"].tolist()[:2] == [3.0, 1.0] and np.isnan(df["base_gold"][2])
    assert df["tuned_gold"].tolist()[:2] == [2.0, 3.0]
    s = compare.summarize(df)
    assert s["win_rate"] == pytest.approx(1.5 / 3)  # win, loss, tie
    assert s["n_gold"] == 2 and s["gold_win_rate"] == 0.5  # loss, win
    assert s["mean_gold_base"] == 2.0 and s["mean_gold_tuned"] == 2.5
    assert "1 of 3 prompts have no matching eval record" in df.attrs["notices"]


# -- the course's files through the CLI ------------------------------------------------

def test_cli_on_the_course_samples(course_samples, tmp_path):
    tuned = course_samples / "eval_results_tuned.jsonl"
    untuned = course_samples / "eval_results_untuned.jsonl"
    res = CliRunner().invoke(app, ["compare", "--tuned", str(tuned), "--untuned", str(untuned),
                                   "--out-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO((tmp_path / "comparison.csv").read_text())))
    base = {r["inputs"]["inputs_pretokenized"]: r["prediction"]
            for r in map(json.loads, untuned.read_text().splitlines())}
    assert len(rows) == 5
    for row in rows:  # word counts computed independently of rlhfkit
        assert row["base_model"] == base[row["prompt"]]
        assert int(row["base_words"]) == len(base[row["prompt"]].split())
        assert int(row["tuned_words"]) == len(row["tuned_model"].split())
        assert row["word_limit"] == "50"
        assert row["base_within_limit"] == str(int(row["base_words"]) < 50)
    assert not any("reward" in k or "gold" in k for k in rows[0])
    # The second post's base summary is 56 words: over the limit, in the terminal table too.
    second = next(r for r in rows if "computer kid" in r["prompt"])
    assert second["base_words"] == "56" and second["base_within_limit"] == "False"
    assert "56/36" in res.stdout
    assert "within the instruction's word limit (5 prompts): base 60%, tuned 100%" in res.stdout

    res = CliRunner().invoke(app, ["compare", "--tuned", str(tuned), "--untuned", str(untuned),
                                   "--json"])
    s = json.loads(res.stdout)
    assert s["n"] == 5 and s["win_rate"] is None and s["mean_reward_base"] is None
    assert s["mean_words_tuned"] == pytest.approx(
        sum(len(r["tuned_model"].split()) for r in rows) / 5)


# -- the HTML report ---------------------------------------------------------------------

def _make_run(course_samples, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("eval_results_tuned.jsonl", "eval_results_untuned.jsonl"):
        shutil.copy(course_samples / name, run / name)
    # user content with markup must come out escaped
    with open(run / "eval_results_tuned.jsonl", "a") as f1, \
            open(run / "eval_results_untuned.jsonl", "a") as f2:
        p = f"{INSTRUCTION}\n\n\n<img src=https://evil.example/x.png> & more"
        f1.write(json.dumps(line(p, "<script>alert(1)</script>")) + "\n")
        f2.write(json.dumps(line(p, "fine")) + "\n")
    return run


def test_report_is_self_contained_with_table_and_curves(course_samples, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    run = _make_run(course_samples, tmp_path)
    with SummaryWriter(str(run / "reward-logs")) as w:
        for step in range(5):
            w.add_scalar("rank_loss", 0.7 - 0.1 * step, step)
            w.add_scalar("eval/accuracy", 0.5 + 0.05 * step, step)
            w.add_scalar("zz_lr", 1e-4, step)
    res = CliRunner().invoke(app, ["compare", str(run)])
    assert res.exit_code == 0, res.output
    page = (run / "report.html").read_text()
    assert (run / "comparison.csv").is_file()
    # nothing fetched from the network: no tag refers to anything (URLs only in the text)
    tags = re.findall(r"<[^>]+>", page)
    assert not [t for t in tags if re.search(r"\b(src|href)\s*=|://", t, re.I)]
    assert not re.search(r"url\(|@import|<script|<link|<iframe|<img", page, re.I)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=https://evil.example/x.png&gt; &amp; more" in page
    # the table: every prediction is there (escaped; a long one folded after its start)
    unfolded = page.replace(" …</summary>", "")
    for rec in map(json.loads, (course_samples / "eval_results_tuned.jsonl").read_text()
                   .splitlines()):
        import html

        assert html.escape(rec["prediction"]) in unfolded
    assert ">words base / tuned</th>" in page and "snake" not in page
    # the instruction once, above the table, not in every row
    assert page.count("Summarize in less than 50 words.") == 1
    # the curves: Vertex's tag first, then the accuracy-like tag, then the rest
    charts = re.findall(r'<svg[^>]*aria-label="([^"]+)"', page)
    assert charts[:3] == ["rank_loss", "eval/accuracy", "zz_lr"]
    assert "last 0.3" in page  # rank_loss at step 4
    assert "No TensorBoard scalars found in" in page and "reinforcer-logs" in page


def test_read_scalars_keeps_the_last_value_of_a_repeated_step(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / "a")) as w:
        w.add_scalar("reward", 1.0, 0)
        w.add_scalar("reward", 2.0, 1)
    with SummaryWriter(str(tmp_path / "a")) as w:  # a resumed run: step 1 again
        w.add_scalar("reward", 3.0, 1)
        w.add_scalar("kl_loss", 0.1, 1)
    scalars = report.read_scalars(tmp_path / "a")
    assert scalars["reward"] == [(0, 1.0), (1, 3.0)]
    assert report.order_tags(["ppo/loss", "kl_loss", "reward"]) == ["reward", "kl_loss",
                                                                    "ppo/loss"]


def test_run_dir_reads_params_eval_dataset_and_reward_model(tmp_path, monkeypatch,
                                                            course_samples):
    run = _make_run(course_samples, tmp_path)
    (run / "reward_model").mkdir()
    (run / "params.json").write_text(json.dumps(
        {"eval_dataset": str(course_samples / "sample_eval.jsonl")}))
    loaded = []

    def fake_load(path):
        loaded.append(path)
        return LengthScorer()

    monkeypatch.setattr(compare, "load_scorer",
                        lambda rm: fake_load(rm) if isinstance(rm, str) else rm)
    monkeypatch.setattr(compare, "_gold_functions", lambda: (lambda rec: False, None))
    cfg = compare.Config.for_run(run)
    assert cfg.eval_dataset == str(course_samples / "sample_eval.jsonl")
    result = compare.run(cfg)
    assert loaded == [str(run / "reward_model")]
    assert result.summary["win_rate"] is not None
    assert "tuned_reward" in result.table and "tuned_gold" not in result.table
    page = result.report_path.read_text()
    assert "reward difference per prompt" in page  # the histogram


def test_gold_scores_on_the_real_demo_world(tmp_path):
    from rlhfkit.data import format_prompt
    from rlhfkit.demo import world

    records = world.generate(world.Config(output_dir=str(tmp_path), preference_size=0,
                                          prompt_size=0, eval_size=6))["eval"]
    eval_path = write_jsonl(tmp_path / "eval.jsonl", records)
    tuned, untuned, expected = [], [], []
    for rec in records:
        prompt = format_prompt(world.DEMO_INSTRUCTION, rec["input_text"])
        good, bad = sorted([rec["candidate_0"], rec["candidate_1"]],
                           key=lambda s: -world.gold_score(rec, s))
        tuned.append(line(prompt, good))
        untuned.append(line(prompt, bad))
        expected.append((world.gold_score(rec, bad), world.gold_score(rec, good)))
    res = CliRunner().invoke(app, [
        "compare", "--tuned", write_jsonl(tmp_path / "t.jsonl", tuned[::-1]),
        "--untuned", write_jsonl(tmp_path / "u.jsonl", untuned), "--eval", eval_path,
        "--json"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["n_gold"] == 6
    wins = sum(g > b for b, g in expected) + 0.5 * sum(g == b for b, g in expected)
    assert s["gold_win_rate"] == pytest.approx(wins / 6)
    assert s["mean_gold_tuned"] == pytest.approx(np.mean([g for _, g in expected]))
    assert s["gold_win_rate_ci_low"] <= s["gold_win_rate"] <= s["gold_win_rate_ci_high"]
    assert s["n_word_limit"] == 6  # "less than 25 words" parsed from the demo instruction


# -- hostile model output (issue 9 §4) -----------------------------------------------------

HOSTILE = ["=HYPERLINK(\"https://evil.example\",\"x\")", "+1+2", "-2+3", "@SUM(A1)",
           "\tleading tab", "\rleading CR"]


def test_csv_cells_that_start_a_formula_are_neutralised(tmp_path):
    prompts = [f"{INSTRUCTION}\n\n\npost {i}" for i in range(len(HOSTILE))] + ["=1+1"]
    tuned = [line(p, h) for p, h in zip(prompts, HOSTILE + ["fine"], strict=True)]
    untuned = [line(p, "plain") for p in prompts]
    res = CliRunner().invoke(app, ["compare", "--tuned", write_jsonl(tmp_path / "t.jsonl", tuned),
                                   "--untuned", write_jsonl(tmp_path / "u.jsonl", untuned),
                                   "--out-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "comparison.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # OWASP: a leading ' makes the spreadsheet show the cell as text
    assert [r["tuned_model"] for r in rows] == ["'" + h for h in HOSTILE] + ["fine"]
    assert rows[-1]["prompt"] == "'=1+1" and rows[0]["base_model"] == "plain"
    assert compare.csv_safe(-1.5) == -1.5  # numbers are data, not formulas


def test_terminal_prints_model_text_literally():
    from rich.console import Console

    texts = ["oops [/bold] closing tag", "[link=https://evil.example]click me[/link]",
             "osc \x1b]8;;https://evil.example\x1b\\link\x1b]8;;\x1b\\ and \x1b[31mred\x07",
             "bidi \u202eabc"]
    df = pd.DataFrame({"prompt": [f"{INSTRUCTION}\n\n\npost [bold]{i}" for i in range(4)],
                       "base_model": ["base"] * 4, "tuned_model": texts})
    for who in ("base", "tuned"):
        df[f"{who}_words"] = df[f"{who}_model"].map(compare.word_count)
    console = Console(file=io.StringIO(), width=400, force_terminal=True, color_system=None)
    compare.print_table(df, {"n": 4, **dict.fromkeys([
        "win_rate", "gold_win_rate", "within_limit_rate_base", "mean_rouge_l_base"]),
        "mean_words_base": 1.0, "mean_words_tuned": 3.0}, console=console)
    out = console.file.getvalue()
    assert "oops [/bold] closing tag" in out and "post [bold]0" in out
    assert "[link=https://evil.example]click me[/link]" in out  # shown, not a hyperlink
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "osc \\x1b]8;;https://evil.example\\x1b\\link" in out and "\\x1b[31mred\\x07" in out
    assert "bidi \\u202eabc" in out


# -- the reward-model tie threshold --------------------------------------------------------

def test_reward_tie_threshold_counts_small_differences_as_ties():
    df = pd.DataFrame({"base_model": list("abcde"), "tuned_model": list("vwxyz"),
                       "base_words": [1] * 5, "tuned_words": [1] * 5,
                       "base_reward": [0.0] * 5,
                       "tuned_reward": [0.05, -0.08, 0.1, 0.5, -2.0]})
    df["reward_diff"] = df["tuned_reward"] - df["base_reward"]
    s = compare.summarize(df, tie_threshold=0.1)
    # |d| <= 0.1: 0.05, -0.08, 0.1 tie; 0.5 wins; -2 loses -> (3 * 0.5 + 1) / 5 = 0.5
    assert (s["reward_wins"], s["reward_ties"], s["reward_losses"]) == (1, 3, 1)
    assert s["win_rate"] == pytest.approx(0.5) and s["reward_tie_threshold"] == 0.1
    # strict: 0.05, 0.1, 0.5 win; -0.08, -2 lose -> 3 / 5
    assert (s["reward_wins_strict"], s["reward_ties_strict"], s["reward_losses_strict"]) == \
        (3, 0, 2)
    assert s["win_rate_strict"] == pytest.approx(0.6)
    assert "a tie when |score difference| <= 0.1" in "\n".join(compare.format_summary(s))


def test_reward_tie_threshold_from_params_and_cli(tmp_path, course_samples):
    run = _make_run(course_samples, tmp_path)
    (run / "params.json").write_text(json.dumps({"reward_tie_threshold": 0.25}))
    assert compare.Config.for_run(run).reward_tie_threshold == 0.25
    assert compare.Config.for_run(run, reward_tie_threshold=0.0).reward_tie_threshold == 0.0
    res = CliRunner().invoke(app, ["compare", str(run), "--json", "--reward-tie-threshold", "-1"])
    assert res.exit_code != 0 and "reward_tie_threshold must be a finite number >= 0" in str(
        res.exception)


# -- blind human evaluation ----------------------------------------------------------------

def test_human_win_rate_and_agreement(course_samples, tmp_path):
    from rlhfkit import label, label_store

    run = _make_run(course_samples, tmp_path)
    label.prepare(str(tmp_path / "pairs.jsonl"), from_run=str(run), seed=1)
    pairs = [json.loads(x) for x in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    sources = {s["pair_id"]: s for s in map(json.loads, (tmp_path / "pairs.sources.jsonl")
                                            .read_text().splitlines())}
    out = tmp_path / "preference.jsonl"
    store = label_store.Store(out, pairs)
    want = ["tuned", "tuned", "base", "tie", "skip", "base"]  # one wish per pair, 6 pairs
    human_tuned = {}
    for p, w in zip(pairs, want, strict=True):
        if w in ("tie", "skip"):
            store.record("ann", p["pair_id"], w)
            continue
        side = [sources[p["pair_id"]]["source_0"], sources[p["pair_id"]]["source_1"]].index(w)
        store.record("ann", p["pair_id"], str(side))
        human_tuned[p["input_text"]] = w == "tuned"
    store.close()
    cfg = compare.Config.for_run(run, human=str(out))
    result = compare.build(cfg, scorer=LengthScorer())
    s = result.summary
    # tuned, tuned, base, tie (skip left out), base -> (1 + 1 + 0 + 0.5 + 0) / 5
    assert s["human_n"] == 5 and s["human_unmatched"] == 0
    assert s["human_win_rate"] == pytest.approx(2.5 / 5)
    assert (s["human_wins"], s["human_ties"], s["human_losses"]) == (2, 1, 2)
    assert s["human_win_rate_ci_low"] <= 0.5 <= s["human_win_rate_ci_high"]
    # the reward model (fewer words is better) decides where the word counts differ
    df = result.table
    agree = []
    for row in df.itertuples():
        post = row.prompt.split("\n\n\n", 1)[1]
        if post in human_tuned and row.base_words != row.tuned_words:
            agree.append(human_tuned[post] == (row.tuned_words < row.base_words))
    assert s["human_reward_agreement_n"] == len(agree) > 0
    assert s["human_reward_agreement"] == pytest.approx(sum(agree) / len(agree))
    assert df["human"].notna().sum() == 5
    text = "\n".join(compare.format_summary(s))
    assert "human win rate of tuned over base (blind, 5 judgements of 5 prompts): 0.500" in text
    # the CLI and the report carry it too
    res = CliRunner().invoke(app, ["compare", str(run), "--human", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["human_win_rate"] == pytest.approx(0.5)
    assert "human win rate of tuned over base" in (run / "report.html").read_text()


def test_human_labels_of_another_run_are_reported_not_guessed(course_samples, tmp_path):
    run = _make_run(course_samples, tmp_path)
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"input_text": "a post from elsewhere", "candidate_0": "a",
                                 "candidate_1": "b", "choice": 0}) + "\n")
    result = compare.build(compare.Config.for_run(run, human=str(other)))
    assert result.summary["human_unmatched"] == 1 and result.summary["human_win_rate"] is None
    assert any("match no prompt and answer pair" in n for n in result.notices)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input_text": "x"}\n')
    with pytest.raises(RlhfkitError, match=r"bad\.jsonl:1: expected input_text"):
        compare.build(compare.Config.for_run(run, human=str(bad)))


# -- several runs ----------------------------------------------------------------------------

def _training(run, params, steps, kl, step_seconds):
    from torch.utils.tensorboard import SummaryWriter

    (run / "params.json").write_text(json.dumps(params))
    (run / "policy").mkdir()
    (run / "policy" / "rlhfkit.json").write_text(json.dumps({"train_steps": steps,
                                                             "final_kl": kl}))
    with SummaryWriter(str(run / "reinforcer-logs")) as w:
        for step, sec in enumerate(step_seconds):
            w.add_scalar("time/step_seconds", sec, step)


def test_several_runs_one_table(course_samples, tmp_path):
    a = _make_run(course_samples, tmp_path).rename(tmp_path / "a")
    b = _make_run(course_samples, tmp_path).rename(tmp_path / "b")
    _training(a, {"reinforcement_learning_train_steps": 3}, 3, 0.25, [60.0, 30.0, 30.0])
    _training(b, {"rl_algorithm": "grpo"}, 2, 1.5, [6.0, 6.0])
    res = CliRunner(env={"COLUMNS": "300"}).invoke(app, ["compare", str(a), str(b)])
    assert res.exit_code == 0, res.output
    assert "2 runs on the same 6 eval prompts" in res.stdout
    assert re.search(r"a\s*│\s*ppo\s*│\s*3\s*│\s*0\.250", res.stdout)
    assert re.search(r"b\s*│\s*grpo\s*│\s*2\s*│\s*1\.500", res.stdout)
    assert "2.0 min" in res.stdout and "0.2 min" in res.stdout  # 120 s and 12 s of steps
    res = CliRunner().invoke(app, ["compare", str(a), str(b), "--json"])
    runs = json.loads(res.stdout)["runs"]
    assert [r["method"] for r in runs] == ["ppo", "grpo"]
    assert runs[0]["training_seconds"] == pytest.approx(120.0)
    assert runs[1]["summary"]["n"] == 6
    for run in (a, b):  # each run's report carries the table
        page = (run / "report.html").read_text()
        assert "<h2>Runs compared</h2>" in page and page.count("<td>grpo</td>") == 1


def test_several_runs_need_the_same_eval_prompts(course_samples, tmp_path):
    a = _make_run(course_samples, tmp_path).rename(tmp_path / "a")
    b = _make_run(course_samples, tmp_path).rename(tmp_path / "b")
    lines = (b / "eval_results_tuned.jsonl").read_text().splitlines()
    (b / "eval_results_tuned.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    lines = (b / "eval_results_untuned.jsonl").read_text().splitlines()
    (b / "eval_results_untuned.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    res = CliRunner().invoke(app, ["compare", str(a), str(b)])
    assert res.exit_code != 0
    assert "its eval prompts differ from" in str(res.exception)
