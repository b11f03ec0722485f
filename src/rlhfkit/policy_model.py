"""The four roles of PPO -- policy, value, reference, reward -- on one copy of the base.

Peers load up to four full models (policy, value, frozen reference, reward). With LoRA
(`policy_lora_dim` > 0) rlhfkit holds exactly one copy of the base weights:

- policy: the base + the "policy" LoRA adapter (trained);
- value:  the base + the "value" adapter (trained) + a scalar head on the final hidden
          state (trained);
- reference: the same base with every adapter disabled (`peft.disable_adapter()`);
- reward: the base + the frozen "reward" adapter + the frozen score head, when the reward
          model was trained as a LoRA adapter on the same base. A seq-cls LoRA adapter's
          module paths equal the causal LM's backbone paths (`model.` for llama / qwen2,
          `transformer.` for gpt2, `gpt_neox.` for gpt_neox), so its weights load as a
          third adapter. Otherwise the reward model is loaded once, frozen, in eval mode.

When the reward adapter shares the base, the value adapter and head start as a copy of
it (Stiennon et al. 2020 initialise the value function from the reward model).

Full tuning (`policy_lora_dim` = 0) trains every weight of the policy, so the reference
must be a frozen copy (loaded only when `kl_coeff` > 0); the value head then sits on the
policy's own trunk, as in lm-human-preferences. With LoRA, `value_model: shared` does the
same on the policy adapter's trunk (no value adapter). Where the head shares the trunk,
one forward pass gives logits and values (`policy_and_values`) and the sampler's hidden
states give the rollout's values. RLOO and GRPO build no value model at all
(`value_model="none"`): no value adapter, no head, nothing saved.

Every forward pass is in eval mode (no dropout: the PPO ratio must be 1, up to float
rounding, on the first minibatch) and passes explicit position ids, because inputs are
left-padded.

Encoder-decoder policies (T5 / Flan-T5, `models.is_seq2seq`) take the same inputs -- the
query and response ids joined, (B, P + T) -- and split them: the query is the encoder's
input, the response the decoder's targets (decoder inputs shifted right). The sampler
runs the encoder once per prompt and decodes with a KV cache; log-probs, values and KL
are over decoder tokens, the value head reads the decoder's final hidden state, the
reference is the same model with adapters off (LoRA on both stacks' q, k, v, o, wi, wo).
The reward model is loaded on its own (an encoder-decoder reward model scores
prompt -> encoder, response -> decoder: `reward_model.seq2seq_scores`).
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhfkit.errors import RlhfkitError
from rlhfkit.models import (
    decoder_inputs,
    left_pad,
    load_causal_lm,
    load_tokenizer,
    resolve_model_reference,
)
from rlhfkit.sharding import gathered
from rlhfkit.training import check_finite, lora_config

REWARD_INFO = "rlhfkit.json"  # written by the reward stage next to the weights
TRAINED = ("policy", "value")  # adapter names that train; "reward" stays frozen
VALUE_LAYOUTS = ("separate", "shared", "none")  # value adapter + head | head on the policy trunk | none


@dataclass
class Sample:
    """What the sampler returns for B prompts: tokens (B, T <= max_new_tokens), padded with
    pad_token_id after EOS; their logprobs (B, T); the entropy of each step's distribution
    (B, T); V(s_t) before each token (B, T) from the sampler's own hidden states when the
    value head shares the policy's trunk and values were asked for, else None."""

    tokens: torch.Tensor
    logprobs: torch.Tensor
    entropy: torch.Tensor
    values: torch.Tensor | None = None


# -- the reward model's directory ---------------------------------------------------------

@dataclass
class RewardInfo:
    """RUN/reward_model/rlhfkit.json, as the reward stage writes it."""

    path: Path
    base_model: str | None  # the base it was trained on
    lora_dim: int            # 0: full weights in `path`
    prompt_sequence_length: int
    target_sequence_length: int
    append_eos: bool = True  # scoring layout: prompt + response + EOS (reward_data)


