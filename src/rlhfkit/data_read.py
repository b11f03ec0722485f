"""Reading dataset files into JSON objects, safely: any bytes in, records or `path:line`
problems out, never an exception and never a hang.

What a hostile (or merely broken) file can do to a plain `json.loads`, and what we do:

- nesting thousands deep (`[[[[...`) raises RecursionError inside the decoder, and a value
  just under the decoder's limit crashes later code that recurses (printing, hashing):
  records may nest at most MAX_DEPTH levels;
- an integer with thousands of digits raises ValueError (CPython's 4,300-digit limit on
  int parsing, CVE-2020-10735): integers may have at most MAX_INT_DIGITS digits;
- `NaN` / `Infinity` are not JSON (RFC 8259) though Python's decoder accepts them;
- an escaped lone surrogate (`"\\ud800"`) decodes to a str that cannot be encoded as UTF-8,
  so validation passes and the first print or tokenizer call crashes; an escaped NUL
  (`"\\u0000"`) truncates text in C libraries. Both are refused in every string and key.

Raw NUL and other control bytes outside strings are already JSON syntax errors.
"""

from __future__ import annotations

import codecs
import json
import re

from rlhfkit.io import read_bytes

# A single record longer than this cannot fit any sequence length we train with, and a
# "line" this long is usually a file without newlines (a JSON dump, a binary file).
MAX_LINE_BYTES = 1 << 20  # 1 MiB
# Course records nest 3 deep (record -> messages -> turn); 32 leaves room for metadata.
MAX_DEPTH = 32
# int64 has 19 digits; anything longer is not a count, an index or an id we can use.
MAX_INT_DIGITS = 100
_BAD_CHAR = re.compile("[\x00\ud800-\udfff]")


class _Refused(ValueError):
    """A value our decoder hooks refuse; the message is the user-facing reason."""


def _parse_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise _Refused(f"an integer with {digits:,} digits (at most {MAX_INT_DIGITS} are read)")
    return int(text)


def _parse_constant(name: str):
    raise _Refused(f"{name} is not valid JSON (RFC 8259 has no NaN or Infinity)")


_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_constant=_parse_constant)


def loads(text: str):
    """`json.loads` with the limits above. Raises ValueError with a one-line reason
    (json.JSONDecodeError for syntax, with its position)."""
    try:
        obj = _DECODER.decode(text)
    except RecursionError:
        raise _Refused(f"nested too deeply (at most {MAX_DEPTH} levels are read)") from None
    reason = check_value(obj)
    if reason:
        raise _Refused(reason)
    return obj


def check_value(obj) -> str | None:
    """The first reason `obj` (decoded JSON) is unusable, or None. Iterative, so depth
    cannot exhaust the stack."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"nested too deeply (at most {MAX_DEPTH} levels are read)"
        if isinstance(value, dict):
            stack.extend((k, depth) for k in value)
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, str):
            bad = _BAD_CHAR.search(value)
            if bad:
                return _bad_char_reason(bad.group())
    return None


def _bad_char_reason(ch: str) -> str:
    if ch == "\x00":
        return "a string contains a NUL character (\\u0000), which is not text"
    return (f"a string contains an unpaired UTF-16 surrogate (\\u{ord(ch):04x}), which is "
            "not a character; the file was probably cut or converted badly")


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
        obj = loads(text)
    except json.JSONDecodeError as exc:
        problems.append(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})")
        return
    except _Refused as exc:
        problems.append(f"{where}: refused: {exc}")
        return
    if not isinstance(obj, dict):
        problems.append(f"{where}: expected a JSON object {{...}}, got {json_type(obj)}")
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
        items = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        problems.append(f"{path}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})")
        return []
    except _Refused as exc:
        problems.append(f"{path}: refused: {exc}")
        return []
    except RecursionError:
        problems.append(f"{path}: refused: nested too deeply (at most {MAX_DEPTH} levels "
                        "are read)")
        return []
    gap = re.compile(r"[\s,]*")
    out, pos, line = [], text.index("[") + 1, 1 + text.count("\n", 0, text.index("["))
    for item in items:
        start = gap.match(text, pos).end()
        line += text.count("\n", pos, start)
        _, pos = _DECODER.raw_decode(text, start)
        where = f"{path}:{line}"
        line += text.count("\n", start, pos)
        reason = check_value(item)
        if pos - start > MAX_LINE_BYTES:
            problems.append(f"{where}: record is over the limit of {MAX_LINE_BYTES:,} bytes")
        elif reason:
            problems.append(f"{where}: refused: {reason}")
        elif not isinstance(item, dict):
            problems.append(f"{where}: expected a JSON object {{...}}, got {json_type(item)}")
        else:
            out.append((where, item))
    return out


def json_type(value) -> str:
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a number",
             str: "a string", list: "an array", dict: "an object"}
    return names.get(type(value), type(value).__name__)
