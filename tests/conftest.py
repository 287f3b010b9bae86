"""Shared fixtures: one local stack (moto S3 + Ray on 127.0.0.1) per test session."""

import glob
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
# The session's S3 download cache (storage.local_copy) is its own, set before Ray starts so that every worker
# shares it, and removed at the end: each training run's export is a new cache entry of up to 300 MB.
_OWN_CACHE = None if "MEDLM_CACHE" in os.environ else tempfile.mkdtemp(prefix="medlm-test-cache-")
if _OWN_CACHE:
    os.environ["MEDLM_CACHE"] = _OWN_CACHE


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


def _scratch() -> set[str]:
    tmp = (
        tempfile.gettempdir()
    )  # (a test session's own download cache is not a job's scratch, nor another session's)
    return set(glob.glob(os.path.join(tmp, "medlm-*-*"))) - set(
        glob.glob(os.path.join(tmp, "medlm-test-cache-*"))
    )


@pytest.fixture(scope="session")
def scratch():
    """A function listing the jobs' scratch directories (checkpoint, export, TensorBoard, index) in the temp
    dir: a job must remove its own, since each one of the real preset's is ~300 MB."""
    return _scratch


@pytest.fixture(scope="session")
def stack():
    """A running local stack: ``stack.root`` is an ``s3://`` bucket on the moto server, Ray is up."""
    from medlm.stack import local_stack

    with local_stack(bucket="medlm-test", num_cpus=2) as st:
        yield st


@pytest.fixture(scope="session")
def s3():
    """Only the local S3 server (no Ray): ``s3.root`` is an ``s3://`` bucket."""
    from medlm.stack import local_stack

    with local_stack(bucket="medlm-test", ray=False) as st:
        yield st


@pytest.fixture(scope="session")
def tiny_data(stack):
    """The default (tiny) synthetic data set, made once per session: its ``s3://`` root."""
    from medlm.config import load_config
    from medlm.data.factory import MakeDataConfig, make_data

    root = f"{stack.root}/tiny-data"
    # espeak-ng only: its renderings are bit-reproducible, Piper's are not (noise sampled in its graph), and
    # the training tests compare losses across runs. Piper data is covered by test_pretrained / the demo.
    make_data(
        load_config(MakeDataConfig, "make_data.yaml", [f"output={root}", "tts.backend=espeak"]),
        progress=False,
    )
    return root


@pytest.fixture(scope="session")
def triage_export(tmp_path_factory):
    """A safety screen trained small on the real preset (whisper-tiny.en frames, SmolLM2 embeddings), in this
    process (the job's Ray task is covered by test_safety): its local export directory."""
    from medlm.models.pretrained import is_fetched
    from medlm.train.triage import TriageJobConfig, fit

    if not (
        is_fetched("whisper-tiny.en", verify=False) and is_fetched("smollm2-135m-instruct", verify=False)
    ):
        pytest.skip("model store not fetched (run `medlm models fetch`): the screen reads the real preset")
    out = str(tmp_path_factory.mktemp("triage"))
    fit(
        TriageJobConfig(
            output=out,
            emergencies=1200,
            benign=1200,
            harmful=600,
            spoken=60,
            steps=300,
            num_cpus=2,
        )
    )
    return out
