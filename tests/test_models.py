import pytest
import torch

from rlhfkit import models
from rlhfkit.errors import RlhfkitError


@pytest.mark.parametrize("name,expected", [
    ("llama-2-7b", "meta-llama/Llama-2-7b-hf"),
    ("LLAMA_2_13B_CHAT", "meta-llama/Llama-2-13b-chat-hf"),
    ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B"),
    ("t5-small", "google/flan-t5-small"), ("T5_XXL", "google/flan-t5-xxl"),
])
def test_resolve_names(name, expected):
    assert models.resolve_model_reference(name) == expected


def test_resolve_local_dir(tmp_path):
    assert models.resolve_model_reference(str(tmp_path)) == str(tmp_path)


@pytest.mark.parametrize("name,words", [
    ("text-bison@001", "proprietary"),
    ("gpt-seven", "llama-2-7b"), ("./missing-dir", "neither"),
])
def test_resolve_errors(name, words):
    with pytest.raises(RlhfkitError, match=words):
        models.resolve_model_reference(name)


def test_reward_reference_follows_vertex():
    assert models.reward_reference("llama-2-13b") == "llama-2-7b"
    assert models.reward_reference("llama-2-7b") == "llama-2-7b"
    assert models.reward_reference("llama-2-13b", "my/rm") == "my/rm"
    # Vertex trains the T5 reward model from T5 1.1, not from the Flan-T5 policy
    assert models.reward_reference("t5-large") == "google/t5-v1_1-large"
    assert models.reward_reference("t5-xl", "my/rm") == "my/rm"


def test_is_seq2seq_reads_the_config(tiny_t5_dir, tiny_llama_dir):
    assert models.is_seq2seq(str(tiny_t5_dir))
    assert not models.is_seq2seq(str(tiny_llama_dir))
    assert type(models.load_causal_lm(str(tiny_t5_dir))).__name__ == "T5ForConditionalGeneration"


def test_offline_hub_id_fails_fast():
    import time

    t0 = time.monotonic()
    with pytest.raises(RlhfkitError, match="offline"):
        models.load_tokenizer("meta-llama/Llama-2-7b-hf")
    assert time.monotonic() - t0 < 5


def test_every_architecture_loads_with_left_padding_and_pad_token(tiny_model_dir):
    tok = models.load_tokenizer(str(tiny_model_dir))
    assert tok.padding_side == "left"
    assert tok.pad_token_id is not None
    model = models.load_causal_lm(str(tiny_model_dir))
    batch = tok(["a short one", "a somewhat longer prompt here"], return_tensors="pt",
                padding=True)
    assert batch["attention_mask"][0, 0] == 0  # left-padded
    with torch.no_grad():
        out = model(**batch)
    assert out.logits.shape[:2] == batch["input_ids"].shape


def test_only_safetensors_loaded(tiny_llama_dir, tmp_path):
    # A checkpoint whose weights exist only as a pickle is refused.
    import shutil

    shutil.copytree(tiny_llama_dir, tmp_path, dirs_exist_ok=True)
    state = models.load_causal_lm(str(tiny_llama_dir)).state_dict()
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(RlhfkitError, match="safetensors"):
        models.load_causal_lm(str(tmp_path))


def test_encode_prompts_truncates_from_the_left_and_keeps_bos(tiny_model_dirs):
    tok = models.load_tokenizer(str(tiny_model_dirs["llama"]))  # Llama prepends BOS
    long = "my dog chewed the couch " * 20 + "[summary]: "
    batch = models.encode_prompts(tok, [long, "hi"], max_length=12)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == (2, 12)
    assert ids[0, 0] == tok.bos_token_id  # BOS survives left truncation
    full = tok(long)["input_ids"]
    assert ids[0, 1:].tolist() == full[-11:]  # the end of the post (the cue) is kept
    short = tok("hi")["input_ids"]
    assert mask[1].tolist() == [0] * (12 - len(short)) + [1] * len(short)
    assert ids[1, -len(short):].tolist() == short
