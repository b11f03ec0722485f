"""Vertex's chat data (issue 12, section 2): `messages` of {"author", "content"} with an
optional per-row `context`, checked as Vertex checks them and rendered with the model's
chat template, else Vertex's llama-2-chat layout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlhfkit.data import load_dataset, prompt_text
from rlhfkit.errors import DataError

U, A = "user", "assistant"
# A chat template in the ChatML shape (Qwen's), small enough to read.
CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def turn(author: str, content: str) -> dict:
    return {"author": author, "content": content}


def jsonl(path: Path, *records: dict) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.mark.parametrize("kind", ["prompt", "preference"])
@pytest.mark.parametrize("messages,message", [
    (None, "messages must be a non-empty list"),
    ([], "messages must be a non-empty list"),
    ([turn(A, "hi")], 'messages[0].author must be "user"'),
    ([turn(U, "hi"), turn(A, "hello")], 'the last message\'s author must be "user"'),
    ([turn("", "hi")], "messages[0].author is empty"),
    ([turn(U, "")], "messages[0].content is empty"),
    ([turn(U, "  ")], "messages[0].content is empty"),
    ([turn("system", "hi")], 'messages[0].author is "system"; expected "user" or "assistant"'),
    ([turn(U, "a"), turn("bot", "b"), turn(U, "c")], 'messages[1].author is "bot"'),
    ([{"author": U}], "messages[0] must be an object with author and content"),
    ([turn(U, "a"), {"role": "assistant", "content": "b"}, turn(U, "c")],
     "messages[1] must be an object with author and content"),
    ([turn(U, 3)], "messages[0].content must be a string, got a number"),
])
def test_vertex_chat_errors(tmp_path, kind, messages, message):
    rec = {"messages": messages} if messages is not None else {"messages": None}
    if kind == "preference":
        rec = {**rec, "candidate_0": "x", "candidate_1": "y", "choice": 0}
    ok = {"messages": [turn(U, "fine")], "candidate_0": "x", "candidate_1": "y", "choice": 1}
    path = jsonl(tmp_path / "c.jsonl", ok, rec)
    with pytest.raises(DataError) as err:
        load_dataset(path, kind)
    assert any(p.startswith(f"{path}:2: {message}") for p in err.value.problems), \
        err.value.problems


def test_context_must_be_text(tmp_path):
    path = jsonl(tmp_path / "c.jsonl", {"messages": [turn(U, "a")], "context": 5},
                 {"messages": [{"role": "system", "content": "s"}, {"role": U, "content": "a"}],
                  "context": "c"})
    with pytest.raises(DataError) as err:
        load_dataset(path, "prompt")
    assert err.value.problems == [
        f"{path}:1: context must be a string (the system text), got 5",
        f"{path}:2: has both context and a system turn; give one of them"]


def test_vertex_chat_is_read_as_given_and_rendered_llama2(tmp_path):
    """Multi-turn, with and without `context`; consecutive user turns are allowed (Vertex
    does not ask for alternation). Expected strings written out from Meta's reference
    layout: `<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {answer} </s>`."""
    convo = [turn(U, "Hi "), turn(A, " Hello"), turn(U, "Sum up")]
    path = jsonl(tmp_path / "c.jsonl", {"messages": convo, "context": "Be brief."},
                 {"messages": convo[:1]}, {"messages": [turn(U, "a"), turn(U, "b")]})
    a, b, c = load_dataset(path, "prompt")
    assert a["messages"] == convo and a["context"] == "Be brief."
    assert prompt_text(a, "Ignored: the row has a context") == (
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello </s>"
        "<s>[INST] Sum up [/INST]")
    assert prompt_text(b, "Summarize") == "<s>[INST] <<SYS>>\nSummarize\n<</SYS>>\n\nHi [/INST]"
    assert prompt_text(b, None) == "<s>[INST] Hi [/INST]"
    assert prompt_text(c, None) == "<s>[INST] a [/INST]<s>[INST] b [/INST]"


def test_vertex_chat_with_a_chat_template():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")),
        chat_template=CHATML)
    rec = {"messages": [turn(U, "Hi"), turn(A, "Hello"), turn(U, "Sum up")], "context": "Brief"}
    assert prompt_text(rec, "Summarize", tok) == (
        "<|im_start|>system\nBrief<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nSum up<|im_end|>\n"
        "<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> Path:
    """The tiny Llama of the test suite, saved with a ChatML chat template."""
    from tiny_models import build_tiny_model, build_tokenizer

    out = build_tiny_model("llama", tmp_path_factory.mktemp("chat_llama"))
    tok = build_tokenizer("llama")
    tok.chat_template = CHATML
    tok.save_pretrained(out)
    return out


def _rlhfkit(*args: str) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "rlhfkit", *args], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    return res


def _chat_pairs(n: int) -> list[dict]:
    good, bad = "a short kind summary", "no no no this goes on and on about nothing"
    return [{"messages": [turn(U, f"post {i}: my roommate eats my food")],
             **({"context": "Be brief."} if i % 2 else {}),
             "candidate_0": good if i % 2 else bad, "candidate_1": bad if i % 2 else good,
             "choice": 0 if i % 2 else 1} for i in range(n)]


def test_inspect_render_and_train_reward_on_chat_data(tmp_path, chat_model):
    """End to end through the real CLI: `data inspect --render --model` shows the chat
    template's text, and train-reward runs on Vertex-format chat pairs, encoding exactly
    that text."""
    from rlhfkit.models import load_tokenizer
    from rlhfkit.reward_data import encode_pairs

    pref = jsonl(tmp_path / "pref.jsonl", *_chat_pairs(16))
    shown = _rlhfkit("data", "inspect", pref, "--render", "--model", str(chat_model),
                     "--instruction", "Summarize", "-i", "1").stdout
    assert f"rendered with the chat template of {chat_model}" in shown
    assert "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\npost 1:" in shown
    assert shown.rstrip().endswith("== candidate_1 (after the prompt's tokens) ==\n"
                                   "no no no this goes on and on about nothing")
    plain = _rlhfkit("data", "inspect", pref, "--render").stdout
    assert "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\npost 0: my roommate eats my food" \
        not in plain  # record 0 has no context and no instruction was given
    assert "<s>[INST] post 0: my roommate eats my food [/INST]" in plain

    tok = load_tokenizer(str(chat_model))
    records = load_dataset(pref, "preference")
    pairs = encode_pairs(tok, records[:1], "Summarize", 512, 16)
    text = tok.apply_chat_template(
        [{"role": "system", "content": "Summarize"},
         {"role": "user", "content": "post 0: my roommate eats my food"}],
        tokenize=False, add_generation_prompt=True)
    prompt_ids = tok(text)["input_ids"]
    assert pairs.chosen[0][:len(prompt_ids)] == prompt_ids

    params = tmp_path / "params.json"
    params.write_text(json.dumps({
        "preference_dataset": pref, "prompt_dataset": pref, "instruction": "Summarize",
        "large_model_reference": str(chat_model), "prompt_sequence_length": 48,
        "target_sequence_length": 12, "reward_model_train_steps": 2, "batch_size": 8}))
    res = _rlhfkit("train-reward", str(params), "--output-dir", str(tmp_path / "run"),
                   "--no-progress")
    assert (tmp_path / "run" / "reward_model").is_dir(), res.stdout
