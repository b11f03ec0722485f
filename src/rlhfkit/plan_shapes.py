"""The model's shape for `rlhfkit plan` (rlhfkit/plan.py): widths, depths and exact
parameter counts read from its config alone, counted on a model built on the meta device
(which holds no memory)."""

from __future__ import annotations

from dataclasses import dataclass

from rlhfkit.errors import RlhfkitError


@dataclass(frozen=True)
class ModelShape:
    """What the estimator needs to know about a model; counts in parameters (elements)."""

    name: str
    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    kv_dim: int                 # num_key_value_heads x head_dim (= hidden without GQA)
    intermediate_size: int
    gated_mlp: bool             # Llama / Qwen / Mistral: gate and up projections
    n_params: int               # the causal LM's parameters (tied embeddings once)
    lm_head_params: int         # 0 when tied to the input embeddings
    block_linears: tuple[tuple[int, int], ...]  # (in, out) of each linear of one block

    @property
    def backbone_params(self) -> int:
        """Parameters of the scalar-head model's trunk (no LM head)."""
        return self.n_params - self.lm_head_params

    def lora_params(self, rank: int) -> int:
        """LoRA A (r x in) + B (out x r) on every linear of every block (peft
        "all-linear" leaves out the LM head), 0 for rank 0."""
        return rank * self.num_layers * sum(i + o for i, o in self.block_linears)

    def act_elements(self) -> int:
        """Elements autograd keeps per token and layer (see rlhfkit/plan.py's docstring):
        7 x hidden + k and v + 4 (gated) or 2 x the MLP width."""
        return 7 * self.hidden_size + 2 * self.kv_dim + (
            4 if self.gated_mlp else 2) * self.intermediate_size

    def kv_elements(self) -> int:
        """Key + value cache elements per token (all layers)."""
        return 2 * self.num_layers * self.kv_dim


def shape_from_config(config, name: str = "") -> ModelShape:
    """A `ModelShape` from a transformers config: the model is built on the meta device
    (no memory, a second for 7B) so the counts are those of the real model. An
    encoder-decoder (T5) counts its encoder and decoder blocks as layers, each priced as
    a decoder block (self- and cross-attention: an overestimate for the encoder)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    with torch.device("meta"):
        model = (AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM).from_config(config)
    n_params = sum(p.numel() for p in model.parameters())  # shared weights once
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is model.get_input_embeddings().weight
    head_params = 0 if head is None or tied else head.weight.numel()
    layers = ([*_blocks(model.get_decoder()), *_blocks(model.get_encoder())] if seq2seq
              else _blocks(model))
    linears = tuple((m.in_features, m.out_features) for m in layers[0].modules()
                    if isinstance(m, torch.nn.Linear))
    if not linears:  # GPT-2's Conv1D layers: weight (in, out)
        linears = tuple(tuple(m.weight.shape) for m in layers[0].modules()
                        if type(m).__name__ == "Conv1D")
    names = [n for n, _ in layers[0].named_modules()]
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = text.hidden_size
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    inter = (getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None)
             or getattr(text, "d_ff", None) or 4 * hidden)
    return ModelShape(name=name, model_type=text.model_type, vocab_size=text.vocab_size,
                      hidden_size=hidden, num_layers=len(layers), kv_dim=kv_heads * head_dim,
                      intermediate_size=inter,
                      gated_mlp=any(n.endswith(("gate_proj", "wi_0")) for n in names),
                      n_params=n_params, lm_head_params=head_params, block_linears=linears)


def _blocks(model):
    """The repeated decoder blocks: the longest ModuleList in the model."""
    import torch

    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise RlhfkitError(f"{type(model).__name__}: no decoder blocks found")
    return max(lists, key=len)


def load_shape(ref: str, trust_remote_code: bool = False) -> ModelShape:
    """The shape of `large_model_reference` from its config.json alone."""
    from transformers import AutoConfig

    from rlhfkit import models

    path = models.resolve_model_reference(ref)
    models.ensure_available(path)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise RlhfkitError(f"{path}: cannot read the model config: {exc}") from exc
    return shape_from_config(config, name=ref)