def read_reward_info(path: str | Path) -> RewardInfo:
    path = Path(path)
    meta_file = path / REWARD_INFO
    if not meta_file.is_file():
        raise RlhfkitError(f"{path}: no reward model here (no {REWARD_INFO}); train one "
                           "first with `rlhfkit train-reward PARAMS --output-dir RUN`")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        return RewardInfo(path, meta.get("base_model"), int(meta["lora_dim"]),
                          int(meta["prompt_sequence_length"]),
                          int(meta["target_sequence_length"]),
                          bool(meta.get("append_eos", True)))
    except json.JSONDecodeError as exc:
        raise RlhfkitError(f"{meta_file}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise RlhfkitError(f"{meta_file}: missing or invalid field {exc}") from exc


def same_model(a: str | None, b: str | None) -> bool:
    """Do two model references name the same weights (local paths compared resolved)?"""
    if not a or not b:
        return False
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.is_dir() and pb.is_dir():
        return pa.resolve() == pb.resolve()
    return a == b


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids for left-padded rows: 0 at each row's first real token."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def prompt_once_logits(lm, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                       response_ids: torch.Tensor, response_mask: torch.Tensor,
                       rows: torch.Tensor) -> torch.Tensor:
    """Next-token logits of responses whose prompts run once. prompt_ids, prompt_mask
    (n, P): left-padded prompts; response_ids, response_mask (R, T): row r continues prompt
    rows[r] (rows (R,), long). The prompts' key/value cache, reordered to the response rows,
    serves every continuation, and gradients flow through it into the one prompt pass.
    -> (R, T, V): position j predicts response token j (the last prompt position, token 0).
    An encoder-decoder runs its encoder once per prompt instead. Used where several
    responses share a prompt: DPO's chosen and rejected, RLOO's and GRPO's k samples."""
    if lm.config.is_encoder_decoder:
        from transformers.modeling_outputs import BaseModelOutput

        enc = lm.get_encoder()(input_ids=prompt_ids, attention_mask=prompt_mask).last_hidden_state
        return lm(encoder_outputs=BaseModelOutput(last_hidden_state=enc[rows]),
                  attention_mask=prompt_mask[rows], use_cache=False,
                  decoder_input_ids=decoder_inputs(response_ids, lm.config.decoder_start_token_id)
                  ).logits
    out = lm(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions(prompt_mask),
             use_cache=True, logits_to_keep=1)
    first = out.logits[rows]
    if response_ids.shape[1] == 1:
        return first
    cache = out.cache  # transformers 5's DynamicCache (the `past_key_values` name is deprecated)
    cache.reorder_cache(rows)
    start = prompt_mask.long().sum(-1)[rows][:, None]  # each row's real prompt tokens
    cont = lm(input_ids=response_ids[:, :-1],  # the last token predicts nothing we need
              attention_mask=torch.cat([prompt_mask[rows], response_mask[:, :-1]], 1),
              position_ids=start + torch.arange(response_ids.shape[1] - 1, device=start.device),
              cache=cache, use_cache=True)
    return torch.cat([first, cont.logits], 1)


# -- the roles ----------------------------------------------------------------------------

