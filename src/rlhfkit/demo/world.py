"""The demo world: Reddit-like posts, candidate summaries, and a hidden gold annotator.

An offline, honest benchmark for the whole pipeline (DESIGN.md, "The demo world"). Posts
come from the grammar in grammar.py / topics.py; each has three key facts: who is involved
("my landlord"), what happened ("kept my security deposit") and what the poster asks
("should I withhold rent"). Candidate summaries vary in quality along the dimensions real
labellers judge (Stiennon et al. 2020, "Learning to summarize from human feedback"):
coverage of the key facts, staying on topic, length and the instruction's word limit,
repetition and fluency.

`gold_score(record, summary)` is the annotator's hidden utility; preference labels are
drawn from a Bradley-Terry model on it, with a temperature that makes labels agree with
the noiseless preference ~75% of the time, like human labellers on TL;DR. Because the
annotator is known, the pipeline's real effect can be measured: a reward model's held-out
accuracy against the noise ceiling, a policy's gold score, and over-optimisation
(Gao et al. 2022: proxy reward up, gold score down).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from rlhfkit.demo import grammar as g

DEMO_INSTRUCTION = "Summarize in less than 25 words."
WORD_LIMIT = 25  # "less than 25 words": at most 24 whitespace-separated words
SUMMARY_CUE = " [summary]: "  # how the course's input_text ends
POST_WORDS = (40, 90)  # post length range in words: short sequences for CPU training
FACTS = ("who", "what", "ask")

# -- the gold annotator's weights (one place, units in gold points) ----------------------
FACT_WEIGHTS = {"who": 1.0, "what": 1.5, "ask": 1.0}
COVERAGE_POINTS = 3.0  # all key facts stated
OFF_TOPIC_POINTS = 2.5  # every topical word foreign to the post
CRISP_WORDS = 12  # summaries longer than this pay VERBOSITY_POINTS per extra word
VERBOSITY_POINTS = 0.04
OVER_LIMIT_POINTS = 1.0  # breaking the instruction's word limit at all ...
OVER_LIMIT_PER_WORD = 0.15  # ... plus this per word over it
REPETITION_POINTS = 5.0  # every word triple a repeat
DISFLUENCY_POINTS = 3.0  # no bigram the grammar can produce (word salad)
TOO_SHORT_WORDS, TOO_SHORT_POINTS = 4, 1.5
EMPTY_SCORE = -6.0
# Bradley-Terry temperature of the labellers, in gold points: P(prefer a) =
# sigmoid((gold_a - gold_b) / BT_TEMPERATURE). Chosen so that labels agree with the
# noiseless preference ~76% of the time on the default pair mix (median |gold gap| 1.5),
# close to the 73-77% inter-labeller agreement on TL;DR (tests check 70-80%).
BT_TEMPERATURE = 1.4

DEFAULT_PREFERENCE_SIZE = 3000  # the course's size
DEFAULT_PROMPT_SIZE = 2000  # the course's size
DEFAULT_EVAL_SIZE = 200


# -- posts -------------------------------------------------------------------------------

@dataclass
class Post:
    post_id: str
    topic: str
    text: str  # the post itself, without the summary cue
    env: dict = field(repr=False)  # slot values, for rendering summaries of this post
    event: g.Phrase = field(repr=False)
    ask: g.Phrase = field(repr=False)
    heads: tuple[str, str] = ("", "")  # the copyable heads of the event and question told
    facts: dict[str, list[list[str]]] = field(default_factory=dict)

    @property
    def input_text(self) -> str:
        return self.text + SUMMARY_CUE

    def record(self) -> dict:
        """The prompt record (course format) plus the `demo` key the annotator reads."""
        return {"input_text": self.input_text,
                "demo": {"post_id": self.post_id, "topic": self.topic,
                         "word_limit": WORD_LIMIT, "facts": self.facts}}


def make_post(rng: random.Random, post_id: str) -> Post:
    """One post of 40-90 words: intro, background, what happened, feelings, the question."""
    while True:
        topic = rng.choice(g.TOPICS)
        name, genders = rng.choice(topic.roles).split(":")
        gender = rng.choice(genders)
        env: dict = {**g.role_env(name, gender), "me": rng.choice(g.ME_TAGS),
                     "when": rng.choice(g.WHENS), "duration": rng.choice(g.DURATIONS),
                     "feeling": rng.choice(g.FEELINGS), "pet_age": g.PET_AGES,
                     "device_adj": g.DEVICE_ADJS}
        tagged = topic.tagged and gender in "mf"
        env["other_tag"] = f"{rng.randint(18, 45)}{gender.upper()}" if tagged else ""
        env["role_intro"] = rng.choice([r for r in topic.role_intros
                                        if tagged or "{other_tag}" not in r])
        event, ask = rng.choice(topic.events), rng.choice(topic.asks)
        ei, ai = rng.randrange(len(event.posts)), rng.randrange(len(ask.posts))
        env["ev_post"], env["ask_post"] = event.posts[ei], ask.posts[ai]
        intro = rng.choice(topic.intros)
        # A pronoun can only refer back to a person the intro introduced.
        env["subj"] = "{sub}" if "{role_intro}" in intro and rng.random() < 0.4 else "my {role}"
        units = [rng.choice(g.OPENERS)] if rng.random() < 0.3 else []
        units += [intro, *rng.sample(topic.backgrounds, rng.choice([0, 1, 1, 2])),
                  rng.choice(g.EVENT_UNITS)]
        if rng.random() < 0.6:
            units.append(rng.choice(topic.aftermaths))
        if rng.random() < 0.6:
            units.append(rng.choice(g.FEELING_UNITS))
        units.append(rng.choice(g.ASK_LEADS) + "{ask_post}?")
        if rng.random() < 0.15:
            units.append(rng.choice(g.CLOSERS))
        text = ""
        for i, unit in enumerate(units):
            sep = "" if i == 0 else ("\n\n" if rng.random() < 0.1 else " ")
            text += sep + g.capitalise(g.expand(unit, env, rng))
        if POST_WORDS[0] <= len(text.split()) <= POST_WORDS[1]:
            break
    facts = {"who": [g.content_words(name)],
             "what": _keys(event.statements, env), "ask": _keys(ask.statements, env)}
    return Post(post_id, topic.name, text, env, event, ask, (event.heads[ei], ask.heads[ai]),
                facts)


def _keys(variants: list[str], env: dict) -> list[list[str]]:
    """A fact's keys: the content words of each way a summary can state it."""
    out: list[list[str]] = []
    for v in variants:
        keys = list(dict.fromkeys(g.content_words(g.expand(v, env, random.Random(0)))))
        if keys not in out:
            out.append(keys)
    return out


