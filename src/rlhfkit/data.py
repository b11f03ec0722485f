"""Datasets in the course's formats: read from anywhere, validate up front, render prompts.

Three kinds (DESIGN.md, "Input formats"):

- preference: `input_text` (or chat `messages`), `candidate_0`, `candidate_1`, `choice`
  (the integer 0 or 1: the index of the preferred candidate);
- prompt: `input_text` (or `messages`);
- eval: `input_text` (or `messages`); if any line also has the preference fields, every
  line must be a valid preference record and the set doubles as a held-out reward-model
  eval set (as Vertex does from release 2.11 on).

TRL-style records (`prompt`, `chosen`, `rejected`) and TRL prompt-only records (`prompt`)
are converted to the course format on load, so every stage sees one format.

Validation reads every file completely and reports every problem as `path:line: message`
in one `DataError` before anything is returned: a typo on line 2,913 should cost seconds
at the start, not a crash an hour into training.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass

from rlhfkit import log
from rlhfkit.errors import DataError, RlhfkitError
from rlhfkit.io import expand_paths, read_bytes

KINDS = ("preference", "prompt", "eval")
# A single record longer than this cannot fit any sequence length we train with, and a
# "line" this long is usually a file without newlines (a JSON dump, a binary file).
MAX_LINE_BYTES = 1 << 20  # 1 MiB
PREFERENCE_KEYS = ("candidate_0", "candidate_1", "choice")
TRL_KEYS = ("chosen", "rejected")
TEXT_KEYS = ("input_text", "messages", "prompt")  # `prompt`: TRL, converted on load
BULK_INFERENCE_KEYS = {"inputs", "prediction"}
ROLES = ("system", "user", "assistant")
# The plain chat rendering used when a tokenizer has no chat template (see prompt_text).
CHAT_ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}
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
    """The model input for a record.

    `input_text`: `format_prompt(instruction, input_text)`. `messages`: the instruction goes
    in front of the first user turn; then the tokenizer's chat template with a generation
    prompt when it has one, else a plain rendering, one turn per paragraph:
    "System: ...\\n\\nUser: ...\\n\\nAssistant: ...\\n\\nUser: ...\\n\\nAssistant:".
    """
    if "input_text" in record:
        return format_prompt(instruction, record["input_text"])
    if "messages" not in record:
        raise ValueError("record has neither input_text nor messages (load it with load_dataset)")
    messages = [dict(m) for m in record["messages"]]
    first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
    messages[first_user]["content"] = format_prompt(instruction, messages[first_user]["content"])
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    turns = [f"{CHAT_ROLE_NAMES[m['role']]}: {m['content']}" for m in messages]
    return "\n\n".join([*turns, f"{CHAT_ROLE_NAMES['assistant']}:"])


# -- reading lines ------------------------------------------------------------------------

def read_lines(path: str, problems: list[str]) -> list[tuple[str, dict]]:
    """Parse one file into (`path:line`, object) pairs; problems are appended, not raised.

    JSON Lines; blank lines, CRLF and a UTF-8 byte-order mark are fine. A `.json` file that
    holds one JSON array of objects is read too (each record keeps the line it starts on).
    """
    try:
        data = read_bytes(path)
    except OSError as exc:
        problems.append(f"{path}: cannot read: {exc.strerror or exc}")
        return []
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    if path.endswith(".json") and data.lstrip().startswith(b"["):
        return _read_json_array(path, data, problems)
    out = []
    for no, raw in enumerate(data.split(b"\n"), start=1):
        where = f"{path}:{no}"
        raw = raw.rstrip(b"\r")
        if len(raw) > MAX_LINE_BYTES:
            problems.append(f"{where}: line is {len(raw):,} bytes, over the limit of "
                            f"{MAX_LINE_BYTES:,} bytes for one record (MAX_LINE_BYTES)")
            continue
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(f"{where}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at "
                            f"column {exc.start + 1}); save the file as UTF-8")
            continue
        _add_object(where, text, out, problems)
    return out


def _add_object(where: str, text: str, out: list, problems: list[str]) -> None:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        problems.append(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})")
        return
    if not isinstance(obj, dict):
        problems.append(f"{where}: expected a JSON object {{...}}, got {_json_type(obj)}")
        return
    out.append((where, obj))


def _read_json_array(path: str, data: bytes, problems: list[str]) -> list[tuple[str, dict]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        problems.append(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); "
                        "save the file as UTF-8")
        return []
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        problems.append(f"{path}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})")
        return []
    decoder, gap = json.JSONDecoder(), re.compile(r"[\s,]*")
    out, pos, line = [], text.index("[") + 1, 1 + text.count("\n", 0, text.index("["))
    for item in items:
        start = gap.match(text, pos).end()
        line += text.count("\n", pos, start)
        _, pos = decoder.raw_decode(text, start)
        where = f"{path}:{line}"
        line += text.count("\n", start, pos)
        if pos - start > MAX_LINE_BYTES:
            problems.append(f"{where}: record is over the limit of {MAX_LINE_BYTES:,} bytes")
        elif not isinstance(item, dict):
            problems.append(f"{where}: expected a JSON object {{...}}, got {_json_type(item)}")
        else:
            out.append((where, item))
    return out


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
    if not any(k in r for r in recs for k in TEXT_KEYS):
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
    """Convert a TRL preference (`prompt`, `chosen`, `rejected`) or prompt-only (`prompt`)
    record; course-format records pass through unchanged. None if it cannot be converted.

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
    if "prompt" not in rec and isinstance(chosen, list) and isinstance(rejected, list) and \
            len(chosen) >= 2 and chosen[:-1] == rejected[:-1]:
        # TRL's implicit-prompt conversational form: the shared turns are the prompt.
        prompt, chosen, rejected = chosen[:-1], chosen[-1:], rejected[-1:]
    if isinstance(prompt, str):
        out: dict = {"input_text": prompt}
    elif isinstance(prompt, list):
        out = {"messages": prompt}
    elif "prompt" not in rec:
        problems.append(f"{where}: has chosen/rejected but no prompt; give the prompt "
                        "separately (TRL's implicit-prompt form is read only for conversations "
                        "that share every turn but the last)")
        return None
    else:
        problems.append(f"{where}: prompt must be a string or a messages list, "
                        f"got {_json_type(prompt)}")
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


