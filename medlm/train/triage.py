"""The ``triage`` job: train the safety screen (``medlm.models.triage``) and export it.

Data: typed emergencies and ordinary consultation turns from ``medlm.data.redflags`` (plus the knowledge
base's patient turns), harmful requests from MedSafetyBench's training demonstrations; a share of each is
also spoken (TTS, the training voice bank) and read through the frozen audio encoder of ``model`` once.
Training runs in this process: the heads are small (a few hundred thousand parameters each) and their
inputs are computed once, so a step costs milliseconds and Ray Train would only add start-up time.
Thresholds are set on a validation split: per modality and label, the highest probability that ``recall``
of its validation turns still reach, raised where more than ``max_false_positive`` of the others would.
The held-out test phrasings (``medlm.eval.safety_sets``) are never read here.
"""

from __future__ import annotations

import logging
import math
import random
import re
import tempfile
import time
from itertools import islice
from typing import Any

import numpy as np
import torch
from pydantic import Field

from medlm import storage
from medlm.config import Section
from medlm.models import ModelSpec, build_model
from medlm.models.encoder import encoder_fingerprint
from medlm.models.triage import LABELS, TriageConfig, TriageModel, item_frames, pad_batch, token_ids
from medlm.models.tts import TTSConfig, speak, voice_bank

log = logging.getLogger("medlm")


class TriageJobConfig(Section):
    model: ModelSpec = ModelSpec(preset="real")  # whose frozen audio encoder the audio branch reads
    llm: str = "smollm2-135m-instruct"  # the text branch's encoder: this LLM's first `text_layers` layers
    text_layers: int = Field(default=8, ge=0)  # 0: its input embeddings alone
    output: str = "s3://medlm/runs/triage"  # the export (local dir or s3://)
    emergencies: int = Field(default=2400, ge=10)  # typed training turns per label (harmful: at most 900)
    benign: int = Field(default=2400, ge=10)
    harmful: int = Field(default=900, ge=0, le=900)
    spoken: int = Field(default=300, ge=0)  # turns per label also spoken (the training voice bank)
    tts: TTSConfig = TTSConfig(backend="mixed", num_voices=12)
    val_share: float = Field(default=0.15, gt=0, lt=1)
    recall: float = Field(default=0.99, gt=0, le=1)  # validation recall the thresholds keep ...
    max_false_positive: float = Field(default=0.02, ge=0, le=1)  # ... unless more other turns reach them
    hidden: int = Field(default=192, ge=8)
    steps: int = Field(default=600, ge=1)
    batch_size: int = Field(default=32, ge=2)
    lr: float = Field(default=2e-3, gt=0)
    seed: int = 0
    medsafetybench: str | None = None  # default: medlm.paths.medsafetybench_dir()
    num_cpus: float = Field(default=1.0, gt=0)  # the Ray task that trains (on whichever node has room)


Example = tuple[str, int]  # (text, label index)
# the NER corpus pairs symptoms freely ("chest pain and fainting for two days"): such sentences are neither
# clearly benign nor emergencies, so they are left out of the benign turns
RED_FLAG_WORDS = re.compile(r"chest|faint|breath|unconscious|seizure|blood|bleed", re.I)


