"""The whole pipeline on one machine, resumable: the local counterpart of Vertex's
`rlhf_pipeline` and of `aiplatform.PipelineJob(...).run()`.

    validate ─► train_reward ─► train_policy (ppo | rloo | grpo) ─► infer(tuned) ─┐
            │               or ─► train_dpo (tuning_method: dpo) ─┘               │
            └─────────────────────────────────────────────────► infer(base) ──────┴─►
                                                                     compare ─► deploy

Every stage writes its outputs, then a `DONE` marker holding the hash of everything it
depends on (parameters, data, and the markers of the stages before it). Running the same
command again skips finished stages and resumes an interrupted one from its last
checkpoint; changing a parameter reruns the stages that depend on it and no others.
"""

from __future__ import annotations

import difflib
import os
import shlex
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rlhfkit import log
from rlhfkit.errors import RlhfkitError
from rlhfkit.io import atomic_write_json, atomic_write_text, check_output_dir
from rlhfkit.params import PipelineParams
from rlhfkit.runstate import (
    DATASET_FIELDS,
    DONE_FILE,
    Stage,
    checkpoints,
    config_hash,
    data_fingerprint,
    model_fingerprint,
    run_lock,
)

PARAMS_FILE = "params.json"
TUNED, UNTUNED = "eval_results_tuned.jsonl", "eval_results_untuned.jsonl"
STAGES = ("validate", "train_reward", "train_policy", "infer_base", "infer_tuned", "compare",
          "deploy")


@dataclass
class Outcome:
    """What a pipeline run produced, for the summary and for Python callers."""

    run_dir: Path
    stages: dict[str, str] = field(default_factory=dict)  # stage -> "ran" | "skipped" | ...
    reward: dict[str, Any] = field(default_factory=dict)  # reward_model/rlhfkit.json
    policy: dict[str, Any] = field(default_factory=dict)
    comparison: dict[str, Any] | None = None  # compare.summarize(...) aggregates
    report: Path | None = None
    model_dir: Path | None = None  # RUN/model/ when deploy_model
    seconds: float = 0.0


def resolved(params: PipelineParams) -> PipelineParams:
    """`params` with local dataset paths and a local base-model directory made absolute,
    so RUN/params.json means the same from any working directory."""
    import dataclasses

    def absolute(spec: str | None) -> str | None:
        if not spec or "://" in spec:
            return spec
        return os.path.abspath(os.path.expanduser(spec))

    changes = {k: absolute(getattr(params, k)) for k in DATASET_FIELDS}
    for k in ("large_model_reference", "reward_model_reference"):
        ref = getattr(params, k)
        if ref and Path(ref).expanduser().is_dir():
            changes[k] = absolute(ref)
    return dataclasses.replace(params, **changes)


def fingerprints(params: PipelineParams) -> dict[str, str | None]:
    """Content fingerprints of the run's inputs (datasets' bytes, models' files), recorded
    in params.json next to the paths they were read from."""
    out = {k: data_fingerprint(getattr(params, k)) for k in DATASET_FIELDS}
    for k in ("large_model_reference", "reward_model_reference"):
        out[k] = model_fingerprint(getattr(params, k))
    return out


def validate(params: PipelineParams) -> dict[str, int]:
    """Load every dataset once, up front: bad input fails here, before any training.
    The model names too: a PaLM name, or a hub id not cached while offline, fails here."""
    from rlhfkit.data import load_dataset
    from rlhfkit.models import ensure_available, resolve_model_reference, reward_reference

    for ref in {params.large_model_reference, reward_reference(
            params.large_model_reference, params.reward_model_reference)}:
        ensure_available(resolve_model_reference(ref))
    counts = {"preference": len(load_dataset(params.preference_dataset, "preference")),
              "prompt": len(load_dataset(params.prompt_dataset, "prompt"))}
    if params.eval_dataset:
        counts["eval"] = len(load_dataset(params.eval_dataset, "eval"))
    return counts


