"""Bounded load on the Serve app over loopback: throughput and p50/p99 latency, batching on vs off.

    python bench/serve_load.py --requests 64 --concurrency 16 --max-tokens 16

Starts a local Ray, serves an export (default: the tiny preset, exported once), and for each mode
(``max_batch_size`` 8 vs 1 in both model deployments) sends ``--requests`` chat completions with one audio
part and a text question each, at most ``--concurrency`` in flight, then prints one JSON line per mode and a
Markdown table. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import platform
import secrets
import statistics
import time

import httpx
import numpy as np


def _wav_b64(seconds: float, seed: int) -> str:
    from medlm.serving.audio import encode_wav

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    wave = 0.2 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.01 * rng.standard_normal(t.size)
    return base64.b64encode(encode_wav(wave.astype(np.float32))).decode()


async def _load(url: str, key: str, requests: int, concurrency: int, max_tokens: int, audio_seconds: float):
    bodies = [{"model": "medlm", "max_tokens": max_tokens, "temperature": 0,
               "messages": [{"role": "user", "content": [
                   {"type": "input_audio", "input_audio": {"data": _wav_b64(audio_seconds, i), "format": "wav"}},
                   {"type": "text", "text": "Is this serious?"}]}]} for i in range(requests)]
    latencies, tokens, errors = [], 0, 0
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=300) as http:
        async def one(body):
            nonlocal tokens, errors
            async with gate:
                t0 = time.perf_counter()
                r = await http.post("/chat/completions", json=body)
                latencies.append(time.perf_counter() - t0)
                if r.status_code == 200:
                    tokens += r.json()["usage"]["completion_tokens"]
                else:
                    errors += 1

        await one(bodies[0])  # warm-up (not counted)
        latencies.clear()
        tokens = 0
        start = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        wall = time.perf_counter() - start
    lat = sorted(latencies)
    return {"requests": requests, "errors": errors, "wall_s": round(wall, 2),
            "req_per_s": round(requests / wall, 2), "tokens_per_s": round(tokens / wall, 1),
            "p50_ms": round(1000 * statistics.median(lat), 1),
            "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="an export dir or s3:// URI (default: the tiny preset)")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--audio-seconds", type=float, default=2.0)
    ap.add_argument("--batch-size", type=int, default=8, help="max_batch_size when batching is on")
    ap.add_argument("--port", type=int, default=8123)
    opts = ap.parse_args()
    if not (1 <= opts.requests <= 2000 and 1 <= opts.concurrency <= 256):
        ap.error("keep the load bounded: 1..2000 requests, 1..256 concurrent")

    from ray import serve

    from medlm.serving import BatchOptions, default_model_dir, run_local
    from medlm.stack import local_stack

    model_dir = opts.model or default_model_dir()
    key = secrets.token_urlsafe(16)
    results = []
    with local_stack(s3=False):
        for mode, size in (("on", opts.batch_size), ("off", 1)):
            batching = BatchOptions(max_batch_size=size)
            url = run_local(model_dir, port=opts.port, api_key=key, encoder_batching=batching, llm_batching=batching)
            row = asyncio.run(_load(url, key, opts.requests, opts.concurrency, opts.max_tokens, opts.audio_seconds))
            llm = serve.get_deployment_handle("LLM", app_name="medlm").batch_stats.remote().result()
            row = {"batching": mode, "max_batch_size": size, **row, "llm_mean_batch": round(llm["mean_batch"], 2)}
            print(json.dumps(row), flush=True)
            results.append(row)
            serve.shutdown()
    print(f"\nmachine: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} CPUs; "
          f"requests={opts.requests} concurrency={opts.concurrency} max_tokens={opts.max_tokens} "
          f"audio={opts.audio_seconds}s model={'tiny preset' if opts.model is None else opts.model}\n")
    print("| batching | req/s | tokens/s | p50 ms | p99 ms | mean LLM batch | errors |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['batching']} (max {r['max_batch_size']}) | {r['req_per_s']} | {r['tokens_per_s']} | "
              f"{r['p50_ms']} | {r['p99_ms']} | {r['llm_mean_batch']} | {r['errors']} |")


if __name__ == "__main__":
    main()