# -- summaries ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Spec:
    """How a candidate summary is written: its quality along each dimension."""

    vague: frozenset = frozenset()  # key facts stated vaguely ("something happened")
    filler: int = 0  # rambling additions, 0-3
    repeat: int = 0  # repeated phrases, 0-2
    kind: str = "summary"  # "summary" | "copy" (the post's start, over the limit) | "offtopic"


def render(post: Post, spec: Spec, rng: random.Random, other: Post | None = None) -> str:
    """A summary of `post` written as `spec` says (`other`: the post an off-topic one is
    about). Starts with a space, like the course's candidates."""
    if spec.kind == "offtopic":
        assert other is not None, "an off-topic summary needs another post"
        return render(other, replace(spec, kind="summary"), rng)
    if spec.kind == "copy":  # the post's first 26-40 words, cut mid-sentence
        return " " + " ".join(post.text.split()[:rng.randint(WORD_LIMIT + 1, 40)])
    topic = g.TOPIC_BY_NAME[post.topic]
    env = dict(post.env)
    tag = post.env["other_tag"] and rng.random() < 0.2
    env["who"] = (rng.choice(topic.vague_who) if "who" in spec.vague
                  else "my {role} ({other_tag})" if tag else "my {role}")
    ev = g.expand(rng.choice(g.VAGUE_EVENTS) if "what" in spec.vague
                  else _statement(post.event, post.heads[0], rng), env, rng)
    ask = g.expand(rng.choice(g.VAGUE_ASKS) if "ask" in spec.vague
                   else _statement(post.ask, post.heads[1], rng), env, rng)
    repeat_ask = spec.repeat and rng.random() < 0.4
    if spec.repeat and not repeat_ask:
        ev = ", ".join([ev] * (spec.repeat + 1))
    fillers = rng.sample(["prefix", "aside", "suffix", "suffix2"], min(spec.filler, 4))
    if "aside" in fillers:
        ev += rng.choice(g.FILLER_ASIDES)
    env["ev"], env["ask"] = ev, ask
    text = g.expand(rng.choice(g.SUMMARY_TEMPLATES), env, rng)
    if repeat_ask:
        text += (" " + ask + "?") * spec.repeat
    if "prefix" in fillers:
        text = rng.choice(g.FILLER_PREFIXES) + text
    for suffix in rng.sample(g.FILLER_SUFFIXES, fillers.count("suffix") + fillers.count("suffix2")):
        text += " " + suffix
    return " " + g.capitalise(text)


