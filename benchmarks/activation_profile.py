"""Where the RL update's activation memory goes: every tensor autograd saves for the backward
pass, tallied by the module that saved it, at the ~250M Llama shape (issue 11 §2).

One real policy-stage set-up (`policy.build_trainer`: LoRA policy, value adapter or shared
value head, reference = adapters off, the reward adapter on the same base), one rollout,
then the update (`policy.update`'s `loss_of`: forwards, log-probs, losses) runs under
`torch.autograd.graph.saved_tensors_hooks`. A saved tensor is counted once per storage
(views of one buffer share it) and never when it is a parameter; it is charged to the
innermost module running when it was saved (a global forward pre-hook keeps the stack), or
to "losses" outside any module. Each `backward()` closes one graph (its saved tensors are
freed then): the table is the largest graph, the one alive at the update's peak.
Bytes are also given per response-and-prompt token per decoder layer, in units of the
hidden size (x float32 hidden vectors), which is what the plan's activation term models.

    PYTHONPATH=src python benchmarks/activation_profile.py --model 250m \
        [--batch 4 --prompt-len 64 --target-len 16] [--value-model separate|shared]
        [--ckpt] [--cpu-allocator cache|release] [--work /tmp/act_profile]

The reward model is trained for one step first (its quality is irrelevant here).
"""

from __future__ import annotations

import argparse
import collections
import sys
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _bench as B  # noqa: E402
from plan_vs_measured import INSTRUCTION, build_random_llama, subset  # noqa: E402

MIB = 2**20


class SavedTally:
    """Bytes autograd saves, per module kind, deduplicated by storage."""

    def __init__(self, model):
        import torch

        self.torch = torch
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.graphs: list[tuple[collections.Counter, dict]] = []
        self._new_graph()
        self.stack: list[str] = ["losses (outside modules)"]

    def _new_graph(self) -> None:
        self.seen: set[int] = set()
        self.by_kind: collections.Counter = collections.Counter()
        self.shapes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.graphs.append((self.by_kind, self.shapes))

    def largest(self) -> tuple[collections.Counter, dict]:
        return max(self.graphs, key=lambda g: sum(g[0].values()))

    def pack(self, t):
        s = t.untyped_storage()
        ptr = s.data_ptr()
        if ptr not in self.params and ptr not in self.seen:
            self.seen.add(ptr)
            kind = self.stack[-1]
            self.by_kind[kind] += s.nbytes()
            self.shapes[kind][f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"] += 1
        return t

    @contextmanager
    def active(self):
        mm = self.torch.nn.modules.module

        def pre(module, args):
            self.stack.append(type(module).__name__)

        def post(module, args, out):
            self.stack.pop()

        backward = self.torch.Tensor.backward

        def closing(tensor, *args, **kw):  # this graph's saved tensors are freed now
            backward(tensor, *args, **kw)
            self._new_graph()

        h1 = mm.register_module_forward_pre_hook(pre)
        h2 = mm.register_module_forward_hook(post)
        self.torch.Tensor.backward = closing
        try:
            with self.torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t):
                yield
        finally:
            self.torch.Tensor.backward = backward
            h1.remove()
            h2.remove()


def profile(a) -> None:
    B.child_setup()
    import torch

    from rlhfkit import policy, reward
    from rlhfkit.params import PipelineParams
    from rlhfkit.policy_model import Roles
    from rlhfkit.training import make_accelerator

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    model = a.demo_model if a.model == "demo" else build_random_llama(
        a.model, a.demo_model, work / f"model-{a.model}")
    pref = subset(Path(a.data) / "preference.jsonl", work / "preference.jsonl", 64)
    prompts = subset(Path(a.data) / "prompt.jsonl", work / "prompt.jsonl", 64)
    params = PipelineParams(
        large_model_reference=model, preference_dataset=pref, prompt_dataset=prompts,
        instruction=INSTRUCTION, prompt_sequence_length=a.prompt_len,
        target_sequence_length=a.target_len, reward_model_train_steps=1,
        reinforcement_learning_train_steps=1, batch_size=a.batch, reward_lora_dim=4,
        policy_lora_dim=a.lora, ppo_epochs=1, num_minibatches=1, value_model=a.value_model,
        gradient_checkpointing=a.ckpt, checkpoint_every_steps=10**6,
        cpu_allocator=a.cpu_allocator)
    params.validate()
    run = work / f"run-{a.model}"
    if not (run / "reward_model" / "DONE").is_file():
        reward.run(reward.RewardConfig(params, str(run), progress=False))
    cfg = policy.PolicyConfig(params, str(run), samples_every_steps=10**6)
    t = policy.build_trainer(cfg, make_accelerator(cpu_allocator=a.cpu_allocator))
    tally = SavedTally(t.roles)
    tokens = []
    for name in ("logits", "values", "policy_and_values"):  # count the tokens per forward
        inner = getattr(Roles, name)

        def counted(self, ids, mask, n_response, *rest, _inner=inner, **kw):
            if torch.is_grad_enabled():
                tokens.append(int(mask.sum()))
            return _inner(self, ids, mask, n_response, *rest, **kw)
        setattr(Roles, name, counted)
    update = policy.update

    def profiled(t, roll, loss_of, step, prefix):
        def tallied(piece, n):
            with tally.active():
                return loss_of(piece, n)
        return update(t, roll, tallied, step, prefix)

    policy.update = profiled
    policy.train_step(t, 1)
    _print(tally, t, tokens, a)


def _print(tally: SavedTally, t, tokens: list[int], a) -> None:
    config = t.roles.lm.config
    hidden, layers = config.hidden_size, config.num_hidden_layers
    by_kind, shapes = tally.largest()
    total = sum(by_kind.values())
    n_tok = max(tokens)
    unit = n_tok * layers * hidden * 4  # one float32 hidden vector per token per layer
    sizes = [f"{sum(g[0].values()) / MIB:.1f}" for g in tally.graphs if g[0]]
    print(f"model {a.model}: hidden {hidden}, layers {layers}; lora {a.lora}, value_model "
          f"{a.value_model}, gradient checkpointing {a.ckpt}, cpu_allocator {a.cpu_allocator}; "
          f"update forwards over {tokens} "
          f"tokens (prompt + response); graphs saved {sizes} MiB")
    print(f"largest graph: {total / MIB:.1f} MiB saved = {total / unit:.1f} x hidden "
          f"float32 per token per layer, peak RSS {B.peak_rss_mib():.0f} MiB\n")
    print(B.markdown_table(["module that saved it", "MiB", "share", "x hidden / token / layer",
                            "commonest shapes"],
                           [[k, f"{v / MIB:.1f}", f"{v / total:.0%}", f"{v / unit:.2f}",
                             "; ".join(f"{s} x{c}" for s, c in shapes[k].most_common(2))]
                            for k, v in by_kind.most_common()]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="250m", help="demo, 60m or 250m")
    ap.add_argument("--data", default="demo/data")
    ap.add_argument("--demo-model", default="demo/model")
    ap.add_argument("--work", default="/tmp/act_profile")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--target-len", type=int, default=16)
    ap.add_argument("--lora", type=int, default=4, help="policy_lora_dim (0: full tuning)")
    ap.add_argument("--value-model", default="separate", choices=["separate", "shared"])
    ap.add_argument("--ckpt", action="store_true", help="gradient checkpointing on")
    ap.add_argument("--cpu-allocator", default="cache", choices=["cache", "release"])
    profile(ap.parse_args())


if __name__ == "__main__":
    main()
