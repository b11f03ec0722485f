"""What the Kubeflow components share, in a module that imports nothing of kfp: a
component importing rlhfkit.kfp_pipeline inside kfp's own executor re-enters kfp's
half-initialised modules (a circular import)."""

from __future__ import annotations


def run_infer(p: dict, model: list[str], output: str) -> None:
    """`rlhfkit infer` of the eval dataset with `model` (the --model / --adapter flags) and
    the resolved parameters `p`, in a child process; exits the component on failure. Both
    infer components call it (imported inside them: components run in the image)."""
    import subprocess
    import sys

    flags = ["--prompt-sequence-length", str(p["prompt_sequence_length"]),
             "--target-sequence-length", str(p["target_sequence_length"]),
             "--temperature", str(p["inference_temperature"]), "--seed", str(p["seed"])]
    flags += ["--instruction", p["instruction"]] if p["instruction"] else []
    flags += ["--trust-remote-code"] if p["trust_remote_code"] else []
    code = subprocess.run([sys.executable, "-m", "rlhfkit", "infer", *model, *flags,
                           p["eval_dataset"], "-o", output]).returncode
    if code:
        sys.exit(f"rlhfkit infer failed (exit code {code})")
