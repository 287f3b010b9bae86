"""The job registry: one name -> (config class, run function, default config file).

``medlm <group> <job>``, ``python ray_jobs/<job>.py`` and ``ray job submit ... -- python
ray_jobs/<job>.py`` all end in :func:`run_job`, which loads the typed config, makes sure a Ray
cluster and S3 endpoint are reachable (starting the embedded local stack when none is
configured), and calls the job's library function.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from typing import Any

from medlm import paths
from medlm.config import Section, dump_config, load_config

log = logging.getLogger("medlm")


@dataclass(frozen=True)
class Job:
    name: str
    config_cls: str  # "module:Class"
    run_fn: str  # "module:function" taking the config, returning a summary dict
    config_file: str  # default YAML under configs/
    help: str

    def load(self, config: str | None = None, overrides: list[str] | None = None) -> Section:
        return load_config(_resolve(self.config_cls), config or self.config_file, overrides)

    def run(self, cfg: Section) -> dict[str, Any]:
        return _resolve(self.run_fn)(cfg)


def _resolve(ref: str):
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


JOBS: dict[str, Job] = {
    j.name: j
    for j in [
        Job(
            "make_data",
            "medlm.data.factory:MakeDataConfig",
            "medlm.data.factory:make_data",
            "make_data.yaml",
            "synthesise the medical corpora, speech (TTS) and CT volumes into shards",
        ),
        Job(
            "stage1",
            "medlm.train:TrainJobConfig",
            "medlm.train:train",
            "stage1.yaml",
            "stage 1: inject medical knowledge into the LLM from text dialogues",
        ),
        Job(
            "stage2",
            "medlm.train:TrainJobConfig",
            "medlm.train:train",
            "stage2.yaml",
            "stage 2: align speech to text (adapter + LoRA) on speech dialogues",
        ),
        Job(
            "joint_sft",
            "medlm.train:TrainJobConfig",
            "medlm.train:train",
            "joint_sft.yaml",
            "single-stage joint speech + text SFT (VoiceTextBlender)",
        ),
        Job(
            "multitask",
            "medlm.train:TrainJobConfig",
            "medlm.train:train",
            "multitask.yaml",
            "ASR + NER + sentiment with the classifier regularizer (SpeechLLM)",
        ),
        Job(
            "ct_clip",
            "medlm.ct.job:CTClipConfig",
            "medlm.ct.job:run_ct_clip",
            "ct_clip.yaml",
            "CT-CLIP teacher, then the SpeechCT-CLIP student (contrastive + distillation)",
        ),
        Job(
            "triage",
            "medlm.train.triage:TriageJobConfig",
            "medlm.train.triage:train_triage",
            "triage.yaml",
            "the safety screen: emergencies and harmful requests, typed and spoken",
        ),
        Job(
            "evaluate",
            "medlm.eval.job:EvalConfig",
            "medlm.eval.job:evaluate",
            "evaluate.yaml",
            "evaluate a checkpoint on eval shards (distributed inference with Ray Data)",
        ),
    ]
}


def embedded_s3_needed() -> bool:
    """True when no S3 endpoint or AWS credentials are configured: use the embedded moto server."""
    if os.environ.get("AWS_ENDPOINT_URL") or paths.external_stack():
        return False
    import boto3

    return boto3.Session().get_credentials() is None


def run_job(name: str, config: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Load ``name``'s config, bring up what is missing of the stack, run it, return its summary."""
    from medlm.stack import local_stack

    job = JOBS[name]
    cfg = job.load(config, overrides)
    log.info("job %s with config:\n%s", name, dump_config(cfg))
    with local_stack(s3=embedded_s3_needed()) as st:
        if st.s3_endpoint and not paths.external_stack():
            log.warning(
                "using the embedded S3 server at %s: its contents vanish when this job ends "
                "(run `medlm stack up` to keep data between commands)",
                st.s3_endpoint,
            )
        return job.run(cfg)
