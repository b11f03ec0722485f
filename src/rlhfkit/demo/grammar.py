"""The demo world's lexicon: topics, people, events, questions and the phrases around them.

Everything the demo world writes (posts and summaries) is expanded from the templates in
this file by `expand`: `{slot}` is replaced by the slot's value in an environment (a string,
or a list to choose from), recursively. Phrases are written lower-case first; sentence
starts are capitalised afterwards (`capitalise`), so a phrase can open a sentence or sit
inside one.

Because every text comes from these templates, the gold annotator can tell grammatical text
from word salad exactly: `licensed_bigrams()` enumerates every word pair the grammar can
produce (see world.py, fluency). So: never glue a slot to letters (`{role}'s`), or the
word-level analysis breaks (tests/test_demo_world.py checks this).

Per topic: `roles` ("name:genders", m/f/n=they/x=it), `intros`, `backgrounds` and
`aftermaths` (filler sentences), `events` and `asks` as (post variants, summary variants).
Events are predicates whose subject is the role ("forgot my birthday"); asks are questions
without the question mark. The summary variants define the key facts: their content words.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from functools import lru_cache

from rlhfkit.demo.topics import TOPIC_DATA

# -- generic phrases (any topic) ---------------------------------------------------------

OPENERS = [
    "throwaway for obvious reasons.", "long time lurker, first time posting.",
    "sorry for formatting, I am on mobile.", "not sure if this is the right sub, but here goes.",
    "I need some outside perspective on this.", "okay, this might be a weird one.",
    "first post here, please be nice.", "I have never posted anything like this before.",
]
WHENS = ["last week", "two days ago", "yesterday", "over the weekend", "a few days ago",
         "last month", "this morning", "on friday", "last night", "earlier this week"]
DURATIONS = ["six months", "eight months", "a year", "two years", "three years", "four years",
             "five years", "ten years"]
FEELINGS = ["hurt", "confused", "angry", "embarrassed", "anxious", "frustrated", "lost",
            "stressed", "upset", "overwhelmed", "exhausted", "sad"]
FEELING_UNITS = [
    "I feel {feeling} and I do not know what to think.",
    "honestly I am {feeling} about the whole thing.",
    "I have been {feeling} ever since.",
    "part of me is {feeling}, part of me just wants to forget it.",
    "I am trying to stay calm but I am really {feeling}.",
    "I barely slept last night because I am so {feeling}.",
]
ASK_LEADS = ["", "", "so, reddit, ", "my question is this: ", "I guess what I am asking is, ",
             "anyway, ", "so here is my question. ", "long story short, "]
CLOSERS = ["thanks in advance.", "any advice is appreciated.", "thanks for reading."]
EVENT_UNITS = [
    "{when}, {subj} {ev_post}.",
    "then {when} {subj} {ev_post}.",
    "{when} {subj} {ev_post}.",
    "so {when} {subj} {ev_post}, and I did not see it coming.",
    "here is the problem: {when} {subj} {ev_post}.",
]
ROLE_INTROS = ["my {role}", "my {role}", "my {role} ({other_tag})"]

# Summaries. {who} "my boyfriend", {ev} "forgot my birthday", {ask} "should I leave him".
SUMMARY_TEMPLATES = [
    "{who} {ev}. {ask}?",
    "{me} here, {who} {ev}. {ask}?",
    "{who} {ev}, {ask}?",
    "{ask} now that {who} {ev}?",
    "{who} {ev} and I feel {feeling}. {ask}?",
    "after {duration}, {who} {ev}. {ask}?",
    "{me}: {who} {ev}; {ask}?",
    "{who} {ev} {when}. {ask}?",
]
VAGUE_WHO = ["someone close to me", "this person", "somebody I know", "someone in my life"]
VAGUE_EVENTS = ["did something that upset me", "did something I did not expect",
                "did something weird", "made a choice I did not like",
                "and I had a problem", "did a thing that bothered me"]
VAGUE_ASKS = ["what should I do", "any advice", "what do I do now", "thoughts",
              "help me out here", "what would you do"]
# Rambling: openers, tails and asides that add words but no information.
FILLER_PREFIXES = ["so basically, ", "long story short, ", "okay so this is kind of a lot but ",
                   "not sure how to say this but ", "I will try to keep this short but ",
                   "this is hard to explain but "]
FILLER_SUFFIXES = [
    "it has honestly been on my mind all week.", "I really do not know what to think anymore.",
    "sorry, it is kind of a long story.", "anyway, that is the gist of it.",
    "there is a lot more to it but that is the main thing.",
    "I keep going back and forth on it.", "it is complicated, I know.",
]
FILLER_ASIDES = [", which honestly came out of nowhere", ", and it was a whole thing",
                 ", if that makes sense", ", which I still cannot believe"]

ME_TAGS = [f"{age}{g}" for age in range(18, 46) for g in "FM"]
PRONOUNS = {  # sub, obj, pos, is, has, was
    "m": ("he", "him", "his", "is", "has", "was"),
    "f": ("she", "her", "her", "is", "has", "was"),
    "n": ("they", "them", "their", "are", "have", "were"),
    "x": ("it", "it", "its", "is", "has", "was"),
}
PRONOUN_SLOTS = ("sub", "obj", "pos", "is", "has", "was")


@dataclass(frozen=True)
class Phrase:
    """An event or a question: how posts tell it, and how a summary can state it. `heads[i]`
    is the part of `posts[i]` a summary can copy word for word."""

    posts: list[str]
    shorts: list[str]
    heads: list[str]

    @property
    def statements(self) -> list[str]:
        """Every way a summary can state it (its key facts are their content words)."""
        return list(dict.fromkeys(self.shorts + self.heads))


def _phrase(posts: str, shorts: str) -> Phrase:
    """Variants separated by ' | '; ' / ' ends a post variant's head."""
    short_list = [v.strip() for v in shorts.split("|")]
    plain, heads = [], []
    for v in (v.strip() for v in posts.split("|")):
        if " / " in v:
            head = v.split(" / ")[0]
        else:
            prefixes = [s for s in short_list if (v + " ").startswith(s + " ")]
            head = max(prefixes, key=len) if prefixes else v
        plain.append(v.replace(" / ", " "))
        heads.append(head)
    return Phrase(plain, short_list, heads)


