"""SpeechLLM's LLM-made annotation, for real: the data factory's ``openai`` backend (``medlm.data.llm``)
against an LLM that medlm itself serves, scored against the truth the ``sentences`` generator planted (every
entity span and the sentiment are known), beside the ``rule`` backend on the same sentences.

    python bench/llm_annotation.py --n 200                        # the pretrained SmolLM2-135M-Instruct
    python bench/llm_annotation.py --model-dir <stage-1 export>   # one app per --model-dir, in turn

Each model: a local Ray, ``medlm.serving.run_local`` on 127.0.0.1 (the real preset's app: its LLM replica
answers text chats), the factory's ``OpenAIBackend.annotate`` on ``--concurrency`` threads (what ``medlm data
make llm.backend=openai`` does), wall time per 1,000 utterances on this machine. Scores: entity F1 by exact
span (label + offsets), by phrase (label + normalised text) and by label only, sentiment accuracy and macro
F1, and the share of sentences whose answer gave no usable entity. Prints JSON lines and a Markdown table.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import random
import secrets
import tempfile
import time


def planted(n: int, seed: int) -> list[dict]:
    from medlm.data.sentences import sentence

    rng = random.Random(seed)
    return [sentence(rng) for _ in range(n)]


def score(rows: list[dict], annotations: list[dict]) -> dict:
    from medlm.eval.metrics import ner_span_f1, sentiment_macro_f1
    from medlm.models.prompts import SENTIMENTS

    def spans(entities):
        return [(e["label"], e["start"], e["end"]) for e in entities]

    def phrases(entities, text):
        return [(e["label"], text[e["start"] : e["end"]]) for e in entities]

    gold = [r["entities"] for r in rows]
    pred = [a["entities"] for a in annotations]
    texts = [r["text"] for r in rows]
    sent_gold = [r["sentiment"] for r in rows]
    sent_pred = [a["sentiment"] for a in annotations]
    return {
        "span_f1": round(
            ner_span_f1([spans(g) for g in gold], [spans(p) for p in pred], mode="span")["f1"], 3
        ),
        "phrase_f1": round(
            ner_span_f1(
                [phrases(g, t) for g, t in zip(gold, texts)], [phrases(p, t) for p, t in zip(pred, texts)]
            )["f1"],
            3,
        ),
        "label_f1": round(
            ner_span_f1(
                [phrases(g, t) for g, t in zip(gold, texts)],
                [phrases(p, t) for p, t in zip(pred, texts)],
                mode="label",
            )["f1"],
            3,
        ),
        "sentiment_acc": round(sum(a == b for a, b in zip(sent_gold, sent_pred)) / len(rows), 3),
        "sentiment_macro_f1": round(sentiment_macro_f1(sent_gold, sent_pred, SENTIMENTS), 3),
        "no_entities_share": round(sum(not p for p in pred) / len(rows), 3),
    }


def annotate_all(backend, rows: list[dict], concurrency: int) -> tuple[list[dict], float]:
    start = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        out = list(pool.map(lambda r: backend.annotate(r["text"]), rows))
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="sentences to annotate")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument(
        "--model-dir", action="append", default=[], help="exports to serve (default: the real preset)"
    )
    ap.add_argument("--port", type=int, default=8124)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "medlm-serve-bench"))
    opts = ap.parse_args()
    if not 1 <= opts.n <= 5000:
        ap.error("--n: 1..5000")

    from ray import serve

    from medlm.data.llm import LLMConfig, OpenAIBackend, RuleBackend
    from medlm.serving import default_model_dir, run_local
    from medlm.stack import local_stack

    rows = planted(opts.n, opts.seed)
    results = []
    annotations, wall = annotate_all(RuleBackend(), rows, 1)
    results.append(
        {
            "backend": "rule",
            "model": "-",
            "n": opts.n,
            **score(rows, annotations),
            "s_per_1000": round(1000 * wall / opts.n, 1),
        }
    )
    print(json.dumps(results[-1]), flush=True)
    key = secrets.token_urlsafe(16)
    os.environ["MEDLM_BENCH_KEY"] = key
    with local_stack(s3=False, ray=True):
        for model_dir in opts.model_dir or [default_model_dir(opts.workdir, preset="real")]:
            url = run_local(model_dir, port=opts.port, api_key=key)
            backend = OpenAIBackend(
                LLMConfig(
                    backend="openai",
                    base_url=url,
                    model="medlm",
                    api_key_env="MEDLM_BENCH_KEY",
                    timeout_s=600,
                )
            )
            backend.annotate(rows[0]["text"])  # warm-up, not counted
            annotations, wall = annotate_all(backend, rows, opts.concurrency)
            results.append(
                {
                    "backend": "openai (medlm serve)",
                    "model": model_dir,
                    "n": opts.n,
                    **score(rows, annotations),
                    "s_per_1000": round(1000 * wall / opts.n, 1),
                }
            )
            print(json.dumps(results[-1]), flush=True)
            for row, ann in list(zip(rows, annotations))[:3]:
                print(json.dumps({"text": row["text"], "gold": row["entities"], "llm": ann}), flush=True)
            serve.shutdown()
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {opts.n} sentences "
        f"(seed {opts.seed}), {opts.concurrency} concurrent requests, greedy\n"
    )
    keys = [
        "backend",
        "model",
        "n",
        "span_f1",
        "phrase_f1",
        "label_f1",
        "sentiment_acc",
        "sentiment_macro_f1",
        "no_entities_share",
        "s_per_1000",
    ]
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in results:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
