"""`rlhfkit plan PARAMS`: what each stage will need in memory, before any run.

A 7B course run (batch 64, 512 + 64 tokens) put through one forward pass needs hundreds of
GiB of activations; finding that out after the model has loaded wastes the user's time.
The plan reads only the model's config (`AutoConfig`; the parameter and LoRA counts come
from a model built on the meta device, which holds no memory) and estimates, per stage and
per process, the peak of

    weights + gradients + optimizer state + activations + logits + KV cache + runtime

against the device the stage will run on (CUDA device memory, or the machine's available
RAM). It also resolves `micro_batch_size: auto` (the largest micro-batch that fits) and
`gradient_checkpointing: auto` (on only when the step would not fit without it).

The activation model counts the tensors autograd saves per token and layer of a
decoder block with SDPA attention (no S x S attention matrix is kept: flash / memory-
efficient kernels; Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
Transformer Models", section 4, derive the same count for GPT with dropout): both norms'
inputs and outputs, q, k, v and the attention output, the o_proj input, and 4 x the MLP
width for a gated MLP (gate, up, act(gate), their product; 2 x for GPT-2's). With
gradient checkpointing only each layer's input stays, plus one layer recomputed at a time.
The figures are validated against measured peaks in docs/gpu.md
(benchmarks/plan_vs_measured.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from rlhfkit.errors import RlhfkitError
from rlhfkit.plan_shapes import ModelShape, load_shape

GIB = 2**30
# Fraction of the device memory a plan may use: the allocator's fragmentation and
# transient buffers (cuBLAS workspaces, NCCL) need the rest.
USABLE_FRACTION = 0.90
# What the process holds before any model: on CPU the RSS of torch + transformers + peft +
# accelerate imported (measured: 0.40 GiB); on CUDA the context and kernels (~0.5-1 GiB,
# not in torch.cuda.max_memory_allocated).
RUNTIME_BYTES = {"cpu": int(0.42 * GIB), "cuda": int(1.0 * GIB)}
# On CPU, glibc's malloc keeps freed activation buffers in its heap (its mmap threshold
# grows with every large free), so a training step's resident peak exceeds its live
# tensors: measured 1.3-1.9x at 60M-250M parameters (docs/gpu.md). This allowance, as a
# multiple of the step's activations + logits + KV cache, is fitted to those runs; with
# `cpu_allocator: release` (glibc's mmap threshold fixed: training.return_freed_memory) the
# peak is the live estimate, at more time per step.
CPU_ALLOCATOR_SLACK = 1.5
# Copies of the (micro, T, vocab) logits alive at the policy loss's peak: the LM head's
# output, logits / temperature, its float32 log-softmax (kept for backward) and the
# gradient flowing back into it.
POLICY_LOGIT_COPIES = 4
# A GPU is kept busy by this many rows per forward pass: `auto` checkpointing stays off
# if a micro-batch this large (or the whole local batch, when smaller) fits without it.
MIN_EFFICIENT_MICRO = 8
STAGES = ("reward", "policy", "dpo", "inference")


# -- the device ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Device:
    kind: str            # "cuda" or "cpu"
    memory: int          # bytes the stage may count on
    description: str
    releases_freed: bool = False  # CPU: cpu_allocator "release" (no allocator allowance)

    @property
    def dtype_bytes(self) -> int:
        """bf16 on GPUs (models.pick_dtype), float32 on CPU."""
        return 2 if self.kind == "cuda" else 4


def detect_device(kind: str | None = None, memory_gib: float | None = None) -> Device:
    """The device a stage would run on (CUDA device 0 if present), or the one named: its
    total memory (CUDA) or the machine's available RAM (CPU); `memory_gib` overrides."""
    import torch

    kind = kind or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind not in ("cpu", "cuda"):
        raise RlhfkitError(f"device must be cpu or cuda, got {kind!r}")
    if memory_gib is not None:
        return Device(kind, int(memory_gib * GIB), f"{kind}, {memory_gib:g} GiB (given)")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise RlhfkitError("--device cuda: no CUDA device here; give --memory-gib too")
        total = torch.cuda.mem_get_info(0)[1]
        return Device("cuda", total, f"cuda:0 {torch.cuda.get_device_name(0)}, "
                                     f"{total / GIB:.1f} GiB")
    avail = _available_ram()
    return Device("cpu", avail, f"cpu, {avail / GIB:.1f} GiB RAM available")


