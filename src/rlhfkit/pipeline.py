"""The whole pipeline on one machine, resumable: the local counterpart of Vertex's
`rlhf_pipeline` and of `aiplatform.PipelineJob(...).run()`.

    validate ─► train_reward ─► train_policy ─► infer(tuned) ─┐
            └──────────────────────────────────► infer(base) ─┴─► compare

Every stage writes its outputs, then a `DONE` marker holding the hash of everything it
depends on (parameters, data, and the markers of the stages before it). Running the same
command again skips finished stages and resumes an interrupted one from its last
checkpoint; changing a parameter reruns the stages that depend on it and no others.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rlhfkit import log
from rlhfkit.errors import RlhfkitError
from rlhfkit.io import atomic_write_json, expand_paths, read_bytes
from rlhfkit.params import PipelineParams
from rlhfkit.runstate import config_hash, done_hash, is_done, mark_done

PARAMS_FILE = "params.json"
TUNED, UNTUNED = "eval_results_tuned.jsonl", "eval_results_untuned.jsonl"
STAGES = ("validate", "train_reward", "train_policy", "infer_base", "infer_tuned", "compare")


@dataclass
class Outcome:
    """What a pipeline run produced, for the summary and for Python callers."""

    run_dir: Path
    stages: dict[str, str] = field(default_factory=dict)  # stage -> "ran" | "skipped" | ...
    reward: dict[str, Any] = field(default_factory=dict)  # reward_model/rlhfkit.json
    policy: dict[str, Any] = field(default_factory=dict)
    comparison: dict[str, Any] | None = None  # compare.summarize(...) aggregates
    report: Path | None = None
    seconds: float = 0.0


def data_fingerprint(spec: str | None) -> str | None:
    """A hash of a dataset's bytes, so an edited file reruns the stages that read it."""
    if not spec:
        return None
    h = hashlib.sha256()
    for path in expand_paths(spec):
        h.update(path.encode())
        h.update(read_bytes(path))
    return h.hexdigest()[:16]


def validate(params: PipelineParams) -> dict[str, int]:
    """Load every dataset once, up front: bad input fails here, before any training."""
    from rlhfkit.data import load_dataset

    counts = {"preference": len(load_dataset(params.preference_dataset, "preference")),
              "prompt": len(load_dataset(params.prompt_dataset, "prompt"))}
    if params.eval_dataset:
        counts["eval"] = len(load_dataset(params.eval_dataset, "eval"))
    return counts


def _stage(n: int, name: str, what: str) -> None:
    log.info(f"\n[{n}/{len(STAGES)}] {name}: {what}")


def _status(result: dict[str, Any]) -> str:
    if result.get("skipped"):
        return "skipped"
    return "resumed" if result.get("resumed_from_step") else "ran"


def _marked_stage(marker: Path, key: dict[str, Any], work) -> str:
    """Run `work()` unless `marker` already holds the hash of `key`; mark it done after."""
    h = config_hash(key)
    if is_done(marker, h):
        log.info("  done already (same inputs): skipped")
        return "skipped"
    work()
    mark_done(marker, h)
    return "ran"