COPY_HEAD = 0.75  # how often a summary states a fact in the post's own words


def _statement(phrase: g.Phrase, head: str, rng: random.Random) -> str:
    return head if rng.random() < COPY_HEAD else rng.choice(phrase.shorts)


def reference_summary(post: Post) -> str:
    """A concise summary stating every key fact (for examples and tests)."""
    return render(post, Spec(), random.Random(post.post_id))


# -- the gold annotator ------------------------------------------------------------------

def is_demo_record(record: dict) -> bool:
    """True when the record comes from the demo world (the gold annotator can score it)."""
    demo = record.get("demo") if isinstance(record, dict) else None
    return (isinstance(demo, dict) and isinstance(demo.get("facts"), dict)
            and all(k in demo["facts"] for k in FACTS) and "word_limit" in demo
            and isinstance(record.get("input_text"), str))


def gold_breakdown(record: dict, summary: str) -> dict[str, float]:
    """The gold score of `summary` for the post in `record`, with its parts.

    Parts (all in [0, 1] except n_words): coverage of the key facts (weighted; a fact's
    coverage is the best share of its keys present over the ways to state it); off_topic,
    the share of topical words the post never mentions; repetition, the larger of the
    share of repeated word triples and of content words past their second use; disfluency,
    the share of word pairs the grammar cannot produce.
    """
    demo = record["demo"]
    toks = g.words(summary)
    n = len(summary.split())
    if not toks:
        return {"score": EMPTY_SCORE, "n_words": float(n), "coverage": 0.0, "off_topic": 0.0,
                "repetition": 0.0, "disfluency": 1.0}
    present = set(toks)
    facts = demo["facts"]
    coverage = sum(FACT_WEIGHTS[f] * max(sum(k in present for k in keys) / max(len(keys), 1)
                                         for keys in facts[f]) for f in FACTS)
    coverage /= sum(FACT_WEIGHTS.values())

    allowed = _post_words(record["input_text"]) | {
        k for f in FACTS for keys in facts[f] for k in keys}
    topical = [w for w in toks if w in g.topical_words()]
    off_topic = sum(w not in allowed for w in topical) / max(len(topical), 1)

    triples = list(zip(toks, toks[1:], toks[2:], strict=False))
    triple_rep = (len(triples) - len(set(triples))) / len(triples) if triples else 0.0
    content = [w for w in toks if w not in g.STOPWORDS]
    overused = sum(max(c - 2, 0) for c in Counter(content).values()) / max(len(content), 1)
    repetition = max(triple_rep, overused)
    pairs = list(zip(toks, toks[1:], strict=False))
    licensed = g.licensed_bigrams()
    disfluency = sum(p not in licensed for p in pairs) / len(pairs) if pairs else 0.0

    over = max(0, n - (int(demo["word_limit"]) - 1))
    score = (COVERAGE_POINTS * coverage
             - OFF_TOPIC_POINTS * off_topic
             - VERBOSITY_POINTS * max(0, n - CRISP_WORDS)
             - (OVER_LIMIT_POINTS + OVER_LIMIT_PER_WORD * over if over else 0.0)
             - REPETITION_POINTS * repetition
             - DISFLUENCY_POINTS * disfluency
             - (TOO_SHORT_POINTS if n < TOO_SHORT_WORDS else 0.0))
    return {"score": round(score, 6), "n_words": float(n), "coverage": coverage,
            "off_topic": off_topic, "repetition": repetition, "disfluency": disfluency}


@lru_cache(maxsize=4096)
def _post_words(text: str) -> frozenset[str]:
    return frozenset(g.words(text))


def gold_score(record: dict, summary: str) -> float:
    """The hidden gold annotator: higher is better. At most 3 (every fact, 12 words or
    fewer, nothing wrong); an empty summary gets -6, long word salad goes lower still."""
    return gold_breakdown(record, summary)["score"]


def label_probability(gold_0: float, gold_1: float) -> float:
    """P(a labeller prefers candidate_1): Bradley-Terry on the gold scores."""
    return 1.0 / (1.0 + math.exp(-(gold_1 - gold_0) / BT_TEMPERATURE))


def noise_ceiling(probabilities: list[float]) -> float:
    """The best expected accuracy any reward model can reach on labels drawn with these
    probabilities: it predicts the likelier label of each pair, right with max(p, 1-p)."""
    return sum(max(p, 1 - p) for p in probabilities) / max(len(probabilities), 1)