def for_params(device: Device, params) -> Device:
    """The device as the stage will use it: on CPU with `cpu_allocator: release`, freed
    buffers leave the process (no allocator allowance in the peak)."""
    return replace(device, releases_freed=device.kind == "cpu"
                   and params.cpu_allocator == "release")


def _available_ram() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


# -- the estimate of one stage ------------------------------------------------------------

@dataclass
class StageMemory:
    """One stage's estimated peak on one process, in bytes, and what produced it."""

    stage: str
    params: int                  # parameters held (all roles)
    trainable: int
    tokens_per_step: int         # tokens through the model per optimizer step (all ranks)
    micro_batch_size: int
    checkpointing: bool
    weights: int = 0
    gradients: int = 0
    optimizer: int = 0
    activations: int = 0         # per micro-batch, with the chosen checkpointing
    activations_no_ckpt: int = 0
    activations_ckpt: int = 0
    logits: int = 0
    kv_cache: int = 0
    runtime: int = 0
    allocator: int = 0           # CPU training: freed buffers glibc keeps (see above)
    notes: list[str] = field(default_factory=list)

    @property
    def live(self) -> int:
        """The peak of live tensors + runtime (what CUDA's allocator sees)."""
        return (self.weights + self.gradients + self.optimizer + self.activations
                + self.logits + self.kv_cache + self.runtime)

    @property
    def peak(self) -> int:
        return self.live + self.allocator


def _cpu_slack(est: StageMemory, dev: Device) -> StageMemory:
    if dev.kind == "cpu" and not dev.releases_freed:
        est.allocator = int(CPU_ALLOCATOR_SLACK * (est.activations + est.logits
                                                   + est.kv_cache))
    return est


def activation_bytes(shape: ModelShape, tokens: int, dtype_bytes: int,
                     checkpointing: bool) -> int:
    """Saved activations of one forward pass over `tokens` tokens (rows x length).

    Without checkpointing: tokens x layers x `act_elements` (+ 2 x hidden per token for the
    embeddings' output and the final norm). With it: each layer's input (hidden per token
    and layer) plus one layer's full activations while it is recomputed.
    Example (hand-checked in tests): hidden 8, kv 8, MLP 16 gated, 2 layers, 10 tokens,
    4 bytes: act_elements = 56 + 16 + 64 = 136; no ckpt (2 * 136 + 16) * 10 * 4 = 11520.
    """
    h = shape.hidden_size
    if checkpointing:
        per_token = shape.num_layers * h + shape.act_elements() + 2 * h
    else:
        per_token = shape.num_layers * shape.act_elements() + 2 * h
    return tokens * per_token * dtype_bytes


def _training_state(est: StageMemory, shape: ModelShape, dtype_bytes: int) -> None:
    """Gradients (param dtype) and AdamW's two moments (param dtype) of the trainable."""
    est.gradients = est.trainable * dtype_bytes
    est.optimizer = 2 * est.trainable * dtype_bytes


def _with_activations(est: StageMemory, shape: ModelShape, tokens: int, dtype_bytes: int
                      ) -> StageMemory:
    est.activations_no_ckpt = activation_bytes(shape, tokens, dtype_bytes, False)
    est.activations_ckpt = activation_bytes(shape, tokens, dtype_bytes, True)
    est.activations = est.activations_ckpt if est.checkpointing else est.activations_no_ckpt
    return est


