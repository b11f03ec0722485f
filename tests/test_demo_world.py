"""The demo world: determinism, richness, the gold annotator's judgement, label noise."""

from __future__ import annotations

import json
import random
import re

import pytest

from rlhfkit.demo import grammar as g
from rlhfkit.demo import world as w

SMALL = dict(preference_size=40, prompt_size=30, eval_size=20)


@pytest.fixture(scope="module")
def default_world():
    """The default-size world of seed 0, in memory (a few seconds), with the gold gap
    (candidate_1 minus candidate_0) of every pair."""
    data = w.generate(w.Config("unused", prompt_size=0))
    return {name: (recs, [w.gold_score(r, r["candidate_1"]) - w.gold_score(r, r["candidate_0"])
                          for r in recs]) for name, recs in data.items() if recs}


# -- determinism and files ---------------------------------------------------------------

def _files(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    w.run(w.Config(str(tmp_path / "a"), seed=3, **SMALL))
    w.run(w.Config(str(tmp_path / "b"), seed=3, **SMALL))
    w.run(w.Config(str(tmp_path / "c"), seed=4, **SMALL))
    a, b, c = (_files(tmp_path / x) for x in "abc")
    assert set(a) == {"preference.jsonl", "prompt.jsonl", "eval.jsonl", "world.json",
                      "README.md"}
    assert a == b
    for name in ("preference.jsonl", "prompt.jsonl", "eval.jsonl"):
        assert a[name] != c[name]


def test_files_pass_validation_and_eval_doubles_as_preference_set(tmp_path):
    from rlhfkit.data import has_preferences, load_dataset

    w.run(w.Config(str(tmp_path), **SMALL))
    pref = load_dataset(str(tmp_path / "preference.jsonl"), "preference")
    prompts = load_dataset(str(tmp_path / "prompt.jsonl"), "prompt")
    evals = load_dataset(str(tmp_path / "eval.jsonl"), "eval")
    assert (len(pref), len(prompts), len(evals)) == (40, 30, 20)
    assert has_preferences(evals) and not has_preferences(prompts)
    for rec in pref + prompts + evals:
        assert w.is_demo_record(rec)
        assert rec["input_text"].endswith(" [summary]: ")  # as the course's input_text
    for rec in pref + evals:
        assert rec["choice"] in (0, 1)
        assert rec["candidate_0"].startswith(" ") and rec["candidate_0"] != rec["candidate_1"]
    # Disjoint posts across the three sets.
    texts = [r["input_text"] for r in pref + prompts + evals]
    assert len(set(texts)) == len(texts)


def test_world_json_and_readme(tmp_path):
    info = w.run(w.Config(str(tmp_path), seed=7, **SMALL))
    on_disk = json.loads((tmp_path / "world.json").read_text())
    assert on_disk == info
    assert on_disk["instruction"] == w.DEMO_INSTRUCTION
    assert on_disk["sizes"] == {"preference": 40, "prompt": 30, "eval": 20}
    assert on_disk["seed"] == 7
    assert 0.5 <= on_disk["noise_ceiling_eval"] <= 1
    readme = (tmp_path / "README.md").read_text()
    assert f"{on_disk['noise_ceiling_preference']:.3f}" in readme
    assert w.DEMO_INSTRUCTION in readme


def test_cli_demo_data(tmp_path):
    from typer.testing import CliRunner

    from rlhfkit.cli import app

    out = tmp_path / "world"
    result = CliRunner().invoke(app, ["demo", "data", str(out), "--seed", "1",
                                      "--preference-size", "12", "--prompt-size", "5",
                                      "--eval-size", "4"])
    assert result.exit_code == 0, result.output
    assert "noise ceiling" in result.output
    lines = (out / "preference.jsonl").read_text().splitlines()
    assert len(lines) == 12
    assert len((out / "eval.jsonl").read_text().splitlines()) == 4
    assert json.loads((out / "world.json").read_text())["sizes"]["prompt"] == 5


def test_negative_size_is_a_user_error(tmp_path):
    from rlhfkit.errors import RlhfkitError

    with pytest.raises(RlhfkitError, match="--eval-size"):
        w.run(w.Config(str(tmp_path), eval_size=-1))
    assert not any(tmp_path.iterdir())


# -- the grammar -------------------------------------------------------------------------

def test_grammar_is_rich():
    rng = random.Random(0)
    posts = [w.make_post(rng, str(i)) for i in range(500)]
    assert len({p.text for p in posts}) == 500
    # (topic, event, question) frames: hundreds of distinct ones in 500 posts.
    frames = {(p.topic, p.heads) for p in posts}
    assert len(frames) >= 300
    assert {p.topic for p in posts} == {t.name for t in g.TOPICS}
    assert len(g.TOPICS) >= 10
    n_frames = sum(len(t.roles) * len(t.events) * len(t.asks) for t in g.TOPICS)
    assert n_frames >= 2000
    sentence_templates = sum(len(t.intros) + len(t.backgrounds) + len(t.aftermaths)
                             for t in g.TOPICS)
    assert sentence_templates >= 150


def test_posts_have_the_right_shape():
    rng = random.Random(1)
    for i in range(200):
        post = w.make_post(rng, str(i))
        assert w.POST_WORDS[0] <= len(post.text.split()) <= w.POST_WORDS[1]
        assert "{" not in post.text and "}" not in post.text
        assert post.text[0].isupper()
        assert set(post.facts) == {"who", "what", "ask"}
        assert all(keys for f in post.facts.values() for keys in f)


def test_no_template_glues_a_slot_to_letters():
    """The fluency analysis works on words; `{role}'s` would break it."""
    glued = re.compile(r"[A-Za-z0-9']\{|\}[A-Za-z0-9']")
    units = g.top_level_units()
    values = [v for vs in g.universe().values() for v in vs]
    bad = [t for t in units + values if glued.search(t)]
    assert bad == []


def test_every_text_of_the_grammar_is_fluent_for_the_annotator():
    rng = random.Random(2)
    licensed = g.licensed_bigrams()
    for i in range(150):
        post, other = w.make_post(rng, str(i)), w.make_post(rng, "o")
        toks = g.words(post.text)
        assert all(p in licensed for p in zip(toks, toks[1:], strict=False)), post.text
        for spec in (w.Spec(), w.Spec(filler=3), w.Spec(vague=frozenset(["who", "ask"])),
                     w.Spec(kind="offtopic"), w.Spec(kind="copy")):
            text = w.render(post, spec, rng, other)
            assert w.gold_breakdown(post.record(), text)["disfluency"] == 0, text


def test_reference_summaries_state_every_fact_within_the_limit():
    rng = random.Random(3)
    for i in range(100):
        post = w.make_post(rng, str(i))
        rec = post.record()
        ref = w.reference_summary(post)
        parts = w.gold_breakdown(rec, ref)
        assert parts["coverage"] == 1 and parts["off_topic"] == 0
        assert parts["repetition"] == 0 and parts["n_words"] < w.WORD_LIMIT
        assert parts["score"] > 2.0, ref


# -- the gold annotator on hand-written cases ----------------------------------------------

RECORD = {
    "input_text": "I'm 24F and my boyfriend (26M) and I have been together for two years. "
                  "Last week my boyfriend completely forgot my birthday and went out with his "
                  "friends instead. He apologized, but it still really hurts. Should I break "
                  "up with him or am I overreacting? [summary]: ",
    "demo": {"post_id": "hand", "topic": "relationships", "word_limit": 25,
             "facts": {"who": [["boyfriend"]],
                       "what": [["forgot", "birthday"], ["completely", "forgot", "birthday"]],
                       "ask": [["break", "up"], ["end", "things"]]}},
}
CONCISE = "My boyfriend forgot my birthday. Should I break up with him?"
RAMBLING = ("So basically, my boyfriend forgot my birthday, which honestly came out of "
            "nowhere. Should I break up with him? I keep going back and forth on it.")
MISSING = "My boyfriend did something that upset me. Should I break up with him?"
OFF_TOPIC = "My landlord kept my security deposit. Should I withhold rent?"
OVER_LIMIT = ("I'm 24F and my boyfriend (26M) and I have been together for two years. Last "
              "week my boyfriend completely forgot my birthday and went out with his friends")
REPEATED = ("My boyfriend forgot my birthday, forgot my birthday, forgot my birthday. "
            "Should I break up with him?")
WORD_SALAD = "boyfriend birthday forgot break up boyfriend"


def test_gold_prefers_concise_on_topic_summaries():
    score = lambda s: w.gold_score(RECORD, s)  # noqa: E731
    assert score(CONCISE) > score(RAMBLING) > score(OFF_TOPIC)
    assert score(CONCISE) > score(MISSING) > score(OFF_TOPIC)
    assert score(CONCISE) > score(OVER_LIMIT)
    assert score(CONCISE) > score(REPEATED) + 1
    assert score(CONCISE) > score(WORD_SALAD) + 1
    assert score("") < min(score(s) for s in (RAMBLING, OFF_TOPIC, WORD_SALAD))
    # The leading space of the course's candidates and surrounding blanks do not matter.
    assert score(" " + CONCISE + "\n") == score(CONCISE)


def test_gold_parts_by_hand():
    parts = w.gold_breakdown(RECORD, CONCISE)
    # 11 words, all facts, nothing foreign, nothing repeated, every pair grammatical:
    # 3.0 * 1.0 and no verbosity penalty (11 <= CRISP_WORDS).
    assert parts["n_words"] == 11
    assert parts["coverage"] == 1 and parts["off_topic"] == 0
    assert parts["repetition"] == 0 and parts["disfluency"] == 0
    assert parts["score"] == pytest.approx(w.COVERAGE_POINTS)
    # Vague event: what (weight 1.5 of 3.5) missing -> coverage 2/3.5.
    assert w.gold_breakdown(RECORD, MISSING)["coverage"] == pytest.approx(2 / 3.5)
    # Off-topic: "landlord", "security", "deposit", "withhold", "rent" all foreign.
    off = w.gold_breakdown(RECORD, OFF_TOPIC)
    assert off["off_topic"] == 1 and off["coverage"] == 0


def test_word_limit_penalty_starts_at_the_limit():
    base = "my boyfriend forgot my birthday should I break up with him"  # 11 words
    fill = " ".join(["okay"] * 13)  # 24 words in all: still "less than 25"
    at_limit, over = base + " " + fill, base + " " + fill + " okay"
    drop = w.gold_score(RECORD, at_limit) - w.gold_score(RECORD, over)
    # One word more: verbosity 0.04 + breaking the limit 1.0 + 0.15 per word over; the
    # extra "okay" also adds a repeated triple (repetition share changes a little).
    assert drop > w.OVER_LIMIT_POINTS + w.OVER_LIMIT_PER_WORD


def test_is_demo_record():
    assert w.is_demo_record(RECORD)
    assert not w.is_demo_record({"input_text": "x [summary]: "})
    assert not w.is_demo_record({"input_text": "x", "demo": {"facts": {}}})
    assert not w.is_demo_record("not a record")


# -- labels and the noise ceiling --------------------------------------------------------

def test_label_probability_is_bradley_terry():
    assert w.label_probability(1.0, 1.0) == 0.5
    assert w.label_probability(0.0, 2.0) == pytest.approx(1 - w.label_probability(2.0, 0.0))
    # gold gap of one temperature: sigmoid(1) = 0.7311
    assert w.label_probability(0.0, w.BT_TEMPERATURE) == pytest.approx(0.7310586)


def test_noise_ceiling_by_hand():
    # max(p, 1-p): 0.5, 0.9, 0.8 -> mean 2.2 / 3
    assert w.noise_ceiling([0.5, 0.9, 0.2]) == pytest.approx(2.2 / 3)


def test_label_agreement_like_human_labellers(default_world):
    for name in ("preference", "eval"):
        stats = w.pair_stats(default_world[name][0])
        assert 0.70 <= stats["noise_ceiling"] <= 0.80, (name, stats)
    stats = w.pair_stats(default_world["preference"][0])
    assert 0.70 <= stats["agreement"] <= 0.80, stats


def test_noise_ceiling_matches_monte_carlo(default_world):
    """Relabel the pairs many times; the Bayes classifier (predict the higher gold score)
    is right on average as often as the noise ceiling says."""
    records, gaps = default_world["preference"]
    probs = [w.label_probability(0.0, d) for d in gaps]
    rng = random.Random(0)
    trials = 40
    hits = 0
    for _ in range(trials):
        for d, p in zip(gaps, probs, strict=True):
            label = int(rng.random() < p)
            hits += label == int(d > 0) if d != 0 else 0.5
    assert hits / (trials * len(records)) == pytest.approx(w.noise_ceiling(probs), abs=0.005)


def test_pairs_mostly_differ_in_quality(default_world):
    """Informative pairs: most have a clear gold gap, a few are near coin flips."""
    gaps = sorted(abs(gap) for gap in default_world["preference"][1])
    median = gaps[len(gaps) // 2]
    assert 0.5 < median < 3.0
    assert sum(gap < 0.3 for gap in gaps) / len(gaps) > 0.05
