"""Model loading shared by every stage: `large_model_reference` -> tokenizer and model.

`large_model_reference` accepts the Vertex names (`llama-2-7b`, `t5-small`, ...), any
Hugging Face id, or a local directory. Causal LMs and encoder-decoder models (T5 /
Flan-T5, any `AutoModelForSeq2SeqLM`) both work; `is_seq2seq` tells them apart from the
config (`config.is_encoder_decoder`), never from the name. Only safetensors weights are
loaded and `trust_remote_code` stays off unless the user turns it on. With the hub unreachable
(`HF_HUB_OFFLINE=1`), an id that is not already in the local cache fails at once with one
line instead of a traceback after a network time-out.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import torch

from rlhfkit.errors import RlhfkitError

# Vertex's `large_model_reference` values -> Hugging Face causal LMs.
VERTEX_MODELS = {
    "llama-2-7b": "meta-llama/Llama-2-7b-hf",
    "llama-2-13b": "meta-llama/Llama-2-13b-hf",
    "llama-2-7b-chat": "meta-llama/Llama-2-7b-chat-hf",
    "llama-2-13b-chat": "meta-llama/Llama-2-13b-chat-hf",
}
# Vertex tunes Flan-T5 as the policy for these (encoder-decoder models).
VERTEX_SEQ2SEQ = {
    "t5-small": "google/flan-t5-small",
    "t5-large": "google/flan-t5-large",
    "t5-xl": "google/flan-t5-xl",
    "t5-xxl": "google/flan-t5-xxl",
}
VERTEX_PROPRIETARY = ("text-bison@001", "chat-bison@001", "text-bison@002")
# Vertex trains the reward model from llama-2-7b for the 13b and chat policies, and from
# T5 1.1 (not Flan-T5) for the T5 policies.
VERTEX_REWARD_BASE = {
    "llama-2-13b": "llama-2-7b",
    "llama-2-7b-chat": "llama-2-7b",
    "llama-2-13b-chat": "llama-2-7b",
    "t5-small": "google/t5-v1_1-small",
    "t5-large": "google/t5-v1_1-large",
    "t5-xl": "google/t5-v1_1-xl",
    "t5-xxl": "google/t5-v1_1-xxl",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _vertex_key(ref: str) -> str:
    return ref.strip().lower().replace("_", "-")


def resolve_model_reference(ref: str) -> str:
    """Map a `large_model_reference` to a local directory or a Hugging Face id."""
    if Path(ref).expanduser().is_dir():
        return str(Path(ref).expanduser())
    key = _vertex_key(ref)
    if key in VERTEX_MODELS:
        return VERTEX_MODELS[key]
    if key in VERTEX_SEQ2SEQ:
        return VERTEX_SEQ2SEQ[key]
    if key in VERTEX_PROPRIETARY:
        raise RlhfkitError(
            f"large_model_reference {ref!r} is a proprietary PaLM model with no open weights; "
            "use an open model instead, e.g. 'llama-2-7b' or a Hugging Face id.")
    if _HUB_ID.match(ref) and not ref.startswith((".", "/", "~")):
        return ref
    valid = ", ".join([*VERTEX_MODELS, *VERTEX_SEQ2SEQ])
    raise RlhfkitError(
        f"large_model_reference {ref!r} is neither a local directory, a Hugging Face id "
        f"(org/name) nor a Vertex model name ({valid})")


def reward_reference(policy_ref: str, reward_ref: str | None = None) -> str:
    """The reward model's base: explicit, else Vertex's choice (llama-2-7b for 13b/chat,
    google/t5-v1_1-* for t5-*)."""
    if reward_ref:
        return reward_ref
    return VERTEX_REWARD_BASE.get(_vertex_key(policy_ref), policy_ref)


def _hub_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def ensure_available(name_or_path: str) -> None:
    """Fail at once, in one line, when a hub id cannot be loaded offline."""
    if Path(name_or_path).is_dir() or not _hub_offline():
        return
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
        raise RlhfkitError(
            f"{name_or_path}: not in the local Hugging Face cache and the hub is offline "
            "(HF_HUB_OFFLINE=1). Download it on a connected machine "
            f"(`hf download {name_or_path}`) or pass a local directory.")


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """A left-padding tokenizer with a pad token (GPT-2 style tokenizers lack one).

    Left padding keeps every prompt's last token at the same position, which batched
    generation needs; scores are still read at the last real token via the attention mask.
    """
    from transformers import AutoTokenizer

    ensure_available(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(
            name_or_path, padding_side="left", trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise RlhfkitError(f"{name_or_path}: cannot load tokenizer: {_first_line(exc)}") from exc
    if tok.pad_token is None:
        # Reuse EOS (or UNK) as padding; the attention mask, not the id, marks padding.
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
        if tok.pad_token is None:
            tok.add_special_tokens({"pad_token": "<pad>"})
    return tok


def pick_dtype(device: torch.device | str) -> torch.dtype:
    """float32 on CPU (bf16 matmuls are ~60x slower there); bf16 on GPUs that support it."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _from_pretrained(auto_cls, name_or_path: str, trust_remote_code: bool,
                     dtype: torch.dtype, **kwargs):
    from transformers.utils import logging as hf_logging

    ensure_available(name_or_path)
    hf_logging.disable_progress_bar()  # a bar per load drowns the stage's own progress
    try:
        return auto_cls.from_pretrained(
            name_or_path, dtype=dtype, use_safetensors=True,
            trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as exc:
        raise RlhfkitError(f"{name_or_path}: cannot load model: {_first_line(exc)} "
                           "(rlhfkit loads only safetensors weights)") from exc


def is_seq2seq(name_or_path: str, trust_remote_code: bool = False) -> bool:
    """Is this model an encoder-decoder (T5, Flan-T5, BART, ...)? From its config.json
    (`is_encoder_decoder`), so any `AutoModelForSeq2SeqLM` id or directory qualifies."""
    return _is_seq2seq_cached(resolve_model_reference(name_or_path), trust_remote_code)


@functools.lru_cache(maxsize=64)
def _is_seq2seq_cached(path: str, trust_remote_code: bool) -> bool:
    from transformers import AutoConfig

    ensure_available(path)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise RlhfkitError(f"{path}: cannot read the model config: {_first_line(exc)}") from exc
    return bool(getattr(config, "is_encoder_decoder", False))


def load_causal_lm(name_or_path: str, trust_remote_code: bool = False,
                   dtype: torch.dtype = torch.float32):
    """The generating model: an `AutoModelForCausalLM`, or for an encoder-decoder
    checkpoint (`is_seq2seq`) an `AutoModelForSeq2SeqLM` (both have `.generate`)."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if is_seq2seq(name_or_path, trust_remote_code) \
        else AutoModelForCausalLM
    return _from_pretrained(auto, name_or_path, trust_remote_code, dtype)


def load_scalar_model(name_or_path: str, pad_token_id: int, trust_remote_code: bool = False,
                      dtype: torch.dtype = torch.float32):
    """The base model with a freshly initialised scalar head (num_labels=1)."""
    from transformers import AutoModelForSequenceClassification

    model = _from_pretrained(AutoModelForSequenceClassification, name_or_path,
                             trust_remote_code, dtype, num_labels=1)
    model.config.pad_token_id = pad_token_id
    return model


def check_adapter_weights(adapter_dir: str | Path) -> None:
    """A LoRA adapter directory must hold adapter_model.safetensors: a pickled
    adapter_model.bin can run code when loaded, so it is refused as full-model .bin files
    are (convert it on a trusted machine: `safetensors.torch.save_file(torch.load(...))`)."""
    path = Path(adapter_dir)
    if (path / "adapter_model.safetensors").is_file():
        return
    if (path / "adapter_model.bin").is_file():
        raise RlhfkitError(f"{path}: the adapter's weights are adapter_model.bin (pickle); "
                           "rlhfkit loads only safetensors: convert it to "
                           "adapter_model.safetensors on a machine you trust")
    raise RlhfkitError(f"{path}: a LoRA adapter without adapter_model.safetensors")


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters()
               if p.requires_grad or not trainable_only)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def encode_prompts(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenize prompts, truncate each from the LEFT to `max_length` tokens, pad on the left.

    Left truncation keeps the end of a long post and its `[summary]: ` cue, which the
    model needs to start summarising; a leading BOS token is kept when the tokenizer adds
    one. Returns {"input_ids", "attention_mask"} of shape (batch, longest).
    """
    ids_list = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    out = []
    for ids in ids_list:
        if len(ids) > max_length:
            keep_bos = bos is not None and ids[0] == bos and max_length > 1
            ids = ([bos] + ids[-(max_length - 1):]) if keep_bos else ids[-max_length:]
        out.append(ids)
    return left_pad(out, tokenizer.pad_token_id)


def left_pad(seqs: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad token id lists into (batch, longest) input_ids and attention_mask."""
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            input_ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def right_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists (continuations of a left-padded prefix) into (batch,
    longest) ids and mask."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


def decoder_inputs(labels: torch.Tensor, start_id: int) -> torch.Tensor:
    """An encoder-decoder's decoder input ids for target ids `labels` (B, T): the start
    token, then the targets shifted right by one (T5's `_shift_right`), so position t
    reads labels[:, :t] and predicts labels[:, t]. (B, T) -> (B, T)."""
    start = torch.full_like(labels[:, :1], start_id)
    return torch.cat([start, labels[:, :-1]], 1)