def reward_memory(shape: ModelShape, lora_dim: int, batch: int, micro: int, prompt_len: int,
                  target_len: int, dev: Device, checkpointing: bool) -> StageMemory:
    """The reward stage: scalar-head trunk + LoRA (or all weights) + head, Bradley-Terry
    over `micro` pairs per forward pass. The pair path runs the prompt once and both
    continuations on its KV cache: micro x (P + 2T) tokens; with checkpointing the two full
    sequences run instead (the KV cache cannot be re-read by a recomputed layer):
    2 x micro x (P + T)."""
    b = dev.dtype_bytes
    lora = shape.lora_params(lora_dim)
    trainable = (lora if lora_dim else shape.backbone_params) + shape.hidden_size
    est = StageMemory("reward", shape.backbone_params + lora + shape.hidden_size, trainable,
                      batch * (prompt_len + 2 * target_len), micro, checkpointing,
                      runtime=RUNTIME_BYTES[dev.kind])
    est.weights = est.params * b
    _training_state(est, shape, b)
    if checkpointing:
        tokens = 2 * micro * (prompt_len + target_len)
    else:
        tokens = micro * (prompt_len + 2 * target_len)
        est.kv_cache = 0  # the prefix cache is part of the saved activations (k, v)
    return _cpu_slack(_with_activations(est, shape, tokens, b), dev)


