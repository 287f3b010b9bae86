"""The Serve app end to end: one app per module on the session stack's Ray, talked to with the `openai` client.

The model is the tiny preset exported to the stack's S3 (the real loading path), plus one LoRA adapter export.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import hashlib
import json

import httpx
import numpy as np
import pytest

from medlm.serving.audio import decode_audio, encode_wav
from medlm.serving.errors import APIError

KEY = "test-key-" + "x" * 16
ADAPTER = "medlm-ner"


def tone(seconds: float = 1.0, sr: int = 22050, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def wav_b64(seconds: float = 1.0, sr: int = 22050, fmt: str = "WAV") -> str:
    return base64.b64encode(encode_wav(tone(seconds, sr), sr, fmt)).decode()


def audio_part(seconds: float = 1.0, fmt: str = "wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": wav_b64(seconds, fmt=fmt.upper()), "format": fmt}}


# --- unit tests (no Ray) -------------------------------------------------------------------------------------

def test_decode_audio_resamples_and_rejects_bad_input():
    wave = decode_audio(encode_wav(np.stack([tone(0.5), tone(0.5)], 1), 22050), 5.0, "a")
    assert wave.dtype == np.float32 and wave.ndim == 1 and len(wave) == 8000
    flac = decode_audio(encode_wav(tone(0.5, 16000), 16000, "FLAC"), 5.0, "a", "flac")
    assert len(flac) == 8000
    with pytest.raises(APIError, match="5 s"):
        decode_audio(encode_wav(tone(6.0, 16000), 16000), 5.0, "a")
    with pytest.raises(APIError, match="could not be decoded"):
        decode_audio(b"definitely not audio" * 10, 5.0, "a")
    with pytest.raises(APIError, match="declared as flac but is wav"):
        decode_audio(encode_wav(tone(0.5, 16000), 16000), 5.0, "a", "flac")


def test_render_prompt_matches_processor():
    """The LLM deployment renders chats exactly as the processor that trained the model."""
    from medlm.models import ModelSpec, build_processor
    from medlm.serving.deployments import render_prompt

    processor = build_processor(ModelSpec(preset="tiny"))
    wave = tone(1.0, 16000)
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "audio", "audio": wave}, {"type": "text", "text": "Is it bad?"}]},
                {"role": "assistant", "content": "No."},
                {"role": "user", "content": "And now?"}]
    expected = processor.featurize(messages, add_generation_prompt=True)["input_ids"].tolist()
    served = [dict(m) for m in messages]
    served[1] = {"role": "user", "content": [{"type": "audio_embeds", "embeds": np.zeros((3, 4))},
                                             {"type": "text", "text": "Is it bad?"}]}
    ids, audio = render_prompt(processor, served)
    assert ids == expected and len(audio) == 1


def test_parse_answers_leniently():
    from medlm.serving.tasks import parse_entities, parse_sentiment

    ents = parse_entities("DRUG: aspirin\nnonsense line\nFOO: bar\nsymptom: chest pain\n")
    assert [(e.label, e.text) for e in ents] == [("DRUG", "aspirin"), ("SYMPTOM", "chest pain")]
    assert parse_entities("<garbage>") == []
    assert parse_sentiment("The speaker is Negative.") == "negative"
    assert parse_sentiment("positive or negative") is None


# --- the running app ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(stack, tmp_path_factory):
    import torch
    from ray import serve

    from medlm import storage
    from medlm.models import ModelSpec, build_model
    from medlm.serving import Limits, default_ct_index_dir, run_local
    from medlm.serving.adapters import save_adapter
    from medlm.stack import free_port

    local = tmp_path_factory.mktemp("export")
    model, processor = build_model(ModelSpec(preset="tiny", lora_r=4))
    model.save_pretrained(str(local / "model"))
    processor.save_pretrained(str(local / "model"))
    with torch.no_grad():  # a task adapter that differs from the base one
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    save_adapter(model, str(local / "adapters" / ADAPTER))
    default_ct_index_dir(local)
    root = f"{stack.root}/serve-test"
    storage.copy_tree(str(local), root)

    port = free_port()
    limits = Limits(max_body_bytes=1_000_000, max_audio_seconds=5, max_turns=8, max_tokens=32, default_max_tokens=8)
    url = run_local(f"{root}/model", port=port, api_key=KEY, adapters_dir=f"{root}/adapters",
                    ct_index_dir=f"{root}/ct-index-tiny", limits=limits)
    yield url
    serve.shutdown()


@pytest.fixture(scope="module")
def client(server):
    import openai

    return openai.OpenAI(base_url=server, api_key=KEY, max_retries=0, timeout=60)


def chat(client, messages, **kw):
    kw.setdefault("max_tokens", 6)
    return client.chat.completions.create(model=kw.pop("model", "medlm"), messages=messages, temperature=0, **kw)


@pytest.mark.slow
def test_text_audio_mixed_multiturn(client):
    text = chat(client, [{"role": "user", "content": "Is this serious?"}])
    assert text.object == "chat.completion" and text.model == "medlm"
    choice = text.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert 0 < text.usage.completion_tokens <= 6 and text.usage.total_tokens > text.usage.prompt_tokens

    audio = chat(client, [{"role": "user", "content": [audio_part(1.0)]}])
    mixed = chat(client, [{"role": "user", "content": [audio_part(1.0, "flac"), {"type": "text", "text": "Is it bad?"}]}])
    # audio tokens count as prompt tokens: 1 s at 12.5 Hz is ~13 embedding slots
    assert audio.usage.prompt_tokens > 10 and mixed.usage.prompt_tokens > audio.usage.prompt_tokens
    multi = chat(client, [{"role": "system", "content": "You are a careful medical assistant."},
                          {"role": "user", "content": [audio_part(0.5)]},
                          {"role": "assistant", "content": "I hear a tone."},
                          {"role": "user", "content": "What else?"}])
    assert multi.usage.prompt_tokens > mixed.usage.prompt_tokens - 10
    assert multi.choices[0].message.content is not None


@pytest.mark.slow
def test_streaming_matches_non_streaming(client):
    messages = [{"role": "user", "content": [audio_part(0.5), {"type": "text", "text": "Summarise."}]}]
    full = chat(client, messages, max_tokens=8)
    chunks = list(chat(client, messages, max_tokens=8, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == full.choices[0].message.content
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


@pytest.mark.slow
def test_concurrent_requests_are_batched_and_match_single(client):
    from ray import serve

    prompts = [[{"role": "user", "content": [audio_part(0.3 + 0.2 * i), {"type": "text", "text": f"Case {i}?"}]}]
               for i in range(6)]
    single = [chat(client, p).choices[0].message.content for p in prompts[:2]]
    llm = serve.get_deployment_handle("LLM", app_name="medlm")
    encoder = serve.get_deployment_handle("SpeechEncoder", app_name="medlm")
    before = llm.batch_stats.remote().result()["max_batch"], encoder.batch_stats.remote().result()["max_batch"]
    with cf.ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda p: chat(client, p).choices[0].message.content, prompts))
    assert together[:2] == single  # left padding + splicing in a batch changes nothing
    stats = llm.batch_stats.remote().result(), encoder.batch_stats.remote().result()
    assert stats[0]["max_batch"] > 1 and stats[1]["max_batch"] > 1, (before, stats)


@pytest.mark.slow
def test_lora_adapters_are_multiplexed(client):
    import openai

    from medlm.models.pretrained import is_fetched

    asr = {"whisper-tiny.en"} if is_fetched("whisper-tiny.en") else set()  # the ASR baseline, served beside
    assert {m.id for m in client.models.list()} == {"medlm", ADAPTER} | asr
    messages = [{"role": "user", "content": "List the medical entities."}]
    base = chat(client, messages, max_tokens=12).choices[0].message.content
    tuned = chat(client, messages, max_tokens=12, model=ADAPTER)
    assert tuned.model == ADAPTER and tuned.choices[0].message.content != base
    assert chat(client, messages, max_tokens=12).choices[0].message.content == base  # base restored
    with pytest.raises(openai.NotFoundError) as err:
        chat(client, messages, model="no-such-model")
    assert err.value.body["code"] == "model_not_found"


@pytest.mark.slow
def test_transcription_and_understanding(client, server):
    tr = client.audio.transcriptions.create(model="medlm", file=("note.wav", encode_wav(tone(1.0), 22050)))
    assert isinstance(tr.text, str)
    text = client.audio.transcriptions.create(model="medlm", file=("n.flac", encode_wav(tone(1.0), 22050, "FLAC")),
                                              response_format="text")
    assert isinstance(text, str)
    from medlm.models.pretrained import is_fetched

    if is_fetched("whisper-tiny.en"):  # the ASR baseline, served beside the SpeechLM
        from medlm.data.tts import speak, voice_bank

        said = "I have had a dry cough for three days."
        (wave,) = speak([said], voice_bank(1, backend="piper")[0])
        assert "whisper-tiny.en" in [m.id for m in client.models.list().data]
        tr = client.audio.transcriptions.create(model="whisper-tiny.en", file=("q.wav", encode_wav(wave, 16000)))
        from medlm.eval.metrics import wer

        assert wer([said], [tr.text]) <= 0.2, tr.text
    headers = {"Authorization": f"Bearer {KEY}"}
    base = server.removesuffix("/v1")
    for body in ({"audio": {"data": wav_b64(1.0), "format": "wav"}}, {"text": "Chest pain since Monday, took aspirin."}):
        r = httpx.post(f"{base}/v1/understand", json=body, headers=headers, timeout=60)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["model"] == "medlm" and isinstance(out["entities"], list)
        assert out["sentiment"] in (None, "positive", "neutral", "negative")


@pytest.mark.slow
def test_ct_search_and_classify(server):
    base = server.removesuffix("/v1")
    headers = {"Authorization": f"Bearer {KEY}"}
    spoken = {"data": wav_b64(1.0), "format": "wav"}
    with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
        for query in ({"text": "Small left pleural effusion."}, {"audio": spoken}):
            hits = http.post("/v1/ct/search", json={**query, "k": 3}).json()["results"]
            assert len(hits) == 3 and all(h["id"].startswith("ct-") for h in hits)
            assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
            scores = http.post("/v1/ct/classify", json={**query, "labels": ["Emphysema", "Lung nodule"]}).json()
            assert [s["label"] for s in scores["scores"]] == ["Emphysema", "Lung nodule"]
            assert all(0 <= s["score"] <= 1 for s in scores["scores"])
        every = http.post("/v1/ct/classify", json={"text": "Normal chest CT."}).json()["scores"]
        assert len(every) == 18


def _bad_requests(base: str) -> list[tuple[str, dict]]:
    auth = {"Authorization": f"Bearer {KEY}"}
    js = {**auth, "Content-Type": "application/json"}
    ok_msg = [{"role": "user", "content": "hi"}]
    chat_url = f"{base}/v1/chat/completions"

    def body(**kw):
        return json.dumps({"model": "medlm", "messages": ok_msg, **kw})

    def audio_msg(data, fmt="wav"):
        return body(messages=[{"role": "user", "content": [{"type": "input_audio",
                                                           "input_audio": {"data": data, "format": fmt}}]}])

    return [
        ("no API key", dict(url=chat_url, content=body(), headers={"Content-Type": "application/json"}), 401),
        ("wrong API key", dict(url=chat_url, content=body(), headers={"Authorization": "Bearer nope",
                                                                      "Content-Type": "application/json"}), 401),
        ("basic auth", dict(url=chat_url, content=body(), headers={"Authorization": "Basic " + KEY}), 401),
        ("metrics need a key", dict(url=f"{base}/metrics", method="GET"), 401),
        ("bad JSON", dict(url=chat_url, content=b'{"model": "medlm", "messages": [', headers=js), 400),
        ("not UTF-8", dict(url=chat_url, content=b'\xff\xfe\x00', headers=js), 400),
        ("JSON array", dict(url=chat_url, content=b'[1, 2]', headers=js), 400),
        ("wrong content type", dict(url=chat_url, content=body(), headers={**auth, "Content-Type": "text/plain"}), 415),
        ("form to JSON route", dict(url=chat_url, content=b"a=b", headers={
            **auth, "Content-Type": "application/x-www-form-urlencoded"}), 415),
        ("oversize body", dict(url=chat_url, content=body(pad="x" * 1_100_000), headers=js), 413),
        ("no messages", dict(url=chat_url, content=json.dumps({"model": "medlm", "messages": []}), headers=js), 400),
        ("unknown role", dict(url=chat_url, content=body(messages=[{"role": "robot", "content": "x"}]), headers=js), 400),
        ("unknown part", dict(url=chat_url, content=body(messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://x"}}]}]), headers=js), 400),
        ("last turn not user", dict(url=chat_url, content=body(messages=[*ok_msg, {"role": "assistant",
                                                                                   "content": "x"}]), headers=js), 400),
        ("too many turns", dict(url=chat_url, content=body(messages=ok_msg * 9), headers=js), 400),
        ("too many tokens", dict(url=chat_url, content=body(max_tokens=10_000), headers=js), 400),
        ("negative tokens", dict(url=chat_url, content=body(max_tokens=-1), headers=js), 400),
        ("n > 1", dict(url=chat_url, content=body(n=2), headers=js), 400),
        ("unknown model", dict(url=chat_url, content=body(model="gpt-9"), headers=js), 404),
        ("non-base64 audio", dict(url=chat_url, content=audio_msg("%%% not base64 %%%"), headers=js), 400),
        ("base64 of non-audio", dict(url=chat_url, content=audio_msg(base64.b64encode(b"hello " * 100).decode()),
                                     headers=js), 400),
        ("empty audio", dict(url=chat_url, content=audio_msg(""), headers=js), 400),
        ("too-long audio", dict(url=chat_url, content=audio_msg(wav_b64(6.0, sr=8000)), headers=js), 400),
        ("unsupported format", dict(url=chat_url, content=audio_msg(wav_b64(0.5), "mp3"), headers=js), 400),
        ("audio in the text field", dict(url=chat_url, content=body(messages=[{"role": "user",
                                                                               "content": "a <|audio|> b"}]),
                                         headers=js), 400),
        ("transcription without file", dict(url=f"{base}/v1/audio/transcriptions", data={"model": "medlm"},
                                            files={"x": ("a.txt", b"abc")}, headers=auth), 400),
        ("transcription of text", dict(url=f"{base}/v1/audio/transcriptions", data={"model": "medlm"},
                                       files={"file": ("a.wav", b"RIFF not really")}, headers=auth), 400),
        ("transcription as JSON", dict(url=f"{base}/v1/audio/transcriptions", content=body(), headers=js), 415),
        ("understand both inputs", dict(url=f"{base}/v1/understand", content=json.dumps(
            {"text": "x", "audio": {"data": wav_b64(0.2), "format": "wav"}}), headers=js), 400),
        ("understand nothing", dict(url=f"{base}/v1/understand", content=b"{}", headers=js), 400),
        ("ct unknown label", dict(url=f"{base}/v1/ct/classify", content=json.dumps(
            {"text": "x", "labels": ["Broken leg"]}), headers=js), 400),
        ("ct search k=0", dict(url=f"{base}/v1/ct/search", content=json.dumps({"text": "x", "k": 0}), headers=js), 400),
        ("unknown route", dict(url=f"{base}/v1/nothing", content=body(), headers=js), 404),
        ("wrong method", dict(url=chat_url, method="GET", headers=auth), 405),
    ]


@pytest.mark.slow
def test_malformed_requests_get_4xx_json_and_replicas_survive(client, server):
    base = server.removesuffix("/v1")
    failures = []
    with httpx.Client(timeout=60) as http:
        for name, req, status in _bad_requests(base):
            req = dict(req)
            r = http.request(req.pop("method", "POST"), req.pop("url"), **req)
            ok = r.status_code == status and r.headers["content-type"].startswith("application/json")
            if ok:
                err = r.json()["error"]
                ok = isinstance(err["message"], str) and err["message"] and err["type"]
            if not ok:
                failures.append(f"{name}: {r.status_code} {r.text[:200]}")
        assert not failures, "\n".join(failures)
        assert http.get(f"{base}/healthz").json() == {"status": "ok"}
        metrics = http.get(f"{base}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert 'medlm_requests_total{route="/v1/chat/completions",status="401"}' in metrics
    assert chat(client, [{"role": "user", "content": [audio_part(0.5)]}]).choices[0].message.content is not None


def test_api_key_never_in_app_args():
    from medlm.serving import AppArgs

    digest = hashlib.sha256(KEY.encode()).hexdigest()
    args = AppArgs(model_dir="/x", api_key_sha256=digest)
    assert KEY not in args.model_dump_json()


def test_serve_config_is_valid_and_consistent():
    """serve/config.yaml fits Serve's schema and our AppArgs, names the app's deployments, and lets batches fill."""
    from pathlib import Path

    import yaml
    from ray.serve.schema import ServeDeploySchema

    from medlm.serving import AppArgs

    cfg = yaml.safe_load((Path(__file__).resolve().parent.parent / "serve" / "config.yaml").read_text())
    ServeDeploySchema.model_validate(cfg)
    assert cfg["http_options"]["host"] == "127.0.0.1"
    (app,) = cfg["applications"]
    assert app["import_path"] == "medlm.serving.app:build_app"
    args = AppArgs.model_validate(app["args"])
    deployments = {d["name"]: d for d in app["deployments"]}
    assert set(deployments) == {"Ingress", "SpeechEncoder", "LLM"}  # the app without a CT index
    for name, batching in (("SpeechEncoder", args.encoder_batching), ("LLM", args.llm_batching)):
        assert deployments[name]["max_ongoing_requests"] >= batching.max_batch_size
        assert 0 < deployments[name]["ray_actor_options"]["num_cpus"] < 1
        assert deployments[name]["autoscaling_config"]["min_replicas"] >= 1
