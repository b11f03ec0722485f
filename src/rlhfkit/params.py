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
import re
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
}

RL_ALGORITHMS = ("ppo", "rloo", "grpo")
VALUE_MODELS = ("separate", "shared")
LOSS_TYPES = ("grpo", "dr_grpo", "dapo")  # GRPO token averaging, see rl_math.token_weights
TUNING_METHODS = ("rlhf", "dpo")
SHARDINGS = ("none", "fsdp")  # see rlhfkit.sharding
DPO_LOSSES = ("sigmoid", "ipo")


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
    # Vertex deploys an endpoint; here `run` ends by writing RUN/model/, a merged plain
    # transformers model, and prints the `rlhfkit serve` command (export.py).
    deploy_model: bool = True
    # Cloud-only: accepted, ignored with a notice.
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
    # cpu_allocator: on CPU (Linux / glibc), "cache" keeps freed tensor buffers in the
    # heap (glibc's default, fastest); "release" returns them to the OS at once, so peak
    # RSS follows the live tensors (250M LoRA PPO: 2707 -> 1865 MiB) at more time per step
    # (fresh zeroed pages: +20% at 250M, +100% at the demo's size; docs/gpu.md).
    micro_batch_size: int | str | None = None
    gradient_checkpointing: bool | str = False
    cpu_allocator: str = "cache"
    # sharding: "none" (each process holds the whole model; several processes = DDP) |
    # "fsdp": full tuning of the policy (policy_lora_dim 0) with its weights, gradients and
    # Adam state, and the reference's weights, split across the processes (FSDP2;
    # docs/distributed.md). Launch with torchrun; one process has nothing to shard.
    sharding: str = "none"
    reward_lora_dim: int = 4  # Vertex >= 2.10; 0 = full tuning
    policy_lora_dim: int = 1  # Vertex; 0 = full tuning
    reward_model_reference: str | None = None  # None: as Vertex (see models.py)
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
    # -- RL algorithm (issue 10): ppo (Vertex-like default), rloo or grpo, same rollout ------
    rl_algorithm: str = "ppo"  # "ppo" | "rloo" (Ahmadian et al. 2024) | "grpo" (Shao et al. 2024)
    num_generations: int | None = None  # responses per prompt (k); None: 1 for ppo, 4 otherwise
    value_model: str = "separate"  # PPO with LoRA: "separate" value adapter | "shared" trunk
    loss_type: str = "dapo"  # GRPO's token averaging: "grpo" | "dr_grpo" | "dapo" (TRL's default)
    # Bulk inference
    inference_temperature: float = 0.0  # 0 = greedy, as Vertex's bulk inferrer
    merge_adapter: bool = False
    # -- compare: the report's reward-model win rate --------------------------------------
    # Reward scores are Bradley-Terry logits: a difference d means the reward model prefers
    # the tuned answer with probability sigmoid(d). |d| <= 0.1 (sigmoid 0.475-0.525) is a
    # coin flip to it, and punctuation-only edits land there: counted as a tie.
    reward_tie_threshold: float = 0.1
    # -- DPO (tuning_method "dpo": Rafailov et al. 2023; names as TRL's DPOConfig) --------
    # "rlhf": Vertex's pipeline (reward model, then RL). "dpo": the policy is tuned on the
    # preference pairs directly, `reinforcement_learning_train_steps` steps of `batch_size`
    # pairs; the reward stage runs only when reward_model_train_steps > 0 (to score in
    # compare), 0 skips it.
    tuning_method: str = "rlhf"
    dpo_beta: float = 0.1  # the KL weight beta of DPO (tau of IPO)
    dpo_loss: str = "sigmoid"  # "sigmoid": DPO's -log sigmoid; "ipo": Azar et al. 2023

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
            if not isinstance(key, str):
                problems.append(f"{source}: parameter names are strings, got {_shown(key)}")
            elif key not in names:
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
        """JSON, or YAML for a `.yaml` / `.yml` suffix in any case; a UTF-8 byte-order mark
        is fine (Windows editors write one). Duplicate keys are an error in both: the last
        one silently winning is how a stale value survives an edit."""
        path = Path(path)
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise RlhfkitError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}"
                               ) from exc
        if path.suffix.lower() in (".yaml", ".yml"):
            values = _load_yaml(text, path)
        else:
            values = _load_json(text, path)
        return cls.from_dict(values, source=str(path), quiet=quiet)

    def validate(self, source: str = "parameter_values") -> None:
        """Every check, before any work: the generic ones derived from each field's type
        (finite floats, ints in range, strings that are text; so every field added later
        is covered), then the per-field ranges."""
        problems = _type_problems(self)
        if problems:  # the range checks below assume the types
            raise RlhfkitError("\n".join(f"{source}: {p}" for p in problems))
        if not 0 <= self.seed < SEED_LIMIT:
            problems.append(f"seed must be in [0, 2**32) (what torch and numpy accept), "
                            f"got {self.seed}")
        for name in ("preference_dataset", "prompt_dataset", "large_model_reference"):
            if not getattr(self, name):
                problems.append(f"{name} is required")
        for name in ("prompt_sequence_length", "target_sequence_length",
                     "reinforcement_learning_train_steps",
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
        if self.cpu_allocator not in ("cache", "release"):
            problems.append(f"cpu_allocator must be \"cache\" or \"release\", "
                            f"got {self.cpu_allocator!r}")
        if self.sharding not in SHARDINGS:
            problems.append(f"sharding must be one of {', '.join(map(repr, SHARDINGS))}, "
                            f"got {self.sharding!r}")
        elif self.sharding == "fsdp" and self.policy_lora_dim > 0:
            problems.append("sharding \"fsdp\" shards full tuning (policy_lora_dim 0); with "
                            f"LoRA (policy_lora_dim {self.policy_lora_dim}) the trained weights "
                            "are megabytes: run several processes unsharded (DDP)")
        elif self.sharding == "fsdp" and self.tuning_method == "dpo":
            problems.append("sharding \"fsdp\" is implemented for the RL stage "
                            "(tuning_method 'rlhf'), not yet for DPO")
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            problems.append("gamma and lam must be in [0, 1]")
        if not 0 < self.reward_holdout_fraction < 1:
            problems.append("reward_holdout_fraction must be in (0, 1)")
        if self.kl_estimator not in ("k1", "k3"):
            problems.append(f"kl_estimator must be 'k1' or 'k3', got {self.kl_estimator!r}")
        if self.target_kl is not None and self.target_kl <= 0:
            problems.append(f"target_kl must be > 0, got {self.target_kl}")
        problems += self._rl_algorithm_problems()
        if self.batch_size % self.num_minibatches:
            problems.append(f"batch_size ({self.batch_size}) must be divisible by "
                            f"num_minibatches ({self.num_minibatches})")
        if not (math.isfinite(self.reward_tie_threshold) and self.reward_tie_threshold >= 0):
            problems.append("reward_tie_threshold must be a finite number >= 0, "
                            f"got {self.reward_tie_threshold}")
        problems += self._dpo_problems()
        if problems:
            raise RlhfkitError("\n".join(f"{source}: {p}" for p in problems))

    def _rl_algorithm_problems(self) -> list[str]:
        """The RL algorithm block's checks: a name not in the list names the valid ones."""
        problems = []
        for name, valid in (("rl_algorithm", RL_ALGORITHMS), ("value_model", VALUE_MODELS),
                            ("loss_type", LOSS_TYPES)):
            if getattr(self, name) not in valid:
                problems.append(f"{name} must be one of {', '.join(map(repr, valid))}, "
                                f"got {getattr(self, name)!r}")
        k = self.num_generations
        if k is not None and k < 1:
            problems.append(f"num_generations must be >= 1, got {k}")
        if self.rl_algorithm in ("rloo", "grpo") and k is not None and k < 2:
            problems.append(f"num_generations must be >= 2 for {self.rl_algorithm} (its baseline "
                            f"compares the responses to one prompt), got {k}")
        return problems

    @property
    def generations_per_prompt(self) -> int:
        """num_generations resolved: 1 for PPO, 4 for RLOO and GRPO unless set."""
        if self.num_generations is not None:
            return self.num_generations
        return 1 if self.rl_algorithm == "ppo" else 4

    def _dpo_problems(self) -> list[str]:
        """tuning_method / dpo_* checks; reward_model_train_steps may be 0 only with DPO
        (there the reward model only scores for compare)."""
        problems = []
        if self.tuning_method not in TUNING_METHODS:
            problems.append(f"tuning_method must be one of {', '.join(TUNING_METHODS)}, "
                            f"got {self.tuning_method!r}")
        if self.dpo_loss not in DPO_LOSSES:
            problems.append(f"dpo_loss must be one of {', '.join(DPO_LOSSES)}, "
                            f"got {self.dpo_loss!r}")
        if not self.dpo_beta > 0:
            problems.append(f"dpo_beta must be > 0, got {self.dpo_beta}")
        if self.tuning_method == "dpo" and self.reward_model_train_steps < 0:
            problems.append(f"reward_model_train_steps must be >= 0 (0 skips the reward "
                            f"stage), got {self.reward_model_train_steps}")
        elif self.tuning_method != "dpo" and self.reward_model_train_steps <= 0:
            problems.append(f"reward_model_train_steps must be > 0, got "
                            f"{self.reward_model_train_steps} (0, no reward model, only "
                            "with tuning_method 'dpo')")
        return problems

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def subset(self, *names: str) -> dict[str, Any]:
        """The values a stage depends on (its DONE marker hashes these)."""
        return {n: getattr(self, n) for n in names}


# -- checks derived from the type hints --------------------------------------------------

SEED_LIMIT = 2**32  # numpy's RandomState and torch.manual_seed's generators take [0, 2**32)
INT_LIMIT = 2**63  # every int field ends up in a torch/numpy int64 or a C loop counter


def _article(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


def _type_name(base: Any) -> str:
    return {bool: "true or false", int: "integer", float: "number", str: "string"}.get(
        base, getattr(base, "__name__", str(base)))


def _coerce(value: Any, hint: Any) -> Any:
    """Check a JSON/YAML value against a field's annotation and return it in that type
    (ints are accepted for floats). Generic on purpose: a field added to PipelineParams
    gets these checks from its annotation alone. Raises TypeError with the reason."""
    if typing.get_origin(hint) is typing.Literal:
        if value in typing.get_args(hint) and type(value) is not bool:
            return value
        allowed = ", ".join(repr(a) for a in typing.get_args(hint))
        raise TypeError(f"expected one of {allowed}, got {_shown(value)}")
    args = typing.get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise TypeError("must not be null")
    if value == "auto" and str in args:  # micro_batch_size / gradient_checkpointing: "auto"
        return value
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if typing.get_origin(base) is typing.Literal:
        return _coerce(value, base)
    if base is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"expected true or false, got {_shown(value)}")
    if isinstance(value, bool) and base in (int, float, str):
        raise TypeError(f"expected {_article(_type_name(base))}, got {_shown(value)}")
    if base is int:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise TypeError(f"expected an integer, got {_shown(value)}")
        if not -INT_LIMIT < value < INT_LIMIT:
            raise TypeError(f"must be between -2**63 and 2**63, got {_shown(value)}")
        return value
    if base is float:
        if not isinstance(value, (int, float)):
            raise TypeError(f"expected a number, got {_shown(value)}")
        try:
            value = float(value)
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            raise TypeError(f"must be a finite number, got {_shown(value)}")
        return value
    if base is str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {_shown(value)}")
        if re.search("[\x00\ud800-\udfff]", value):
            raise TypeError("must be text: it holds a NUL character or an unpaired UTF-16 "
                            "surrogate")
        return value
    return value


def _shown(value: Any) -> str:
    """A value in an error message: short, one line, printable."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else \
            f"an integer of {len(str(abs(value)))} digits"
    else:
        text = ascii(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_problems(params: PipelineParams) -> list[str]:
    """`_coerce` applied to every field's current value (values set in Python, not read
    from a file, get the same checks)."""
    hints = typing.get_type_hints(type(params))
    problems = []
    for f in fields(params):
        try:
            _coerce(getattr(params, f.name), hints[f.name])
        except TypeError as exc:
            problems.append(f"{f.name}: {exc}")
    return problems


# -- reading files ------------------------------------------------------------------------

def _load_json(text: str, path: Path) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
        out: dict = {}
        for key, value in pairs:
            if key in out:
                raise _Duplicate(key)
            out[key] = value
        return out

    def parse_int(digits: str) -> int:
        if len(digits) > 100:  # CPython refuses > 4,300 digits with a ValueError
            raise ValueError(f"an integer of {len(digits)} digits")
        return int(digits)

    try:
        return json.loads(text, object_pairs_hook=no_duplicates, parse_int=parse_int)
    except json.JSONDecodeError as exc:
        raise RlhfkitError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    except _Duplicate as exc:
        raise RlhfkitError(f"{path}:{_second_line(text, exc.key)}: duplicate key "
                           f"{exc.key!r}; give each parameter once") from None
    except RecursionError:
        raise RlhfkitError(f"{path}: invalid JSON: nested too deeply") from None
    except ValueError as exc:
        raise RlhfkitError(f"{path}: invalid JSON: {exc}") from None


class _Duplicate(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _second_line(text: str, key: str) -> int:
    """The line of the second `"key":` in a JSON text (1 if it cannot be found)."""
    hits = [m.start() for m in re.finditer(re.escape(json.dumps(key)) + r"\s*:", text)]
    return text.count("\n", 0, hits[1]) + 1 if len(hits) > 1 else 1


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that repeats a key (YAML 1.2 says keys
    are unique; PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool)):
                continue  # unhashable or odd keys: from_dict says what is wrong with them
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}; give each parameter once",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str, path: Path) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RlhfkitError(f"{path}{line}: invalid YAML: {problem}") from None
    except RecursionError:
        raise RlhfkitError(f"{path}: invalid YAML: nested too deeply") from None
    except ValueError as exc:  # e.g. an int of 5,000 digits, a date like 2024-13-45
        raise RlhfkitError(f"{path}: invalid YAML: {str(exc)[:120]}") from None


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