def method_name(params: PipelineParams) -> str:
    """The tuning method as the logs name it: "DPO", "RLOO", "GRPO", or "PPO" with its value
    model ("separate" / "shared" apply with LoRA only: full tuning always shares the trunk)."""
    if params.tuning_method == "dpo":
        return "DPO"
    if params.rl_algorithm != "ppo":
        return params.rl_algorithm.upper()
    if params.policy_lora_dim == 0:
        return "PPO (value head on the policy's trunk)"
    return f"PPO (value model {params.value_model})"


def _stage(n: int, name: str, what: str) -> None:
    log.info(f"\n[{n}/{len(STAGES)}] {name}: {what}")


def _status(result: dict[str, Any]) -> str:
    if result.get("skipped"):
        return "skipped"
    return "resumed" if result.get("resumed_from_step") else "ran"


def _marked_stage(stage: Stage, work) -> str:
    """Run `work()` unless the stage is done with the same key; mark it done after."""
    if stage.is_done():
        log.info("  done already (same inputs): skipped")
        return "skipped"
    work()
    stage.mark_done()
    return "ran"


STAGE_DIRS = ("reward_model", "policy", "infer_base", "infer_tuned", "deploy")


def forget_finished(run: Path) -> None:
    """Caching off (`PipelineJob(enable_caching=False)`, as Vertex): every stage reruns from
    its start, so DONE markers, checkpoints and partial predictions go; outputs stay until
    replaced."""
    for name in STAGE_DIRS:
        (run / name / DONE_FILE).unlink(missing_ok=True)
        for _, ckpt in checkpoints(run / name):
            shutil.rmtree(ckpt, ignore_errors=True)
    for partial in run.glob(".eval_results_*.partial"):
        partial.unlink(missing_ok=True)


def run_pipeline(params: PipelineParams, run_dir: str | Path,
                 enable_caching: bool = True, force: bool = False) -> Outcome:
    """Run (or resume) every stage into `run_dir`, holding its lock; returns what was
    produced. `enable_caching=False` reruns every stage from scratch. The memory plan is
    printed first; a stage that will not fit stops the run unless `force`."""
    run = check_output_dir(run_dir)  # before any work: a bad location fails in one line
    with run_lock(run):
        if not enable_caching:
            forget_finished(run)
        return _run_stages(resolved(params), run, force)


def _run_stages(params: PipelineParams, run: Path, force: bool = False) -> Outcome:
    from rlhfkit import compare, infer, plan, policy, reward

    t0 = time.monotonic()
    out = Outcome(run_dir=run)
    _stage(1, "validate", "checking every dataset before any work starts")
    counts = validate(params)
    log.info("  " + ", ".join(f"{v} {k} records" for k, v in counts.items()))
    plan.check_memory(params, force)
    atomic_write_json(run / PARAMS_FILE, {"parameter_values": params.to_dict(),
                                          "fingerprints": fingerprints(params)})
    out.stages["validate"] = "ran"

    _stage(2, "train_reward", f"{params.reward_model_train_steps} steps on "
           f"{counts['preference']} preference pairs")
    if params.reward_model_train_steps > 0:  # 0 (DPO only): no reward model, compare scores gold
        rcfg = reward.RewardConfig.from_params(params, run)
        out.reward = reward.run(rcfg)
        out.stages["train_reward"] = _status(out.reward)
    else:
        log.info("  reward_model_train_steps is 0: no reward model (DPO needs none)")
        out.stages["train_reward"] = "not run"

    if params.tuning_method == "dpo":  # Rafailov et al. 2023: tuned on the pairs directly
        from rlhfkit import dpo

        _stage(3, "train_dpo", f"DPO, {params.reinforcement_learning_train_steps} steps of "
               f"{params.batch_size} preference pairs, beta {params.dpo_beta}")
        out.policy = dpo.run(dpo.DPOConfig(params, str(run)))
        out.stages["train_dpo"] = _status(out.policy)
    else:
        k = params.generations_per_prompt
        _stage(3, "train_policy", f"{method_name(params)}, "
               f"{params.reinforcement_learning_train_steps} steps of {params.batch_size} of "
               f"{counts['prompt']} prompts" + (f" x {k} responses" if k > 1 else "")
               + f", kl_coeff {params.kl_coeff}")
        pcfg = policy.PolicyConfig.from_params(params, run)
        out.policy = policy.run(pcfg)
        out.stages["train_policy"] = _status(out.policy)

    if not params.eval_dataset:
        log.notice("no eval_dataset: bulk inference and compare are skipped")
        deploy(params, run, out)
        out.seconds = time.monotonic() - t0
        return out

    def infer_stage(name: str, model: str, output: str) -> str:
        # The key is the prediction key by content: the model's (or the policy's) files,
        # the eval data's bytes, the generation parameters; never a path.
        cfg = infer.Config(model=model, eval_dataset=params.eval_dataset,
                           output=str(run / output), params=params)
        return _marked_stage(Stage(run / name, config_hash(cfg.prediction_key())),
                             lambda: infer.run(cfg))

    _stage(4, "infer_base", f"bulk inference of the base model on {counts['eval']} prompts")
    out.stages["infer_base"] = infer_stage("infer_base", params.large_model_reference, UNTUNED)
    _stage(5, "infer_tuned", "bulk inference of the tuned model")
    # RUN/policy/ holds a LoRA adapter naming its base, or a full model: infer reads both.
    out.stages["infer_tuned"] = infer_stage("infer_tuned", str(run / policy.STAGE_DIR), TUNED)

    _stage(6, "compare", "tuned vs base, side by side")
    result = compare.run(compare.Config.for_run(run))
    out.comparison = result.summary
    out.report = result.report_path
    out.stages["compare"] = "ran"
    deploy(params, run, out)
    out.seconds = time.monotonic() - t0
    return out


