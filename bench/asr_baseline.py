"""The ASR baseline on this machine: whisper-tiny.en's WER on Piper and espeak-ng speech, its real-time
factor, the synthesizers' speed, and the load times of both real checkpoints.

    python bench/asr_baseline.py --n 300          # needs `medlm models fetch`

Texts: the knowledge base's spoken-patient utterances and questions (seeded, distinct), rendered once by the
Piper voice (speed and prosody drawn per utterance) and once by the espeak-ng voice bank (12 voices,
cycled). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import time


def texts(n: int, seed: int = 0) -> list[str]:
    from medlm.data import kb

    out, seen, i = [], set(), 0
    rng = random.Random(seed)
    for q in kb.qa_pairs(seed):
        if q["question"] not in seen:
            seen.add(q["question"])
            out.append(q["question"])
    while len(out) < n:
        utt = kb.patient_utterance(rng.choice(kb.CONDITIONS), rng)["text"]
        i += 1
        if utt not in seen:
            seen.add(utt)
            out.append(utt)
        if i > 50 * n:
            break
    rng.shuffle(out)
    return out[:n]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from medlm.audio import SAMPLING_RATE
    from medlm.eval.metrics import wer
    from medlm.models.baselines import WhisperASR
    from medlm.models.encoder import as_waveform
    from medlm.models.pretrained import model_path
    from medlm.models.tts import TTSConfig, build_tts, voice_bank

    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    asr = WhisperASR()
    load_whisper = time.perf_counter() - t0
    t0 = time.perf_counter()
    AutoModelForCausalLM.from_pretrained(model_path("smollm2-135m-instruct"))
    load_llm = time.perf_counter() - t0

    refs = texts(args.n)
    tts = build_tts(TTSConfig())
    rng = random.Random(0)
    rows = []
    for engine in ("piper", "espeak"):
        voices = voice_bank(12, seed=0, backend=engine)
        t0 = time.perf_counter()
        waves = [
            as_waveform(*tts.synthesize(t, voices[i % len(voices)].for_utterance(rng)))
            for i, t in enumerate(refs)
        ]
        synth = time.perf_counter() - t0
        seconds = sum(len(w) for w in waves) / SAMPLING_RATE
        t0 = time.perf_counter()
        hyps = []
        for i in range(0, len(waves), args.batch):
            hyps += asr.transcribe(waves[i : i + args.batch])
        dt = time.perf_counter() - t0
        rows.append((engine, len(refs), seconds, wer(refs, hyps), dt / seconds, synth / seconds))
        print(f"{engine}: e.g. {refs[0]!r} -> {hyps[0]!r}", flush=True)

    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}; load: whisper-tiny.en {load_whisper:.1f} s, "
        f"SmolLM2-135M-Instruct {load_llm:.1f} s\n"
    )
    print(
        "| speech | utterances | audio s | whisper-tiny.en WER "
        "| ASR real-time factor | TTS real-time factor |"
    )
    print("|---|---|---|---|---|---|")
    for engine, n, seconds, w, rtf, srtf in rows:
        print(f"| {engine} | {n} | {seconds:.0f} | {w:.3f} | {rtf:.3f} | {srtf:.3f} |")


if __name__ == "__main__":
    main()
