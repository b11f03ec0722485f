"""The reward model itself: a causal LM with a scalar head, scored at the last real token,
and `RewardScorer`, which loads a trained one (RUN/reward_model/) to score text or token ids
(used by `rlhfkit score`, `rlhfkit compare` and the PPO stage).

For PPO: `RewardScorer.score_ids(query_ids, response_ids)` lays token ids out exactly as
training did (`reward_data.encode_for_scoring`: query ids + response ids + EOS) and scores
them; `reward_scores(model, input_ids, attention_mask)` scores an already padded batch
(any padding side) with any scalar-head model, e.g. the reward adapter on a shared base.

An encoder-decoder reward model (T5: `T5ForSequenceClassification`, num_labels=1) reads
the prompt with its encoder and the response + EOS as decoder targets (decoder inputs
shifted right, as T5 trains); its `classification_head` reads the decoder's final hidden
state at the last target position (`seq2seq_scores`). The encoder runs once per prompt,
for both candidates of a pair.

Training lives in `rlhfkit.reward`; the token layout in `rlhfkit.reward_data`.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import torch

from rlhfkit import models, training
from rlhfkit.errors import RlhfkitError
from rlhfkit.reward_data import encode_for_scoring, seq2seq_for_scoring, split_batch
from rlhfkit.runstate import META_FILE  # the reward model's metadata, next to its weights

SCORE_BATCH_SIZE = 16  # sequences per forward pass when scoring with RewardScorer


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """The position of each row's last real token, whatever the padding side."""
    width = attention_mask.shape[-1]
    return width - 1 - attention_mask.flip(-1).int().argmax(-1)


# -- the model ------------------------------------------------------------------------------

def reward_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """One float32 score per row of a padded batch (any padding side).

    `model`: a `*ForSequenceClassification` (num_labels=1), or a peft model wrapping one.
    We run its backbone and apply the score head at the last real token ourselves: HF's
    own pooling finds "the last token" by looking for the pad id, which is wrong when
    pad == EOS (GPT-2 style tokenizers with our pad fallback) because every input ends with
    EOS. Position ids follow the attention mask, so a left-padded row gets the scores it
    would get alone.
    """
    backbone, head = _backbone_and_head(model)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                      position_ids=position_ids, use_cache=False).last_hidden_state
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    last = hidden[rows, last_token_index(attention_mask).to(hidden.device)]
    return head(last).squeeze(-1).float()


def pair_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                suffix_ids: torch.Tensor, suffix_mask: torch.Tensor) -> torch.Tensor:
    """Scores of the 2n sequences of `reward_data.pair_batch`: (n, P) left-padded prefixes
    and (2n, S) right-padded suffixes -> (2n,), rows < n the chosen, the rest the rejected.

    The prefix both candidates share (the prompt: ~80% of the tokens on the demo world)
    runs once and its key/value cache serves both continuations, where scoring the two
    full sequences (TRL's RewardTrainer) runs it twice. Scores and gradients are those of
    `reward_scores` on the full sequences, because attention is causal: a prefix's states
    never depend on what follows it (a test checks it on four architectures).
    """
    backbone, head = _backbone_and_head(model)
    n = input_ids.shape[0]
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    # transformers 5 names the key/value cache `cache` (`past_key_values` is deprecated).
    cache = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                     use_cache=True).cache
    cache.reorder_cache(torch.arange(n, device=input_ids.device).repeat(2))  # chosen, rejected
    start = attention_mask.long().sum(-1).repeat(2)[:, None]  # real prefix tokens of each row
    suffix_positions = start + torch.arange(suffix_ids.shape[1], device=suffix_ids.device)
    hidden = backbone(input_ids=suffix_ids,
                      attention_mask=torch.cat([attention_mask.repeat(2, 1), suffix_mask], 1),
                      position_ids=suffix_positions, cache=cache,
                      use_cache=True).last_hidden_state
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return head(hidden[rows, last_token_index(suffix_mask).to(hidden.device)]).squeeze(-1).float()


def seq2seq_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   suffix_ids: torch.Tensor, suffix_mask: torch.Tensor) -> torch.Tensor:
    """Scores of an encoder-decoder reward model: (n, P) left-padded prompts (the encoder's
    input) and (k n, S) right-padded targets, response ids + EOS (`reward_data.split_batch`;
    row j continues prompt j % n) -> (k n,) float32.

    The encoder runs once per prompt; the decoder reads the targets shifted right (start
    token first) and the head reads its final hidden state at the last target position,
    the state that has seen the whole response (the causal model's "last token").
    """
    hf = _hf(model)
    backbone, head = getattr(hf, hf.base_model_prefix), hf.classification_head
    enc = backbone.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    k = suffix_ids.shape[0] // input_ids.shape[0]
    dec_in = models.decoder_inputs(suffix_ids, hf.config.decoder_start_token_id)
    hidden = backbone.decoder(input_ids=dec_in, attention_mask=suffix_mask,
                              encoder_hidden_states=enc.repeat(k, 1, 1),
                              encoder_attention_mask=attention_mask.repeat(k, 1),
                              use_cache=False).last_hidden_state
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    last = hidden[rows, last_token_index(suffix_mask).to(hidden.device)]
    return head(last).squeeze(-1).float()