def deploy(params: PipelineParams, run: Path, out: Outcome) -> None:
    """Vertex's "Upload and Deploy Tuned Model", locally: with deploy_model (Vertex's
    default, true) RUN/model/ becomes a merged plain transformers model, and the command
    that serves it is printed. Skipped when RUN/model/ was exported from this policy."""
    from rlhfkit import export

    _stage(7, "deploy", "merged model in RUN/model/" if params.deploy_model
           else "deploy_model is false: nothing to do")
    if not params.deploy_model:
        out.stages["deploy"] = "off"
        return
    if not (run / export.MODEL_DIR).is_dir():  # deleted since: export again
        (run / export.DEPLOY_DONE).unlink(missing_ok=True)

    def work() -> None:
        result = export.export(run / "policy", run / export.MODEL_DIR, overwrite=True,
                               trust_remote_code=params.trust_remote_code)
        log.info("  " + export.describe(result))

    out.stages["deploy"] = _marked_stage(
        Stage(run / export.DEPLOY_DONE.parent, config_hash(export.deploy_key(run))), work)
    out.model_dir = run / export.MODEL_DIR


def default_run_dir(pipeline_root: str | Path, display_name: str) -> Path:
    """`pipeline_root/display_name-YYYYmmddHHMMSS`, like Vertex's job names."""
    stamp = datetime.now().strftime("%Y%m%d%H%M%S")
    return Path(pipeline_root) / f"{display_name}-{stamp}"


# The keyword arguments of `google.cloud.aiplatform.PipelineJob(...)` that mean nothing
# locally (the ones with a local meaning are PipelineJob's own parameters below).
VERTEX_JOB_ARGS = ("job_id", "labels", "credentials", "project", "location",
                   "encryption_spec_key_name", "failure_policy", "input_artifacts",
                   "enable_preflight_validations", "default_runtime")


