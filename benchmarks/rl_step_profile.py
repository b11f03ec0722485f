"""Where an RL step's time goes, per method: sampling, the reference / value / reward-model
forwards of the rollout, and the update passes (forward + backward + optimizer), in CPU
seconds of one thread (`time.process_time`, robust to other processes on the machine).

The real policy stage (`policy.build_trainer`, `policy.train_step`) on the demo model with
the settings of benchmarks/ppo_vs_trl.py (16 prompts, 2 responses each for RLOO / GRPO,
responses up to 32 tokens, 4 passes, LoRA rank 4); each phase is timed by wrapping the
`Roles` method that does it. The first step is a warm-up and is not counted.

    PYTHONPATH=src python benchmarks/rl_step_profile.py --data demo/data \
        --model demo/model --reward-dir demo/run/reward_model [--steps 4] [--tuning full]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _bench as B  # noqa: E402

METHODS = ["ppo-separate", "ppo-shared", "rloo", "grpo"]


def _timer(spent, label, inner, *, no_grad_only: bool):
    """`inner`, adding its CPU seconds to spent[label] (only calls without grad if asked)."""
    import torch

    def wrapper(*args, **kw):
        if no_grad_only and torch.is_grad_enabled():
            return inner(*args, **kw)
        t0 = time.process_time()
        out = inner(*args, **kw)
        spent[label] += time.process_time() - t0
        return out
    return wrapper


def profile(a, method: str) -> dict[str, float]:
    from rlhfkit import policy
    from rlhfkit.params import PipelineParams
    from rlhfkit.policy_model import Roles
    from rlhfkit.training import make_accelerator

    algorithm, _, layout = method.partition("-")
    params = PipelineParams(
        large_model_reference=a.model, prompt_dataset=str(Path(a.data) / "prompt.jsonl"),
        preference_dataset=str(Path(a.data) / "preference.jsonl"), instruction=B.INSTRUCTION,
        prompt_sequence_length=160, target_sequence_length=32,
        reinforcement_learning_train_steps=a.steps, batch_size=16,
        policy_lora_dim=4 if a.tuning == "lora" else 0,
        kl_coeff=0.05, ppo_epochs=4, num_minibatches=1, rl_algorithm=algorithm,
        num_generations=1 if algorithm == "ppo" else 2, value_model=layout or "separate",
        loss_type="dapo", checkpoint_every_steps=10**9)
    for kv in a.set or []:  # --set KEY=JSON: e.g. micro_batch_size=4
        key, value = kv.split("=", 1)
        setattr(params, key, json.loads(value))
    params.validate()
    cfg = policy.PolicyConfig(params, str(Path(a.work) / method), reward_model_dir=a.reward_dir,
                              samples_every_steps=10**9)
    t = policy.build_trainer(cfg, make_accelerator())
    spent: collections.Counter = collections.Counter()

    def timed(label, inner, in_update=False):  # forwards inside the update are not the rollout's
        return _timer(spent, label, inner, no_grad_only=not in_update)

    for name, label in (("sample", "sampling"), ("scores", "reward model"),
                        ("values", "values (rollout)"), ("response_logits", "reference")):
        setattr(Roles, name, timed(label, getattr(Roles, name)))
    policy.update = timed("update passes", policy.update, in_update=True)
    inner_update = policy.update

    def counted(t, roll, *args, **kw):  # response tokens: real and padded (E x T)
        tokens["response tokens"] += float(roll.mask.sum())
        tokens["padded response tokens"] += roll.mask.numel()
        return inner_update(t, roll, *args, **kw)

    tokens: collections.Counter = collections.Counter()
    policy.update = counted
    total = 0.0
    for step in range(1, a.steps + 1):
        if step == 2:  # step 1 warms up
            spent.clear()
            tokens.clear()
        t0 = time.process_time()
        policy.train_step(t, step)
        if step > 1:
            total += time.process_time() - t0
    spent["other (advantages, logging)"] = total - sum(spent.values())
    return _per_step(a, spent, tokens, total)


def _per_step(a, spent, tokens, total) -> dict[str, float]:
    out = {k: v / (a.steps - 1) for k, v in spent.items()}
    out["step"] = total / (a.steps - 1)
    out.update({k: v / (a.steps - 1) for k, v in tokens.items()})
    return out


def profile_trl(a, method: str) -> dict[str, float]:
    """TRL's RLOOTrainer / GRPOTrainer at the settings of benchmarks/ppo_vs_trl.py, timed
    by wrapping the trainer's own methods: `_generate` (sampling), `_calculate_rewards`,
    `_get_per_token_logps_and_entropies` without grad (TRL's old-policy and reference
    forwards) and `training_step` less its generation (the update passes). The first
    generation round and its passes are the warm-up."""
    import ppo_vs_trl as P
    import trl

    cls = trl.RLOOTrainer if method == "rloo" else trl.GRPOTrainer
    spent: collections.Counter = collections.Counter()
    tokens: collections.Counter = collections.Counter()
    rounds, clock = [0], {}

    def timed(label, inner, *, no_grad_only=False):
        return _timer(spent, label, inner, no_grad_only=no_grad_only)

    gen_score = cls._generate_and_score_completions

    def generate_and_score(self, *args, **kw):
        rounds[0] += 1
        if rounds[0] == 2:  # the first round warms up
            spent.clear()
            tokens.clear()
            clock["t0"] = time.process_time()
        t0 = time.process_time()
        out = gen_score(self, *args, **kw)
        spent["rollout (all)"] += time.process_time() - t0
        tokens["response tokens"] += float(out["completion_mask"].sum())
        tokens["padded response tokens"] += out["completion_mask"].numel()
        return out

    cls._generate = timed("sampling", cls._generate)
    cls._calculate_rewards = timed("reward model", cls._calculate_rewards)
    cls._get_per_token_logps_and_entropies = timed(
        "old-policy + reference", cls._get_per_token_logps_and_entropies, no_grad_only=True)
    cls._generate_and_score_completions = generate_and_score
    cls.training_step = timed("training_step", cls.training_step)
    t = argparse.Namespace(model=a.model, trl_reward_dir=a.trl_reward_dir, data=a.data,
                           batch_size=16, generations=2, ppo_epochs=4, steps=a.steps,
                           response_len=32, tuning=a.tuning, malloc="cache", method=method)
    P.child_trl_grouped(t)
    total = time.process_time() - clock["t0"]
    rollout = spent.pop("rollout (all)")
    spent["update passes"] = spent.pop("training_step") - rollout
    spent["other (advantages, logging)"] = total - sum(spent.values())
    return _per_step(a, spent, tokens, total)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="demo/data")
    ap.add_argument("--model", default="demo/model")
    ap.add_argument("--reward-dir", default="demo/run/reward_model")
    ap.add_argument("--work", default="/tmp/rl_step_profile")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--side", default="rlhfkit", choices=["rlhfkit", "trl"],
                    help="trl: TRL's RLOOTrainer / GRPOTrainer (rloo, grpo only)")
    ap.add_argument("--trl-reward-dir", help="--side trl: the reward model merged into a plain "
                    "*ForSequenceClassification checkpoint (benchmarks/ppo_vs_trl.py writes one)")
    ap.add_argument("--tuning", default="lora", choices=["lora", "full"],
                    help="LoRA rank 4 or full tuning (full: the value head shares the trunk)")
    ap.add_argument("--set", action="append", metavar="KEY=JSON",
                    help="rlhfkit side: override a parameter (e.g. micro_batch_size=4)")
    a = ap.parse_args()
    if a.side == "trl" and set(a.methods) - {"rloo", "grpo"}:
        ap.error("--side trl profiles TRL's RLOO and GRPO trainers only")
    B.child_setup()
    rows = []
    for method in a.methods:
        res = profile_trl(a, method) if a.side == "trl" else profile(a, method)
        step = res.pop("step")
        real, padded = res.pop("response tokens"), res.pop("padded response tokens")
        parts = "; ".join(f"{k} {v:.2f} s ({v / step:.0%})" for k, v in
                          sorted(res.items(), key=lambda kv: -kv[1]))
        per_k = 1000 * step / real
        rows.append([f"{a.side} {method} ({a.tuning})", f"{step:.2f}", f"{real:.0f} / {padded:.0f}",
                     f"{per_k:.1f}", parts])
        print(f"{a.side} {method}: {step:.2f} CPU s/step, {real:.0f} response tokens "
              f"({padded:.0f} padded), {per_k:.1f} CPU ms/token: {parts}", flush=True)
    print(B.markdown_table(["side, method", "CPU s / step", "response tokens / padded",
                            "CPU ms / response token", "phases (share of the step)"], rows))


if __name__ == "__main__":
    main()
