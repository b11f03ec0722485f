"""What the reward model reads: (prompt, response) -> token ids, preference pairs, the
held-out split and the order in which training visits the pairs.

One layout everywhere the reward model scores text, in training, in `rlhfkit score` and in
PPO (which scores its query ids followed by the sampled response ids):

    [prompt ids, left-truncated to prompt_sequence_length, BOS kept]
  + [response ids (no special tokens), truncated to target_sequence_length]
  + [EOS]   (when the tokenizer has one)

Prompt and response are tokenized SEPARATELY and concatenated, not tokenized as one
string: that is what the policy produces at RL time (the query's ids, then ids sampled one
by one), so the reward model is trained on exactly the token boundaries it will score. The
trailing EOS tells the model the response is finished; the score is read there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rlhfkit import models
from rlhfkit.errors import RlhfkitError

ENCODE_CHUNK = 1024  # prompts tokenized per call: bounds the padded (chunk, length) tensor
# Streams of the seeded generator, so the data order and the held-out split never share
# random numbers (changing one does not move the other).
_ORDER_STREAM, _HOLDOUT_STREAM = 1, 2


# -- token layout ---------------------------------------------------------------------------

def encode_prompt_ids(tokenizer, prompts: list[str] | list[list[int]],
                      prompt_sequence_length: int) -> list[list[int]]:
    """Prompt token ids, left-truncated with `models.encode_prompts`' rule (BOS kept).

    Texts are tokenized; id lists (PPO's queries, already made by `models.encode_prompts`
    with the same length, their left padding removed) are used as they are.
    """
    if not prompts or not isinstance(prompts[0], str):
        return [list(map(int, p)) for p in prompts]
    texts = [_strip_bos_text(tokenizer, t) for t in prompts]
    out: list[list[int]] = []
    for start in range(0, len(texts), ENCODE_CHUNK):
        batch = models.encode_prompts(tokenizer, texts[start:start + ENCODE_CHUNK],
                                      prompt_sequence_length)
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
            out.append(ids[mask.bool()].tolist())
    return out


def encode_response_ids(tokenizer, responses: list[str] | list[list[int]],
                        target_sequence_length: int, append_eos: bool = True) -> list[list[int]]:
    """Response ids (no special tokens added) cut to `target_sequence_length`, then EOS.

    An id list that already ends with EOS (a finished PPO sample) gets no second one; PPO
    should pass its samples without the padding after EOS.
    """
    if responses and isinstance(responses[0], str):
        ids_list = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    else:
        ids_list = [list(map(int, r)) for r in responses]
    eos = tokenizer.eos_token_id if append_eos else None
    out = []
    for ids in ids_list:
        ids = ids[:target_sequence_length]
        if eos is not None and (not ids or ids[-1] != eos):
            ids = ids + [eos]
        out.append(ids)
    return out


def encode_for_scoring(tokenizer, prompts: list[str] | list[list[int]],
                       responses: list[str] | list[list[int]], prompt_sequence_length: int,
                       target_sequence_length: int, append_eos: bool = True) -> list[list[int]]:
    """The reward model's input for each (prompt, response): prompt ids + response ids
    (+ EOS), unpadded. Pad a batch of them with `models.left_pad`."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    p_ids = encode_prompt_ids(tokenizer, prompts, prompt_sequence_length)
    r_ids = encode_response_ids(tokenizer, responses, target_sequence_length, append_eos)
    return [p + r for p, r in zip(p_ids, r_ids, strict=True)]


