"""Does speech work? A stage-2 export on held-out questions in held-out voices, against the cascade.

    python bench/speech_consistency.py --model <stage2 export> --data <make_data output> --out <dir>

Takes the ``qa_speech_heldout`` rows of a ``make_data`` output (questions about facts never heard as speech
in training), renders each question again twice: with the Piper voice (a new speed/prosody draw) and with
an en-us espeak-ng voice that the training bank never used; writes them as two speech datasets and runs the
evaluation job's ``consistency`` task on both: the model's answer to the audio vs its own answer to the
text of the question (token F1, ROUGE-L, topic accuracy), and the cascade (whisper-tiny.en transcribes,
the same model answers) on the same rows; and the ``asr`` task on the same recordings (the model asked to
transcribe them: does the adapter carry the words?). Prints the report's tables.
"""

from __future__ import annotations

import argparse
import json
import random


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="a make_data output (its qa_speech_heldout)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args()

    from medlm import storage
    from medlm.data import DatasetEntry, DataSpec, iter_rows, write_rows
    from medlm.data.schema import encode_flac
    from medlm.eval.job import EvalConfig, evaluate
    from medlm.models.tts import TTSConfig, build_tts, held_out_voice, voice_bank
    from medlm.stack import local_stack

    rows = list(iter_rows(storage.join(args.data, "qa_speech_heldout")))[: args.limit]
    held_out = held_out_voice()
    piper = voice_bank(1, backend="piper")[0]
    tts, rng = build_tts(TTSConfig()), random.Random(7)
    data = storage.join(args.out, "data")
    for name, voice in (("heldout_piper", piper), ("heldout_espeak", held_out)):
        out, utts = [], []
        for r in rows:
            question = r["turns"][0]["transcript"]
            v = voice.for_utterance(rng)
            audio, rate = tts.synthesize(question, v)
            flac = encode_flac(audio, rate)
            turns = [{**r["turns"][0], "audio": flac, "sample_rate": rate}, *r["turns"][1:]]
            meta = {**json.loads(r["meta"]), "voice": v.meta()}
            out.append({**r, "turns": turns, "meta": json.dumps(meta)})
            utts.append(
                {
                    "id": r["id"],
                    "source": r["source"],
                    "audio": flac,
                    "sample_rate": rate,
                    "transcript": question,
                    "entities": [],
                    "sentiment": "neutral",
                    "speaker": json.dumps(v.meta()),
                    "meta": r["meta"],
                }
            )
        write_rows(out, storage.join(data, name), "speech_dialogue")
        write_rows(utts, storage.join(data, f"{name}_utt"), "utterance")
        print(f"{name}: {len(out)} questions, voice {v.id}", flush=True)

    names = ("heldout_piper", "heldout_espeak")
    cfg = EvalConfig(
        model=args.model,
        output=storage.join(args.out, "report"),
        tasks=["qa", "consistency", "asr"],
        max_new_tokens=args.max_new_tokens,
        batch_size=8,
        data=DataSpec(
            root=data,
            datasets=[
                *(DatasetEntry(name=n, uri=storage.join(data, n), kind="speech_dialogue") for n in names),
                *(
                    DatasetEntry(
                        name=f"{n}_asr", uri=storage.join(data, f"{n}_utt"), kind="utterance", task="asr"
                    )
                    for n in names
                ),
            ],
        ),
    )
    with local_stack(s3=False):
        report = evaluate(cfg)
    print(storage.read_text(report["files"]["report.md"]))


if __name__ == "__main__":
    main()