def typed_examples(cfg: TriageJobConfig) -> list[Example]:
    """Every training turn with its label: emergencies, benign turns (the generator's, the knowledge base's
    patient turns and the NER corpus's sentences, a third each at most), MedSafetyBench's harmful requests."""
    from medlm.data import kb, medsafetybench, redflags, sentences

    rng = random.Random(cfg.seed)
    emergencies = [t for _, t in redflags.emergency_messages(cfg.emergencies, cfg.seed)]
    patients = [turn["text"] for c in kb.CONDITIONS for turn in kb.consultation(c, rng)[::2][:1]]
    patients += [kb.patient_utterance(c, rng)["text"] for c in kb.CONDITIONS for _ in range(4)]
    patients += [q["question"] for q in kb.qa_pairs(cfg.seed)]
    corpus = (sentences.sentence(rng)["text"] for _ in range(10 * cfg.benign))  # red-flag-like words left out
    patients += list(islice((t for t in corpus if not RED_FLAG_WORDS.search(t)), cfg.benign // 3))
    benign = redflags.benign_messages(max(cfg.benign - len(patients), cfg.benign // 3), cfg.seed) + patients
    harmful = [d["request"] for d in medsafetybench.train_demonstrations(cfg.medsafetybench)][: cfg.harmful]
    index = {name: i for i, name in enumerate(LABELS)}
    return (
        [(t, index["none"]) for t in dict.fromkeys(benign)]
        + [(t, index["emergency"]) for t in emergencies]
        + [(t, index["harmful"]) for t in harmful]
    )


def split(examples: list[Example], share: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, validation), stratified by label."""
    rng, train, val = random.Random(seed), [], []
    for label in sorted({y for _, y in examples}):
        rows = [e for e in examples if e[1] == label]
        rng.shuffle(rows)
        cut = max(1, round(share * len(rows)))
        val, train = val + rows[:cut], train + rows[cut:]
    return train, val


def spoken_subset(examples: list[Example], per_label: int, seed: int) -> list[Example]:
    rng, out = random.Random(seed), []
    for label in sorted({y for _, y in examples}):
        rows = [e for e in examples if e[1] == label]
        out += rng.sample(rows, min(per_label, len(rows)))
    return out


def render(examples: list[Example], tts: TTSConfig, seed: int) -> list[np.ndarray]:
    """Each turn spoken by the next voice of the training bank (round robin)."""
    voices = voice_bank(tts.num_voices, seed, tts.backend)
    waves: list[np.ndarray | None] = [None] * len(examples)
    for v, voice in enumerate(voices):
        idx = list(range(v, len(examples), len(voices)))
        for i, wave in zip(idx, speak([examples[i][0] for i in idx], voice, tts, seed + v)):
            waves[i] = wave
    return waves  # type: ignore[return-value]


def non_speech(n: int, seed: int) -> list[np.ndarray]:
    """``n`` recordings without speech (the screen must call them ``none``): silence, a hum, white noise at
    several levels; 0.3 to 20 s each."""
    from medlm.audio import SAMPLING_RATE

    rng, out = np.random.default_rng(seed), []
    for i in range(n):
        t = np.arange(int(rng.uniform(0.3, 20) * SAMPLING_RATE)) / SAMPLING_RATE
        if i % 3 == 0:
            wave = np.zeros_like(t)
        elif i % 3 == 1:
            wave = 0.3 * np.sin(2 * np.pi * rng.uniform(50, 1000) * t)
        else:
            wave = rng.normal(0, 10 ** rng.uniform(-3, -0.5), len(t))
        out.append(wave.astype(np.float32))
    return out


def time_masked(frames: torch.Tensor, rng: random.Random, spans: int = 2, share: float = 0.1) -> torch.Tensor:
    """SpecAugment-style time masks on encoder frames: ``spans`` random spans of up to ``share`` of the
    length set to zero (the screen must not hang on one word)."""
    out, n = frames.clone(), len(frames)
    for _ in range(spans):
        width = rng.randint(0, max(0, int(share * n)))
        start = rng.randint(0, max(0, n - width))
        out[start : start + width] = 0
    return out


def batches(n_per_label: dict[int, list[int]], size: int, rng: random.Random):
    """Endless label-balanced batches of indices."""
    labels = sorted(n_per_label)
    while True:
        yield [rng.choice(n_per_label[lbl]) for lbl in (rng.choice(labels) for _ in range(size))]


def by_label(labels: list[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        out.setdefault(y, []).append(i)
    return out


def thresholds(
    probs: np.ndarray, labels: np.ndarray, recall: float, max_fp: float = 1.0
) -> tuple[dict[str, float], dict]:
    """Per label, the highest threshold at which ``recall`` of its validation turns still reach it (set for
    recall: a missed emergency costs more than a needless instruction), raised where more than ``max_fp``
    of the other validation turns would reach it (then recall gives way); and that share (false positives)."""
    out, false_pos = {}, {}
    for name in ("emergency", "harmful"):
        k = LABELS.index(name)
        neg, pos = probs[labels != k, k], probs[labels == k, k]
        t = float(np.sort(pos)[::-1][math.ceil(recall * len(pos)) - 1]) if len(pos) else 0.5
        if len(neg) and (neg >= t).mean() > max_fp:
            t = float(np.sort(neg)[::-1][math.floor(max_fp * len(neg))]) + 1e-6
        out[name] = min(max(t, 0.05), 0.99)
        false_pos[name] = float((neg >= out[name]).mean()) if len(neg) else float("nan")
    return out, false_pos


class TriageTrainer:
    """setup (data, frames, model) -> train -> calibrate -> export, as small methods."""

    def __init__(self, cfg: TriageJobConfig):
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        torch.manual_seed(cfg.seed)

    def setup(self) -> None:
        cfg = self.cfg
        speech_lm, _ = build_model(cfg.model)
        speech_lm.eval()
        train, val = split(typed_examples(cfg), cfg.val_share, cfg.seed)
        self.typed = {"train": train, "val": val}
        t0 = time.time()
        self.spoken = {}
        for name, rows, n in (("train", train, cfg.spoken), ("val", val, max(1, cfg.spoken // 4))):
            rows = spoken_subset(rows, n, cfg.seed + len(name))
            quiet = non_speech(max(1, n // 10), cfg.seed + len(name)) if n else []
            waves = render(rows, cfg.tts, cfg.seed + len(name)) + quiet
            labels = [y for _, y in rows] + [LABELS.index("none")] * len(quiet)
            self.spoken[name] = (item_frames(speech_lm, waves), labels)
        log.info(
            "triage: %d spoken turns rendered and encoded in %.0f s",
            sum(len(v[1]) for v in self.spoken.values()),
            time.time() - t0,
        )
        encoder_key = encoder_fingerprint(speech_lm.encoder, speech_lm.frontend)
        audio_dim = speech_lm.config.encoder_config.hidden_size
        del speech_lm
        self.model, self.tokenizer = self.build(audio_dim, encoder_key)
        t0 = time.time()
        self.states = {k: self.text_states([t for t, _ in rows]) for k, rows in self.typed.items()}
        log.info("triage: %d typed turns encoded in %.0f s", len(train) + len(val), time.time() - t0)

    def build(self, audio_dim: int, encoder_key: str):
        """The screen with the LLM's first ``text_layers`` layers as its (frozen) text encoder, and the LLM's
        tokenizer."""
        from transformers import AutoModel, AutoTokenizer

        from medlm.models.pretrained import resolve_checkpoint

        path = resolve_checkpoint(self.cfg.llm)
        llm = AutoModel.from_pretrained(path, num_hidden_layers=self.cfg.text_layers, dtype=torch.float32)
        config = TriageConfig(
            text_config=llm.config.to_dict(),
            audio_dim=audio_dim,
            hidden=self.cfg.hidden,
            encoder_key=encoder_key,
        )
        model = TriageModel(config)
        model.text_encoder.load_state_dict(llm.state_dict())
        return model.eval(), AutoTokenizer.from_pretrained(path)

    @torch.inference_mode()
    def text_states(self, texts: list[str], batch: int = 32) -> list[torch.Tensor]:
        """The frozen text encoder's states of each turn, computed once (fp16)."""
        out = []
        for start in range(0, len(texts), batch):
            ids, mask = pad_batch([token_ids(self.tokenizer, t) for t in texts[start : start + batch]])
            states = self.model.text_states(ids, mask)
            out += [s[: int(m.sum())].half() for s, m in zip(states, mask)]
        return out

    def inputs(self, modality: str, split_name: str, idx: list[int]) -> dict[str, Any]:
        if modality == "text":
            vectors, mask = pad_batch([self.states[split_name][i].float() for i in idx])
            labels = [self.typed[split_name][i][1] for i in idx]
            return {"vectors": vectors, "mask": mask, "labels": torch.tensor(labels)}
        frames, labels = self.spoken[split_name]
        seqs = [frames[i].float() for i in idx]
        if split_name == "train":
            seqs = [time_masked(f, self.rng) for f in seqs]
        vectors, mask = pad_batch(seqs)
        return {"vectors": vectors, "mask": mask, "labels": torch.tensor([labels[i] for i in idx])}

    def train(self) -> list[float]:
        cfg = self.cfg
        params = [p for n, p in self.model.named_parameters() if not n.startswith("text_encoder.")]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.05)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.steps, pct_start=0.1)
        streams = {"text": batches(by_label([y for _, y in self.typed["train"]]), cfg.batch_size, self.rng)}
        if self.spoken["train"][1]:
            streams["audio"] = batches(by_label(self.spoken["train"][1]), cfg.batch_size, self.rng)
        self.model.train()
        losses = []
        for step in range(cfg.steps):
            loss = sum(
                self.model(m, **self.inputs(m, "train", next(stream)))[1] for m, stream in streams.items()
            )
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            if step % 100 == 0 or step == cfg.steps - 1:
                log.info("triage step %d/%d loss %.4f", step + 1, cfg.steps, float(loss))
        self.model.eval()
        return losses

    @torch.inference_mode()
    def probs(self, modality: str, split_name: str) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.typed[split_name]) if modality == "text" else len(self.spoken[split_name][1])
        out, labels = [], []
        for start in range(0, n, 64):
            batch = self.inputs(modality, split_name, list(range(start, min(n, start + 64))))
            labels.append(batch.pop("labels"))
            out.append(self.model(modality, **batch)[0].softmax(-1))
        return torch.cat(out).numpy(), torch.cat(labels).numpy()

    def calibrate(self) -> dict[str, Any]:
        """Thresholds per modality from the validation split (written into the config)."""
        report, cuts = {}, {}
        for modality in ("text", "audio"):
            if modality == "audio" and not self.spoken["val"][1]:
                continue
            probs, labels = self.probs(modality, "val")
            cut, false_pos = thresholds(probs, labels, self.cfg.recall, self.cfg.max_false_positive)
            cuts.update({f"{modality}.{k}": v for k, v in cut.items()})
            report[modality] = {
                "thresholds": cut,
                "val_false_positive": false_pos,
                "val_turns": int(len(labels)),
            }
        self.model.config.thresholds = cuts
        return report

    def export(self) -> str:
        with tempfile.TemporaryDirectory() as tmp:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(f"{tmp}/tokenizer")  # beside, not in, the screen's config.json
            storage.copy_tree(tmp, self.cfg.output)
        return self.cfg.output


def train_triage(cfg: TriageJobConfig) -> dict[str, Any]:
    """The job: one Ray task (``num_cpus``) runs :func:`fit` on a node with room."""
    import ray

    return ray.get(ray.remote(num_cpus=cfg.num_cpus)(fit).remote(cfg))


def fit(cfg: TriageJobConfig) -> dict[str, Any]:
    """setup -> train -> calibrate -> export, in this process; the summary."""
    torch.set_num_threads(max(1, int(cfg.num_cpus)))
    trainer = TriageTrainer(cfg)
    t0 = time.time()
    trainer.setup()
    losses = trainer.train()
    report = trainer.calibrate()
    out = trainer.export()
    return {"export": out, "final_loss": losses[-1], "seconds": round(time.time() - t0, 1), **report}
