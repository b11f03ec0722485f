"""Load test of `rlhfkit serve`: many concurrent clients on loopback, bounded in time.

Starts the real server (`python -m rlhfkit serve SOURCE`) on a free 127.0.0.1 port, waits
for /health, then runs `--clients` concurrent clients for `--seconds`: each sends the demo
world's eval prompts to POST /v1/completions one after another (a share of them streamed,
`--stream-fraction`), greedy, at most `--max-tokens` new tokens. No new request starts
after the deadline; requests in flight get `--request-timeout` seconds to finish.

Reports requests, errors (any non-200 answer, bad body or transport error: zero expected),
latency p50 / p95 / max, time to the first streamed token, and completion tokens per
second over the window (usage.completion_tokens summed / window), plus the load average.

    python benchmarks/serve_load.py --source /work/main/demo/model \\
        --eval /work/main/demo/data/eval.jsonl --clients 32 --seconds 60

SOURCE is a run directory (its policy, adapter merged at start-up), RUN/model, or a model.
For a plain model the demo world's instruction is passed with --instruction (a run
carries its own).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import time

HOST = "127.0.0.1"  # loopback only, always


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


def start_server(args, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "rlhfkit", "serve", args.source, "--host", HOST,
           "--port", str(port), "--max-batch-size", str(args.max_batch_size)]
    if args.instruction:
        cmd += ["--instruction", args.instruction]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=sys.stderr)


async def wait_ready(client, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        try:
            if (await client.get("/health")).status_code == 200:
                return
        except Exception:  # noqa: BLE001 (not listening yet)
            pass
        await asyncio.sleep(0.25)
    raise SystemExit(f"no /health within {timeout:.0f} s")


async def one_request(client, prompt: str, args, stream: bool, stats: dict) -> None:
    body = {"prompt": prompt, "max_tokens": args.max_tokens, "temperature": 0,
            "stream": stream}
    t0 = time.monotonic()
    try:
        if stream:
            body["stream_options"] = {"include_usage": True}
            first, tokens = None, None
            async with client.stream("POST", "/v1/completions", json=body) as r:
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}")
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if "error" in event:
                        raise RuntimeError(event["error"]["message"])
                    if first is None and any(c["text"] for c in event["choices"]):
                        first = time.monotonic() - t0
                    if event.get("usage"):
                        tokens = event["usage"]["completion_tokens"]
            if tokens is None:
                raise RuntimeError("stream ended without usage")
            if first is not None:
                stats["first_token"].append(first)
        else:
            r = await client.post("/v1/completions", json=body)
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
            tokens = r.json()["usage"]["completion_tokens"]
    except Exception as exc:  # noqa: BLE001 (every failure is counted, and shown)
        stats["errors"].append(f"{type(exc).__name__}: {exc}")
        return
    stats["latency"].append(time.monotonic() - t0)
    stats["tokens"] += tokens


async def client_loop(client, prompts: list[str], start: int, args, deadline: float,
                      stats: dict) -> None:
    i = start
    while time.monotonic() < deadline:
        stream = (i % 100) < args.stream_fraction * 100
        await one_request(client, prompts[i % len(prompts)], args, stream, stats)
        i += args.clients


async def main_async(args) -> dict:
    import httpx

    prompts = [json.loads(line)["input_text"] for line in open(args.eval, encoding="utf-8")
               if line.strip()]
    port = free_port()
    proc = start_server(args, port)
    limits = httpx.Limits(max_connections=args.clients + 4)
    stats = {"latency": [], "first_token": [], "errors": [], "tokens": 0}
    try:
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", limits=limits,
                                     timeout=args.request_timeout) as client:
            await wait_ready(client, proc, args.start_timeout)
            t0 = time.monotonic()
            deadline = t0 + args.seconds
            await asyncio.wait_for(
                asyncio.gather(*(client_loop(client, prompts, k, args, deadline, stats)
                                 for k in range(args.clients))),
                timeout=args.seconds + args.request_timeout + 5)
            window = time.monotonic() - t0
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    lat = stats["latency"]
    return {
        "source": args.source, "clients": args.clients, "seconds": round(window, 1),
        "max_tokens": args.max_tokens, "stream_fraction": args.stream_fraction,
        "server_threads": args.threads, "max_batch_size": args.max_batch_size,
        "requests": len(lat) + len(stats["errors"]), "errors": len(stats["errors"]),
        "error_samples": stats["errors"][:5],
        "latency_p50_s": round(statistics.median(lat), 3) if lat else None,
        "latency_p95_s": round(percentile(lat, 95), 3) if lat else None,
        "latency_max_s": round(max(lat), 3) if lat else None,
        "first_token_p50_s": (round(statistics.median(stats["first_token"]), 3)
                              if stats["first_token"] else None),
        "completion_tokens": stats["tokens"],
        "mean_completion_tokens": round(stats["tokens"] / len(lat), 1) if lat else None,
        "tokens_per_s": round(stats["tokens"] / window, 1),
        "requests_per_s": round(len(lat) / window, 2),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", required=True, help="run directory, RUN/model or model")
    ap.add_argument("--eval", required=True, help="eval JSONL whose input_text are prompts")
    ap.add_argument("--instruction", default=None, help="for a plain model (a run has one)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--stream-fraction", type=float, default=0.25)
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    ap.add_argument("--request-timeout", type=float, default=120.0)
    ap.add_argument("--start-timeout", type=float, default=180.0)
    args = ap.parse_args()
    if not (0 < args.clients <= 256 and 0 < args.seconds <= 600):
        raise SystemExit("--clients must be in 1..256 and --seconds in (0, 600]")
    result = asyncio.run(main_async(args))
    print(json.dumps(result, indent=2))
    if result["errors"]:
        raise SystemExit(f"{result['errors']} errors")


if __name__ == "__main__":
    main()