def run_pipeline(params: PipelineParams, run_dir: str | Path, force: bool = False) -> Outcome:
    """Run (or resume) every stage into `run_dir`; returns what was produced. The memory
    plan is printed first; a stage that will not fit stops the run unless `force`."""
    from rlhfkit import compare, infer, plan, policy, reward

    t0 = time.monotonic()
    run = Path(run_dir)
    out = Outcome(run_dir=run)
    _stage(1, "validate", "checking every dataset before any work starts")
    counts = validate(params)
    log.info("  " + ", ".join(f"{v} {k} records" for k, v in counts.items()))
    plan.check_memory(params, force)
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run / PARAMS_FILE, params.to_dict())
    out.stages["validate"] = "ran"

    _stage(2, "train_reward", f"{params.reward_model_train_steps} steps on "
           f"{counts['preference']} preference pairs")
    rcfg = reward.RewardConfig.from_params(params, run)
    out.reward = reward.run(rcfg)
    out.stages["train_reward"] = _status(out.reward)

    _stage(3, "train_policy", f"PPO, {params.reinforcement_learning_train_steps} steps on "
           f"{counts['prompt']} prompts, kl_coeff {params.kl_coeff}")
    pcfg = policy.PolicyConfig.from_params(params, run)
    out.policy = policy.run(pcfg)
    out.stages["train_policy"] = _status(out.policy)

    if not params.eval_dataset:
        log.notice("no eval_dataset: bulk inference and compare are skipped")
        out.seconds = time.monotonic() - t0
        return out
    eval_key = {"eval": data_fingerprint(params.eval_dataset), **params.subset(
        "large_model_reference", "instruction", "prompt_sequence_length",
        "target_sequence_length", "inference_temperature", "seed")}

    def infer_cfg(output: Path, adapter: str | None) -> infer.Config:
        return infer.Config(
            model=params.large_model_reference, adapter=adapter,
            eval_dataset=params.eval_dataset, output=str(output),
            instruction=params.instruction,
            prompt_sequence_length=params.prompt_sequence_length,
            target_sequence_length=params.target_sequence_length,
            temperature=params.inference_temperature, seed=params.seed,
            trust_remote_code=params.trust_remote_code)

    _stage(4, "infer_base", f"bulk inference of the base model on {counts['eval']} prompts")
    out.stages["infer_base"] = _marked_stage(
        run / "infer_base" / "DONE", eval_key,
        lambda: infer.run(infer_cfg(run / UNTUNED, None)))

    _stage(5, "infer_tuned", "bulk inference of the tuned model")
    # RUN/policy/ holds a LoRA adapter naming its base, or a full model: infer reads both.
    policy_dir = run / policy.STAGE_DIR
    tuned_key = {**eval_key, "policy": done_hash(policy_dir / "DONE")}

    def infer_tuned() -> None:
        cfg = infer_cfg(run / TUNED, None)
        cfg.model = str(policy_dir)
        infer.run(cfg)

    out.stages["infer_tuned"] = _marked_stage(run / "infer_tuned" / "DONE", tuned_key,
                                              infer_tuned)

    _stage(6, "compare", "tuned vs base, side by side")
    result = compare.run(compare.Config.for_run(run))
    out.comparison = result.summary
    out.report = result.report_path
    out.stages["compare"] = "ran"
    out.seconds = time.monotonic() - t0
    return out


def default_run_dir(pipeline_root: str | Path, display_name: str) -> Path:
    """`pipeline_root/display_name-YYYYmmddHHMMSS`, like Vertex's job names."""
    stamp = datetime.now().strftime("%Y%m%d%H%M%S")
    return Path(pipeline_root) / f"{display_name}-{stamp}"


class PipelineJob:
    """The course's `aiplatform.PipelineJob(...)` call, run locally.

    >>> job = PipelineJob(display_name="tutorial-rlhf-tuning", pipeline_root="runs",
    ...                   parameter_values=parameter_values)  # doctest: +SKIP
    >>> job.run()  # doctest: +SKIP

    `template_path` (the compiled Vertex pipeline) and `enable_caching` are accepted for
    compatibility: the stages are rlhfkit's own, and finished stages are always reused.
    """

    def __init__(self, display_name: str, parameter_values: dict[str, Any],
                 pipeline_root: str | Path = "runs", run_dir: str | Path | None = None,
                 template_path: str | None = None, enable_caching: bool | None = None,
                 **ignored: Any):
        self.display_name = display_name
        self.params = PipelineParams.from_dict(dict(parameter_values))
        if template_path is not None:
            log.notice("template_path is ignored: rlhfkit runs its own stages "
                       "(use `rlhfkit compile` to get a Kubeflow pipeline)")
        for key in ignored:
            log.notice(f"{key} is a Vertex AI setting with no local meaning; ignored")
        self.run_dir = Path(run_dir or self.params.output_dir
                            or default_run_dir(pipeline_root, display_name))
        self.outcome: Outcome | None = None

    def run(self) -> Outcome:
        self.outcome = run_pipeline(self.params, self.run_dir)
        print_summary(self.outcome)
        return self.outcome


