"""Datasets in the course's formats: read from anywhere, validate up front, render prompts.

Three kinds (DESIGN.md, "Input formats"):

- preference: `input_text` (or chat `messages`), `candidate_0`, `candidate_1`, `choice`
  (the integer 0 or 1: the index of the preferred candidate);
- prompt: `input_text` (or `messages`);
- eval: `input_text` (or `messages`); if any line also has the preference fields, every
  line must be a valid preference record and the set doubles as a held-out reward-model
  eval set (as Vertex does from release 2.11 on).

TRL-style records (`prompt`, `chosen`, `rejected`), TRL's implicit-prompt records
(`chosen` and `rejected` only, the prompt being their shared beginning) and TRL prompt-only
records (`prompt`) are converted to the course format on load, so every stage sees one
format. Chat records (`messages`, Vertex's `author` shape or the `role` shape) are checked
and rendered by rlhfkit.chat; files are parsed by rlhfkit.data_read, which refuses what a
plain JSON decoder would crash or hang on.

Validation reads every file completely and reports every problem as `path:line: message`
in one `DataError` before anything is returned: a typo on line 2,913 should cost seconds
at the start, not a crash an hour into training.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rlhfkit import chat, log
from rlhfkit.data_read import MAX_LINE_BYTES, json_type, read_lines
from rlhfkit.errors import DataError, RlhfkitError
from rlhfkit.io import expand_paths

__all__ = ["KINDS", "MAX_LINE_BYTES", "Loaded", "format_prompt", "has_preferences",
           "load_checked", "load_dataset", "prompt_text", "read_lines"]

KINDS = ("preference", "prompt", "eval")
PREFERENCE_KEYS = ("candidate_0", "candidate_1", "choice")
TRL_KEYS = ("chosen", "rejected")
TEXT_KEYS = ("input_text", "messages", "prompt")  # `prompt`: TRL, converted on load
BULK_INFERENCE_KEYS = {"inputs", "prediction"}
INSTRUCTION_SEPARATOR = "\n\n\n"  # what the course's eval_results files show


@dataclass
class Loaded:
    """A validated dataset and where it came from."""

    records: list[dict]
    paths: list[str]
    kind: str


# -- public API ---------------------------------------------------------------------------

def load_dataset(spec: str, kind: str) -> list[dict]:
    """Read and validate a dataset (file, directory, glob or fsspec URL) of `kind`.

    Returns the records in the course format, extra keys kept. Raises `DataError` listing
    every problem in every file, so nothing half-checked reaches a stage.
    """
    return load_checked(spec, kind).records


def load_checked(spec: str, kind: str | None = None) -> Loaded:
    """`load_dataset` that also infers the kind (None: preference fields on any line ->
    "preference", else "prompt") and says which files it read."""
    if kind is not None and kind not in KINDS:
        raise RlhfkitError(f"unknown dataset kind {kind!r}; expected one of {', '.join(KINDS)}")
    paths = expand_paths(spec)
    problems: list[str] = []
    parsed = [(path, read_lines(path, problems)) for path in paths]
    if kind is None:
        any_pref = any(_pref_keys(r) for _, lines in parsed for _, r in lines)
        kind = "preference" if any_pref else "prompt"

    lines: list[tuple[str, dict]] = []
    for path, file_lines in parsed:
        wrong = _wrong_kind(file_lines, kind)
        if wrong:
            problems.append(f"{path}: {wrong}")
        lines += [] if wrong else file_lines
    if lines:
        for path, file_lines in parsed:
            if not file_lines:
                log.warn(f"{path}: no records in this file")

    records = [_from_trl(where, rec, i, problems) for i, (where, rec) in enumerate(lines)]
    # An eval set either has no preference fields or is a full preference set.
    need_pref = kind == "preference" or (kind == "eval" and any(
        _pref_keys(r) for r in records if r is not None))
    for (where, _), rec in zip(lines, records, strict=True):
        if rec is None:
            continue
        _check_text(where, rec, problems)
        if need_pref:
            _check_preference(where, rec, problems, eval_set=kind == "eval")
    if not problems and not lines:
        problems.append(f"{spec}: no records (every file is empty or blank)")
    if problems:
        raise DataError(sorted(problems, key=lambda p: _position(p, paths)))
    return Loaded([r for r in records if r is not None], paths, kind)


def has_preferences(records: list[dict]) -> bool:
    """True when every record carries candidate_0, candidate_1 and choice (and there are
    records): an eval set that can also score the reward model."""
    return bool(records) and all(all(k in r for k in PREFERENCE_KEYS) for r in records)


def format_prompt(instruction: str | None, text: str) -> str:
    """THE one place the instruction is prepended: `instruction + "\\n\\n\\n" + text`,
    as in the course's eval files; `text` unchanged without an instruction."""
    return f"{instruction}{INSTRUCTION_SEPARATOR}{text}" if instruction else text


