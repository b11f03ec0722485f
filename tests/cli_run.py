"""Running the real `rlhfkit` CLI in a subprocess, offline and on one thread, for the
end-to-end tests, and the small demo world they run on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

RLHFKIT = [sys.executable, "-m", "rlhfkit"]


def cli_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("RANK", None)  # a torchrun variable leaking in would make the child a rank
    return env


def rlhfkit(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """`rlhfkit ARGS`; with `check`, a non-zero exit fails the test showing its output."""
    proc = subprocess.run([*RLHFKIT, *args], capture_output=True, text=True, env=cli_env(),
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"rlhfkit {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def demo_world(root: Path, model: Path, prompts: int = 16) -> dict[str, Path]:
    """A small demo world under `root` (24 pairs, `prompts` prompts, 6 eval prompts)."""
    rlhfkit("demo", "data", str(root / "data"), "--preference-size", "24",
            "--prompt-size", str(prompts), "--eval-size", "6")
    return {"root": root, "data": root / "data", "model": model}