def _completion(where: str, key: str, value, problems: list[str]) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict) \
            and value[0].get("role") == "assistant" and isinstance(value[0].get("content"), str):
        return value[0]["content"]
    problems.append(f"{where}: {key} must be a string or one assistant message "
                    f'[{{"role": "assistant", "content": ...}}], got {_show(value)}')
    return None


# -- field checks -----------------------------------------------------------------------------

def _check_text(where: str, rec: dict, problems: list[str]) -> None:
    if "input_text" in rec and "messages" in rec:
        problems.append(f"{where}: has both input_text and messages; give one of them")
    elif "input_text" in rec:
        _check_string(where, rec, "input_text", problems)
    elif "messages" in rec:
        _check_messages(where, rec["messages"], problems)
    else:
        problems.append(f"{where}: missing input_text (or messages)")


def _check_string(where: str, rec: dict, key: str, problems: list[str]) -> None:
    value = rec[key]
    if not isinstance(value, str):
        problems.append(f"{where}: {key} must be a string, got {_json_type(value)}")
    elif not value.strip():
        problems.append(f"{where}: {key} is empty")


def _check_messages(where: str, messages, problems: list[str]) -> None:
    """Roles user/assistant, alternating (chat templates such as Llama-2's reject anything
    else, deep inside training), one optional leading system turn, starting and ending
    with the user: the model writes the next assistant reply."""
    if not isinstance(messages, list) or not messages:
        problems.append(f"{where}: messages must be a non-empty list of "
                        "{\"role\", \"content\"} objects")
        return
    expected = "user"
    for i, m in enumerate(messages):
        at = f"{where}: messages[{i}]"
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            problems.append(f"{at} must be an object with role and content, got {_show(m)}")
            return
        role, content = m["role"], m["content"]
        if not isinstance(content, str):
            problems.append(f"{at}.content must be a string, got {_json_type(content)}")
        elif not content.strip():
            problems.append(f"{at}.content is empty")
        if role == "system" and i == 0:
            continue
        if role not in ROLES or role != expected:
            why = ('"system" is allowed only as the first turn' if role == "system" else
                   f'expected "{expected}" (turns alternate user/assistant, user first)')
            problems.append(f"{at}.role is {_show(role)}; {why}")
            return
        expected = "assistant" if role == "user" else "user"
    if expected == "user":  # the last turn was the assistant's, or there was only a system turn
        problems.append(f"{where}: messages must end with a user turn (the model writes the "
                        "next assistant reply)")


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
                        f"preferred candidate), got {_show(choice)}")
    c0, c1 = rec.get("candidate_0"), rec.get("candidate_1")
    if isinstance(c0, str) and isinstance(c1, str) and c0.strip() and c0.strip() == c1.strip():
        problems.append(f"{where}: candidate_0 and candidate_1 are identical; a pair must "
                        "differ to teach a preference")


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _json_type(value) -> str:
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a number",
             str: "a string", list: "an array", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def _show(value, width: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 3] + "..."