def prompt_text(record: dict, instruction: str | None, tokenizer=None) -> str:
    """THE one place a record becomes the model's input.

    `input_text`: `format_prompt(instruction, input_text)`. `messages`: rendered by
    `chat.render`: the tokenizer's chat template with a generation prompt when it has one,
    else Vertex's llama-2-chat layout; the system text is the row's `context`, else its
    leading system turn, else `instruction`.
    """
    if "input_text" in record:
        return format_prompt(instruction, record["input_text"])
    if "messages" not in record:
        raise ValueError("record has neither input_text nor messages (load it with load_dataset)")
    return chat.render(record, instruction, tokenizer)


def _position(problem: str, paths: list[str]) -> tuple[int, int]:
    """Sort key: file order, then line (file-level problems first); stable otherwise."""
    for i, path in enumerate(paths):
        if problem.startswith(path + ":"):
            line = re.match(r":(\d+):", problem[len(path):])
            return i, int(line.group(1)) if line else 0
    return len(paths), 0


# -- what kind of file is this? ---------------------------------------------------------------

def _pref_keys(rec: dict) -> bool:
    return any(k in rec for k in PREFERENCE_KEYS + TRL_KEYS)


def _wrong_kind(lines: list[tuple[str, dict]], kind: str) -> str | None:
    """One clear message for a file that is clearly not a `kind` dataset, instead of the
    same complaint on every line. "Clearly": not a single line has the fields."""
    if not lines:
        return None
    recs = [r for _, r in lines]
    if all(BULK_INFERENCE_KEYS <= r.keys() for r in recs):
        return ("looks like bulk-inference output (`inputs` and `prediction` on every line, "
                f"like eval_results_*.jsonl), not {_a(kind)} dataset; compare such files with "
                "`rlhfkit compare --tuned A.jsonl --untuned B.jsonl`")
    if not any(k in r for r in recs for k in TEXT_KEYS + TRL_KEYS):
        seen = sorted({k for r in recs for k in r})
        shown = ", ".join(seen[:8]) + (", ..." if len(seen) > 8 else "")
        return (f"no line has input_text or messages (keys seen: {shown}); "
                f"expected {_a(kind)} dataset")
    if kind == "preference" and not any(_pref_keys(r) for r in recs):
        return ("looks like a prompt dataset (no candidate_0/candidate_1/choice on any line); "
                "expected a preference dataset")
    return None


# -- TRL -> course format ---------------------------------------------------------------------

def _from_trl(where: str, rec: dict, index: int, problems: list[str]) -> dict | None:
    """Convert a TRL preference (`prompt`, `chosen`, `rejected`), implicit-prompt
    (`chosen`, `rejected`) or prompt-only (`prompt`) record; course-format records pass
    through unchanged. None if it cannot be converted.

    The chosen answer lands in candidate_0 on even records and candidate_1 on odd ones
    (choice 0, 1, 0, 1, ...) rather than always in candidate_0. The Bradley-Terry loss does
    not care, but anything that looks at positions does: a reward model that ties (a
    constant head, or two candidates identical after truncation) wins every "is r(chosen) >
    r(rejected)" comparison that breaks ties towards index 0, so an all-zero `choice`
    column would report 100% accuracy for a broken model; and `rlhfkit data stats` would
    show a 100/0 choice balance no real Vertex dataset has. The alternation is by record
    position, so conversion stays deterministic.
    """
    if any(k in rec for k in ("input_text", "messages", "candidate_0", "candidate_1")):
        return rec
    if not any(k in rec for k in ("prompt", *TRL_KEYS)):
        return rec  # _check_text reports what is missing
    extras = {k: v for k, v in rec.items() if k not in ("prompt", *TRL_KEYS)}
    prompt, chosen, rejected = rec.get("prompt"), rec.get("chosen"), rec.get("rejected")
    # TRL's maybe_extract_prompt: a `prompt` is used as given unless it is a string next to
    # conversational completions (or the reverse); then it is re-extracted from them.
    implicit = all(k in rec for k in TRL_KEYS) and (
        "prompt" not in rec or isinstance(prompt, list) != isinstance(chosen, list))
    if implicit:
        split = _extract_prompt(where, chosen, rejected, problems)
        if split is None:
            return None
        prompt, chosen, rejected = split
    if isinstance(prompt, str):
        out: dict = {"input_text": prompt}
    elif isinstance(prompt, list):
        out = {"messages": prompt}
    elif "prompt" not in rec:
        problems.append(f"{where}: has {'chosen' if 'chosen' in rec else 'rejected'} but "
                        "no prompt (TRL's implicit-prompt form needs both chosen and rejected)")
        return None
    else:
        problems.append(f"{where}: prompt must be a string or a messages list, "
                        f"got {json_type(prompt)}")
        return None
    if "chosen" not in rec and "rejected" not in rec:
        return {**out, **extras}  # TRL prompt-only record
    pair = [_completion(where, key, v, problems)
            for key, v in (("chosen", chosen), ("rejected", rejected))]
    if None in pair:
        return None
    choice = index % 2
    out["candidate_0"], out["candidate_1"] = pair if choice == 0 else pair[::-1]
    out["choice"] = choice
    return {**out, **extras}


