"""The Serve app under load over loopback, on the real preset: latency, batching, failures.

    python bench/serve_load.py latency      # TTFT / full answer / first audio byte, p50 / p99, c=1 and c=16:
                                            #   end-to-end SpeechLM vs the cascade, text vs spoken replies
    python bench/serve_load.py throughput   # c=16, answers of 16..256 tokens: static vs continuous batching
    python bench/serve_load.py chaos        # 1,000 requests at c=32 mixing text, audio in and audio out, one
                                            #   replica of each model deployment killed under load
    python bench/serve_load.py realtime     # /v1/realtime: commit -> first text / first audio byte, a 6 s
                                            #   spoken question, c=1 and c=8 sockets, end to end vs cascade,
                                            #   and the chat API's streamed spoken reply to the same audio
    python bench/serve_load.py engine       # no Serve: the decode loop vs HF generate on one batch of 16,
                                            #   1 and 2 torch threads (what the LLM replica itself can do)
    python bench/serve_load.py all          # latency, throughput, chaos

Starts a local Ray, exports the real preset once (whisper-tiny.en's encoder + an untrained adapter + SmolLM2:
serving cost does not depend on how well the adapter is trained), serves it with ``run_local`` and sends
streamed chat completions (SSE) with httpx. The spoken question is rendered by the Piper voice. Prints one
JSON line per measurement and Markdown tables. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import random
import secrets
import tempfile
import time

import httpx

QUESTION = (
    "I have had a dry cough and a mild fever for three days, and my chest feels tight at night. "
    "What could this be?"
)  # about 5 s in the Piper voice
TEXT_QUESTIONS = [
    "What is asthma?",
    "How is high blood pressure treated?",
    "What causes migraines?",
    "Explain type 2 diabetes.",
    "What are the symptoms of the flu?",
    "What does a cardiologist do?",
]


def spoken_part(text: str) -> dict:
    from medlm.audio import SAMPLING_RATE
    from medlm.models.tts import speak, voice_bank
    from medlm.serving.audio import encode_wav

    (wave,) = speak([text], voice_bank(1, backend="piper")[0])
    data = base64.b64encode(encode_wav(wave, SAMPLING_RATE)).decode()
    return {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}, len(wave) / SAMPLING_RATE


async def stream_one(http: httpx.AsyncClient, body: dict) -> dict:
    """One streamed request: time to first token / first audio byte / the end, tokens, and how it ended."""
    t0 = time.perf_counter()
    out = {"ttft": None, "ttfa": None, "total": None, "tokens": 0, "status": None, "error": None}
    try:
        async with http.stream(
            "POST",
            "/chat/completions",
            json={**body, "stream": True, "stream_options": {"include_usage": True}},
        ) as r:
            out["status"] = r.status_code
            if r.status_code != 200:
                await r.aread()
                return out
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    out["error"] = event["error"].get("type", "error")
                    continue
                if event.get("usage"):
                    out["tokens"] = event["usage"]["completion_tokens"]
                for choice in event.get("choices", []):
                    delta = choice["delta"]
                    if delta.get("content") and out["ttft"] is None:
                        out["ttft"] = time.perf_counter() - t0
                    if delta.get("audio") and out["ttfa"] is None:
                        out["ttfa"] = time.perf_counter() - t0
    except httpx.HTTPError as e:
        out["error"] = type(e).__name__
    out["total"] = time.perf_counter() - t0
    return out


async def run_load(
    url: str, key: str, bodies: list[dict], concurrency: int, during=None
) -> tuple[list[dict], float]:
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600
    ) as http:

        async def one(body):
            async with gate:
                return await stream_one(http, body)

        await stream_one(http, bodies[0])  # warm-up, not counted
        start = time.perf_counter()
        tasks = [asyncio.ensure_future(one(b)) for b in bodies]
        if during is not None:
            await during()
        results = await asyncio.gather(*tasks)
    return results, time.perf_counter() - start


def pct(values: list[float], q: float) -> float | None:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    return round(1000 * values[min(len(values) - 1, int(q * len(values)))], 0)


def summary(results: list[dict], wall: float) -> dict:
    ok = [r for r in results if r["status"] == 200 and r["error"] is None]
    tokens = sum(r["tokens"] for r in ok)
    return {
        "n": len(results),
        "ok": len(ok),
        "wall_s": round(wall, 1),
        "answers_per_s": round(len(ok) / wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
        "ttft_p50_ms": pct([r["ttft"] for r in ok], 0.5),
        "ttft_p99_ms": pct([r["ttft"] for r in ok], 0.99),
        "total_p50_ms": pct([r["total"] for r in ok], 0.5),
        "total_p99_ms": pct([r["total"] for r in ok], 0.99),
        "ttfa_p50_ms": pct([r["ttfa"] for r in ok], 0.5),
        "ttfa_p99_ms": pct([r["ttfa"] for r in ok], 0.99),
        "mean_tokens": round(tokens / max(len(ok), 1), 1),
    }


def table(rows: list[dict], keys: list[str]) -> str:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += [
        "| " + " | ".join("-" if r.get(k) is None else str(r.get(k)) for k in keys) + " |" for r in rows
    ]
    return "\n".join(lines)


def serve_app(model_dir: str, port: int, key: str, **overrides):
    from medlm.serving import run_local

    return run_local(model_dir, port=port, api_key=key, **overrides)


def latency(model_dir: str, opts, key: str) -> list[dict]:
    from ray import serve

    part, seconds = spoken_part(QUESTION)
    print(f"spoken question: {seconds:.1f} s of Piper speech", flush=True)
    url = serve_app(model_dir, opts.port, key, asr_model="whisper-tiny.en")
    rows = []
    for concurrency, n in ((1, opts.latency_requests), (16, 2 * 16)):
        for model in ("medlm", "cascade"):
            for spoken in (False, True):
                body = {
                    "model": model,
                    "max_tokens": opts.max_tokens,
                    "temperature": 0,
                    "messages": [{"role": "user", "content": [part]}],
                }
                if spoken:
                    body |= {"modalities": ["text", "audio"], "audio": {"voice": "joe", "format": "pcm16"}}
                results, wall = asyncio.run(run_load(url, key, [body] * n, concurrency))
                row = {
                    "concurrency": concurrency,
                    "model": model,
                    "reply": "text+audio" if spoken else "text",
                    **summary(results, wall),
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
    serve.shutdown()
    return rows


REALTIME_QUESTION = QUESTION + " Should I see a doctor?"  # about 6 s in the Piper voice


async def realtime_one(url: str, key: str, model: str, pcm: bytes, max_tokens: int) -> dict:
    """One push-to-talk turn over /v1/realtime: the question's audio appended (200 ms messages), then commit +
    response.create; seconds from the commit to the turn's encoding (item created), the first transcript
    delta, the first audio byte and response.done."""
    from websockets.asyncio.client import connect

    out = {"status": None, "error": None, "tokens": 0}
    ws_url = url.replace("http://", "ws://") + f"/realtime?model={model}"
    async with connect(ws_url, additional_headers={"Authorization": f"Bearer {key}"}, max_size=None) as ws:
        await ws.recv()  # session.created
        await ws.send(
            json.dumps(
                {
                    "type": "session.update",
                    "session": {
                        "type": "realtime",
                        "output_modalities": ["audio"],
                        "max_output_tokens": max_tokens,
                        "audio": {"output": {"voice": "joe"}},
                    },
                }
            )
        )
        for i in range(0, len(pcm), 9600):
            await ws.send(
                json.dumps(
                    {
                        "type": "input_audio_buffer.append",
                        "audio": base64.b64encode(pcm[i : i + 9600]).decode(),
                    }
                )
            )
        t0 = time.perf_counter()
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        await ws.send(json.dumps({"type": "response.create"}))
        marks = {
            "conversation.item.created": "encoded",
            "response.output_audio_transcript.delta": "ttft",
            "response.output_audio.delta": "ttfa",
            "response.done": "total",
        }
        while "total" not in out:
            event = json.loads(await ws.recv())
            name = marks.get(event["type"])
            if name and name not in out:
                out[name] = time.perf_counter() - t0
            if event["type"] == "error":
                out["error"] = event["error"]["code"]
                break
            if event["type"] == "response.done":
                out["status"] = 200 if event["response"]["status"] in ("completed", "incomplete") else None
                out["tokens"] = event["response"]["usage"]["output_tokens"]
    return out


def realtime(model_dir: str, opts, key: str) -> list[dict]:
    """commit -> first text delta / first audio byte for a ~6 s spoken question, c=1 and c=8 sockets, end to
    end vs cascade; beside it the chat API's streamed spoken reply to the same audio (the turn over SSE)."""
    from ray import serve

    from medlm import audio as audio_io
    from medlm.models.tts import speak, voice_bank

    (wave,) = speak([REALTIME_QUESTION], voice_bank(1, backend="piper")[0])
    seconds = len(wave) / audio_io.SAMPLING_RATE
    print(f"spoken question: {seconds:.1f} s of Piper speech", flush=True)
    pcm = audio_io.pcm16(audio_io.resample(wave, audio_io.SAMPLING_RATE, 24000))
    part = {
        "type": "input_audio",
        "input_audio": {
            "data": base64.b64encode(audio_io.encode(wave, audio_io.SAMPLING_RATE, "WAV", "PCM_16")).decode(),
            "format": "wav",
        },
    }
    url = serve_app(model_dir, opts.port, key, asr_model="whisper-tiny.en")
    rows = []

    async def sockets(model: str, n: int, concurrency: int) -> tuple[list[dict], float]:
        gate = asyncio.Semaphore(concurrency)

        async def one():
            async with gate:
                return await realtime_one(url, key, model, pcm, opts.max_tokens)

        await realtime_one(url, key, model, pcm, opts.max_tokens)  # warm-up, not counted
        start = time.perf_counter()
        results = await asyncio.gather(*(one() for _ in range(n)))
        return results, time.perf_counter() - start

    for concurrency, n in ((1, opts.latency_requests), (8, 16)):
        for model in ("medlm", "cascade"):
            results, wall = asyncio.run(sockets(model, n, concurrency))
            ok = [r for r in results if r["status"] == 200]
            row = {
                "api": "realtime",
                "concurrency": concurrency,
                "model": model,
                **summary(results, wall),
                "encoded_p50_ms": pct([r.get("encoded") for r in ok], 0.5),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
            body = {
                "model": model,
                "max_tokens": opts.max_tokens,
                "temperature": 0,
                "messages": [{"role": "user", "content": [part]}],
                "modalities": ["text", "audio"],
                "audio": {"voice": "joe", "format": "pcm16"},
            }
            results, wall = asyncio.run(run_load(url, key, [body] * n, concurrency))
            row = {"api": "chat (SSE)", "concurrency": concurrency, "model": model, **summary(results, wall)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    serve.shutdown()
    return rows


def throughput(model_dir: str, opts, key: str) -> list[dict]:
    from ray import serve

    from medlm.serving.config import GenerationOptions

    rng = random.Random(0)
    lengths = [rng.choice([16, 32, 64, 128, 256]) for _ in range(opts.throughput_requests)]
    bodies = [
        {
            "model": "medlm",
            "max_tokens": n,
            "temperature": 0,
            "messages": [
                {
                    "role": "user",
                    "content": f"{TEXT_QUESTIONS[i % len(TEXT_QUESTIONS)]} Explain it in detail, at length.",
                }
            ],
        }
        for i, n in enumerate(lengths)
    ]
    rows = []
    for scheduling in ("static", "continuous"):
        url = serve_app(
            model_dir,
            opts.port,
            key,
            llm_batching=GenerationOptions(max_batch_size=16, scheduling=scheduling),
            speech={"enabled": False},
        )
        results, wall = asyncio.run(run_load(url, key, bodies, 16))
        stats = serve.get_deployment_handle("LLM", app_name="medlm").batch_stats.remote().result()
        row = {
            "scheduling": scheduling,
            **summary(results, wall),
            "mean_rows_per_step": round(stats["mean_batch"], 2),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
        serve.shutdown()
    return rows


def chaos(model_dir: str, opts, key: str) -> list[dict]:
    import ray
    from ray import serve

    part, _ = spoken_part("My knee has been swollen since Monday. Should I see a doctor?")
    kinds = ["text", "audio", "audio-out"]
    bodies = []
    for i in range(opts.chaos_requests):
        kind = kinds[i % 3]
        content = [part] if kind == "audio" else TEXT_QUESTIONS[i % len(TEXT_QUESTIONS)]
        body = {
            "model": "medlm",
            "max_tokens": 16,
            "temperature": 0,
            "messages": [{"role": "user", "content": content}],
        }
        if kind == "audio-out":
            body |= {"modalities": ["text", "audio"], "audio": {"voice": "joe", "format": "pcm16"}}
        bodies.append(body)
    url = serve_app(model_dir, opts.port, key)
    killed = []

    async def kill_one_of_each():
        for name in ("LLM", "SpeechEncoder", "Speaker"):
            await asyncio.sleep(opts.kill_every_s)
            actors = [a for a in ray.util.list_named_actors(all_namespaces=True) if f"#{name}#" in a["name"]]
            if actors:
                ray.kill(ray.get_actor(actors[0]["name"], namespace=actors[0]["namespace"]), no_restart=False)
                killed.append(name)
                print(f"killed a {name} replica at {time.strftime('%X')}", flush=True)

    results, wall = asyncio.run(run_load(url, key, bodies, 32, during=kill_one_of_each))
    serve.shutdown()
    failed = [r for r in results if r["status"] != 200 or r["error"] is not None]
    by_status: dict[str, int] = {}
    for r in failed:
        k = str(r["error"] or r["status"])
        by_status[k] = by_status.get(k, 0) + 1
    row = {
        **summary(results, wall),
        "killed": ",".join(killed),
        "failed": len(failed),
        "failed_share": round(len(failed) / len(results), 4),
        "5xx": sum(1 for r in results if r["status"] and r["status"] >= 500),
        "failures": by_status,
    }
    print(json.dumps(row), flush=True)
    return [row]


def engine(model_dir: str, opts, key: str) -> list[dict]:
    import threading

    import torch

    from medlm.models import SpeechLM, SpeechLMProcessor
    from medlm.serving.generation import Engine, Slot

    llm = SpeechLM.from_pretrained_part(model_dir, "llm").llm
    tok = SpeechLMProcessor.from_pretrained(model_dir).tokenizer
    ids = [
        tok.apply_chat_template(
            [{"role": "user", "content": f"{q} Explain it in detail."}],
            add_generation_prompt=True,
            return_dict=True,
        )["input_ids"]
        for q in TEXT_QUESTIONS * 3
    ][:16]
    n = opts.max_tokens
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        tok.padding_side = "left"
        enc = tok.pad({"input_ids": ids}, return_tensors="pt")
        with torch.no_grad():
            t0 = time.perf_counter()
            llm.generate(
                **enc, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id
            )
            hf = time.perf_counter() - t0
            embeds = [llm.get_input_embeddings()(torch.tensor(x)) for x in ids]
        loop = Engine(
            llm, eos_token_id=-1, activate=lambda name: None, lock=threading.Lock(), max_batch_size=16
        )
        done = [threading.Event() for _ in embeds]
        t0 = time.perf_counter()
        for e, ev in zip(embeds, done):
            loop.submit(Slot(e, n, lambda tok_, finish, ev=ev: ev.set() if finish else None))
        for ev in done:
            ev.wait()
        ours = time.perf_counter() - t0
        loop.close()
        row = {
            "threads": threads,
            "rows": len(ids),
            "new_tokens": n,
            "hf_generate_tokens_per_s": round(len(ids) * n / hf, 1),
            "engine_tokens_per_s": round(len(ids) * n / ours, 1),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", choices=["latency", "throughput", "chaos", "engine", "realtime", "all"])
    ap.add_argument("--max-tokens", type=int, default=64, help="answer length of the latency runs")
    ap.add_argument("--latency-requests", type=int, default=8, help="requests per mode at concurrency 1")
    ap.add_argument("--throughput-requests", type=int, default=48)
    ap.add_argument("--chaos-requests", type=int, default=1000)
    ap.add_argument("--kill-every-s", type=float, default=20.0)
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "medlm-serve-bench"))
    opts = ap.parse_args()
    if not (1 <= opts.chaos_requests <= 5000 and 1 <= opts.throughput_requests <= 2000):
        ap.error("keep the load bounded")

    from medlm.stack import local_stack

    key = secrets.token_urlsafe(16)
    from medlm.serving import default_model_dir

    model_dir = default_model_dir(opts.workdir, preset="real")
    scenarios = ["latency", "throughput", "chaos"] if opts.scenario == "all" else [opts.scenario]
    out = {}
    with local_stack(s3=False, ray=opts.scenario != "engine"):
        for name in scenarios:
            t0 = time.perf_counter()
            out[name] = globals()[name](model_dir, opts, key)
            print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; real preset "
        f"(whisper-tiny.en encoder + adapter + SmolLM2-135M-Instruct), fp32\n"
    )
    keys = {
        "latency": [
            "concurrency",
            "model",
            "reply",
            "n",
            "ok",
            "ttft_p50_ms",
            "ttft_p99_ms",
            "total_p50_ms",
            "total_p99_ms",
            "ttfa_p50_ms",
            "ttfa_p99_ms",
            "mean_tokens",
        ],
        "throughput": [
            "scheduling",
            "n",
            "ok",
            "wall_s",
            "answers_per_s",
            "tokens_per_s",
            "mean_rows_per_step",
            "ttft_p50_ms",
            "ttft_p99_ms",
            "total_p50_ms",
            "total_p99_ms",
        ],
        "realtime": [
            "api",
            "concurrency",
            "model",
            "n",
            "ok",
            "encoded_p50_ms",
            "ttft_p50_ms",
            "ttft_p99_ms",
            "ttfa_p50_ms",
            "ttfa_p99_ms",
            "total_p50_ms",
            "mean_tokens",
        ],
        "engine": ["threads", "rows", "new_tokens", "hf_generate_tokens_per_s", "engine_tokens_per_s"],
        "chaos": [
            "n",
            "ok",
            "failed",
            "failed_share",
            "5xx",
            "killed",
            "wall_s",
            "total_p50_ms",
            "total_p99_ms",
            "failures",
        ],
    }
    for name, rows in out.items():
        print(f"{name}:\n{table(rows, keys[name])}\n")


if __name__ == "__main__":
    main()