class PipelineJob:
    """The course's `aiplatform.PipelineJob(...)` call, run locally.

    >>> job = PipelineJob(display_name="tutorial-rlhf-tuning", pipeline_root="runs",
    ...                   parameter_values=parameter_values)  # doctest: +SKIP
    >>> job.run()  # doctest: +SKIP

    `enable_caching=False` reruns every stage (as Vertex skips no step); by default
    finished stages are reused. `template_path` (the compiled Vertex pipeline) and
    Vertex's cloud-only arguments (`VERTEX_JOB_ARGS`) are accepted with a notice; any other
    keyword is an error naming the closest valid one.
    """

    def __init__(self, display_name: str, parameter_values: dict[str, Any],
                 pipeline_root: str | Path = "runs", run_dir: str | Path | None = None,
                 template_path: str | None = None, enable_caching: bool | None = None,
                 **vertex_args: Any):
        valid = ["display_name", "parameter_values", "pipeline_root", "run_dir",
                 "template_path", "enable_caching", *VERTEX_JOB_ARGS]
        for key in vertex_args:
            if key not in VERTEX_JOB_ARGS:
                close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
                raise RlhfkitError(f"PipelineJob: unknown argument {key!r}"
                                   + (f"; did you mean {close[0]!r}?" if close else ""))
        self.display_name = display_name
        self.params = PipelineParams.from_dict(dict(parameter_values))
        self.enable_caching = enable_caching is not False  # None: Vertex's default, on
        if template_path is not None:
            log.notice("template_path is ignored: rlhfkit runs its own stages "
                       "(use `rlhfkit compile` to get a Kubeflow pipeline)")
        for key in vertex_args:
            log.notice(f"{key} is a Vertex AI setting with no local meaning; ignored")
        self.run_dir = Path(run_dir or self.params.output_dir
                            or default_run_dir(pipeline_root, display_name))
        self.outcome: Outcome | None = None

    def run(self) -> Outcome:
        self.outcome = run_pipeline(self.params, self.run_dir, self.enable_caching)
        print_summary(self.outcome)
        return self.outcome


def _fmt(x: Any, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


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
    # From the held-out pairs' own `chosen_probability` (the demo world's records carry it).
    ceiling, agreement = out.reward.get("eval_noise_ceiling"), out.reward.get(
        "eval_label_agreement")
    if out.reward:  # DPO with reward_model_train_steps 0 trains no reward model
        lines.append(f"reward model: held-out accuracy {_fmt(acc)}"
                     + (f" (noise ceiling of the labels {ceiling:.3f})" if ceiling else "")
                     + f" on {out.reward.get('eval_source', 'held-out pairs')}")
    if ceiling and agreement is not None:  # a few hundred labels are a noisy yardstick
        lines.append(f"  (the ceiling is an expectation: the noiseless gold preference itself "
                     f"agrees with {agreement:.3f} of these labels)")
    expected = out.reward.get("eval_expected_accuracy")
    if expected is not None:
        lines.append(f"  expected accuracy over the label noise {expected:.3f}, "
                     "in the ceiling's units")
    if out.policy.get("tuning_method") == "dpo":
        lines.append(f"policy: {out.policy.get('steps', '?')} DPO steps, final loss "
                     f"{_fmt(out.policy.get('final_loss'))}, reward accuracy "
                     f"{_fmt(out.policy.get('final_reward_accuracy'))} (last batch)")
    elif out.policy:
        lines.append(f"policy: {out.policy.get('steps', '?')} steps of {method_name(params)}, "
                     f"final KL to the base {_fmt(out.policy.get('final_kl'))} nats, final reward "
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
    if out.model_dir:
        lines.append(f"merged model: {out.model_dir}; serve it with: "
                     f"rlhfkit serve {shlex.quote(str(out.run_dir))}")
    return lines


SUMMARY_FILE = "summary.txt"  # the summary as printed; benchmarks/demo_excerpt.py reads it


def print_summary(out: Outcome) -> None:
    """Print the one-screen summary and keep it as RUN/summary.txt (the README's demo
    excerpt is made from that file, never edited by hand)."""
    params = PipelineParams.from_file(out.run_dir / PARAMS_FILE, quiet=True)
    lines = ["== summary ==", *summary_lines(out, params)]
    log.info("\n" + "\n".join(lines))
    if log.is_main_process():
        atomic_write_text(out.run_dir / SUMMARY_FILE, "\n".join(lines) + "\n")


def run_from_file(params_file: str | Path, output_dir: str | Path | None,
                  enable_caching: bool = True, force: bool = False) -> Outcome:
    params = PipelineParams.from_file(params_file)
    run_dir = output_dir or params.output_dir
    if not run_dir:
        raise RlhfkitError(f"{params_file}: give --output-dir RUN (or output_dir in the file)")
    params.output_dir = str(run_dir)
    out = run_pipeline(params, run_dir, enable_caching, force)
    print_summary(out)
    return out