def chosen_probability(record: dict) -> float:
    """P(a labeller prefers the record's chosen candidate, candidate_{choice}): what a
    reward model's expected accuracy is computed from (`reward.expected_agreement`)."""
    p1 = label_probability(gold_score(record, record["candidate_0"]),
                           gold_score(record, record["candidate_1"]))
    return p1 if record["choice"] == 1 else 1.0 - p1


# -- preference pairs --------------------------------------------------------------------

# Most pairs differ in one or two quality dimensions (informative, like comparing two
# samples of one policy); a few are rephrasings of equal quality (labels near coin flips).
MUTATIONS = {"vague": 0.28, "restore": 0.1, "filler": 0.2, "repeat": 0.12, "copy": 0.1,
             "offtopic": 0.08, "rephrase": 0.12}


def base_spec(rng: random.Random) -> Spec:
    vague = frozenset([rng.choice(FACTS)]) if rng.random() < 0.4 else frozenset()
    filler = rng.choices([0, 1, 2], [0.6, 0.3, 0.1])[0]
    return Spec(vague, filler, 1 if rng.random() < 0.08 else 0)


def mutate(spec: Spec, rng: random.Random) -> Spec:
    """`spec` changed along one dimension."""
    what = rng.choices(list(MUTATIONS), list(MUTATIONS.values()))[0]
    stated = [f for f in FACTS if f not in spec.vague]
    if what == "restore" and not spec.vague:
        what = "vague"
    if what == "vague" and len(stated) > 1:
        return replace(spec, vague=spec.vague | {rng.choice(stated)})
    if what == "restore":
        return replace(spec, vague=spec.vague - {rng.choice(sorted(spec.vague))})
    if what == "repeat" and spec.repeat < 2:
        return replace(spec, repeat=spec.repeat + 1)
    if what in ("copy", "offtopic"):
        return replace(spec, kind=what)
    if what == "rephrase":
        return spec
    return replace(spec, filler=spec.filler + rng.choice([1, 2]) if spec.filler < 2
                   else spec.filler - 2)


def make_pair(post: Post, rng: random.Random, other: Post) -> dict:
    """A preference record: two candidates of `post` and a noisy label."""
    a = base_spec(rng)
    b = mutate(a, rng)
    if rng.random() < 0.3:
        b = mutate(b, rng)
    texts = [render(post, a, rng, other), render(post, b, rng, other)]
    for _ in range(10):
        if texts[0] != texts[1]:
            break
        texts[1] = render(post, b, rng, other)
    if rng.random() < 0.5:
        texts.reverse()
    rec = post.record()
    gold = [gold_score(rec, t) for t in texts]
    p1 = label_probability(*gold)
    choice = int(rng.random() < p1)
    # chosen_probability: what a reward model's expected accuracy and the labels' noise
    # ceiling are computed from (`reward.chosen_probabilities`), carried by the record so
    # the pipeline needs nothing from the demo world.
    return {"input_text": rec["input_text"], "candidate_0": texts[0], "candidate_1": texts[1],
            "choice": choice, "chosen_probability": p1 if choice == 1 else 1.0 - p1,
            "demo": rec["demo"]}


def pair_stats(records: list[dict]) -> dict[str, float]:
    """Noise ceiling and realised agreement of the labels with the noiseless preference."""
    probs, agree = [], []
    for r in records:
        g0, g1 = gold_score(r, r["candidate_0"]), gold_score(r, r["candidate_1"])
        probs.append(label_probability(g0, g1))
        if g0 != g1:
            agree.append(float(r["choice"] == int(g1 > g0)))
    return {"noise_ceiling": noise_ceiling(probs),
            "agreement": sum(agree) / max(len(agree), 1), "pairs": float(len(records))}


# -- the data sets -----------------------------------------------------------------------

@dataclass
class Config:
    """`rlhfkit demo data`: where to write, how many records, which seed."""

    output_dir: str
    seed: int = 0
    preference_size: int = DEFAULT_PREFERENCE_SIZE  # preference pairs
    prompt_size: int = DEFAULT_PROMPT_SIZE  # prompts for RL
    eval_size: int = DEFAULT_EVAL_SIZE  # eval prompts, each also a held-out preference pair


def stream(seed: int, name: str) -> random.Random:
    """An independent random stream per purpose (str seeds hash with SHA-512: stable
    across runs and Python versions, unlike hash())."""
    return random.Random(f"rlhfkit-demo/{seed}/{name}")


