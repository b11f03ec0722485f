"""Running the real `rlhfkit` CLI in a subprocess, offline and on one thread, for the
end-to-end tests, and the small demo world they run on."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
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


def kill_after_first_checkpoint(cmd: list[str], env: dict, stage: Path,
                                timeout: float = 240) -> None:
    """Start `cmd`, wait (at most `timeout` s) until `stage` holds a checkpoint-*, then
    SIGKILL it and every process it started (torchrun's ranks leave its process group,
    so they are found through /proc). Fails if the run ends first."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not list(stage.glob("checkpoint-*")) and time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before its first checkpoint"
        time.sleep(0.05)
    for pid in [proc.pid, *_descendants(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)  # children's exits


def _descendants(pid: int) -> list[int]:
    """`pid`'s children, grandchildren, ... (Linux /proc)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def demo_world(root: Path, model: Path, prompts: int = 16) -> dict[str, Path]:
    """A small demo world under `root` (24 pairs, `prompts` prompts, 6 eval prompts)."""
    rlhfkit("demo", "data", str(root / "data"), "--preference-size", "24",
            "--prompt-size", str(prompts), "--eval-size", "6")
    return {"root": root, "data": root / "data", "model": model}