def _common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def split_implicit_prompt(chosen: str, rejected: str) -> int:
    """Where TRL's extract_prompt splits two texts that share their prompt: at their longest
    common prefix, moved back to a word boundary (TRL splits mid-word: "The sky is bl" +
    "ue"), and then, as TRL does, one space is left to the completions.

    >>> c, r = "Q: sky? A: blue", "Q: sky? A: black"
    >>> k = split_implicit_prompt(c, r); (c[:k], c[k:], r[k:])
    ('Q: sky? A:', ' blue', ' black')
    """
    k = _common_prefix(chosen, rejected)
    if 0 < k and not chosen[k - 1].isspace():  # mid-word: back to the last whitespace
        k = max((i + 1 for i in range(k) if chosen[i].isspace()), default=0)
    if k > 0 and chosen[k - 1] == " ":
        k -= 1
    return k


def _extract_prompt(where: str, chosen, rejected, problems: list[str]):
    """(prompt, chosen, rejected) of an implicit-prompt record, or None (problem added)."""
    if isinstance(chosen, str) and isinstance(rejected, str):
        k = split_implicit_prompt(chosen, rejected)
        prompt, rest = chosen[:k], (chosen[k:], rejected[k:])
        ok = prompt.strip() and all(r.strip() for r in rest)
    elif isinstance(chosen, list) and isinstance(rejected, list):
        k = _common_prefix(chosen, rejected)
        prompt, rest = chosen[:k], (chosen[k:], rejected[k:])
        ok = bool(prompt) and all(rest)
    else:
        problems.append(f"{where}: chosen and rejected must both be strings or both be "
                        f"message lists, got {json_type(chosen)} and {json_type(rejected)}")
        return None
    if not ok:
        problems.append(f"{where}: has chosen and rejected but no prompt, and they share no "
                        "prompt to extract (TRL's implicit-prompt form: both start with the "
                        "same prompt, then differ); give the prompt separately")
        return None
    return (prompt, *rest)


def _completion(where: str, key: str, value, problems: list[str]) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict) \
            and value[0].get("role") == "assistant" and isinstance(value[0].get("content"), str):
        return value[0]["content"]
    problems.append(f"{where}: {key} must be a string or one assistant message "
                    f'[{{"role": "assistant", "content": ...}}], got {chat.show(value)}')
    return None


# -- field checks -----------------------------------------------------------------------------

_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def text_problem(text: str) -> str | None:
    """Why `text` cannot be a model input, or None. Control characters other than tab and
    newlines are invisible in every viewer, were in no pre-training text a model saw, and
    usually mean a binary file or terminal escapes pasted into the data."""
    bad = _CONTROL.search(text)
    if bad:
        return (f"contains the control character U+{ord(bad.group()):04X} at character "
                f"{bad.start() + 1}; remove it")
    return None


def _check_text(where: str, rec: dict, problems: list[str]) -> None:
    if "input_text" in rec and "messages" in rec:
        problems.append(f"{where}: has both input_text and messages; give one of them")
    elif "input_text" in rec:
        _check_string(where, rec, "input_text", problems)
    elif "messages" in rec:
        chat.check_messages(where, rec, problems, check_text=text_problem)
    else:
        problems.append(f"{where}: missing input_text (or messages)")


def _check_string(where: str, rec: dict, key: str, problems: list[str]) -> None:
    value = rec[key]
    if not isinstance(value, str):
        problems.append(f"{where}: {key} must be a string, got {json_type(value)}")
    elif not value.strip():
        problems.append(f"{where}: {key} is empty")
    elif text_problem(value):
        problems.append(f"{where}: {key} {text_problem(value)}")


def _check_preference(where: str, rec: dict, problems: list[str], eval_set: bool) -> None:
    missing = [k for k in PREFERENCE_KEYS if k not in rec]
    if missing:
        why = " (other lines of this eval set have preference fields, so every line must)" \
            if eval_set else ""
        problems.append(f"{where}: missing {', '.join(missing)}{why}")
    for key in ("candidate_0", "candidate_1"):
        if key in rec:
            _check_string(where, rec, key, problems)
    choice = rec.get("choice", 0)
    if type(choice) is not int or choice not in (0, 1):  # bool, "1" and 1.0 are mistakes
        problems.append(f"{where}: choice must be the integer 0 or 1 (the index of the "
                        f"preferred candidate), got {chat.show(choice)}")
    c0, c1 = rec.get("candidate_0"), rec.get("candidate_1")
    if isinstance(c0, str) and isinstance(c1, str) and c0.strip() and c0.strip() == c1.strip():
        problems.append(f"{where}: candidate_0 and candidate_1 are identical; a pair must "
                        "differ to teach a preference")


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"