def policy_memory(shape: ModelShape, reward_shape: ModelShape, lora_dim: int,
                  reward_lora_dim: int, shares_base: bool, kl_coeff: float, batch: int,
                  micro: int, prompt_len: int, target_len: int, dev: Device,
                  checkpointing: bool, rollout_micro: int | None = None,
                  shards: int = 1, k: int = 1, value: bool = True) -> StageMemory:
    """PPO (policy_model.Roles): with LoRA one base serves policy, value, reference (and
    the reward adapter when it shares the base); otherwise the reward model is a second
    trunk, and full tuning adds a frozen reference copy when kl_coeff > 0. RLOO / GRPO:
    `value` False (no value adapter or head) and k responses per prompt; `micro` and
    `rollout_micro` count rows (episodes), and the update runs each group's prompt once:
    micro / k prompts of P tokens + micro responses of T (policy_model.prompt_once_logits;
    not under FSDP sharding, which runs every row in full).

    Peak = weights + gradients + Adam + the larger of the update (one graph alive:
    policy logits over the T+1 response positions, then values) and the rollout (the
    KV cache of micro x (P + T) tokens while sampling; `rollout_micro` rows when the
    rollout is split differently: micro_batch_size unset samples the whole local batch
    at once, while the update takes one minibatch at a time).

    `shards` > 1 (`sharding: fsdp`, full tuning): each process holds 1/shards of the
    policy's and the reference's weights, gradients and Adam state, and gathers the whole
    policy while sampling (sharding.gathered)."""
    b = dev.dtype_bytes
    h = shape.hidden_size
    head = h if value else 0
    if lora_dim:  # policy (+ value) adapters (+ head)
        trainable = (2 if value else 1) * shape.lora_params(lora_dim) + head
        params = shape.n_params + trainable
        if shares_base:
            params += shape.lora_params(reward_lora_dim) + h
    else:
        trainable = shape.n_params + head
        params = trainable + (shape.n_params if kl_coeff > 0 else 0)
    if not shares_base:
        params += (reward_shape.backbone_params + reward_shape.lora_params(reward_lora_dim)
                   + reward_shape.hidden_size)
    share = k if shards == 1 else 1  # prompts once per group of k
    est = StageMemory("policy", params, trainable,
                      batch * k // share * prompt_len + batch * k * target_len, micro,
                      checkpointing, runtime=RUNTIME_BYTES[dev.kind])
    est.weights = params * b
    _training_state(est, shape, b)
    gathered = 0
    if shards > 1 and not lora_dim:
        split = trainable + (shape.n_params if kl_coeff > 0 else 0)
        est.weights -= split * b - split * b // shards
        est.gradients //= shards
        est.optimizer //= shards
        gathered = shape.n_params * b - shape.n_params * b // shards
        est.notes.append(f"sharded over {shards} processes")
    tokens = max(1, micro // share) * prompt_len + micro * target_len
    _with_activations(est, shape, tokens, b)
    logits = POLICY_LOGIT_COPIES * micro * (target_len + 1) * shape.vocab_size * 4
    kv = (rollout_micro or micro) * (prompt_len + target_len) * shape.kv_elements() * b
    # Rollout and update do not overlap: the rollout's cache is freed before the update.
    if kv + gathered > est.activations + logits:
        est.kv_cache, est.activations, est.logits = kv + gathered, 0, 0
        est.notes.append("peak while sampling (KV cache" +
                         (" + the gathered policy)" if gathered else ")"))
    else:
        est.logits = logits
    return _cpu_slack(est, dev)


def dpo_memory(shape: ModelShape, lora_dim: int, batch: int, micro: int, prompt_len: int,
               target_len: int, dev: Device, checkpointing: bool) -> StageMemory:
    """DPO (tuning_method: dpo): the policy (LoRA, reference = adapters off; full tuning: a
    frozen copy) scores chosen and rejected: 2 x micro sequences of P + T tokens, the
    float32 log-softmax over the T response positions of each kept for backward."""
    b = dev.dtype_bytes
    if lora_dim:
        trainable = shape.lora_params(lora_dim)
        params = shape.n_params + trainable
    else:
        trainable = shape.n_params
        params = 2 * shape.n_params
    est = StageMemory("dpo", params, trainable, 2 * batch * (prompt_len + target_len), micro,
                      checkpointing, runtime=RUNTIME_BYTES[dev.kind])
    est.weights = params * b
    _training_state(est, shape, b)
    _with_activations(est, shape, 2 * micro * (prompt_len + target_len), b)
    est.logits = POLICY_LOGIT_COPIES * 2 * micro * target_len * shape.vocab_size * 4
    return _cpu_slack(est, dev)


def inference_memory(shape: ModelShape, lora_dim: int, batch: int, prompt_len: int,
                     target_len: int, dev: Device) -> StageMemory:
    """Bulk inference: the weights (+ adapter), the KV cache of `batch` x (P + T) tokens,
    one layer's transient prefill activations and the last position's logits."""
    b = dev.dtype_bytes
    params = shape.n_params + shape.lora_params(lora_dim)
    tokens = batch * (prompt_len + target_len)
    est = StageMemory("inference", params, 0, tokens, batch, False,
                      runtime=RUNTIME_BYTES[dev.kind])
    est.weights = params * b
    est.kv_cache = tokens * shape.kv_elements() * b
    est.activations = est.activations_no_ckpt = batch * prompt_len * (
        shape.act_elements() + 2 * shape.hidden_size) * b
    est.logits = 2 * batch * shape.vocab_size * 4
    return est


# -- choosing micro-batch size and checkpointing ------------------------------------------------

def halvings(n: int) -> list[int]:
    """n, ceil(n/2), ... 1: the micro-batch sizes `auto` tries. halvings(6) == [6, 3, 2, 1]."""
    out = [n]
    while out[-1] > 1:
        out.append(math.ceil(out[-1] / 2))
    return out


def choose(estimate, local_batch: int, micro, checkpointing, budget: int
           ) -> tuple[int, bool, bool]:
    """(micro-batch, checkpointing, fits) for a stage. `estimate(micro, ckpt)` returns a
    StageMemory; `micro` is an int or "auto"; `checkpointing` is a bool or "auto".

    auto micro-batch: the largest of `halvings(local_batch)` that fits. auto
    checkpointing: off when a micro-batch of at least MIN_EFFICIENT_MICRO rows (or the
    whole local batch) fits without it, else on (it costs a ~1/3 longer step, where
    tiny micro-batches would leave the GPU idle)."""
    micros = halvings(local_batch) if micro == "auto" else [min(int(micro), local_batch)]
    ckpts = [False, True] if checkpointing == "auto" else [bool(checkpointing)]
    fits = {c: [m for m in micros if estimate(m, c).peak <= budget] for c in ckpts}
    if checkpointing != "auto":
        c = ckpts[0]
        return (fits[c][0], c, True) if fits[c] else (micros[-1], c, False)
    enough = min(MIN_EFFICIENT_MICRO, local_batch) if micro == "auto" else micros[0]
    if fits[False] and fits[False][0] >= enough:
        return fits[False][0], False, True
    if fits[True]:
        return fits[True][0], True, True
    if fits[False]:
        return fits[False][0], False, True
    return micros[-1], True, False


# -- the plan of a run --------------------------------------------------------------------------

@dataclass
class Plan:
    model: ModelShape
    device: Device
    stages: list[StageMemory]
    processes: int = 1

    @property
    def budget(self) -> int:
        return int(self.device.memory * USABLE_FRACTION)

    def stage(self, name: str) -> StageMemory | None:
        return next((s for s in self.stages if s.stage == name), None)

    def problems(self) -> list[str]:
        """One line per stage that will not fit, saying what to change."""
        return [f"{s.stage}: needs ~{_gib(s.peak)} of {_gib(self.budget)} usable on "
                f"{self.device.description}. {advice(s)}"
                for s in self.stages if s.peak > self.budget]


def advice(s: StageMemory) -> str:
    """What to change, biggest lever first."""
    tips = []
    if s.micro_batch_size > 1:
        tips.append("a smaller micro_batch_size (or \"auto\")")
    if not s.checkpointing and s.stage != "inference":
        tips.append("gradient_checkpointing: true (or \"auto\")")
    if s.allocator > 0:
        tips.append("cpu_allocator: \"release\" (freed buffers back to the OS; slower)")
    if s.optimizer > s.weights // 4:
        tips.append("LoRA (reward_lora_dim / policy_lora_dim > 0) instead of full tuning")
    tips.append("a smaller model or a device with more memory (full tuning across devices: "
                "sharding: \"fsdp\" under torchrun, docs/distributed.md)")
    return "Try " + "; ".join(tips) + "."


def make_plan(params, shape: ModelShape | None = None, reward_shape: ModelShape | None = None,
              device: Device | None = None, processes: int = 1) -> Plan:
    """Estimate every stage of `params` (a PipelineParams). `shape` / `reward_shape` /
    `device` default to reading the configs and detecting the device."""
    from rlhfkit import models

    device = for_params(device or detect_device(), params)
    shape = shape or load_shape(params.large_model_reference, params.trust_remote_code)
    reward_ref = models.reward_reference(params.large_model_reference,
                                         params.reward_model_reference)
    if reward_shape is None:
        reward_shape = (shape if reward_ref == params.large_model_reference
                        else load_shape(reward_ref, params.trust_remote_code))
    budget = int(device.memory * USABLE_FRACTION)
    p, t = params.prompt_sequence_length, params.target_sequence_length
    local = max(1, params.batch_size // processes)
    micro = params.micro_batch_size or local
    ckpt = getattr(params, "gradient_checkpointing", False)
    stages = []

    def fit(fn) -> StageMemory:
        m, c, _ = choose(fn, local, micro, ckpt, budget)
        return fn(m, c)

    if getattr(params, "tuning_method", None) == "dpo":
        stages.append(fit(lambda m, c: dpo_memory(shape, params.policy_lora_dim,
                                                  params.batch_size, m, p, t, device, c)))
    else:
        stages.append(fit(lambda m, c: reward_memory(
            reward_shape, params.reward_lora_dim, params.batch_size, m, p, t, device, c)))
        shares = (params.policy_lora_dim > 0 and params.reward_lora_dim > 0
                  and reward_ref == params.large_model_reference)
        stages.append(_fit_policy(shape, reward_shape, params, shares, local, ckpt,
                                  device, budget, processes))
    from rlhfkit.infer import DEFAULT_BATCH_SIZE

    stages.append(inference_memory(shape, params.policy_lora_dim, DEFAULT_BATCH_SIZE, p, t,
                                   device))
    return Plan(shape, device, stages, processes)


def shards(params, processes: int) -> int:
    """Processes the policy's full-tuning state is split over (`sharding: fsdp`)."""
    return processes if getattr(params, "sharding", "none") == "fsdp" else 1


def _fit_policy(shape, reward_shape, params, shares, local, ckpt, device, budget,
                processes: int = 1):
    """The RL stage's micro-batches (rows: prompts x k responses each) split each
    minibatch (local / num_minibatches prompts) in the update and the local batch in the
    rollout."""
    k = params.generations_per_prompt
    mini = max(1, local // params.num_minibatches) * k
    whole = params.micro_batch_size is None

    def fn(m: int, c: bool) -> StageMemory:
        return policy_memory(shape, reward_shape, params.policy_lora_dim,
                             params.reward_lora_dim, shares, params.kl_coeff,
                             params.batch_size, m, params.prompt_sequence_length,
                             params.target_sequence_length, device, c,
                             rollout_micro=local * k if whole else m,
                             shards=shards(params, processes), k=k,
                             value=params.rl_algorithm == "ppo")

    m, c, _ = choose(fn, mini, params.micro_batch_size or mini, ckpt, budget)
    return fn(m, c)


def resolved(params, plan: Plan, stage: str):
    """A copy of `params` with this stage's micro_batch_size and gradient_checkpointing
    decided by the plan (what `auto` means), for the stage's config."""
    s = plan.stage(stage)
    if s is None:
        return params
    return replace(params, micro_batch_size=s.micro_batch_size,
                   gradient_checkpointing=s.checkpointing)


# -- the table ----------------------------------------------------------------------------------

def _gib(n: int) -> str:
    if n < GIB:
        return f"{n / 2**20:.0f} MiB"
    return f"{n / GIB:.2f} GiB" if n < 10 * GIB else f"{n / GIB:.1f} GiB"


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def format_plan(plan: Plan, params=None) -> str:
    """The plan as a table a person reads in five seconds: quantities down, stages across."""
    m = plan.model
    head = (f"model {m.name or m.model_type}: {m.model_type}, {_count(m.n_params)} parameters, "
            f"{m.num_layers} layers x {m.hidden_size}, vocab {m.vocab_size}\n"
            f"device {plan.device.description} ({'bf16' if plan.device.dtype_bytes == 2 else 'float32'}"
            f" weights), {_gib(plan.budget)} usable ({USABLE_FRACTION:.0%}), "
            f"{plan.processes} process(es); per process:")
    auto_m = params is not None and params.micro_batch_size == "auto"
    auto_c = params is not None and getattr(params, "gradient_checkpointing", None) == "auto"
    rows = [
        ("parameters", lambda s: _count(s.params)),
        ("trainable", lambda s: _count(s.trainable) if s.trainable else "-"),
        ("tokens / step", lambda s: f"{s.tokens_per_step:,}"),
        ("micro-batch", lambda s: f"{s.micro_batch_size}" + (
            " (auto)" if auto_m and s.stage != "inference" else "")),
        ("checkpointing", lambda s: "-" if s.stage == "inference" else (
            "on" if s.checkpointing else "off") + (" (auto)" if auto_c else "")),
        ("weights", lambda s: _gib(s.weights)),
        ("gradients", lambda s: _gib(s.gradients)),
        ("optimizer state", lambda s: _gib(s.optimizer)),
        ("activations", lambda s: _gib(s.activations)),
        ("  per micro, no ckpt", lambda s: _gib(s.activations_no_ckpt)),
        ("  per micro, ckpt", lambda s: _gib(s.activations_ckpt) if s.activations_ckpt
         else "-"),
        ("logits", lambda s: _gib(s.logits)),
        ("KV cache", lambda s: _gib(s.kv_cache)),
        ("runtime", lambda s: _gib(s.runtime)),
        *([("allocator (CPU)", lambda s: _gib(s.allocator))]
          if plan.device.kind == "cpu" else []),
        ("PEAK", lambda s: _gib(s.peak)),
        ("fits", lambda s: ("yes" if s.peak <= plan.budget else "NO")
         + f" ({s.peak / plan.device.memory:.0%})"),
    ]
    cells = [[label] + [fn(s) for s in plan.stages] for label, fn in rows]
    header = [""] + [s.stage for s in plan.stages]
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(header))]
    lines = [head, "  ".join(h.rjust(w) if i else h.ljust(w)
                             for i, (h, w) in enumerate(zip(header, widths, strict=True)))]
    for r in cells:
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    notes = [f"{s.stage}: {n}" for s in plan.stages for n in s.notes]
    return "\n".join(lines + notes)


def check_memory(params, force: bool = False, processes: int = 1) -> Plan:
    """Print the plan before a run; refuse (one message saying what to change) when a
    stage will not fit, unless `force`."""
    from rlhfkit import log

    p = make_plan(params, processes=processes)
    log.info(format_plan(p, params))
    problems = p.problems()
    if problems and not force:
        raise RlhfkitError("this run will not fit in memory:\n" + "\n".join(problems)
                           + "\n(`rlhfkit run --force` starts it anyway; the estimate is "
                           "documented in docs/gpu.md)")
    for line in problems:
        log.warn(f"--force: {line}")
    return p