def seq2seq_for_scoring(tokenizer, prompts: list[str] | list[list[int]],
                        responses: list[str] | list[list[int]], prompt_sequence_length: int,
                        target_sequence_length: int, append_eos: bool = True
                        ) -> tuple[list[list[int]], list[list[int]]]:
    """`encode_for_scoring`'s two parts kept apart, for an encoder-decoder reward model:
    (prompt ids: the encoder's input, response ids + EOS: the decoder's targets)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    return (encode_prompt_ids(tokenizer, prompts, prompt_sequence_length),
            encode_response_ids(tokenizer, responses, target_sequence_length, append_eos))


def _strip_bos_text(tokenizer, text: str) -> str:
    """A chat template that writes BOS as text (Llama-2-chat: "<s>[INST] ...") would get a
    second BOS from the tokenizer; drop the textual one."""
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and tokenizer.bos_token_id is not None:
        return text[len(bos):]
    return text


# -- preference pairs -----------------------------------------------------------------------

@dataclass
class Pairs:
    """Tokenized preference pairs: `chosen[i]` and `rejected[i]` share record i's prompt.
    `chosen_prob[i]`, when known (demo world), is the probability that a labeller prefers
    the chosen candidate (`demo.world.chosen_probability`)."""

    chosen: list[list[int]]
    rejected: list[list[int]]
    chosen_prob: list[float] | None = None
    # encoder-decoder only: the prompt's tokens (the encoder's input) at the start of
    # chosen[i] and rejected[i]; the rest is the decoder's. None: a causal model.
    prompt_lengths: list[int] | None = None

    def __len__(self) -> int:
        return len(self.chosen)

    def subset(self, indices) -> Pairs:
        indices = list(indices)
        prob = None if self.chosen_prob is None else [self.chosen_prob[i] for i in indices]
        plen = None if self.prompt_lengths is None else [self.prompt_lengths[i] for i in indices]
        return Pairs([self.chosen[i] for i in indices], [self.rejected[i] for i in indices],
                     prob, plen)


def encode_pairs(tokenizer, records: list[dict], instruction: str | None,
                 prompt_sequence_length: int, target_sequence_length: int,
                 seq2seq: bool = False) -> Pairs:
    """Course-format preference records -> chosen / rejected token ids.

    `choice` is the index of the preferred candidate (Vertex's format); each prompt is
    tokenized once and shared by both candidates. `seq2seq`: also record each prompt's
    length (the encoder's part, `Pairs.prompt_lengths`).
    """
    from rlhfkit.data import prompt_text

    prompts = [prompt_text(r, instruction, tokenizer) for r in records]
    p_ids = encode_prompt_ids(tokenizer, prompts, prompt_sequence_length)
    chosen = [r[f"candidate_{r['choice']}"] for r in records]
    rejected = [r[f"candidate_{1 - r['choice']}"] for r in records]
    c_ids = encode_response_ids(tokenizer, chosen, target_sequence_length)
    r_ids = encode_response_ids(tokenizer, rejected, target_sequence_length)
    return Pairs([p + c for p, c in zip(p_ids, c_ids, strict=True)],
                 [p + r for p, r in zip(p_ids, r_ids, strict=True)],
                 prompt_lengths=[len(p) for p in p_ids] if seq2seq else None)


def shared_prefix_length(a: list[int], b: list[int]) -> int:
    """How many leading tokens `a` and `b` share, leaving each at least its last token."""
    n, limit = 0, min(len(a), len(b)) - 1
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def pair_batch(pairs: Pairs, pad_id: int) -> dict[str, torch.Tensor] | None:
    """n pairs laid out so that each pair's shared prefix (its prompt, and any first tokens
    both candidates share) goes through the model once (`reward_model.pair_scores`):

    input_ids, attention_mask (n, P): the prefixes, left-padded;
    suffix_ids, suffix_mask (2n, S): the rest of each sequence, right-padded; row i
    continues prefix i (the chosen, i < n) or prefix i - n (the rejected).

    None when some pair shares no prefix at all (then score the full sequences).

    Encoder-decoder pairs (`prompt_lengths` set) split at the prompt instead: the prefixes
    are the encoder's inputs, the suffixes the decoder's targets (never None).
    """
    if pairs.prompt_lengths is not None:
        cut = pairs.prompt_lengths
    else:
        cut = [shared_prefix_length(c, r)
               for c, r in zip(pairs.chosen, pairs.rejected, strict=True)]
    if not cut or min(cut) == 0:
        return None
    tails = ([c[k:] for c, k in zip(pairs.chosen, cut, strict=True)]
             + [r[k:] for r, k in zip(pairs.rejected, cut, strict=True)])
    return split_batch([c[:k] for c, k in zip(pairs.chosen, cut, strict=True)], tails, pad_id)


def split_batch(prefixes: list[list[int]], suffixes: list[list[int]],
                pad_id: int) -> dict[str, torch.Tensor]:
    """n prefixes, left-padded to input_ids / attention_mask (n, P), and k x n suffixes,
    right-padded to suffix_ids / suffix_mask (k n, S); suffix row j continues prefix j % n.
    For an encoder-decoder reward model: the prompts (encoder) and responses + EOS
    (decoder targets) of `encode_prompt_ids` / `encode_response_ids`."""
    prefix = models.left_pad(prefixes, pad_id)
    suffix_ids, suffix_mask = models.right_pad(suffixes, pad_id)
    return {"input_ids": prefix["input_ids"], "attention_mask": prefix["attention_mask"],
            "suffix_ids": suffix_ids, "suffix_mask": suffix_mask}


def split_holdout(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) record indices: a seeded `fraction` of the n pairs held out, at
    least one pair on each side. Used when the eval dataset has no preference pairs."""
    if n < 2:
        raise RlhfkitError(f"the preference dataset has {n} pair(s); at least 2 are needed "
                           "to hold one out for accuracy (or give an eval_dataset with "
                           "preference fields)")
    k = min(n - 1, max(1, round(fraction * n)))
    perm = np.random.default_rng([seed, _HOLDOUT_STREAM]).permutation(n)
    return sorted(perm[k:].tolist()), sorted(perm[:k].tolist())


# -- data order -----------------------------------------------------------------------------

def epoch_order(n: int, epoch: int, seed: int) -> np.ndarray:
    """The order of the n training pairs in `epoch`: a fresh seeded permutation per epoch."""
    return np.random.default_rng([seed, _ORDER_STREAM, epoch]).permutation(n)


def data_position(step: int, batch_size: int, n: int) -> tuple[int, int]:
    """(epoch, index within the epoch's order) where optimizer step `step` starts reading.

    Every step reads `batch_size` pairs, so the position is a function of the step alone:
    a resumed run reads exactly the batches the interrupted one would have.
    """
    offset = step * batch_size
    return offset // n, offset % n


def global_batch(step: int, batch_size: int, n: int, seed: int) -> list[int]:
    """The indices of step `step`'s `batch_size` pairs; a batch running past the end of
    an epoch continues with the next epoch's permutation."""
    epoch, index = data_position(step, batch_size, n)
    out: list[int] = []
    while len(out) < batch_size:
        order = epoch_order(n, epoch, seed)
        take = order[index:index + batch_size - len(out)]
        out.extend(take.tolist())
        epoch, index = epoch + 1, 0
    return out


def rank_slice(indices: list[int], rank: int, world_size: int) -> list[int]:
    """This process's contiguous share of a global batch (world_size must divide it)."""
    per = len(indices) // world_size
    return indices[rank * per:(rank + 1) * per]


# -- files to score (`rlhfkit score`) -------------------------------------------------------

COMPLETION_KEYS = ("prediction", "completion", "response")  # first one present is scored


def score_requests(lines: list[tuple[str, dict]], instruction: str | None,
                   tokenizer=None) -> list[tuple[int, str, str, str]]:
    """What to score in each record, as (record index, output key, prompt, response).

    - preference records (candidate_0, candidate_1): `reward_0` and `reward_1`;
    - bulk-inference output (`inputs.inputs_pretokenized`, `prediction`): `reward`, with
      the prompt as the model saw it (the instruction is already in it);
    - input_text / messages with a `prediction`, `completion` or `response`: `reward`,
      with the instruction prepended as in training.

    Raises DataError listing every record that fits none of these.
    """
    from rlhfkit.data import prompt_text
    from rlhfkit.errors import DataError

    out, problems = [], []
    for i, (where, rec) in enumerate(lines):
        inputs = rec.get("inputs")
        if isinstance(inputs, dict) and "prediction" in rec:
            prompt, wanted = inputs.get("inputs_pretokenized"), [("reward", "prediction")]
            if not isinstance(prompt, str):
                problems.append(f"{where}: inputs.inputs_pretokenized must be a string")
                continue
        else:
            if "candidate_0" in rec or "candidate_1" in rec:
                wanted = [("reward_0", "candidate_0"), ("reward_1", "candidate_1")]
            else:
                key = next((k for k in COMPLETION_KEYS if k in rec), None)
                if key is None:
                    problems.append(f"{where}: nothing to score: expected candidate_0/"
                                    f"candidate_1 or one of {', '.join(COMPLETION_KEYS)}")
                    continue
                wanted = [("reward", key)]
            try:
                if not isinstance(rec.get("input_text", rec.get("messages")), (str, list)):
                    raise ValueError
                prompt = prompt_text(rec, instruction, tokenizer)
            except (ValueError, KeyError, TypeError, StopIteration):
                problems.append(f"{where}: needs input_text (a string) or valid messages "
                                "(check the file with `rlhfkit data validate`)")
                continue
        for out_key, key in wanted:
            if isinstance(rec.get(key), str):
                out.append((i, out_key, prompt, rec[key]))
            else:
                problems.append(f"{where}: {key} must be a string")
    if problems:
        raise DataError(problems)
    return out
