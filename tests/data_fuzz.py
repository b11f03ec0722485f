"""Hypothesis strategies and the property for fuzzing the dataset loader and validator
(issue 9 §2): whatever the bytes of a dataset file, reading, validating, inspecting and
summarising it either works or raises the project's own error type (`RlhfkitError`, one
line per problem), and never hangs.

Shared by tests/test_data_fuzz.py (a few hundred examples in `make test`) and
benchmarks/fuzz_data.py (10,000+ examples, reporting escapes, hangs and wall time).
"""

from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path

from hypothesis import strategies as st
from rich.console import Console

from rlhfkit import data_tools
from rlhfkit.data import KINDS, load_checked, prompt_text
from rlhfkit.errors import RlhfkitError

# Valid records of every shape the loader reads: the course's prompt, preference and eval
# records, Vertex's and the role form of chat messages, TRL's explicit and implicit prompts.
SEEDS = [
    {"input_text": "Summarize this post. [summary]: "},
    {"input_text": "A post", "candidate_0": "one", "candidate_1": "two", "choice": 1},
    {"messages": [{"author": "user", "content": "hi"}], "context": "be brief"},
    {"messages": [{"author": "user", "content": "a"}, {"author": "assistant", "content": "b"},
                  {"author": "user", "content": "c"}],
     "candidate_0": "x", "candidate_1": "y", "choice": 0},
    {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]},
    {"prompt": "Q: 2+2?", "chosen": " 4", "rejected": " 5"},
    {"chosen": "Q: 2+2? A: 4", "rejected": "Q: 2+2? A: 5"},
    {"prompt": [{"role": "user", "content": "q"}],
     "chosen": [{"role": "assistant", "content": "a"}],
     "rejected": [{"role": "assistant", "content": "b"}]},
]
KEYS = sorted({k for rec in SEEDS for k in rec} | {"author", "role", "content", "inputs",
                                                  "prediction", "chosen_probability"})
# Characters that broke something once: NUL, ESC, BEL, lone surrogates, BOM, line and
# paragraph separators, Rich markup brackets, a NEL and a C1 control.
NASTY = "\x00\x1b\x07\ud800\udfff\ufeff\u2028\u2029[]/\x85\x9b\"\\\n\r\t"
HANG_SECONDS = 10.0  # one example taking this long counts as a hang


def _text(max_size: int = 20):
    # A list joined rather than st.text(alphabet=...): Hypothesis folds an alphabet into
    # character intervals and drew a surrogate once in 300 strings that way.
    chars = st.one_of(st.characters(codec=None), st.sampled_from(NASTY), st.characters())
    return st.lists(chars, max_size=max_size).map("".join)


def json_values(max_leaves: int = 20):
    """Arbitrary JSON-ish values, including what Python's encoder emits but JSON forbids
    (NaN, Infinity), huge integers and lone surrogates (written as escapes)."""
    leaves = (st.none() | st.booleans() | st.integers() | st.floats()
              | st.integers(min_value=10**150, max_value=10**200) | _text())
    return st.recursive(leaves, lambda kids: st.lists(kids, max_size=4)
                        | st.dictionaries(st.sampled_from(KEYS) | _text(8), kids, max_size=4),
                        max_leaves=max_leaves)


def _strings(value, path=()):
    """(path, text) of every string inside a JSON value."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, (*path, i))


def _set(value, path, new):
    for step in path[:-1]:
        value = value[step]
    value[path[-1]] = new


@st.composite
def mutated_records(draw, seed: dict | None = None):
    """A valid record (of `seed`'s shape when given) with 0-3 mutations: text spliced into
    a string (most stay valid, so the accepting path is explored too), a key dropped, a
    value replaced by an arbitrary one, a key added."""
    rec = json.loads(json.dumps(seed if seed is not None else draw(st.sampled_from(SEEDS))))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["splice", "splice", "drop", "replace", "add"]))
        # Splicing into a role name only ever tests the role check; content is the target.
        strings = [(p, t) for p, t in _strings(rec) if p[-1] not in ("role", "author")]
        if op == "splice" and strings:
            path, text = draw(st.sampled_from(strings))
            at = draw(st.integers(0, len(text)))
            _set(rec, path, text[:at] + draw(_text(6)) + text[at:])
        elif op == "drop" and rec:
            rec.pop(draw(st.sampled_from(sorted(rec))))
        elif op == "replace" and rec:
            rec[draw(st.sampled_from(sorted(rec)))] = draw(json_values(6))
        else:
            rec[draw(st.sampled_from(KEYS) | _text(6))] = draw(json_values(6))
    return rec


def _line(value) -> bytes:
    # ensure_ascii writes lone surrogates as \\udXXX escapes, as a hostile file would.
    return json.dumps(value, ensure_ascii=True, allow_nan=True).encode()


@st.composite
def dataset_files(draw) -> bytes:
    """The bytes of a dataset file: arbitrary bytes, JSON lines of arbitrary values or
    mutated records, a JSON array, or valid lines with a byte-level mutation."""
    shape = draw(st.sampled_from(["bytes", "values", "records", "records", "array", "byteflip"]))
    if shape == "bytes":
        return draw(st.binary(max_size=300))
    if shape == "values":
        return b"\n".join(_line(v) for v in draw(st.lists(json_values(), max_size=4)))
    seed = draw(st.sampled_from(SEEDS))  # one shape per file, as real files are
    records = draw(st.lists(mutated_records(seed), min_size=1, max_size=3))
    if shape == "array":
        return _line(records)
    raw = b"\n".join(_line(r) for r in records)
    if shape == "byteflip" and raw:
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + draw(st.binary(min_size=0, max_size=4)) + raw[at + 1:]
    prefix = draw(st.sampled_from([b"", b"\xef\xbb\xbf", b"\n\n"]))
    return prefix + raw + draw(st.sampled_from([b"", b"\n", b"\r\n", b"\x00"]))


class Hang(Exception):
    """An example ran past HANG_SECONDS."""


def _on_alarm(signum, frame):
    raise Hang(f"no answer within {HANG_SECONDS:g} s")


def exercise(path: Path, raw: bytes, kind: str | None) -> str:
    """Write `raw` to `path`, then read it the ways the CLI does. Returns "ok" or
    "refused"; any other exception (or a Hang) escapes to the caller."""
    path.write_bytes(raw)
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)
    try:
        try:
            loaded = load_checked(str(path), kind)
        except RlhfkitError as err:
            assert str(err).strip(), "an error with no message"
            return "refused"
        # What validation accepted must survive every later use: UTF-8, JSON, the prompt
        # layout, inspect and stats (surrogates once passed here and crashed there).
        for rec in loaded.records:
            json.dumps(rec, ensure_ascii=False).encode("utf-8")
            if "input_text" in rec or "messages" in rec:
                prompt_text(rec, "Summarize.").encode("utf-8")
        table, lines = data_tools.stats(str(path), kind)  # `rlhfkit data stats`
        Console(file=io.StringIO(), width=100).print(table, *lines)
        data_tools.inspect_record(str(path), 0).encode("utf-8")
        return "ok"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def kinds():
    return st.sampled_from([None, *KINDS])


assert os.name == "posix", "the hang check uses SIGALRM"
