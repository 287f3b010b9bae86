"""``medlm reproduce``: the four papers' claims in miniature, trained and evaluated for real.

Every number comes from real runs on the synthetic data: ``medlm.train.train`` with overrides on
the job YAMLs (``configs/stage1.yaml`` ...), then ``medlm.eval.job.evaluate`` on each export (the
SpeechCT-CLIP reproduction is the ``ct_clip`` job, which evaluates itself)::

    speechmedassist   stage 1 (text) -> stage 2 (speech for half the conditions) vs one stage on speech
                      alone; spoken QA about facts never heard as speech vs the same questions in text
    voicetextblender  from the stage-1 model: joint speech+text SFT vs speech-only SFT; text QA kept?
    speechllm         multi-task ASR/NER/sentiment with classifier regularizer + LoRA vs without each
    speechct          CT-CLIP teacher -> speech student without / with distillation (zero-shot F1 gap)

Each reproduction writes ``<output>/<name>.md`` (one table: metric per variant, seed, preset, the
command, wall time) and all of them ``<output>/reproductions-<preset>.json``. The tiny models are
random-init and train for a few dozen steps: effects can be weak or absent, and the tables say so.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field

from medlm import storage
from medlm.config import Section, build_config, load_config

log = logging.getLogger("medlm.reproduce")

NAMES = ("speechmedassist", "voicetextblender", "speechllm", "speechct")


class ReproPreset(Section):
    """How big the models, data and runs of a reproduction preset are."""

    model: str = "tiny"                                   # medlm.models preset of every SpeechLM
    steps: int = Field(default=30, ge=1)                  # optimizer steps of every SpeechLM training run
    num_workers: int = Field(default=1, ge=1)             # Ray Train workers per run
    use_gpu: bool = False
    seed: int = 0                                         # data, training and CT seed
    data: list[str] = Field(default_factory=list)         # make_data overrides (e.g. consultations=400)
    max_new_tokens: int = Field(default=32, ge=1)         # greedy decoding length in evaluation
    eval_limit: int | None = Field(default=None, ge=1)    # rows per eval dataset (None = all)
    ct: list[str] = Field(default_factory=list)           # ct_clip overrides (configs/ct_clip.yaml)


PRESETS: dict[str, dict[str, Any]] = {
    # CPU / CI: a few dozen steps per run, one worker each.
    "tiny": {"steps": 30, "ct": ["data.synthetic_cases=64", "teacher.steps=40", "align.steps=40",
                                 "distill.steps=40", "teacher.batch_size=8", "align.batch_size=8",
                                 "distill.batch_size=8"]},
    # One GPU: bigger models, ten times the data and steps.
    "small": {"model": "small", "steps": 300, "use_gpu": True, "max_new_tokens": 48,
              "data": ["consultations=400", "speech_consultations=120", "utterances=400"],
              "ct": ["model.preset=small", "data.synthetic_cases=400", "cpus_per_worker=4"]},
}


def load_preset(name: str, overrides: list[str] | None = None) -> ReproPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return build_config(ReproPreset, PRESETS[name], overrides, source=f"preset {name}")


# --- the runner: trains and evaluates variants on one data set --------------------------------------

class Runner:
    """Holds the data and the run directory of one ``medlm reproduce``; caches shared runs (stage 1)."""

    def __init__(self, preset_name: str, preset: ReproPreset, root: str):
        self.preset_name, self.p, self.root = preset_name, preset, root
        self.data_root = storage.join(root, "data")
        self.heldout_root = storage.join(root, "data-heldout")   # utterances with another seed
        self.cache: dict[str, dict] = {}
        self.samples: dict[str, dict] = {}  # evaluation name -> dataset -> example predictions

    # data
    def make_data(self, names: set[str]) -> None:
        """The synthetic shards the chosen reproductions need (one Ray task per shard, as make_data does)."""
        from medlm.data.factory import MakeDataConfig

        cfg = load_config(MakeDataConfig, "make_data.yaml",
                          [f"output={self.data_root}", f"seed={self.p.seed}", *self.p.data])
        _make_shards(cfg, names - {"utterances_heldout", "qa_text_heldout"})
        if "utterances_heldout" in names:  # NER / sentiment are scored on unseen sentences and voices
            _make_shards(cfg.model_copy(update={"output": self.heldout_root, "seed": self.p.seed + 1}),
                         {"utterances"})
        if "qa_text_heldout" in names:
            write_text_heldout(self.data_root)

    # training
    def train(self, name: str, job: str, *overrides: str) -> dict:
        from medlm.train import TrainJobConfig, train

        if name in self.cache:
            return self.cache[name]
        p = self.p
        cfg = load_config(TrainJobConfig, f"{job}.yaml", [
            f"model.preset={p.model}", f"data.root={self.data_root}", f"data.seed={p.seed}",
            f"optim.steps={p.steps}", f"optim.seed={p.seed}", f"optim.checkpoint_every={p.steps}",
            f"run.storage_path={storage.join(self.root, 'runs')}", f"run.name={name}",
            f"run.num_workers={p.num_workers}", f"run.use_gpu={str(p.use_gpu).lower()}", *overrides])
        log.info("reproduce: training %s (%s, %d steps)", name, job, p.steps)
        res = train(cfg)
        self.cache[name] = res
        return res

    # evaluation
    def evaluate(self, name: str, model: str, datasets: list[dict], tasks: list[str]) -> dict[str, dict]:
        """``{dataset: metrics}`` of ``model`` on ``datasets`` (DatasetEntry dicts)."""
        from medlm.data.registry import DataSpec
        from medlm.eval.job import EvalConfig, evaluate

        cfg = EvalConfig(model=model, data=DataSpec(root=self.data_root, datasets=datasets), tasks=tasks,
                         output=storage.join(self.root, "eval", name), limit=self.p.eval_limit,
                         max_new_tokens=self.p.max_new_tokens, actor_gpus=1.0 if self.p.use_gpu else 0.0,
                         samples=2)
        report = evaluate(cfg)
        self.samples[name] = {k: v["samples"] for k, v in report["datasets"].items()}  # kept in the JSON
        preds = [json.loads(line) for line in storage.read_text(report["files"]["predictions.jsonl"]).splitlines()]
        return {k: {**v["metrics"], "n": v["n"], "distinct": distinct_share(preds, k)}
                for k, v in report["datasets"].items()}


def distinct_share(preds: list[dict], dataset: str) -> float | None:
    """Distinct answers / answers of one dataset: near 0 when the model says the same thing to every input."""
    answers = [p["prediction"].strip() for p in preds if p["dataset"] == dataset and not p["error"]]
    return len(set(answers)) / len(answers) if answers else None


def _make_shards(cfg, names: set[str]) -> None:
    import ray

    from medlm.data.factory import make_shard, plan

    work = [(n, i, items) for n, i, items in plan(cfg) if n in names]
    remote = ray.remote(num_cpus=1)(make_shard)
    stats = ray.get([remote.remote(cfg, n, i, items) for n, i, items in work])
    log.info("reproduce: data %s", {s["dataset"]: s["rows"] for s in stats})


def write_text_heldout(data_root: str) -> str:
    """``qa_text_heldout``: the written questions (qa_text) about exactly the facts of ``qa_speech_heldout``
    (facts never heard as speech that survived the spoken-rewrite filter)."""
    from medlm.data.io import iter_rows, shard_uri, write_shard

    spoken = {json.loads(r["meta"])["fact_id"] for r in iter_rows(storage.join(data_root, "qa_speech_heldout"))}
    rows = [r for r in iter_rows(storage.join(data_root, "qa_text")) if json.loads(r["meta"])["fact_id"] in spoken]
    uri = storage.join(data_root, "qa_text_heldout")
    write_shard(rows, shard_uri(uri, 0), "text_dialogue")
    return uri


QA_TEXT_HELDOUT = {"name": "qa_text_heldout", "uri": None, "kind": "text_dialogue"}


def _entry(name: str, runner: Runner) -> dict:
    if name == "qa_text_heldout":
        return {**QA_TEXT_HELDOUT, "uri": storage.join(runner.data_root, "qa_text_heldout")}
    if name.endswith("_heldout_utt"):  # utterances_ner_heldout_utt -> utterances_ner on the held-out shards
        return {"name": name.removesuffix("_heldout_utt"), "uri": storage.join(runner.heldout_root, "utterances")}
    return {"name": name}


# --- the four reproductions --------------------------------------------------------------------------
# Each returns {"claim", "columns", "rows": [{"variant": ..., <column>: value}], "check": {...}, "notes"}.

def speechmedassist(r: Runner) -> dict:
    s1 = r.train("sma-stage1", "stage1")
    two = r.train("sma-stage2", "stage2", f"model.init_from={s1['export']}")
    one = r.train("sma-speech-only", "stage2", "data.datasets=[{name: consult_speech, weight: 2}, "
                                               "{name: qa_speech, weight: 2}]")
    sets = [_entry(n, r) for n in ("qa_speech_heldout", "qa_text_heldout", "qa_speech")]
    rows = []
    for label, res in (("two-stage (text, then speech for half the facts)", two),
                       ("one-stage (speech data alone)", one)):
        m = r.evaluate(res["run"], res["export"], sets, ["qa"])
        spoken, text = m["qa_speech_heldout"]["f1"], m["qa_text_heldout"]["f1"]
        rows.append({"variant": label, "spoken QA F1, facts never heard as speech": spoken,
                     "same questions in text F1": text, "gap (text - spoken)": text - spoken,
                     "spoken QA F1, facts heard as speech": m["qa_speech"]["f1"],
                     "distinct answers (held-out spoken)": m["qa_speech_heldout"]["distinct"],
                     "n (held-out facts)": m["qa_speech_heldout"]["n"], "train s": res["wall_s"],
                     "final loss": res["metrics"].get("loss")})
    two_r, one_r = rows
    check = {"two-stage held-out spoken F1 > one-stage": two_r[_SMA] > one_r[_SMA],
             "two-stage gap (text - spoken) <= 0.05": abs(two_r["gap (text - spoken)"]) <= 0.05}
    return {"title": "SpeechMedAssist: two-stage training generalises speech to text-only facts",
            "claim": "After stage 1 on text knowledge and stage 2 with speech for only part of the facts, spoken "
                     "questions about facts never heard as speech score close to the same questions in text, "
                     "and better than one-stage training on the speech data alone.",
            "rows": rows, "check": check,
            "notes": "Token F1 (SQuAD) of greedy answers; distinct answers = distinct predictions / n (near 0: the "
                     "model answers every question alike, so F1 measures word overlap, not knowledge). Stage 2 and the one-stage run use configs/stage2.yaml "
                     "(adapter + LLM trained, KD from text); the one-stage run starts from random init and "
                     "sees only consult_speech + qa_speech."}


_SMA = "spoken QA F1, facts never heard as speech"


def voicetextblender(r: Runner) -> dict:
    s1 = r.train("sma-stage1", "stage1")  # shared with speechmedassist
    both = ["model.trainable=['^adapter\\.', '^llm\\.']", f"model.init_from={s1['export']}"]
    joint = r.train("vtb-joint", "joint_sft", *both)
    speech = r.train("vtb-speech-only", "joint_sft", *both,
                     "data.datasets=[{name: utterances_asr, weight: 1}, {name: qa_speech, weight: 1}, "
                     "{name: consult_speech, weight: 1}]")
    sets = [_entry(n, r) for n in ("qa_text", "qa_speech")]
    base = r.evaluate("vtb-base", s1["export"], sets, ["qa"])
    rows = [{"variant": "stage-1 model (before SFT)", "text QA F1": base["qa_text"]["f1"],
             "text F1 change": 0.0, "spoken QA F1": base["qa_speech"]["f1"],
             "distinct text answers": base["qa_text"]["distinct"], "train s": s1["wall_s"]}]
    for label, res in (("joint speech+text SFT", joint), ("speech-only SFT", speech)):
        m = r.evaluate(res["run"], res["export"], sets, ["qa"])
        rows.append({"variant": label, "text QA F1": m["qa_text"]["f1"],
                     "text F1 change": m["qa_text"]["f1"] - base["qa_text"]["f1"],
                     "spoken QA F1": m["qa_speech"]["f1"], "distinct text answers": m["qa_text"]["distinct"],
                     "train s": res["wall_s"]})
    check = {"joint SFT loses less text F1 than speech-only SFT": rows[1]["text F1 change"] > rows[2]["text F1 change"],
             "joint SFT keeps text F1 (change >= -0.05)": rows[1]["text F1 change"] >= -0.05}
    return {"title": "VoiceTextBlender: joint speech+text SFT keeps text skills",
            "claim": "Joint speech+text SFT keeps text-only scores, while speech-only SFT of the same model loses more.",
            "rows": rows, "check": check,
            "notes": "Both SFT runs start from the stage-1 export and use configs/joint_sft.yaml (ZeRO-3) with the "
                     "adapter and the whole LLM trainable (an export keeps its structure, so no new LoRA); "
                     "speech-only SFT drops consult_text from the mix. Text QA = qa_text (written questions "
                     "on every fact), token F1."}


def speechllm(r: Runner) -> dict:
    variants = [
        ("classifier regularizer + LoRA", "slm-full", []),
        ("LoRA, no classifier", "slm-no-classifier", ["model.num_classes=0", "model.trainable=['^adapter\\.', 'lora_']"]),
        ("classifier, no LoRA", "slm-no-lora", ["model.lora_r=0", "model.trainable=['^adapter\\.', '^classifier\\.']"]),
    ]
    sets = [_entry(n, r) for n in ("utterances_ner_heldout_utt", "utterances_sentiment_heldout_utt",
                                   "utterances_asr_heldout_utt")]
    rows = []
    for label, name, overrides in variants:
        res = r.train(name, "multitask", *overrides)
        m = r.evaluate(name, res["export"], sets, ["asr", "ner", "sentiment"])
        rows.append({"variant": label, "NER F1": m["utterances_ner"]["f1"],
                     "NER label F1": m["utterances_ner"]["label_f1"],
                     "sentiment macro F1": m["utterances_sentiment"]["macro_f1"],
                     "WER": m["utterances_asr"]["wer"], "distinct ASR outputs": m["utterances_asr"]["distinct"],
                     "n": m["utterances_ner"]["n"], "train s": res["wall_s"]})
    full = rows[0]
    check = {f"full > {x['variant']} on {k}": full[k] > x[k] for x in rows[1:] for k in ("NER F1", "sentiment macro F1")}
    return {"title": "SpeechLLM: the classifier regularizer and LoRA help spoken language understanding",
            "claim": "The classifier regularizer (and LoRA) raise NER and sentiment F1 from speech.",
            "rows": rows, "check": check,
            "notes": "configs/multitask.yaml (ASR + NER + sentiment, sentiment classifier on the pooled adapter "
                     "output, LoRA r=8) from random init; scored on held-out utterances (another data seed: "
                     "new sentences and voices)."}


def speechct(r: Runner) -> dict:
    from medlm.ct.job import CTClipConfig, run_ct_clip

    p = r.p
    cfg = load_config(CTClipConfig, "ct_clip.yaml", [
        f"output={storage.join(r.root, 'ct_clip')}", "name=reproduce-ct-clip", f"seed={p.seed}",
        f"data.seed={p.seed}", f"model.speech_preset={p.model}", *p.ct])
    t0 = time.time()
    res = run_ct_clip(cfg)
    wall = round(time.time() - t0, 1)
    z, ret = res["zero_shot"], res["retrieval"]
    rows = [{"variant": label, "zero-shot F1": z[k]["f1"], "zero-shot AUROC": z[k]["auroc"],
             "R@5 (report -> volume)": ret[k]["R@5"]}
            for k, label in (("teacher_text", "text teacher (CT-CLIP)"), ("speech_no_kd", "speech student, no KD"),
                             ("speech_kd", "speech student, with KD"))]
    g = res["gap_recovered"]
    rows.append({"variant": "gap recovered by KD", "zero-shot F1": g["f1"], "zero-shot AUROC": g["auroc"],
                 "R@5 (report -> volume)": None})
    gap = z["teacher_text"]["f1"] - z["speech_no_kd"]["f1"]
    check = {"there is a gap: text teacher F1 > speech student F1 without KD": gap > 0,
             "KD raises the speech student's F1": z["speech_kd"]["f1"] > z["speech_no_kd"]["f1"],
             "KD recovers most (50-100%+) of a positive F1 gap": gap > 0 and g["f1"] is not None and g["f1"] >= 0.5}
    return {"title": "SpeechCT-CLIP: distillation closes the speech-text gap",
            "claim": "Distillation recovers most of the gap between speech and text zero-shot F1.",
            "rows": rows, "check": check, "train_s": wall,
            "notes": f"The ct_clip job (medlm.ct, configs/ct_clip.yaml) with {' '.join(p.ct) or 'its defaults'}; "
                     "gap recovered = (F1 with KD - F1 without) / (F1 teacher - F1 without), meaningless when "
                     "the gap is not positive; paper: 88%."}


REPRODUCTIONS: dict[str, Callable[[Runner], dict]] = {
    "speechmedassist": speechmedassist, "voicetextblender": voicetextblender,
    "speechllm": speechllm, "speechct": speechct}
DATA_NEEDS = {
    "speechmedassist": {"consult_text", "qa_text", "consult_speech", "qa_speech", "qa_speech_heldout",
                        "qa_text_heldout"},
    "voicetextblender": {"consult_text", "qa_text", "consult_speech", "qa_speech", "utterances"},
    "speechllm": {"utterances", "utterances_heldout"},
    "speechct": set(),
}


# --- tables ------------------------------------------------------------------------------------------

def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.0f}"
    return str(v)


def render_markdown(name: str, result: dict) -> str:
    rows = result["rows"]
    cols = list(dict.fromkeys(k for row in rows for k in row))
    lines = [f"# {result['title']}", "", f"**Claim.** {result['claim']}", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in cols) + " |" for row in rows]
    lines += ["", "| check (from the numbers above) | holds |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in result["check"].items()]
    lines += ["", result["notes"], "",
              (f"Preset `{result['preset']}` ({result['preset_config']}), seed {result['seed']}; "
               f"{result['wall_s']:.0f} s wall for this reproduction (a run shared with an earlier one, such as "
               f"stage 1, counts where first trained); finished {result['finished']}."), "",
              f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


# --- entry point -------------------------------------------------------------------------------------

def run_reproductions(preset: str = "tiny", only: list[str] | None = None, output: str | None = None,
                      overrides: list[str] | None = None) -> dict:
    """Run the chosen reproductions (all by default) on ``preset``; write the tables and JSON under
    ``output`` (default ``docs/reproductions``); returns the results. ``overrides`` tweak the preset
    (``steps=3``)."""
    from medlm.jobs import embedded_s3_needed
    from medlm.stack import local_stack

    names = list(only or NAMES)
    bad = [n for n in names if n not in REPRODUCTIONS]
    if bad:
        raise ValueError(f"unknown reproductions {bad}; choose from {list(NAMES)}")
    p = load_preset(preset, overrides)
    out_dir = Path(output or Path(__file__).resolve().parents[2] / "docs" / "reproductions")
    out_dir.mkdir(parents=True, exist_ok=True)
    command = f"medlm reproduce --preset {preset}" + "".join(f" --only {n}" for n in (only or []))
    if overrides:
        command += f"  (preset overrides: {' '.join(overrides)}, via run_reproductions)"
    t_all = time.time()
    results: dict[str, Any] = {"preset": preset, "preset_config": p.model_dump(), "command": command,
                               "reproductions": {}}
    with local_stack(s3=embedded_s3_needed()) as st:
        root = storage.join(st.root, f"reproduce-{preset}-{time.strftime('%Y%m%d-%H%M%S')}")
        if storage.is_s3(root):
            storage.makedirs(root)
        runner = Runner(preset, p, root)
        t0 = time.time()
        runner.make_data(set().union(*(DATA_NEEDS[n] for n in names)))
        results["data_s"] = round(time.time() - t0, 1)
        for n in names:
            t0 = time.time()
            runner.samples = {}
            res = REPRODUCTIONS[n](runner)
            res["samples"] = runner.samples
            res.update(preset=preset, preset_config=_short(p), seed=p.seed, command=command,
                       wall_s=round(time.time() - t0, 1), finished=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
            (out_dir / f"{n}.md").write_text(render_markdown(n, res))
            results["reproductions"][n] = res
            log.info("reproduce: %s done in %.0f s -> %s", n, res["wall_s"], out_dir / f"{n}.md")
        results["root"] = root
    results["wall_s"] = round(time.time() - t_all, 1)
    combined = out_dir / f"reproductions-{preset}.json"  # the latest result of every reproduction
    if combined.exists():
        earlier = json.loads(combined.read_text())["reproductions"]
        results["reproductions"] = {**{k: v for k, v in earlier.items() if k not in names},
                                    **results["reproductions"]}
    combined.write_text(json.dumps(results, indent=2, default=str))
    write_index(out_dir)
    if output is None:  # the project's own tables: the README carries them too
        update_readme(Path(__file__).resolve().parents[2] / "README.md", out_dir)
    return {"wall_s": results["wall_s"], "output": str(out_dir),
            "checks": {n: r["check"] for n, r in results["reproductions"].items()}}


def write_index(out_dir: Path) -> None:
    """``README.md``: the latest table of every reproduction found in ``out_dir``, one after another."""
    parts = [(out_dir / f"{n}.md").read_text() for n in NAMES if (out_dir / f"{n}.md").exists()]
    head = ("# Reproductions (latest tables)\n\nWritten by `medlm reproduce` (medlm/eval/reproduce.py); every "
            "number comes from a real training + evaluation run on the synthetic data, whatever it says.\n\n")
    (out_dir / "README.md").write_text(head + "\n".join(p.replace("\n# ", "\n## ").replace("# ", "## ", 1)
                                                         for p in parts))


README_START, README_END = "<!-- reproductions:start -->", "<!-- reproductions:end -->"


def update_readme(readme: Path, out_dir: Path) -> None:
    """Replace what lies between the reproduction markers of ``readme`` with the latest tables."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} has no {README_START} ... {README_END} section")
    parts = [(out_dir / f"{n}.md").read_text().strip() for n in NAMES if (out_dir / f"{n}.md").exists()]
    body = "\n\n".join(p.replace("\n# ", "\n### ").replace("# ", "### ", 1) for p in parts)
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}\n{body}\n{README_END}{tail}")


def _short(p: ReproPreset) -> str:
    return (f"model {p.model}, {p.steps} steps/run, {p.num_workers} worker(s)"
            + (", GPU" if p.use_gpu else ", CPU"))
