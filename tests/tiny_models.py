"""Tiny checkpoints of the architectures users bring, built offline from config.

Each is saved with a tokenizer to a local directory and then loaded through the same path
as a real checkpoint. Their tokenizers copy the special-token conventions that bite:
GPT-2 and GPT-NeoX have no pad token (and BOS == EOS), Llama prepends BOS and has no pad
token, Qwen2 has a pad token distinct from its EOS and no BOS. The tiny T5 (`build_tiny_t5`) is
an encoder-decoder as Flan-T5: pad id 0 is also the decoder start token, EOS `</s>` is
appended to every encoded text, no BOS, gated-GELU feed-forward (wi_0, wi_1, wo).
"""

from __future__ import annotations

from pathlib import Path

import torch

ARCHITECTURES = ("llama", "gpt2", "gpt_neox", "qwen2")

_CORPUS = [
    "My roommate keeps eating my food and I do not know how to bring it up.",
    "I got a job offer from a startup but my current team is great. What should I do?",
    "Summarize in less than 50 words. [summary]: a short post about a long day at work",
    "TL;DR: my dog chewed the couch and my landlord wants to keep the deposit.",
    "We have been dating for two years and she wants to move to another city for school.",
] * 4

_SPECIALS = {
    "llama": dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>"),
    "gpt2": dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>"),
    "gpt_neox": dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>"),
    "qwen2": dict(eos_token="<|im_end|>", pad_token="<|endoftext|>"),
}


def build_tokenizer(arch: str, vocab_size: int = 320):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = _SPECIALS[arch]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special_tokens = list(dict.fromkeys(specials.values()))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS, trainer)
    if arch == "llama":  # Llama prepends BOS to every sequence
        bos = specials["bos_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, tok.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="left", **specials)


def build_config(arch: str, vocab_size: int, hidden: int = 32, layers: int = 2):
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, tie_word_embeddings=False)
    if arch == "llama":
        return LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden,
                           num_hidden_layers=layers, num_attention_heads=2,
                           num_key_value_heads=2, max_position_embeddings=256, **common)
    if arch == "gpt2":
        return GPT2Config(n_embd=hidden, n_layer=layers, n_head=2, n_positions=256, **common)
    if arch == "gpt_neox":
        return GPTNeoXConfig(hidden_size=hidden, intermediate_size=2 * hidden,
                             num_hidden_layers=layers, num_attention_heads=2,
                             max_position_embeddings=256, **common)
    if arch == "qwen2":
        return Qwen2Config(hidden_size=hidden, intermediate_size=2 * hidden,
                           num_hidden_layers=layers, num_attention_heads=2,
                           num_key_value_heads=1, max_position_embeddings=256, **common)
    raise ValueError(arch)


def build_tiny_model(arch: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Save a randomly initialised tiny `arch` causal LM + tokenizer to `out_dir`."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    tok = build_tokenizer(arch)
    config = build_config(arch, vocab_size=len(tok))
    if tok.eos_token_id is not None:
        config.eos_token_id = tok.eos_token_id
    if tok.bos_token_id is not None:
        config.bos_token_id = tok.bos_token_id
    config.pad_token_id = tok.pad_token_id
    model = AutoModelForCausalLM.from_config(config)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir


def build_t5_tokenizer(vocab_size: int = 320):
    """A BPE tokenizer with T5's conventions: <pad>=0, </s>=1, <unk>=2, EOS appended."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="left", pad_token="<pad>",
                                   eos_token="</s>", unk_token="<unk>")


def build_t5_config(vocab_size: int, d_model: int = 32, layers: int = 2):
    from transformers import T5Config

    return T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=d_model // 2,
                    d_ff=2 * d_model, num_layers=layers, num_decoder_layers=layers, num_heads=2,
                    feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                    relative_attention_num_buckets=8, relative_attention_max_distance=32,
                    pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def build_tiny_t5(out_dir: str | Path, seed: int = 0) -> Path:
    """Save a randomly initialised tiny T5ForConditionalGeneration + tokenizer to `out_dir`."""
    from transformers import T5ForConditionalGeneration

    torch.manual_seed(seed)
    tok = build_t5_tokenizer()
    model = T5ForConditionalGeneration(build_t5_config(len(tok)))
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir
