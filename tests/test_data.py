"""rlhfkit.data: loading, validation (every problem as path:line), TRL conversion, prompts."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from rlhfkit import data
from rlhfkit.data import format_prompt, has_preferences, load_checked, load_dataset, prompt_text
from rlhfkit.errors import DataError, RlhfkitError

COURSE = Path(os.environ.get("RLHFKIT_COURSE_SAMPLES", "/work/shared/course_samples"))
needs_course = pytest.mark.skipif(not COURSE.is_dir(), reason="course samples not present")

PAIR = {"input_text": "post [summary]: ", "candidate_0": "a", "candidate_1": "b", "choice": 1}


def jsonl(path: Path, *lines) -> str:
    """Write lines (dicts are dumped, str/bytes written as they are) and return the path."""
    raw = b"".join((json.dumps(x).encode() if isinstance(x, dict) else
                    x.encode() if isinstance(x, str) else x) + b"\n" for x in lines)
    path.write_bytes(raw)
    return str(path)


def problems_of(spec: str, kind: str) -> list[str]:
    with pytest.raises(DataError) as err:
        load_dataset(spec, kind)
    return err.value.problems


# -- the course's own files --------------------------------------------------------------------

@needs_course
@pytest.mark.parametrize("name,kind,rows", [
    ("sample_preference.jsonl", "preference", 5), ("sample_preference.jsonl", "eval", 5),
    ("sample_prompt.jsonl", "prompt", 6), ("sample_eval.jsonl", "eval", 5),
    ("sample_eval.jsonl", "prompt", 5)])
def test_course_samples_load(name, kind, rows):
    records = load_dataset(str(COURSE / name), kind)
    assert len(records) == rows
    assert all(r["input_text"].endswith("[summary]: ") for r in records)
    assert has_preferences(records) == (name == "sample_preference.jsonl")


@needs_course
def test_course_preference_values_kept_exactly():
    first = json.loads((COURSE / "sample_preference.jsonl").read_text().splitlines()[0])
    assert load_dataset(str(COURSE / "sample_preference.jsonl"), "preference")[0] == first


@needs_course
@pytest.mark.parametrize("name", ["eval_results_tuned.jsonl", "eval_results_untuned.jsonl"])
@pytest.mark.parametrize("kind", ["prompt", "eval", "preference"])
def test_bulk_inference_output_is_one_clear_problem(name, kind):
    [msg] = problems_of(str(COURSE / name), kind)
    assert msg.startswith(f"{COURSE / name}: looks like bulk-inference output")


@needs_course
def test_prompt_file_given_as_preferences_is_one_clear_problem():
    assert problems_of(str(COURSE / "sample_prompt.jsonl"), "preference") == [
        f"{COURSE / 'sample_prompt.jsonl'}: looks like a prompt dataset (no candidate_0/"
        "candidate_1/choice on any line); expected a preference dataset"]


@needs_course
def test_format_prompt_reproduces_the_course_eval_inputs():
    # eval_results_*.jsonl hold the instruction, three newlines and the sample_eval post.
    posts = load_dataset(str(COURSE / "sample_eval.jsonl"), "eval")
    lines = (COURSE / "eval_results_tuned.jsonl").read_text().splitlines()
    shown = [json.loads(line)["inputs"]["inputs_pretokenized"] for line in lines]
    assert [format_prompt("Summarize in less than 50 words.", r["input_text"])
            for r in posts] == shown


# -- every error class, at its exact path:line ---------------------------------------------------

BAD_LINES = [  # (line 2 of a preference file after one good line, expected message start)
    ('{"input_text": "x", ', "invalid JSON: "),
    ("[1, 2]", "expected a JSON object {...}, got an array"),
    ('"just a string"', "expected a JSON object {...}, got a string"),
    ({"input_text": "x", "candidate_0": "a", "choice": 0}, "missing candidate_1"),
    ({"candidate_0": "a", "candidate_1": "b", "choice": 0}, "missing input_text (or messages)"),
    ({**PAIR, "input_text": "  "}, "input_text is empty"),
    ({**PAIR, "candidate_0": ""}, "candidate_0 is empty"),
    ({**PAIR, "input_text": 123}, "input_text must be a string, got a number"),
    ({**PAIR, "candidate_1": ["b"]}, "candidate_1 must be a string, got an array"),
    ({**PAIR, "choice": True}, "choice must be the integer 0 or 1 (the index of the preferred "
                               "candidate), got true"),
    ({**PAIR, "choice": "1"}, 'choice must be the integer 0 or 1 (the index of the preferred '
                              'candidate), got "1"'),
    ({**PAIR, "choice": 1.0}, "choice must be the integer 0 or 1"),
    ({**PAIR, "choice": 2}, "choice must be the integer 0 or 1"),
    ({**PAIR, "choice": None}, "choice must be the integer 0 or 1"),
    ({**PAIR, "candidate_1": "a "}, "candidate_0 and candidate_1 are identical"),
    (b'{"input_text": "caf\xe9"}', "not UTF-8 text (byte 0xe9 at column 20)"),
    ({**PAIR, "messages": [{"role": "user", "content": "x"}]}, "has both input_text and messages"),
]


@pytest.mark.parametrize("bad,message", BAD_LINES)
def test_each_error_is_reported_at_its_line(tmp_path, bad, message):
    path = jsonl(tmp_path / "p.jsonl", PAIR, bad, PAIR)
    problems = problems_of(path, "preference")
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}:2: {message}"), problems[0]


def test_line_over_the_size_limit(tmp_path):
    huge = {**PAIR, "input_text": "x" * data.MAX_LINE_BYTES}
    path = jsonl(tmp_path / "p.jsonl", PAIR, PAIR, huge)
    [msg] = problems_of(path, "preference")
    assert msg.startswith(f"{path}:3: line is 1,048,6")  # 1 MiB of text + the JSON around it
    assert "over the limit of 1,048,576 bytes" in msg


@pytest.mark.parametrize("messages,message", [
    ([], "messages must be a non-empty list"),
    ("hi", "messages must be a non-empty list"),
    ([{"role": "user"}], "messages[0] must be an object with role (or author) and content"),
    ([{"role": "user", "content": 5}], "messages[0].content must be a string, got a number"),
    ([{"role": "user", "content": ""}], "messages[0].content is empty"),
    ([{"role": "assistant", "content": "x"}], 'messages[0].role is "assistant"; expected "user"'),
    ([{"role": "user", "content": "x"}, {"role": "user", "content": "y"}],
     'messages[1].role is "user"; expected "assistant"'),
    ([{"role": "user", "content": "x"}, {"role": "system", "content": "y"}],
     'messages[1].role is "system"; "system" is allowed only as the first turn'),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
     "messages must end with a user turn"),
    ([{"role": "system", "content": "x"}], "messages must end with a user turn"),
    ([{"role": "bot", "content": "x"}], 'messages[0].role is "bot"; expected "user"'),
])
def test_chat_form_errors(tmp_path, messages, message):
    path = jsonl(tmp_path / "p.jsonl", {"input_text": "ok"}, {"messages": messages})
    [msg] = problems_of(path, "prompt")
    assert msg.startswith(f"{path}:2: {message}"), msg


def test_every_problem_in_every_file_is_collected(tmp_path):
    (tmp_path / "d").mkdir()
    a = jsonl(tmp_path / "d" / "a.jsonl", PAIR, {**PAIR, "choice": "0"}, "{oops")
    b = jsonl(tmp_path / "d" / "b.jsonl", {**PAIR, "candidate_1": "a"}, "",
              {"input_text": "", "candidate_0": "a", "candidate_1": "b"})
    problems = problems_of(str(tmp_path / "d"), "preference")
    # Sorted by file, then line, whatever stage found them (parsing, then field checks).
    assert [p.split(": ")[0] for p in problems] == [
        f"{a}:2", f"{a}:3", f"{b}:1", f"{b}:3", f"{b}:3"]
    assert problems[1].startswith(f"{a}:3: invalid JSON")
    assert problems[-2:] == [f"{b}:3: input_text is empty", f"{b}:3: missing choice"]


def test_empty_dataset(tmp_path):
    path = jsonl(tmp_path / "p.jsonl", "", "  ", "\r")
    assert problems_of(path, "prompt") == [f"{path}: no records (every file is empty or blank)"]


def test_file_without_any_text_field(tmp_path):
    path = jsonl(tmp_path / "p.jsonl", {"text": "a"}, {"text": "b", "label": 1})
    assert problems_of(path, "prompt") == [
        f"{path}: no line has input_text or messages (keys seen: label, text); "
        "expected a prompt dataset"]


def test_missing_file_and_gcs_without_gcsfs(tmp_path):
    with pytest.raises(RlhfkitError, match="no such file or directory"):
        load_dataset(str(tmp_path / "nope.jsonl"), "prompt")
    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed")
    with pytest.raises(RlhfkitError) as err:
        load_dataset("gs://bucket/prefs.jsonl", "preference")
    assert "\n" not in str(err.value) and "gcsfs" in str(err.value)


def test_unknown_kind():
    with pytest.raises(RlhfkitError, match="unknown dataset kind 'prefs'"):
        load_dataset("x.jsonl", "prefs")


# -- what is accepted ----------------------------------------------------------------------------

def test_crlf_blank_lines_bom_and_extra_keys(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({**PAIR, "id": 7}).encode() + b"\r\n\r\n\n"
                     + json.dumps({**PAIR, "choice": 0, "meta": {"src": "x"}}).encode())
    records = load_dataset(str(path), "preference")
    assert records == [{**PAIR, "id": 7}, {**PAIR, "choice": 0, "meta": {"src": "x"}}]


def test_file_directory_and_glob(tmp_path):
    (tmp_path / "d").mkdir()
    jsonl(tmp_path / "d" / "b.jsonl", {"input_text": "b"})
    jsonl(tmp_path / "d" / "a.jsonl", {"input_text": "a1"}, {"input_text": "a2"})
    (tmp_path / "d" / "notes.txt").write_text("not data")
    (tmp_path / "d" / "empty.jsonl").write_text("")
    texts = lambda spec: [r["input_text"] for r in load_dataset(spec, "prompt")]  # noqa: E731
    assert texts(str(tmp_path / "d")) == ["a1", "a2", "b"]
    assert texts(str(tmp_path / "d" / "*.jsonl")) == ["a1", "a2", "b"]
    assert texts(str(tmp_path / "d" / "b.jsonl")) == ["b"]
    loaded = load_checked(str(tmp_path / "d" / "[ab].jsonl"))
    assert (loaded.kind, len(loaded.paths)) == ("prompt", 2)


def test_json_array_file_keeps_line_numbers(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('[\n  {"input_text": "a"},\n  {"input_text": ""},\n  3\n]\n')
    assert problems_of(str(path), "prompt") == [
        f"{path}:3: input_text is empty",
        f"{path}:4: expected a JSON object {{...}}, got a number"]
    path.write_text('[{"input_text": "a"},\n {"input_text": "b"}]')
    assert [r["input_text"] for r in load_dataset(str(path), "prompt")] == ["a", "b"]


def test_chat_records(tmp_path):
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Sum up"}]
    path = jsonl(tmp_path / "p.jsonl", {"messages": turns, "candidate_0": "A",
                                        "candidate_1": "B", "choice": 0})
    [rec] = load_dataset(path, "preference")
    assert rec["messages"] == turns
    # No tokenizer: Vertex's llama-2-chat layout; the system turn wins over the instruction.
    assert prompt_text(rec, "Summarize") == (
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello </s>"
        "<s>[INST] Sum up [/INST]")
    rec["messages"] = turns[1:]  # without one, the instruction is the system text
    assert prompt_text(rec, "Summarize").startswith(
        "<s>[INST] <<SYS>>\nSummarize\n<</SYS>>\n\nHi [/INST]")
    assert rec["messages"][0]["content"] == "Hi"  # the record itself is not modified


def test_prompt_text_uses_the_chat_template():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                "{% if add_generation_prompt %}<assistant>{% endif %}")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")),
        chat_template=template)
    rec = {"messages": [{"role": "user", "content": "Hi"}]}
    assert prompt_text(rec, "Be brief", tok) == "<system>Be brief<user>Hi<assistant>"
    # A template that refuses a system turn gets the instruction in front of the first user
    # turn instead (as input_text gets it).
    tok.chat_template = ("{% for m in messages %}{% if m.role == 'system' %}"
                         "{{ raise_exception('no system') }}{% endif %}<{{ m.role }}>"
                         "{{ m.content }}{% endfor %}<assistant>")
    assert prompt_text(rec, "Be brief", tok) == "<user>Be brief\n\n\nHi<assistant>"
    # A tokenizer without a template gets Vertex's llama-2-chat layout.
    tok.chat_template = None
    assert prompt_text(rec, None, tok) == "<s>[INST] Hi [/INST]"


def test_format_prompt_and_prompt_text():
    assert format_prompt("Summarize.", "post") == "Summarize.\n\n\npost"
    assert format_prompt(None, "post") == format_prompt("", "post") == "post"
    assert prompt_text({"input_text": "post", "candidate_0": "x"}, "Do") == "Do\n\n\npost"


def test_has_preferences():
    assert has_preferences([PAIR, PAIR])
    assert not has_preferences([PAIR, {"input_text": "x"}])
    assert not has_preferences([])


def test_eval_set_with_preferences_must_be_all_preferences(tmp_path):
    path = jsonl(tmp_path / "e.jsonl", PAIR, {"input_text": "x"}, {**PAIR, "choice": 2})
    assert problems_of(path, "eval") == [
        f"{path}:2: missing candidate_0, candidate_1, choice (other lines of this eval set have "
        "preference fields, so every line must)",
        f"{path}:3: choice must be the integer 0 or 1 (the index of the preferred candidate), "
        "got 2"]
    path = jsonl(tmp_path / "e.jsonl", PAIR, {**PAIR, "choice": 0})
    assert has_preferences(load_dataset(path, "eval"))
    path = jsonl(tmp_path / "e.jsonl", {"input_text": "x"}, {"input_text": "y"})
    assert not has_preferences(load_dataset(path, "eval"))


# -- TRL-style records -----------------------------------------------------------------------------

def test_trl_text_records_alternate_the_chosen_position(tmp_path):
    rows = [{"prompt": f"p{i}", "chosen": f"good{i}", "rejected": f"bad{i}", "id": i}
            for i in range(4)]
    path = jsonl(tmp_path / "t.jsonl", *rows)
    records = load_dataset(path, "preference")
    assert [r["choice"] for r in records] == [0, 1, 0, 1]
    for i, r in enumerate(records):  # the chosen answer is always where choice points
        assert r[f"candidate_{r['choice']}"] == f"good{i}"
        assert r[f"candidate_{1 - r['choice']}"] == f"bad{i}"
        assert r["input_text"] == f"p{i}" and r["id"] == i
        assert not {"prompt", "chosen", "rejected"} & r.keys()
    assert load_checked(path).kind == "preference"


def test_trl_conversational_records(tmp_path):
    user = [{"role": "user", "content": "Hi"}]
    explicit = {"prompt": user, "chosen": [{"role": "assistant", "content": "Hello!"}],
                "rejected": [{"role": "assistant", "content": "Go away."}]}
    implicit = {"chosen": [*user, {"role": "assistant", "content": "Hey"}],
                "rejected": [*user, {"role": "assistant", "content": "No"}]}
    path = jsonl(tmp_path / "t.jsonl", explicit, implicit)
    a, b = load_dataset(path, "preference")
    assert a == {"messages": user, "candidate_0": "Hello!", "candidate_1": "Go away.",
                 "choice": 0}
    assert b == {"messages": user, "candidate_0": "No", "candidate_1": "Hey", "choice": 1}


def test_trl_prompt_only_records(tmp_path):
    path = jsonl(tmp_path / "t.jsonl", {"prompt": "a"},
                 {"prompt": [{"role": "user", "content": "b"}]})
    assert load_dataset(path, "prompt") == [
        {"input_text": "a"}, {"messages": [{"role": "user", "content": "b"}]}]


def test_trl_errors(tmp_path):
    two_turns = [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]
    user = [{"role": "user", "content": "p"}]
    path = jsonl(tmp_path / "t.jsonl", {"prompt": user, "chosen": two_turns, "rejected": "r"},
                 {"chosen": "a", "rejected": "b"}, {"prompt": 3, "chosen": "a", "rejected": "b"},
                 {"prompt": "p", "chosen": "same", "rejected": "same"})
    problems = problems_of(path, "preference")
    assert [p.split(": ", 1)[1][:40] for p in problems] == [
        "chosen must be a string or one assistant",
        "has chosen and rejected but no prompt, a",
        "prompt must be a string or a messages li",
        "candidate_0 and candidate_1 are identica"]
    assert [p.split(": ")[0] for p in problems] == [f"{path}:{i}" for i in (1, 2, 3, 4)]