def make_posts(n: int, rng: random.Random, prefix: str, exclude: set[str] | None = None
               ) -> list[Post]:
    """`n` distinct posts (none whose text is in `exclude`)."""
    seen = set(exclude or ())
    posts: list[Post] = []
    while len(posts) < n:
        post = make_post(rng, f"{prefix}-{len(posts):05d}")
        if post.text not in seen:
            seen.add(post.text)
            posts.append(post)
    return posts


def generate(cfg: Config) -> dict[str, list[dict]]:
    """The three data sets of the world, from disjoint posts of one distribution."""
    sizes = {"preference": cfg.preference_size, "prompt": cfg.prompt_size,
             "eval": cfg.eval_size}
    for name, n in sizes.items():
        if n < 0:
            from rlhfkit.errors import RlhfkitError
            raise RlhfkitError(f"--{name}-size must be >= 0, got {n}")
    posts = make_posts(sum(sizes.values()), stream(cfg.seed, "posts"), f"s{cfg.seed}")
    others = make_posts(200, stream(cfg.seed, "off-topic"), "other")  # off-topic sources
    rng = stream(cfg.seed, "pairs")
    out: dict[str, list[dict]] = {}
    start = 0
    for name, n in sizes.items():
        part = posts[start:start + n]
        start += n
        if name == "prompt":
            out[name] = [p.record() for p in part]
            continue
        out[name] = []
        for p in part:
            other = rng.choice([o for o in others[:40] if o.topic != p.topic])
            others.append(others.pop(others.index(other)))  # rotate the pool
            out[name].append(make_pair(p, rng, other))
    return out


def run(cfg: Config) -> dict:
    """Write preference.jsonl, prompt.jsonl, eval.jsonl, world.json and README.md into
    `cfg.output_dir` (each atomically); return world.json's content."""
    from rlhfkit.io import atomic_write_json, atomic_write_jsonl, atomic_write_text

    data = generate(cfg)
    pref, ev = pair_stats(data["preference"]), pair_stats(data["eval"])
    world = {
        "instruction": DEMO_INSTRUCTION, "word_limit": WORD_LIMIT, "seed": cfg.seed,
        "sizes": {k: len(v) for k, v in data.items()},
        "noise_ceiling_preference": round(pref["noise_ceiling"], 4),
        "noise_ceiling_eval": round(ev["noise_ceiling"], 4),
        "agreement_preference": round(pref["agreement"], 4),
        "agreement_eval": round(ev["agreement"], 4),
        "bt_temperature": BT_TEMPERATURE,
    }
    out = Path(cfg.output_dir)
    for name, records in data.items():
        atomic_write_jsonl(out / f"{name}.jsonl", records)
    atomic_write_json(out / "world.json", world)
    atomic_write_text(out / "README.md", _readme(world))
    return world


def _readme(w: dict) -> str:
    s = w["sizes"]
    return f"""# rlhfkit demo world (seed {w['seed']})

Synthetic Reddit-like posts with candidate summaries, written by `rlhfkit demo data`.
Same formats as the DeepLearning.AI RLHF course; every record also carries a `demo` key
(post id, topic, key facts, word limit) that the hidden gold annotator
(`rlhfkit.demo.gold_score`) reads, and every pair its `chosen_probability` (the chance a
labeller prefers the chosen candidate), from which the pipeline reports the reward model's
expected accuracy and the labels' noise ceiling.

| file | records | content |
| --- | --- | --- |
| preference.jsonl | {s['preference']} | input_text, candidate_0, candidate_1, choice, chosen_probability |
| prompt.jsonl | {s['prompt']} | input_text |
| eval.jsonl | {s['eval']} | input_text + a held-out preference pair (as Vertex >= 2.11) |

- instruction: `{w['instruction']}` (pass it as the pipeline's `instruction`)
- labels: Bradley-Terry on the gold scores, temperature {w['bt_temperature']}; they agree
  with the noiseless preference on {w['agreement_preference']:.1%} of preference pairs
  ({w['agreement_eval']:.1%} on eval).
- noise ceiling (best expected accuracy of any reward model, mean of max(p, 1 - p)):
  preference {w['noise_ceiling_preference']:.3f}, eval {w['noise_ceiling_eval']:.3f}.
  A reward model's held-out accuracy is judged against the eval ceiling.

The gold annotator prefers concise, on-topic summaries that state who is involved, what
happened and what the poster asks, within the word limit; it penalises rambling, missing
facts, off-topic text, repetition and word salad.
"""
