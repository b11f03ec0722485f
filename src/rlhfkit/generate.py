"""Batched, KV-cached decoding for bulk inference that stops feeding rows once they end.

`transformers`' `generate` keeps every row of a batch in every forward pass until the
last row ends: a finished row still costs its attention over the whole cache and its
share of every matmul, so one summary that never ends sets the cost of its whole batch.
`decode` drops a row from the batch (and from the KV cache,
`DynamicCache.batch_select_indices`) the step it produces EOS; what remains is plain
greedy (argmax) or plain sampling from softmax(logits / temperature), the decoding
Vertex's bulk inferrer does. Greedy output equals `generate`'s (a test compares them).

Causal LMs only; encoder-decoder models keep `generate`.
"""

from __future__ import annotations

import torch

from rlhfkit.policy_model import positions


def next_tokens(logits: torch.Tensor, temperature: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) last-position logits -> (B,) tokens: argmax when `temperature` is 0, else a
    sample of softmax(logits / temperature) (no top-k / top-p)."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, -1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@torch.no_grad()
def decode(lm, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int,
           eos_ids: list[int], pad_id: int, temperature: float = 0.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """New tokens for left-padded prompts `ids`, `mask` (B, P) -> (B, T), T <=
    `max_new_tokens`: each row's tokens up to and including its first EOS, then `pad_id`.

    Each step runs only the rows still going: a row that produced EOS leaves the batch
    and the cache at once."""
    b = ids.shape[0]
    new = torch.full((b, max_new_tokens), pad_id, dtype=torch.long, device=ids.device)
    if max_new_tokens == 0:
        return new
    eos = torch.tensor(eos_ids, dtype=torch.long, device=ids.device)
    alive = torch.arange(b, device=ids.device)  # row of `new` for each row still going
    pos = positions(mask)
    out = lm(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
             logits_to_keep=1)
    width = 0
    for t in range(max_new_tokens):
        tok = next_tokens(out.logits[:, -1], temperature, generator)
        new[alive, t] = tok
        width = t + 1
        going = ~torch.isin(tok, eos)
        if not going.any() or width == max_new_tokens:
            break
        if not going.all():  # drop the rows that just ended, from the cache too
            keep = going.nonzero().squeeze(1)
            out.cache.batch_select_indices(keep)
            alive, tok, mask, pos = alive[keep], tok[keep], mask[keep], pos[keep]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        pos = pos[:, -1:] + 1
        out = lm(input_ids=tok[:, None], attention_mask=mask, position_ids=pos,
                 cache=out.cache, use_cache=True)
    return new[:, :width]
