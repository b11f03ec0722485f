"""The pipeline's parameters: Vertex AI's `parameter_values`, same names, same defaults.

The course passes a dict like this to `aiplatform.PipelineJob(parameter_values=...)`;
rlhfkit takes the same dict from Python, or from a JSON / YAML file holding it (bare, or
under a `parameter_values` key). Vertex fixes some values (batch size 64, LoRA ranks);
rlhfkit keeps those as defaults and exposes them as extra, clearly named keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from rlhfkit import log
from rlhfkit.errors import RlhfkitError

# Vertex keys that only mean something in Google Cloud, and what they mean here.
CLOUD_ONLY = {
    "project": "the Google Cloud project; runs are local here",
    "location": "the Google Cloud region; runs are local here",
    "tensorboard_resource_id": "a Vertex TensorBoard instance; logs go to RUN/*-logs, "
                               "view them with `tensorboard --logdir RUN`",
    "encryption_spec_key_name": "a Cloud KMS key; encrypt the run directory's disk instead",
    "accelerator_type": "the cloud accelerator; rlhfkit uses whatever `accelerate` finds "
                        "(CUDA GPUs if present, else the CPU)",
    "deploy_model": "deploys an endpoint in Vertex; the tuned model stays in RUN/policy/",
}


@dataclass
class PipelineParams:
    """Every parameter of a run. Units: lengths in tokens, steps in optimizer steps,
    batch sizes in examples (preference pairs for the reward model, prompts for RL)."""

    # -- Vertex's parameters (names and defaults of `rlhf_pipeline`) --------------------
    preference_dataset: str = ""
    prompt_dataset: str = ""
    large_model_reference: str = ""
    eval_dataset: str | None = None
    model_display_name: str | None = None
    prompt_sequence_length: int = 512
    target_sequence_length: int = 64
    reward_model_learning_rate_multiplier: float = 1.0
    reinforcement_learning_rate_multiplier: float = 1.0
    reward_model_train_steps: int = 1000
    reinforcement_learning_train_steps: int = 1000
    kl_coeff: float = 0.1  # 0 loads no reference model at all, as in Vertex
    instruction: str | None = None
    # Cloud-only: accepted, ignored with a notice.
    deploy_model: bool = True
    tensorboard_resource_id: str | None = None
    accelerator_type: str | None = None
    project: str | None = None
    location: str | None = None
    encryption_spec_key_name: str | None = None

    # -- rlhfkit's extras (Vertex's hidden constants, exposed) --------------------------
    output_dir: str | None = None
    seed: int = 0
    batch_size: int = 64  # Vertex: 64 pairs (reward) and 64 prompts (RL) per step
    # -- memory (rlhfkit plan; docs/gpu.md) ------------------------------------------------
    # micro_batch_size: examples per forward pass per process (None = the whole batch;
    # "auto" = the largest the memory plan says fits, confirmed on CUDA by a probe step).
    # gradient_checkpointing: recompute each block's activations in the backward pass
    # (true | false | "auto" = on only when the plan says the step would not fit without).
    micro_batch_size: int | str | None = None
    gradient_checkpointing: bool | str = False
    reward_lora_dim: int = 4  # Vertex >= 2.10; 0 = full tuning
    policy_lora_dim: int = 1  # Vertex; 0 = full tuning
    reward_model_reference: str | None = None  # None: as Vertex (llama-2-7b for 13b/chat)
    trust_remote_code: bool = False
    reward_holdout_fraction: float = 0.1  # used when eval_dataset has no preference pairs
    checkpoint_every_steps: int = 50
    # PPO (names as in TRL / lm-human-preferences)
    ppo_epochs: int = 4
    num_minibatches: int = 1
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    whiten_rewards: bool = False
    kl_estimator: str = "k1"  # "k1": logp - logp_ref; "k3": (r - 1) - log r
    target_kl: float | None = None  # set to use the adaptive KL controller
    kl_horizon: int = 10000
    missing_eos_penalty: float | None = None
    normalize_reward: bool = False
    temperature: float = 1.0  # PPO sampling; the trained policy is softmax(logits / T), as TRL
    # Bulk inference
    inference_temperature: float = 0.0  # 0 = greedy, as Vertex's bulk inferrer
    merge_adapter: bool = False

    # ----------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "parameter_values",
                  quiet: bool = False) -> PipelineParams:
        if not isinstance(values, dict):
            raise RlhfkitError(f"{source}: expected a mapping of parameter names to values")
        if "parameter_values" in values and isinstance(values["parameter_values"], dict):
            values = values["parameter_values"]
        names = [f.name for f in fields(cls)]
        problems = []
        for key in values:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                problems.append(f"{source}: unknown parameter {key!r}{hint}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in values.items():
            if key in names:
                try:
                    kwargs[key] = _coerce(value, hints[key])
                except TypeError as exc:
                    problems.append(f"{source}: {key}: {exc}")
        if problems:
            raise RlhfkitError("\n".join(problems))
        params = cls(**kwargs)
        params.validate(source)
        if not quiet:
            for key in CLOUD_ONLY:
                if key in values:
                    log.notice(f"{key} is cloud-only: {CLOUD_ONLY[key]}")
        return params

    @classmethod
    def from_file(cls, path: str | Path, quiet: bool = False) -> PipelineParams:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RlhfkitError(f"{path}: cannot read: {exc}") from exc
        try:
            if path.suffix in (".yaml", ".yml"):
                values = yaml.safe_load(text)
            else:
                values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RlhfkitError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise RlhfkitError(f"{path}{line}: invalid YAML: {exc}") from exc
        return cls.from_dict(values, source=str(path), quiet=quiet)

    def validate(self, source: str = "parameter_values") -> None:
        problems = []
        for name in ("preference_dataset", "prompt_dataset", "large_model_reference"):
            if not getattr(self, name):
                problems.append(f"{name} is required")
        for name in ("prompt_sequence_length", "target_sequence_length",
                     "reward_model_train_steps", "reinforcement_learning_train_steps",
                     "batch_size", "checkpoint_every_steps", "ppo_epochs",
                     "num_minibatches", "kl_horizon"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("reward_model_learning_rate_multiplier",
                     "reinforcement_learning_rate_multiplier", "cliprange",
                     "cliprange_value", "temperature"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("kl_coeff", "vf_coef", "inference_temperature"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("reward_lora_dim", "policy_lora_dim"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0 (0 = full tuning), "
                                f"got {getattr(self, name)}")
        if self.micro_batch_size is not None and self.micro_batch_size != "auto" and not (
                isinstance(self.micro_batch_size, int) and self.micro_batch_size > 0):
            problems.append(f"micro_batch_size must be an integer > 0 or \"auto\", "
                            f"got {self.micro_batch_size!r}")
        if self.gradient_checkpointing not in (True, False, "auto"):
            problems.append(f"gradient_checkpointing must be true, false or \"auto\", "
                            f"got {self.gradient_checkpointing!r}")
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            problems.append("gamma and lam must be in [0, 1]")
        if not 0 < self.reward_holdout_fraction < 1:
            problems.append("reward_holdout_fraction must be in (0, 1)")
        if self.kl_estimator not in ("k1", "k3"):
            problems.append(f"kl_estimator must be 'k1' or 'k3', got {self.kl_estimator!r}")
        if self.target_kl is not None and self.target_kl <= 0:
            problems.append(f"target_kl must be > 0, got {self.target_kl}")
        if self.batch_size % self.num_minibatches:
            problems.append(f"batch_size ({self.batch_size}) must be divisible by "
                            f"num_minibatches ({self.num_minibatches})")
        if problems:
            raise RlhfkitError("\n".join(f"{source}: {p}" for p in problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def subset(self, *names: str) -> dict[str, Any]:
        """The values a stage depends on (its DONE marker hashes these)."""
        return {n: getattr(self, n) for n in names}


def _coerce(value: Any, hint: Any) -> Any:
    """Check a JSON value against a field's annotation; ints are accepted for floats."""
    args = typing.get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise TypeError("must not be null")
    if value == "auto" and str in args:  # micro_batch_size / gradient_checkpointing: "auto"
        return value
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if base is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"expected true or false, got {value!r}")
    if isinstance(value, bool):
        raise TypeError(f"expected a {base.__name__}, got {value!r}")
    if base is int:
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TypeError(f"expected an integer, got {value!r}")
    if base is float:
        if isinstance(value, (int, float)):
            return float(value)
        raise TypeError(f"expected a number, got {value!r}")
    if base is str:
        if isinstance(value, str):
            return value
        raise TypeError(f"expected a string, got {value!r}")
    return value


def steps_for_epochs(dataset_size: int, batch_size: int, epochs: int) -> int:
    """The course's formula: steps = ceil(dataset_size / batch_size) * epochs.

    >>> steps_for_epochs(3000, 64, 30)
    1410
    >>> steps_for_epochs(2000, 64, 10)
    320
    """
    if dataset_size <= 0 or batch_size <= 0 or epochs <= 0:
        raise RlhfkitError("dataset size, batch size and epochs must all be > 0")
    return math.ceil(dataset_size / batch_size) * epochs