def _hf(model):
    """The transformers model inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_seq2seq_model(model) -> bool:
    return bool(getattr(_hf(model).config, "is_encoder_decoder", False))


def _backbone_and_head(model):
    """(decoder backbone, score head) of a *ForSequenceClassification model, or of a peft
    model wrapping one."""
    hf = _hf(model)
    backbone = getattr(hf, getattr(hf, "base_model_prefix", ""), None)
    head = getattr(hf, "score", None)
    if backbone is None or head is None:
        raise RlhfkitError(f"{type(hf).__name__}: expected a backbone "
                           f"`{hf.base_model_prefix}` and a `score` head (a decoder-only "
                           "*ForSequenceClassification model)")
    return backbone, head


class RewardModel(torch.nn.Module):
    """A plain module around the scalar-head model, so DDP / accelerate wrap one forward:
    (input_ids, attention_mask) -> scores of shape (batch,)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.seq2seq = is_seq2seq_model(model)  # encoder-decoder: seq2seq_scores

    @property
    def checkpointing(self) -> bool:
        return training.checkpointing_enabled(self.model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                suffix_ids: torch.Tensor | None = None,
                suffix_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of a padded batch; with suffix_ids, of a `pair_batch` (see pair_scores);
        an encoder-decoder always takes prompts + suffix_ids (see seq2seq_scores)."""
        if self.seq2seq:
            if suffix_ids is None:
                raise ValueError("an encoder-decoder reward model scores prompts (encoder) "
                                 "and suffix_ids (decoder targets): reward_data.split_batch")
            return seq2seq_scores(self.model, input_ids, attention_mask, suffix_ids, suffix_mask)
        if suffix_ids is not None and torch.is_grad_enabled() and self.checkpointing:
            # A recomputed block cannot re-read a KV cache: score the two full sequences
            # (prefix + suffix, padding inside; positions follow the mask: same scores).
            input_ids = torch.cat([input_ids.repeat(2, 1), suffix_ids], 1)
            attention_mask = torch.cat([attention_mask.repeat(2, 1), suffix_mask], 1)
            suffix_ids = None
        if suffix_ids is None:
            return reward_scores(self.model, input_ids, attention_mask)
        return pair_scores(self.model, input_ids, attention_mask, suffix_ids, suffix_mask)


@contextlib.contextmanager
def quiet_transformers():
    """Hide transformers' load report (it lists the new score head as "MISSING", which is
    the point of a reward model) and its save progress bars."""
    from transformers.utils import logging as hf_logging

    old = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            # peft calls transformers APIs deprecated in v5 (is_gradient_checkpointing)
            warnings.simplefilter("ignore", FutureWarning)
            # GPT-2's Conv1D layers: peft sets fan_in_fan_out itself and says so
            warnings.filterwarnings("ignore", message="fan_in_fan_out")
            yield
    finally:
        hf_logging.set_verbosity(old)
        hf_logging.enable_progress_bar()


def _load_scalar(name_or_path: str, tokenizer, trust_remote_code: bool, dtype):
    with quiet_transformers():
        hf = models.load_scalar_model(name_or_path, tokenizer.pad_token_id,
                                      trust_remote_code, dtype)
    if len(tokenizer) > hf.get_input_embeddings().num_embeddings:  # an added <pad> token
        hf.resize_token_embeddings(len(tokenizer))
    return hf


def build_model(base: str, tokenizer, lora_dim: int, trust_remote_code: bool = False,
                dtype: torch.dtype = torch.float32) -> RewardModel:
    """The base model + a new scalar head, with a LoRA adapter unless lora_dim == 0.

    In eval() mode: no dropout while training either, as lm-human-preferences and TRL's
    RewardTrainer, so the two candidates of a pair are scored by the same function.
    """
    hf = _load_scalar(base, tokenizer, trust_remote_code, dtype)
    if lora_dim > 0:
        from peft import get_peft_model

        # task SEQ_CLS: peft also trains (and saves) the `score` head in full.
        with quiet_transformers():
            hf = get_peft_model(hf, training.lora_config(
                lora_dim, "SEQ_CLS", seq2seq=is_seq2seq_model(hf)))
    return RewardModel(hf).eval()


def load_reward_model(reward_model_dir: str | Path, base_model: str | None = None,
                      trust_remote_code: bool = False, dtype: torch.dtype = torch.float32):
    """(RewardModel, tokenizer, metadata) from a `train-reward` output directory.
    `base_model` overrides the base recorded in rlhfkit.json (a moved local directory)."""
    path = Path(reward_model_dir)
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise RlhfkitError(f"{path}: not a reward-model directory (no {META_FILE}); "
                           "train one with `rlhfkit train-reward PARAMS --output-dir RUN`")
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    tokenizer = models.load_tokenizer(str(path), trust_remote_code)
    if meta["lora_dim"] > 0:
        from peft import PeftModel

        base = base_model or meta["base_model"]
        if base.startswith(("/", ".", "~")) and not Path(base).expanduser().is_dir():
            raise RlhfkitError(f"{path}: its base model {base} (from {META_FILE}) is gone; "
                               "pass the base model's new location (base_model=...)")
        models.check_adapter_weights(path)  # before the base model is even loaded
        hf = _load_scalar(base, tokenizer, trust_remote_code, dtype)
        with quiet_transformers():
            hf = PeftModel.from_pretrained(hf, str(path))
    else:
        hf = _load_scalar(str(path), tokenizer, trust_remote_code, dtype)
    return RewardModel(hf).eval(), tokenizer, meta


class RewardScorer:
    """Scores (prompt, response) texts or token ids with a trained reward model.

    >>> scorer = RewardScorer.load("RUN/reward_model")  # doctest: +SKIP
    >>> scorer.score(["Summarize...\\n\\n\\nMy post [summary]: "], ["A summary."])  # +SKIP
    [0.73]
    """

    def __init__(self, model: RewardModel, tokenizer, meta: dict, device=None,
                 batch_size: int = SCORE_BATCH_SIZE):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.tokenizer, self.meta, self.batch_size = tokenizer, meta, batch_size

    @classmethod
    def load(cls, reward_model_dir: str | Path, device=None, base_model: str | None = None,
             batch_size: int = SCORE_BATCH_SIZE, trust_remote_code: bool = False):
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, tokenizer, meta = load_reward_model(reward_model_dir, base_model,
                                                   trust_remote_code, models.pick_dtype(dev))
        return cls(model, tokenizer, meta, dev, batch_size)

    def prompt(self, record: dict) -> str:
        """A data record's prompt as the reward model was trained on it."""
        from rlhfkit.data import prompt_text

        return prompt_text(record, self.meta.get("instruction"), self.tokenizer)

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        """Scores of full prompts (instruction included) and their responses."""
        return self.score_ids(prompts, responses).tolist()

    def score_ids(self, prompts: list[str] | list[list[int]],
                  responses: list[str] | list[list[int]]) -> torch.Tensor:
        """Like `score`, also for token ids: PPO's query ids and response ids (without
        the padding after EOS). Returns a float32 tensor on the CPU."""
        m = self.meta
        if self.model.seq2seq:
            return self.score_split(*seq2seq_for_scoring(
                self.tokenizer, prompts, responses, m["prompt_sequence_length"],
                m["target_sequence_length"], m.get("append_eos", True)))
        seqs = encode_for_scoring(self.tokenizer, prompts, responses,
                                  m["prompt_sequence_length"], m["target_sequence_length"],
                                  m.get("append_eos", True))
        return self.score_sequences(seqs)

    @torch.no_grad()
    def score_split(self, prompts: list[list[int]], targets: list[list[int]]) -> torch.Tensor:
        """Encoder-decoder scores of (prompt ids, response ids + EOS), batched by length."""
        out = torch.empty(len(prompts))
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(targets[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            batch = split_batch([prompts[i] for i in chunk], [targets[i] for i in chunk],
                                self.tokenizer.pad_token_id)
            out[chunk] = self.model(**{k: v.to(self.device) for k, v in batch.items()}).cpu()
        return out

    @torch.no_grad()
    def score_sequences(self, seqs: list[list[int]]) -> torch.Tensor:
        """Scores of full token sequences, batched by length to waste little padding."""
        out = torch.empty(len(seqs))
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            batch = models.left_pad([seqs[i] for i in chunk], self.tokenizer.pad_token_id)
            scores = self.model(batch["input_ids"].to(self.device),
                                batch["attention_mask"].to(self.device))
            out[chunk] = scores.cpu()
        return out


def score_records(scorer: RewardScorer, lines: list[tuple[str, dict]]) -> list[dict]:
    """Copies of the records with `reward` (or `reward_0` / `reward_1`) added; see
    `reward_data.score_requests` for the formats."""
    from rlhfkit.reward_data import score_requests

    requests = score_requests(lines, scorer.meta.get("instruction"), scorer.tokenizer)
    scores = scorer.score([r[2] for r in requests], [r[3] for r in requests])
    out = [dict(rec) for _, rec in lines]
    for (i, key, _, _), s in zip(requests, scores, strict=True):
        out[i][key] = s
    return out
