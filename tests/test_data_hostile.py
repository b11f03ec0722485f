"""Hostile dataset files: every one gives `path:line: message` and a non-zero exit, never a
traceback and never a hang (issue 9, section 2). Each case crashed or hung before."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rlhfkit.data import load_dataset, prompt_text
from rlhfkit.errors import DataError, RlhfkitError


def write(path: Path, raw: bytes | str) -> str:
    path.write_bytes(raw.encode() if isinstance(raw, str) else raw)
    return str(path)


def problems_of(spec: str, kind: str = "prompt") -> list[str]:
    with pytest.raises(DataError) as err:
        load_dataset(spec, kind)
    return err.value.problems


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhfkit", *args], capture_output=True,
                          text=True, timeout=timeout)


# One line each: the file's bytes (line 2 is the bad one) and the words of the message.
HOSTILE = {
    "deep_nesting": ('{"input_text": ' + "[" * 50_000 + "]" * 50_000 + "}",
                     "refused: nested too deeply"),
    "just_under_the_decoder_limit": ('{"input_text": "a", "x": ' + "[" * 900 + "]" * 900 + "}",
                                     "refused: nested too deeply"),
    "huge_integer": ('{"input_text": "a", "n": ' + "9" * 5000 + "}",
                     "refused: an integer with 5,000 digits"),
    "nan": ('{"input_text": "a", "choice": NaN}', "refused: NaN is not valid JSON"),
    "lone_surrogate": ('{"input_text": "a\\ud800b"}', "unpaired UTF-16 surrogate (\\ud800)"),
    "surrogate_in_key": ('{"input_text": "a", "\\udfff": 1}', "unpaired UTF-16 surrogate"),
    "escaped_nul": ('{"input_text": "a\\u0000b"}', "NUL character"),
    "raw_nul_byte": ('{"input_text": "a\x00b"}', "invalid JSON: Invalid control character"),
    "nul_outside_strings": ('{"input_text": "a"}\x00', "invalid JSON: Extra data"),
    "escape_sequence": ('{"input_text": "a\\u001b[2Jb"}',
                        "input_text contains the control character U+001B"),
    "control_in_chat": ('{"messages": [{"author": "user", "content": "a\\u0007"}]}',
                        "messages[0].content contains the control character U+0007"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_line_is_one_clear_problem(tmp_path, name):
    raw, words = HOSTILE[name]
    path = write(tmp_path / "p.jsonl", '{"input_text": "ok"}\n' + raw + "\n")
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}:2: ") and words in problem, problem
    problem.encode("utf-8")  # printable: no lone surrogate leaks into the message


def test_hostile_json_array_file(tmp_path):
    path = write(tmp_path / "p.json", '[{"input_text": "ok"},\n {"input_text": "\\ud800"}]')
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}:2: refused: a string contains an unpaired"), problem
    path = write(tmp_path / "q.json", "[" * 5000 + "]" * 5000)
    assert problems_of(path)[0].startswith(f"{path}: refused: nested too deeply")


@pytest.mark.parametrize("make", ["fifo", "dir_with_fifo", "glob_with_fifo", "char_device"])
def test_non_regular_files_are_refused_without_opening(tmp_path, make):
    fifo = tmp_path / "d" / "x.jsonl"
    fifo.parent.mkdir()
    os.mkfifo(fifo)  # nobody writes: opening it for reading would block forever
    spec = {"fifo": str(fifo), "dir_with_fifo": str(fifo.parent),
            "glob_with_fifo": str(fifo.parent / "*.jsonl"), "char_device": "/dev/zero"}[make]
    shown = "/dev/zero" if make == "char_device" else str(fifo)
    kind = "a character device" if make == "char_device" else "a named pipe (FIFO)"
    with pytest.raises(RlhfkitError, match="^" + re.escape(f"{shown}: is {kind}, not a regular")):
        load_dataset(spec, "prompt")


def test_paths_that_are_empty_or_hold_nul():
    with pytest.raises(RlhfkitError, match="no dataset given"):
        load_dataset("", "prompt")
    with pytest.raises(RlhfkitError, match=r"^a\\x00b: a path cannot contain a NUL byte"):
        load_dataset("a\0b", "prompt")


def test_cli_validate_inspect_and_run_on_a_hostile_file(tmp_path):
    """Through the real CLI: validate and inspect exit 1 with path:line and no traceback
    (the lone surrogate used to pass validate, then crash inspect and run); a FIFO given
    to validate ends at once instead of hanging."""
    bad = write(tmp_path / "p.jsonl", '{"input_text": "x\\ud800"}\n' + HOSTILE["deep_nesting"][0])
    fifo = tmp_path / "f.jsonl"
    os.mkfifo(fifo)
    for args in (["data", "validate", bad], ["data", "validate", str(fifo)]):
        res = cli(*args, timeout=30)
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    res = cli("data", "validate", bad)
    assert f"{bad}:1: refused: a string contains an unpaired" in res.stderr
    assert f"{bad}:2: refused: nested too deeply" in res.stderr
    res = cli("data", "inspect", bad)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert "0 records" in res.stderr


def test_inspect_shows_control_characters_escaped(tmp_path):
    from rlhfkit.data_tools import inspect_record

    path = write(tmp_path / "p.jsonl", json.dumps({"input_text": "a\x1b]0;pwned\x07b\tc"}))
    shown = inspect_record(path, 0)
    assert "\x1b" not in shown and "\x07" not in shown
    assert "a\\x1b]0;pwned\\x07b\tc" in shown


# -- TRL's implicit-prompt records ------------------------------------------------------------

@pytest.mark.parametrize("chosen,rejected,prompt,c,r", [
    # Divergence right after a space: the space goes to the completions (as TRL).
    ("Q: sky? A: blue", "Q: sky? A: green", "Q: sky? A:", " blue", " green"),
    # Divergence mid-word ("bl|ue" / "bl|ack"): back to the word boundary, unlike TRL.
    ("The sky is blue", "The sky is black", "The sky is", " blue", " black"),
    # Punctuation after a shared word ("blue|." / "blue|,") is not a boundary either.
    ("It is blue.", "It is blue, really", "It is", " blue.", " blue, really"),
    # Newlines are boundaries; only a single space moves.
    ("Human: hi\n\nAssistant:\nYes", "Human: hi\n\nAssistant:\nNo", "Human: hi\n\nAssistant:\n",
     "Yes", "No"),
])
def test_trl_implicit_prompt_strings(tmp_path, chosen, rejected, prompt, c, r):
    path = write(tmp_path / "t.jsonl", json.dumps({"chosen": chosen, "rejected": rejected}))
    [rec] = load_dataset(path, "preference")
    assert rec == {"input_text": prompt, "candidate_0": c, "candidate_1": r, "choice": 0}
    assert prompt_text(rec, None) + rec["candidate_0"] == chosen  # nothing lost or added


def test_trl_implicit_prompt_conversations_and_failures(tmp_path):
    user = {"role": "user", "content": "Sky?"}
    blue, green = ({"role": "assistant", "content": t} for t in ("Blue.", "Green."))
    path = write(tmp_path / "t.jsonl", "\n".join(json.dumps(x) for x in [
        {"chosen": [user, blue], "rejected": [user, green]},
        # TRL re-extracts when a string prompt sits next to conversational completions.
        {"prompt": "Sky?", "chosen": [user, blue], "rejected": [user, green]},
    ]))
    a, b = load_dataset(path, "preference")
    assert a == {"messages": [user], "candidate_0": "Blue.", "candidate_1": "Green.",
                 "choice": 0}
    assert b["messages"] == [user] and b["choice"] == 1
    path = write(tmp_path / "bad.jsonl", "\n".join(json.dumps(x) for x in [
        {"chosen": "Blue", "rejected": "Green"},  # nothing shared
        {"chosen": "Blue sky", "rejected": "Blue sky"},  # the same text twice
        {"chosen": "x y", "rejected": ["z"]},
    ]))
    problems = problems_of(path, "preference")
    assert [p.split(": ", 1)[0] for p in problems] == [f"{path}:{i}" for i in (1, 2, 3)]
    assert "share no prompt" in problems[0] and "identical" in problems[1]
    assert "both be strings or both be message lists" in problems[2]
