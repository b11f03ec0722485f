"""Shared harness of the rlhfkit-vs-TRL benchmarks: environment, one fresh subprocess per
measurement (so peak RSS is that side's alone), A/B alternation, medians, tables.

A child prints one line `BENCH_RESULT {json}` with its own timings and peak RSS (VmHWM of
/proc/self/status: the high-water mark of resident memory, in MiB).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "WANDB_DISABLED": "true", "TRL_EXPERIMENTAL_SILENCE": "1"}
os.environ.update(ENV)
MARK = "BENCH_RESULT "
DEMO_DATA = "/tmp/ppo_quality/data"
DEMO_MODEL = "/tmp/ppo_quality/model"
INSTRUCTION = "Summarize in less than 25 words."  # the demo world's (see its params.json)


def child_setup() -> None:
    """One thread, no hub, quiet warnings; call first in every child."""
    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report(result: dict) -> None:
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)
    print(MARK + json.dumps(result), flush=True)


def run_child(script: str, args: list[str], log_path: Path) -> dict:
    """Run `python script --child ...args` in a fresh process; its result plus the wall time
    seen from outside (imports, model load, everything)."""
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.run([sys.executable, script, "--child", *args], stdout=subprocess.PIPE,
                              stderr=log, text=True, env={**os.environ, **ENV})
    wall = time.monotonic() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode or not lines:
        tail = log_path.read_text()[-3000:]
        raise SystemExit(f"child failed ({proc.returncode}): {' '.join(args)}\n{tail}")
    out = json.loads(lines[-1][len(MARK):])
    out["wall_s"] = round(wall, 2)
    return out


def alternate(script: str, cases: list[tuple[str, list[str]]], rounds: int, log_dir: Path,
              loadavg: list) -> dict[str, list[dict]]:
    """rounds x (case A, case B, ...) with the order reversed every other round, so a load
    burst on the shared machine does not land on one side only."""
    results: dict[str, list[dict]] = {name: [] for name, _ in cases}
    for r in range(rounds):
        order = cases if r % 2 == 0 else cases[::-1]
        for name, args in order:
            loadavg.append(os.getloadavg()[0])
            res = run_child(script, args, log_dir / f"{name}.r{r}.log".replace("/", "_"))
            results[name].append(res)
            print(f"  round {r + 1}/{rounds} {name}: " + ", ".join(
                f"{k} {v}" for k, v in res.items() if isinstance(v, int | float)), flush=True)
    return results


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def spread(rows: list[dict], key: str) -> str:
    vals = [r[key] for r in rows]
    return f"{min(vals):.3g}-{max(vals):.3g}"


def machine() -> dict:
    import torch
    import transformers

    cpu = next((ln.split(":", 1)[1].strip() for ln in
                Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")),
               platform.processor())
    mem = next(ln for ln in Path("/proc/meminfo").read_text().splitlines()
               if ln.startswith("MemTotal"))
    try:
        import trl
        trl_v = trl.__version__
    except ImportError:
        trl_v = "not installed"
    import peft

    return {"nproc": os.cpu_count(), "cpu": cpu,
            "ram_gib": round(int(mem.split()[1]) / 2**20, 1), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "trl": trl_v, "peft": peft.__version__, "loadavg": os.getloadavg()}


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def ensure_world(data_dir: str, models: dict[str, str], steps_3m: int) -> None:
    """The demo data and models, built if missing (bench-3m with few pretraining steps:
    pretraining quality does not matter for speed)."""
    rlhfkit = str(Path(sys.executable).parent / "rlhfkit")
    if not (Path(data_dir) / "preference.jsonl").is_file():
        subprocess.run([rlhfkit, "demo", "data", data_dir], check=True)
    for preset, path in models.items():
        if not (Path(path) / "config.json").is_file():
            extra = ["--steps", str(steps_3m)] if preset == "bench-3m" else []
            subprocess.run([rlhfkit, "demo", "model", path, "--preset", preset,
                            "--threads", "1", *extra], check=True)


def trl_preference_rows(data_dir: str, tokenizer) -> list[dict]:
    """The demo world's preference pairs as TRL's explicit-prompt rows (prompt rendered as
    rlhfkit renders it, so both sides see the same text)."""
    from rlhfkit.data import load_dataset, prompt_text

    recs = load_dataset(str(Path(data_dir) / "preference.jsonl"), "preference")
    return [{"prompt": prompt_text(r, INSTRUCTION, tokenizer),
             "chosen": r[f"candidate_{r['choice']}"],
             "rejected": r[f"candidate_{1 - r['choice']}"]} for r in recs]


def start_parent(a, models: dict[str, str]) -> tuple[dict[str, str], Path, dict]:
    """The models asked for (`a.models`), built if missing, the work dir and machine info
    (printed): the first lines of every comparison's parent."""
    models = {k: v for k, v in models.items() if k in a.models}
    ensure_world(a.data, models, a.pretrain_steps_3m)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(json.dumps(info), flush=True)
    return models, work, info