@dataclass(frozen=True)
class Topic:
    name: str
    roles: list[str]
    intros: list[str]
    backgrounds: list[str]
    aftermaths: list[str]
    events: list[Phrase]
    asks: list[Phrase]
    role_intros: list[str] = field(default_factory=lambda: ROLE_INTROS)
    vague_who: list[str] = field(default_factory=lambda: VAGUE_WHO)
    tagged: bool = True  # people of this topic get an age tag like (26M)


TOPICS: list[Topic] = [Topic(**{**d, "events": [_phrase(*e) for e in d["events"]],
                                "asks": [_phrase(*a) for a in d["asks"]]}) for d in TOPIC_DATA]
TOPIC_BY_NAME = {t.name: t for t in TOPICS}

# -- the template engine ------------------------------------------------------------------

_SLOT = re.compile(r"\{(\w+)\}")


def expand(template: str, env: dict, rng: random.Random) -> str:
    """Replace every {slot} by env[slot] (a list is a choice), recursively."""
    def one(m: re.Match) -> str:
        value = env[m.group(1)]
        if isinstance(value, list):
            value = rng.choice(value)
        return expand(value, env, rng)
    return _SLOT.sub(one, template)


def capitalise(text: str) -> str:
    """Upper-case the first letter of the text and of every sentence in it."""
    return re.sub(r"(^|[.?!]\s+|\n\s*)([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)


def role_env(role: str, gender: str) -> dict[str, str]:
    return {"role": role, **dict(zip(PRONOUN_SLOTS, PRONOUNS[gender], strict=True))}


# -- words ---------------------------------------------------------------------------------

STOPWORDS = frozenset("""
i me my mine we our us you your he him his she her they them their it its a an the and or but
so to of in on at for with from by about as into is are was were be been being am has have had
do does did should would could can will how what that this these those there here then than
just not no if all any some i'm it's don't really very too also now""".split())
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")
_DIGITS = re.compile(r"[0-9]+")


def words(text: str) -> list[str]:
    """Lower-case word tokens; digit runs become 0 so '24F' and '31F' are the same word."""
    return _WORD.findall(_DIGITS.sub("0", text.lower()))


def content_words(text: str) -> list[str]:
    return [w for w in words(text) if w not in STOPWORDS]


# -- what the grammar can say: slot universes and licensed word pairs --------------------

def universe() -> dict[str, list[str]]:
    """Every value each slot can take anywhere in the world (union over topics)."""
    u: dict[str, set[str]] = {k: set() for k in (
        "role", "role_intro", "other_tag", "ev_post", "ev", "ask_post", "ask", "who", "subj")}
    for t in TOPICS:
        u["role"].update(r.split(":")[0] for r in t.roles)
        u["role_intro"].update(t.role_intros)
        u["ev_post"].update(p for e in t.events for p in e.posts)
        u["ev"].update(s for e in t.events for s in e.statements)
        u["ask_post"].update(p for a in t.asks for p in a.posts)
        u["ask"].update(s for a in t.asks for s in a.statements)
        u["who"].update(t.vague_who)
    u["ev"].update(VAGUE_EVENTS)
    u["ask"].update(VAGUE_ASKS)
    u["who"].update(["my {role}", "my {role} ({other_tag})"])
    u["subj"].update(["my {role}", "{sub}"])
    u["other_tag"].update(ME_TAGS)
    out = {k: sorted(v) for k, v in u.items()}
    out.update(when=WHENS, duration=DURATIONS, feeling=FEELINGS, me=ME_TAGS,
               pet_age=PET_AGES, device_adj=DEVICE_ADJS)
    for i, slot in enumerate(PRONOUN_SLOTS):
        out[slot] = sorted({p[i] for p in PRONOUNS.values()})
    return out


PET_AGES = ["two year", "five year", "ten month", "one year"]
DEVICE_ADJS = ["new", "refurbished", "secondhand", "cheap", "expensive"]


def top_level_units() -> list[str]:
    """Every template that is put next to another one when texts are assembled."""
    units = [*OPENERS, *FEELING_UNITS, *CLOSERS, *EVENT_UNITS, *SUMMARY_TEMPLATES,
             *FILLER_PREFIXES, *FILLER_SUFFIXES, *FILLER_ASIDES, "{ask}?", "{ev}",
             *(lead + "{ask_post}?" for lead in ASK_LEADS)]
    for t in TOPICS:
        units += [*t.intros, *t.backgrounds, *t.aftermaths]
    return units


@lru_cache(maxsize=1)
def licensed_bigrams() -> frozenset[tuple[str, str]]:
    """All adjacent word pairs the grammar can produce, as `words()` sees them.

    Inside a template the pairs follow from its slots' universes; between two assembled
    units (sentences, fillers, repeated phrases) any unit's last word may meet any unit's
    first word.
    """
    uni = universe()
    memo: dict[str, tuple[frozenset, frozenset, frozenset, bool]] = {}

    def analyse(template: str) -> tuple[frozenset, frozenset, frozenset, bool]:
        """(first words, last words, inner pairs, can be empty) of a template."""
        if template in memo:
            return memo[template]
        memo[template] = (frozenset(), frozenset(), frozenset(), True)  # cycle guard
        first: set = set()
        last: set = set()
        pairs: set = set()
        empty = True
        for piece in re.split(r"(\{\w+\})", template):
            if not piece:
                continue
            m = _SLOT.fullmatch(piece)
            if m:
                f, la, pr, e = set(), set(), set(), False
                for value in uni[m.group(1)]:
                    vf, vl, vp, ve = analyse(value)
                    f |= vf
                    la |= vl
                    pr |= vp
                    e = e or ve
            else:
                ws = words(piece)
                f, la, e = set(ws[:1]), set(ws[-1:]), not ws
                pr = set(zip(ws, ws[1:], strict=False))
            pairs |= pr | {(a, b) for a in last for b in f}
            if empty:
                first |= f
            last = la | (last if e else set())
            empty = empty and e
        memo[template] = (frozenset(first), frozenset(last), frozenset(pairs), empty)
        return memo[template]

    firsts: set = set()
    lasts: set = set()
    pairs: set = set()
    for unit in top_level_units():
        f, la, pr, _ = analyse(unit)
        firsts |= f
        lasts |= la
        pairs |= pr
    pairs |= {(a, b) for a in lasts for b in firsts}
    return frozenset(pairs)


@lru_cache(maxsize=1)
def topical_words() -> frozenset[str]:
    """Content words of people, events and questions that belong to a few topics only
    ("landlord", "birthday"): a summary using one its post never mentions is talking about
    something else."""
    generic = set()
    for phrase in [*OPENERS, *FEELING_UNITS, *ASK_LEADS, *CLOSERS, *EVENT_UNITS,
                   *SUMMARY_TEMPLATES, *VAGUE_WHO, *VAGUE_EVENTS, *VAGUE_ASKS, *FILLER_PREFIXES,
                   *FILLER_SUFFIXES, *FILLER_ASIDES, *WHENS, *DURATIONS, *FEELINGS]:
        generic.update(content_words(phrase))
    in_topics: dict[str, int] = {}
    for t in TOPICS:
        texts = [*(r.split(":")[0] for r in t.roles),
                 *(p for e in t.events + t.asks for p in e.posts + e.statements)]
        for w in {w for text in texts for w in content_words(text)}:
            in_topics[w] = in_topics.get(w, 0) + 1
    return frozenset(w for w, n in in_topics.items() if n <= 3 and w not in generic)