class Roles(torch.nn.Module):
    """policy / value / reference / reward forward passes over shared weights."""

    def __init__(self, lm, tokenizer, peft_model, value_head, reward_info: RewardInfo,
                 reference=None, reward_model=None, reward_head=None, reward_tokenizer=None,
                 temperature: float = 1.0, shared_value: bool = False):
        super().__init__()
        # The policy PPO samples from and trains is softmax(logits / temperature), the
        # reference likewise (TRL's PPO): below 1 the training samples sit closer to the
        # greedy outputs bulk inference evaluates. 1 = the model's own distribution.
        self.temperature = temperature
        self.lm = lm                    # transformers causal LM (LoRA layers injected)
        self.peft = peft_model          # None in full tuning
        self.value_head = value_head    # None: no value model (RLOO, GRPO)
        # The head reads the policy's own trunk: full tuning, or LoRA value_model "shared"
        self.shared_value = value_head is not None and (peft_model is None or shared_value)
        self.reference = reference      # full tuning and kl_coeff > 0 only
        self.reward_model = reward_model  # reward_model.RewardModel (not shared), or None
        self.reward_head = reward_head    # the shared-base reward adapter's score head
        self.tokenizer = tokenizer
        self.reward_tokenizer = reward_tokenizer or tokenizer
        self.reward_info = reward_info
        self.seq2seq = bool(getattr(lm.config, "is_encoder_decoder", False))
        # Stop ids: the tokenizer's EOS and any the checkpoint's generation config adds
        # (an end-of-turn token), as bulk inference does.
        extra = getattr(getattr(lm, "generation_config", None), "eos_token_id", None)
        extra = list(extra) if isinstance(extra, (list, tuple)) else [extra]
        self.eos_ids = [i for i in dict.fromkeys([tokenizer.eos_token_id, *extra])
                        if i is not None]
        self._active = None
        # RLOO / GRPO: a prompt's k responses continue one prompt pass (off under FSDP
        # sharding, whose per-layer hooks expect one forward per layer before backward)
        self.share_prompts = True
        self.requires_grad_(False)
        for p in self.trainable_parameters().values():
            p.requires_grad_(True)

    # which weights train ------------------------------------------------------------------
    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        """Adapters "policy" and "value" (if any) + the value head (if any) with LoRA, or the
        policy's weights + the value head (full tuning). Names are stable across runs
        (checkpoint keys)."""
        if self.peft is not None:
            out = {n: p for n, p in self.lm.named_parameters()
                   if "lora_" in n and any(f".{a}." in n for a in TRAINED)}
        else:
            out = {f"lm.{n}": p for n, p in self.lm.named_parameters()}
        if self.value_head is not None:
            out.update({f"value_head.{n}": p for n, p in self.value_head.named_parameters()})
        return out

    def _use(self, adapter: str) -> None:
        """Activate one adapter. peft's set_adapter also flips requires_grad (only the
        active adapter trains), which would silently freeze the other trained adapter;
        we freeze all, then re-enable exactly the trained weights."""
        if self.peft is None or self._active == adapter:
            return
        self.peft.base_model.set_adapter(adapter, inference_mode=True)
        for p in self.trainable_parameters().values():
            p.requires_grad_(True)
        self._active = adapter

    @property
    def has_reference(self) -> bool:
        return self.peft is not None or self.reference is not None

    # forward passes ----------------------------------------------------------------------
    def _policy_or_reference(self, reference: bool):
        """(model, context) for a policy or a reference forward pass."""
        if reference and self.peft is None:
            if self.reference is None:
                raise RuntimeError("no reference model was loaded (kl_coeff = 0)")
            return self.reference, nullcontext()
        self._use("policy")
        if reference:
            self._active = None  # re-enabling adapters resets requires_grad: redo on next use
            return self.lm, self.peft.disable_adapter()
        return self.lm, nullcontext()

    def logits(self, ids, mask, n_response: int, reference: bool = False) -> torch.Tensor:
        """Next-token logits / temperature at the positions that predict the last
        `n_response` tokens: ids, mask (B, L) -> (B, n_response, V)."""
        model, ctx = self._policy_or_reference(reference)
        with ctx:
            if self.seq2seq:  # the decoder's logits at the n_response target positions
                logits = model(**self._split(ids, mask, n_response), use_cache=False).logits
            else:
                logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask),
                               logits_to_keep=n_response + 1, use_cache=False).logits[:, :-1]
        return logits / self.temperature

    def response_logits(self, piece, k: int = 1, reference: bool = False) -> torch.Tensor:
        """`logits` of a rollout piece (`policy_rollout.Piece`: b rows, t response tokens)
        -> (b, t, V). With k > 1 the piece holds whole groups (each prompt's k responses in
        a row) and each prompt runs once (`prompt_once_logits`): k responses cost one
        prompt pass, not k."""
        if k == 1 or not self.share_prompts:
            return self.logits(piece.ids, piece.attn, piece.width, reference)
        model, ctx = self._policy_or_reference(reference)
        rows = torch.arange(len(piece) // k, device=piece.responses.device).repeat_interleave(k)
        with ctx:
            logits = prompt_once_logits(model, piece.query_ids[::k], piece.query_mask[::k],
                                        piece.responses, torch.ones_like(piece.responses), rows)
        return logits / self.temperature

    def _split(self, ids, mask, n_response: int) -> dict[str, torch.Tensor]:
        """Encoder-decoder inputs from the joined (B, P + T) ids: the query (B, P) is the
        encoder's input, the last T tokens the decoder's targets, read shifted right."""
        start = self.lm.config.decoder_start_token_id
        return {"input_ids": ids[:, :-n_response], "attention_mask": mask[:, :-n_response],
                "decoder_input_ids": decoder_inputs(ids[:, -n_response:], start)}

    def policy_and_values(self, ids, mask, n_response: int
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits / temperature and V(s_t) at the positions before each of the last
        `n_response` tokens from ONE forward pass of the policy (the value head reads its
        final hidden state; needs `shared_value`): (B, L) -> (B, n, V), (B, n)."""
        if not self.shared_value:
            raise RuntimeError("the value head does not share the policy's trunk")
        self._use("policy")
        if self.seq2seq:  # the decoder's final hidden state at each target position
            out = self.lm(**self._split(ids, mask, n_response), use_cache=False,
                          output_hidden_states=True)
            return out.logits / self.temperature, self._value(out.decoder_hidden_states[-1])
        out = self.lm(input_ids=ids, attention_mask=mask, position_ids=positions(mask),
                      logits_to_keep=n_response + 1, use_cache=False, output_hidden_states=True)
        # hidden_states[-1] is the final (normed) hidden state the LM head reads (checked
        # for llama, gpt2, gpt_neox, qwen2 in tests)
        h = out.hidden_states[-1][:, -(n_response + 1):-1]
        return out.logits[:, :-1] / self.temperature, self._value(h)

    def _value(self, h: torch.Tensor) -> torch.Tensor:
        return self.value_head(h.to(self.value_head.weight.dtype)).squeeze(-1)

    def values(self, ids, mask, n_response: int) -> torch.Tensor:
        """V(s_t) before each of the last `n_response` tokens: (B, L) -> (B, n_response).
        A separate value adapter's own trunk, or (shared) the policy's."""
        self._use("policy" if self.shared_value else "value")
        if self.seq2seq:
            x = self._split(ids, mask, n_response)
            enc = self.lm.get_encoder()(input_ids=x["input_ids"], attention_mask=x["attention_mask"])
            h = self.lm.get_decoder()(input_ids=x["decoder_input_ids"],
                                      encoder_hidden_states=enc.last_hidden_state,
                                      encoder_attention_mask=x["attention_mask"],
                                      use_cache=False).last_hidden_state
            return self._value(h)
        h = self.lm.base_model(input_ids=ids, attention_mask=mask,
                               position_ids=positions(mask), use_cache=False).last_hidden_state
        return self._value(h[:, -(n_response + 1):-1])

    @torch.no_grad()
    def scores(self, input_ids, attention_mask, suffix_ids=None, suffix_mask=None
               ) -> torch.Tensor:
        """Reward-model score at the last real token (the last column: left padding):
        (B, L) -> (B,). The ids are in the reward model's vocabulary (see reward_inputs); an
        encoder-decoder reward model also takes the responses (suffix_ids, suffix_mask)."""
        ids, mask = input_ids, attention_mask
        if self.reward_model is not None:  # reward_model.reward_scores / seq2seq_scores
            return self.reward_model(ids, mask, suffix_ids, suffix_mask)
        self._use("reward")
        h = self.lm.base_model(input_ids=ids, attention_mask=mask, position_ids=positions(mask),
                               use_cache=False).last_hidden_state[:, -1]
        return self.reward_head(h.to(self.reward_head.weight.dtype)).squeeze(-1).float()

    @torch.no_grad()
    def sample(self, ids, mask, max_new_tokens: int, step: int = 0,
               with_values: bool = False, k: int = 1) -> Sample:
        """Sample responses from the policy: softmax(logits / temperature), no top-k /
        top-p, so the sampler's logprobs are the policy's (PPO's old logprobs, as TRL reuses its
        generation scores). KV-cached; stops when every row has produced EOS. With
        `with_values` and a shared trunk, the value head reads each step's last hidden state
        (lm-human-preferences: no separate value pass in the rollout). (B, P) -> Sample.
        k > 1: the rows are groups of k copies of a prompt (RLOO / GRPO), whose prompt pass
        runs once per group. A sharded policy is gathered for the response
        (sharding.gathered)."""
        with gathered(self.lm):
            return self._sample(ids, mask, max_new_tokens, step, with_values, k)

    def _sample(self, ids, mask, max_new_tokens: int, step: int, with_values: bool,
                k: int = 1) -> Sample:
        self._use("policy")
        with_values = with_values and self.shared_value
        pad = self.tokenizer.pad_token_id
        eos = torch.tensor(self.eos_ids, dtype=torch.long, device=ids.device)
        pos = positions(mask)
        rows = torch.arange(ids.shape[0] // k, device=ids.device).repeat_interleave(k)
        if self.seq2seq:  # the encoder runs once; the decoder starts from its start token
            enc_mask = mask
            enc = self.lm.get_encoder()(input_ids=ids[::k], attention_mask=mask[::k])
            if k > 1:
                enc.last_hidden_state = enc.last_hidden_state[rows]
            start = torch.full_like(ids[:, :1], self.lm.config.decoder_start_token_id)
            out = self.lm(encoder_outputs=enc, attention_mask=enc_mask, decoder_input_ids=start,
                          use_cache=True, output_hidden_states=with_values)
        else:  # one prompt pass per group, its cache copied to the group's k rows
            out = self.lm(input_ids=ids[::k], attention_mask=mask[::k], position_ids=pos[::k],
                          use_cache=True, logits_to_keep=1, output_hidden_states=with_values)
            if k > 1:
                out.cache.reorder_cache(rows)
                out.logits = out.logits[rows]
                if with_values:
                    out.hidden_states = tuple(h[rows] for h in out.hidden_states)
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        tokens, logprobs, entropy, values = [], [], [], []
        for _ in range(max_new_tokens):
            if with_values:  # V(s_t): the state before the token sampled now
                states = out.decoder_hidden_states if self.seq2seq else out.hidden_states
                values.append(self._value(states[-1][:, -1]))
            logits = out.logits[:, -1].float() / self.temperature
            check_finite(step, **{"policy logits while sampling": logits})
            logp = torch.log_softmax(logits, -1)
            probs = logp.exp()
            tok = torch.multinomial(probs, 1).squeeze(1)
            logprobs.append(logp.gather(1, tok[:, None]).squeeze(1))
            entropy.append(-(probs * logp).sum(-1))
            tok = torch.where(done, torch.full_like(tok, pad), tok)
            tokens.append(tok)
            done |= torch.isin(tok, eos)
            if done.all() or len(tokens) == max_new_tokens:
                break
            if self.seq2seq:
                out = self.lm(encoder_outputs=enc, attention_mask=enc_mask,
                              decoder_input_ids=tok[:, None], cache=out.cache, use_cache=True,
                              output_hidden_states=with_values)
                continue
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            pos = pos[:, -1:] + 1
            out = self.lm(input_ids=tok[:, None], attention_mask=mask, position_ids=pos,
                          cache=out.cache, use_cache=True,
                          output_hidden_states=with_values)
        return Sample(torch.stack(tokens, 1), torch.stack(logprobs, 1), torch.stack(entropy, 1),
                      torch.stack(values, 1) if with_values else None)

    def reward_inputs(self, query_ids, query_mask, responses, resp_mask
                      ) -> dict[str, torch.Tensor]:
        """The reward stage's layout (`reward_data.encode_for_scoring`: prompt ids +
        response ids + EOS), left-padded, so PPO's scores are the reward model's own.
        A reward model with another vocabulary gets the decoded texts; an encoder-decoder
        reward model the two parts apart (`reward_data.split_batch`)."""
        from rlhfkit.reward_data import encode_for_scoring, seq2seq_for_scoring, split_batch

        prompts = [q[m.bool()].tolist() for q, m in zip(query_ids, query_mask, strict=True)]
        answers = [r[m.bool()].tolist() for r, m in zip(responses, resp_mask, strict=True)]
        rtok, info = self.reward_tokenizer, self.reward_info
        if rtok is not self.tokenizer:
            prompts = self.tokenizer.batch_decode(prompts, skip_special_tokens=True)
            answers = self.tokenizer.batch_decode(answers, skip_special_tokens=True)
        lengths = (info.prompt_sequence_length, info.target_sequence_length, info.append_eos)
        if self.reward_model is not None and self.reward_model.seq2seq:
            batch = split_batch(*seq2seq_for_scoring(rtok, prompts, answers, *lengths),
                                rtok.pad_token_id)
        else:
            batch = left_pad(encode_for_scoring(rtok, prompts, answers, *lengths),
                             rtok.pad_token_id)
        return {k: v.to(query_ids.device) for k, v in batch.items()}


# -- building the roles ---------------------------------------------------------------------

def build_roles(base_ref: str, reward_dir: str | Path, lora_dim: int, need_reference: bool,
                trust_remote_code: bool = False, dtype: torch.dtype = torch.float32,
                temperature: float = 1.0, value_model: str = "separate") -> Roles:
    """Load the base once and put every role on it (see the module docstring).
    `value_model`: "separate" (LoRA: a value adapter + head), "shared" (the head on the
    policy's trunk; full tuning always does this) or "none" (RLOO, GRPO)."""
    if value_model not in VALUE_LAYOUTS:
        raise RlhfkitError(f"value_model must be one of {', '.join(VALUE_LAYOUTS)}, "
                           f"got {value_model!r}")
    from peft import get_peft_model

    from rlhfkit.reward_model import load_reward_model, quiet_transformers

    base = resolve_model_reference(base_ref)
    info = read_reward_info(reward_dir)
    tokenizer = load_tokenizer(base, trust_remote_code)
    with quiet_transformers():
        lm = load_causal_lm(base, trust_remote_code, dtype).eval()
    seq2seq = bool(lm.config.is_encoder_decoder)
    task = "SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM"
    hidden = lm.get_input_embeddings().weight.shape[1]
    value_head = None
    if value_model != "none":
        value_head = torch.nn.Linear(hidden, 1, bias=False, dtype=dtype)
        torch.nn.init.zeros_(value_head.weight)  # V = 0 at first: advantages = returns
    separate_value = lora_dim > 0 and value_model == "separate"

    # An encoder-decoder's seq-cls adapter (T5ForSequenceClassification) does not load onto
    # the LM's paths: its reward model is loaded on its own.
    shares_base = (lora_dim > 0 and info.lora_dim > 0 and not seq2seq
                   and same_model(info.base_model, base))
    peft_model = reference = reward_model = reward_head = None
    with quiet_transformers():
        if lora_dim > 0:
            peft_model = get_peft_model(lm, lora_config(lora_dim, task, seq2seq=seq2seq),
                                        adapter_name="policy")
            if shares_base:
                reward_head = _attach_reward_adapter(peft_model, info, "reward", hidden, dtype)
            if separate_value and shares_base:  # Stiennon et al.: V starts as the reward model
                value_head.weight.data.copy_(
                    _attach_reward_adapter(peft_model, info, "value", hidden, dtype).weight)
            elif separate_value:
                peft_model.add_adapter("value", lora_config(lora_dim, task, seq2seq=seq2seq))
        elif need_reference:
            reference = load_causal_lm(base, trust_remote_code, dtype).eval()
    rtok = tokenizer
    if not shares_base:  # loaded once, frozen, eval mode
        reward_model, rtok, _ = load_reward_model(info.path, None, trust_remote_code, dtype)
        reward_model.requires_grad_(False)
        if rtok.get_vocab() == tokenizer.get_vocab():
            rtok = tokenizer
    return Roles(lm, tokenizer, peft_model, value_head, info, reference, reward_model,
                 reward_head, rtok, temperature, shared_value=not separate_value)


def _attach_reward_adapter(peft_model, info: RewardInfo, name: str, hidden: int,
                           dtype: torch.dtype) -> torch.nn.Linear:
    """Load RUN/reward_model's seq-cls LoRA weights as adapter `name` of the causal LM
    and return its score head (saved by peft as modules_to_save `score`)."""
    from peft import LoraConfig, set_peft_model_state_dict
    from safetensors.torch import load_file

    config = LoraConfig.from_pretrained(str(info.path))
    config.task_type, config.modules_to_save, config.inference_mode = "CAUSAL_LM", None, False
    peft_model.add_adapter(name, config)
    weights = load_file(str(info.path / "adapter_model.safetensors"))
    head_keys = [k for k in weights if k.split(".")[-2] in ("score", "classifier")]
    if len(head_keys) != 1:
        raise RlhfkitError(f"{info.path}: expected one score head in adapter_model.safetensors,"
                           f" found {head_keys or 'none'}")
    head_weight = weights.pop(head_keys[0])
    result = set_peft_model_state_dict(peft_model, weights, adapter_name=name)
    if result.unexpected_keys:
        raise RlhfkitError(f"{info.path}: adapter weights do not fit the base model: "
                           f"{result.unexpected_keys[:3]}")
    head = torch.nn.Linear(hidden, 1, bias=False, dtype=dtype)
    head.weight.data.copy_(head_weight.reshape(1, hidden))
    return head