def _fmt(x: Any, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def noise_ceiling(params: PipelineParams) -> tuple[float, float | None] | None:
    """The demo world's label-noise ceiling (the best EXPECTED accuracy of any reward model)
    and how often the noiseless gold preference agrees with the realised labels, when the
    data came from `rlhfkit demo data`; None otherwise."""
    spec = params.eval_dataset or params.preference_dataset
    world = Path(spec).parent / "world.json" if "://" not in spec else None
    if world is None or not world.is_file():
        return None
    info = json.loads(world.read_text())
    part = "eval" if params.eval_dataset else "preference"
    if info.get(f"noise_ceiling_{part}") is None:
        return None
    return info[f"noise_ceiling_{part}"], info.get(f"agreement_{part}")


def verdict(c: dict, prefix: str) -> str:
    """Say plainly whether the tuned model won: only when the 95% interval of its win
    rate excludes 0.5 (a tie) is it called better or worse."""
    low, high = c.get(f"{prefix}win_rate_ci_low"), c.get(f"{prefix}win_rate_ci_high")
    if low is None or high is None:
        return ""
    if low > 0.5:
        return ": tuned is better"
    if high < 0.5:
        return ": tuned is WORSE"
    return ": no clear difference"


def summary_lines(out: Outcome, params: PipelineParams) -> list[str]:
    lines = [f"run directory: {out.run_dir}   ({out.seconds / 60:.1f} min)",
             "stages: " + ", ".join(f"{k} {v}" for k, v in out.stages.items())]
    acc = out.reward.get("eval_accuracy")
    ceiling = noise_ceiling(params)
    lines.append(f"reward model: held-out accuracy {_fmt(acc)}"
                 + (f" (noise ceiling of the labels {ceiling[0]:.3f})" if ceiling else "")
                 + f" on {out.reward.get('eval_source', 'held-out pairs')}")
    if ceiling and ceiling[1] is not None:  # a few hundred labels are a noisy yardstick
        lines.append(f"  (the ceiling is an expectation: the noiseless gold preference itself "
                     f"agrees with {ceiling[1]:.3f} of these labels)")
    expected = out.reward.get("eval_expected_accuracy")
    if expected is not None:
        lines.append(f"  expected accuracy over the label noise {expected:.3f}, "
                     "in the ceiling's units")
    if out.policy:
        lines.append(f"policy: {out.policy.get('steps', '?')} PPO steps, final KL to the "
                     f"base {_fmt(out.policy.get('final_kl'))} nats, final reward "
                     f"{_fmt(out.policy.get('final_score'))}")
    c = out.comparison
    if c:
        if c.get("win_rate") is not None:
            lines.append(f"win rate of tuned over base (reward model): {c['win_rate']:.3f} "
                         f"[95% CI {c['win_rate_ci_low']:.3f}, {c['win_rate_ci_high']:.3f}] "
                         f"over {c['n']} prompts" + verdict(c, ""))
        if c.get("gold_win_rate") is not None:
            lines.append(f"gold win rate of tuned over base (demo annotator): "
                         f"{c['gold_win_rate']:.3f} [95% CI {_fmt(c.get('gold_win_rate_ci_low'))}"
                         f", {_fmt(c.get('gold_win_rate_ci_high'))}]" + verdict(c, "gold_"))
            lines.append(f"mean gold score: base {_fmt(c.get('mean_gold_base'))}, "
                         f"tuned {_fmt(c.get('mean_gold_tuned'))} (demo annotator, higher is "
                         f"better, at most 3)")
        lines.append(f"mean words: base {_fmt(c.get('mean_words_base'), '.1f')}, "
                     f"tuned {_fmt(c.get('mean_words_tuned'), '.1f')}")
    if out.report:
        lines.append(f"report: {out.report}")
    return lines


def print_summary(out: Outcome) -> None:
    params = PipelineParams.from_file(out.run_dir / PARAMS_FILE, quiet=True)
    log.info("\n== summary ==")
    for line in summary_lines(out, params):
        log.info(line)


def run_from_file(params_file: str | Path, output_dir: str | Path | None,
                  force: bool = False) -> Outcome:
    params = PipelineParams.from_file(params_file)
    run_dir = output_dir or params.output_dir
    if not run_dir:
        raise RlhfkitError(f"{params_file}: give --output-dir RUN (or output_dir in the file)")
    params.output_dir = str(run_dir)
    out = run_pipeline(params, run_dir, force)
    print_summary(out)
    return out
