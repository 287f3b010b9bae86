"""The Serve app end to end: one app per module on the session stack's Ray, talked to with the
`openai` client.

The model is the real preset (whisper-tiny.en's encoder, an untrained adapter, SmolLM2 with LoRA) exported in
parts (to disk: 0.6 GB through the in-process moto server would take minutes; loading a part from S3 is tested
on its own), plus one LoRA adapter export and a CT index on the stack's S3; the unit tests use the tiny
preset.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import hashlib
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from medlm.serving.audio import decode_audio, encode_wav
from medlm.serving.errors import APIError

KEY = "test-key-" + "x" * 16
DEPLOYED: dict = {}  # how the module's app was deployed (run_local's arguments)
ADAPTER = "medlm-ner"


def tone(seconds: float = 1.0, sr: int = 22050, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def wav_b64(seconds: float = 1.0, sr: int = 22050, fmt: str = "WAV") -> str:
    return base64.b64encode(encode_wav(tone(seconds, sr), sr, fmt)).decode()


def audio_part(seconds: float = 1.0, fmt: str = "wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": wav_b64(seconds, fmt=fmt.upper()), "format": fmt}}


# --- unit tests (no Ray) ------------------------------------------------------------------------------------


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
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "audio", "audio": wave}, {"type": "text", "text": "Is it bad?"}],
        },
        {"role": "assistant", "content": "No."},
        {"role": "user", "content": "And now?"},
    ]
    expected = processor.featurize(messages, add_generation_prompt=True)["input_ids"].tolist()
    served = [dict(m) for m in messages]
    served[1] = {
        "role": "user",
        "content": [
            {"type": "audio_embeds", "embeds": np.zeros((3, 4))},
            {"type": "text", "text": "Is it bad?"},
        ],
    }
    ids, audio = render_prompt(processor, served)
    assert ids == expected and len(audio) == 1


def test_reply_sentences_are_split_for_speech():
    from medlm.serving.replies import complete_sentences

    assert complete_sentences("It is mild. Rest!\n1. Drink water. 2. Sle") == (
        ["It is mild.", "Rest!", "1. Drink water."],
        "2. Sle",
    )
    assert complete_sentences("Take 2.5 mg daily") == ([], "Take 2.5 mg daily")


def test_parse_answers_leniently():
    from medlm.serving.tasks import parse_entities, parse_sentiment

    ents = parse_entities("DRUG: aspirin\nnonsense line\nFOO: bar\nsymptom: chest pain\n")
    assert [(e.label, e.text) for e in ents] == [("DRUG", "aspirin"), ("SYMPTOM", "chest pain")]
    assert parse_entities("<garbage>") == []
    assert parse_sentiment("The speaker is Negative.") == "negative"
    assert parse_sentiment("positive or negative") is None


def test_export_in_parts_loads_each_part_alone(tmp_path):
    """Each replica's part loads from its own shard (the other shard absent) and equals the whole model's."""
    import shutil

    import torch

    from medlm.models import ModelSpec, SpeechLM, build_model

    model, processor = build_model(ModelSpec(preset="tiny", lora_r=4))
    model.save_pretrained(str(tmp_path / "full"))
    processor.save_pretrained(str(tmp_path / "full"))
    whole = SpeechLM.from_pretrained(str(tmp_path / "full")).state_dict()
    files = {"audio": "model-audio.safetensors", "llm": "model-llm.safetensors"}
    for part, other in (("audio", "llm"), ("llm", "audio")):
        alone = tmp_path / part
        shutil.copytree(tmp_path / "full", alone)
        (alone / files[other]).unlink()  # the other part's weights are not there to read
        loaded = SpeechLM.from_pretrained_part(str(alone), part)
        state = loaded.state_dict()
        assert state and all(torch.equal(v, whole[k]) for k, v in state.items())
        assert (loaded.llm is None) == (part == "audio") and (loaded.encoder is None) == (part == "llm")
        with pytest.raises(FileNotFoundError, match="export in parts"):
            SpeechLM.from_pretrained_part(str(alone), other)
    assert {k for k in whole if not k.startswith("llm.")} <= set(
        SpeechLM.from_pretrained_part(str(tmp_path / "full"), "audio").state_dict()
    )


@pytest.mark.parametrize("compression", ["none", "ctc"])
def test_the_two_replicas_give_the_llm_what_the_whole_model_does(tmp_path, compression):
    """The encoder replica's part (audio tokens) and the LLM replica's (compression, which needs the LLM's
    embedding table) give the LLM the audio the whole model reads."""
    import numpy as np
    import torch

    from medlm.models import ModelSpec, SpeechLM, build_model

    torch.manual_seed(0)
    model, processor = build_model(ModelSpec(preset="tiny", audio_compression=compression))
    model.save_pretrained(str(tmp_path))
    processor.save_pretrained(str(tmp_path))
    wave = np.random.default_rng(0).standard_normal(16000 * 2).astype(np.float32) * 0.1
    feats, chunks, lengths = processor.frontend.features([wave], return_lengths=True)
    args = torch.from_numpy(feats), torch.tensor(chunks), torch.tensor(lengths)
    with torch.no_grad():
        whole = SpeechLM.from_pretrained(str(tmp_path)).eval().embed_audio(*args)
        tokens = SpeechLM.from_pretrained_part(str(tmp_path), "audio").eval().audio_tokens(*args)
        served = SpeechLM.from_pretrained_part(str(tmp_path), "llm").eval().compress(tokens)
    assert len(served) == len(whole) == 1 and torch.allclose(served[0], whole[0], atol=1e-5)
    if compression == "none":
        assert torch.equal(served[0], tokens[0])


def test_local_copy_leaves_out_the_other_part(s3, tmp_path):
    from medlm import storage

    (tmp_path / "export").mkdir()
    for name in ("config.json", "model-audio.safetensors", "model-llm.safetensors"):
        (tmp_path / "export" / name).write_text(name)
    storage.copy_tree(str(tmp_path / "export"), f"{s3.root}/parts-export")
    local = storage.local_copy(
        f"{s3.root}/parts-export", cache_dir=tmp_path / "cache", exclude=("model-llm.*",)
    )
    assert sorted(p.name for p in Path(local).iterdir() if not p.name.startswith(".")) == [
        "config.json",
        "model-audio.safetensors",
    ]


def _engine_run(llm, prompts, limits, scheduling, cancel_first=False):
    """Submit prompt embeddings one after another into a running engine;
    -> (tokens, finish) per prompt, stats."""
    import threading

    from medlm.serving.generation import Engine, Slot

    engine = Engine(
        llm,
        eos_token_id=-1,
        activate=lambda name: None,
        lock=threading.Lock(),
        max_batch_size=3,
        scheduling=scheduling,
    )
    out, done = {}, [threading.Event() for _ in prompts]
    slots = []
    try:
        for i, (embeds, limit) in enumerate(zip(prompts, limits)):
            tokens: list[int] = []

            def emit(tok, finish, i=i, tokens=tokens):
                if tok is not None:
                    tokens.append(tok)
                else:
                    out[i] = (tokens, finish)
                    done[i].set()

            slots.append(Slot(embeds, limit, emit))
            engine.submit(slots[-1])
            if cancel_first and i == 0:
                engine.cancel(slots[0])
        assert all(e.wait(120) for e in done)
        return [out[i] for i in range(len(prompts))], engine.stats()
    finally:
        engine.close()


def test_engine_continuous_batching_matches_generate():
    """Rows that join and leave the running batch decode exactly what HF ``generate`` decodes alone (greedy),
    under both schedulings; each row stops at its own limit; a cancelled row ends at once."""
    import torch

    from medlm.models import ModelSpec, build_model

    model, _ = build_model(ModelSpec(preset="tiny"))
    llm = model.llm.eval()
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, llm.config.vocab_size, (n,), generator=gen) for n in (5, 9, 3, 7, 4)]
    limits = [12, 5, 9, 1, 7]
    expected = []
    with torch.no_grad():
        for ids, n in zip(prompts, limits):
            new = llm.generate(
                ids[None],
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
            expected.append(new[0, len(ids) :].tolist())
        embeds = [llm.get_input_embeddings()(ids) for ids in prompts]
    for scheduling in ("continuous", "static"):
        results, stats = _engine_run(llm, embeds, limits, scheduling)
        assert [t for t, _ in results] == expected, scheduling
        assert {f for _, f in results} == {"length"} and stats["admitted"] == len(prompts)
        assert stats["max_batch"] <= 3  # never more rows than max_batch_size
    results, stats = _engine_run(llm, embeds[:2], [500, 3], "continuous", cancel_first=True)
    assert (
        results[0][1] == "cancelled"
        and len(results[0][0]) < 500
        and results[1] == (expected[1][:3], "length")
    )
    assert stats["finished_cancelled"] == 1


# --- the running app ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(stack, tmp_path_factory):
    import torch
    from ray import serve

    from medlm import storage
    from medlm.models import ModelSpec, build_model
    from medlm.models.pretrained import is_fetched
    from medlm.serving import Limits, default_ct_index_dir, run_local
    from medlm.serving.adapters import save_adapter
    from medlm.stack import free_port

    if not (
        is_fetched("whisper-tiny.en", verify=False) and is_fetched("smollm2-135m-instruct", verify=False)
    ):
        pytest.skip("model store not fetched (run `medlm models fetch`): the app tests serve the real preset")
    local = tmp_path_factory.mktemp("export")
    model, processor = build_model(ModelSpec(preset="real", lora_r=4))
    model.save_pretrained(str(local / "model"))
    processor.save_pretrained(str(local / "model"))
    with torch.no_grad():  # a task adapter that differs from the base one
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    save_adapter(model, str(local / "adapters" / ADAPTER))
    default_ct_index_dir(local)
    root = (
        f"{stack.root}/serve-test"  # the small artifacts from S3; the 0.6 GB export from disk (moto is slow)
    )
    for name in ("adapters", "ct-index-tiny"):
        storage.copy_tree(str(local / name), f"{root}/{name}")

    port = free_port()
    limits = Limits(
        max_body_bytes=1_000_000,
        max_audio_seconds=5,
        max_turns=8,
        max_tokens=64,
        default_max_tokens=8,
        realtime_idle_seconds=8,
    )
    DEPLOYED.update(
        model_dir=str(local / "model"),
        port=port,
        api_key=KEY,
        adapters_dir=f"{root}/adapters",
        ct_index_dir=f"{root}/ct-index-tiny",
        limits=limits,
    )
    url = run_local(**DEPLOYED)
    yield url
    serve.shutdown()


@pytest.fixture(scope="module")
def client(server):
    import openai

    return openai.OpenAI(base_url=server, api_key=KEY, max_retries=0, timeout=60)


def chat(client, messages, **kw):
    kw.setdefault("max_tokens", 6)
    return client.chat.completions.create(
        model=kw.pop("model", "medlm"), messages=messages, temperature=0, **kw
    )


@pytest.mark.slow
def test_text_audio_mixed_multiturn(client):
    text = chat(client, [{"role": "user", "content": "Is this serious?"}])
    assert text.object == "chat.completion" and text.model == "medlm"
    choice = text.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert 0 < text.usage.completion_tokens <= 6 and text.usage.total_tokens > text.usage.prompt_tokens

    audio = chat(client, [{"role": "user", "content": [audio_part(1.0)]}])
    mixed = chat(
        client,
        [{"role": "user", "content": [audio_part(1.0, "flac"), {"type": "text", "text": "Is it bad?"}]}],
    )
    # audio tokens count as prompt tokens: 1 s at 50 / 8 Hz is ~7 embedding slots beside the chat template's
    assert audio.usage.prompt_tokens > 7 and mixed.usage.prompt_tokens > audio.usage.prompt_tokens
    multi = chat(
        client,
        [
            {"role": "system", "content": "You are a careful medical assistant."},
            {"role": "user", "content": [audio_part(0.5)]},
            {"role": "assistant", "content": "I hear a tone."},
            {"role": "user", "content": "What else?"},
        ],
    )
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

    prompts = [
        [{"role": "user", "content": [audio_part(0.3 + 0.2 * i), {"type": "text", "text": f"Case {i}?"}]}]
        for i in range(6)
    ]
    single = [chat(client, p).choices[0].message.content for p in prompts[:2]]
    llm = serve.get_deployment_handle("LLM", app_name="medlm")
    encoder = serve.get_deployment_handle("SpeechEncoder", app_name="medlm")
    before = (
        llm.batch_stats.remote().result()["max_batch"],
        encoder.batch_stats.remote().result()["max_batch"],
    )
    with cf.ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda p: chat(client, p).choices[0].message.content, prompts))
    assert together[:2] == single  # left padding + splicing in a batch changes nothing
    stats = llm.batch_stats.remote().result(), encoder.batch_stats.remote().result()
    assert stats[0]["max_batch"] > 1 and stats[1]["max_batch"] > 1, (before, stats)


@pytest.mark.slow
def test_lora_adapters_are_multiplexed(client):
    import openai

    models = client.models.list().data
    assert {m.id for m in models} == {"medlm", ADAPTER, "whisper-tiny.en", "cascade"}  # the baselines beside
    voices = {m.id: (m.model_extra or {}).get("voices") for m in models}
    assert voices["medlm"][:1] == ["joe"] and "en-us" in voices["medlm"] and voices["whisper-tiny.en"] is None
    messages = [{"role": "user", "content": "List the medical entities."}]
    base = chat(client, messages, max_tokens=12).choices[0].message.content
    tuned = chat(client, messages, max_tokens=12, model=ADAPTER)
    assert tuned.model == ADAPTER and tuned.choices[0].message.content != base
    assert chat(client, messages, max_tokens=12).choices[0].message.content == base  # base restored
    with pytest.raises(openai.NotFoundError) as err:
        chat(client, messages, model="no-such-model")
    assert err.value.body["code"] == "model_not_found"


def spoken_question(text: str) -> dict:
    """A user turn that says ``text`` in the Piper voice (a voice the cascade's Whisper hears well)."""
    from medlm.models.tts import speak, voice_bank

    (wave,) = speak([text], voice_bank(1, backend="piper")[0])
    data = base64.b64encode(encode_wav(wave, 16000)).decode()
    return {
        "role": "user",
        "content": [{"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}],
    }


@pytest.mark.slow
def test_spoken_replies_streaming_and_not(client):
    import io

    import soundfile as sf

    messages = [{"role": "user", "content": "What is asthma? Tell me about its causes and its treatment."}]
    full = chat(
        client, messages, max_tokens=48, modalities=["text", "audio"], audio={"voice": "joe", "format": "wav"}
    )
    message = full.choices[0].message
    assert message.audio.id.startswith("audio_") and message.audio.transcript == message.content
    wave, rate = sf.read(io.BytesIO(base64.b64decode(message.audio.data)))
    assert rate == 24000 and len(wave) / rate > 1.0 and np.abs(wave).max() > 0.05  # speech, not silence

    events = list(
        chat(
            client,
            messages,
            max_tokens=48,
            stream=True,
            modalities=["text", "audio"],
            audio={"voice": "en-us", "format": "pcm16"},
        )
    )
    deltas = [e.choices[0].delta for e in events if e.choices]
    text = "".join(d.content or "" for d in deltas)
    spoken = [(i, d.audio) for i, d in enumerate(deltas) if d.audio]
    assert text == message.content  # the same greedy answer, streamed
    assert len(spoken) >= 2, "one audio chunk per sentence"
    assert " ".join(a.transcript for _, a in spoken) == " ".join(text.split())
    last_text = max(i for i, d in enumerate(deltas) if d.content)
    assert spoken[0][0] < last_text, "the first sentence's audio arrives while the text still streams"
    pcm = b"".join(base64.b64decode(a.data) for _, a in spoken)
    assert len(pcm) % 2 == 0 and len(pcm) / 2 / 24000 > 1.0

    import openai

    for kw, code in (
        ({"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}, "invalid_voice"),
        ({"modalities": ["text", "audio"]}, "invalid_request"),
    ):
        with pytest.raises(openai.BadRequestError) as err:
            chat(client, messages, **kw)
        assert err.value.body["code"] == code
    earlier = {"role": "assistant", "audio": {"id": message.audio.id}}
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, [*messages, earlier, {"role": "user", "content": "And then?"}])
    assert (
        err.value.body["code"] == "unsupported_audio_reference" and "transcript" in err.value.body["message"]
    )
    earlier["content"] = message.audio.transcript  # with its transcript the turn is understood
    assert (
        chat(client, [*messages, earlier, {"role": "user", "content": "And then?"}])
        .choices[0]
        .message.content
    )


def _post_chat(server: str, **body) -> httpx.Response:
    body.setdefault("max_tokens", 6)
    return httpx.post(
        f"{server}/chat/completions",
        json={"model": "medlm", "temperature": 0, **body},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=120,
    )


def _sse(response: httpx.Response) -> list[dict]:
    lines = [ln.removeprefix("data: ") for ln in response.text.splitlines() if ln.startswith("data: ")]
    return [json.loads(ln) for ln in lines if ln != "[DONE]"]


@pytest.mark.slow
def test_cascade_is_whisper_then_the_same_llm(client):
    question = spoken_question("What are the symptoms of asthma?")
    heard = client.audio.transcriptions.create(
        model="whisper-tiny.en",
        file=("q.wav", base64.b64decode(question["content"][0]["input_audio"]["data"])),
    )
    cascade = chat(client, [question], model="cascade", max_tokens=16)
    typed = chat(client, [{"role": "user", "content": heard.text}], max_tokens=16)
    assert (
        cascade.model == "cascade" and cascade.choices[0].message.content == typed.choices[0].message.content
    )
    assert "asthma" in heard.text.lower()


@pytest.mark.slow
def test_requests_join_the_running_batch_and_leave_on_disconnect(client, server):
    """A short request sent while a long answer decodes finishes first (continuous batching); a client that
    hangs up mid-stream frees its row at once."""
    import threading
    import time

    from ray import serve

    llm = serve.get_deployment_handle("LLM", app_name="medlm")
    long_msgs = [{"role": "user", "content": "Write a long, detailed essay about the human heart."}]
    finished: dict[str, float] = {}

    def long_answer():
        n = 0
        for event in chat(client, long_msgs, max_tokens=64, stream=True):
            n += bool(event.choices and event.choices[0].delta.content)
            if n == 1:
                started.set()
        finished["long"] = time.monotonic()

    started = threading.Event()
    worker = threading.Thread(target=long_answer)
    worker.start()
    assert started.wait(120)
    short = chat(client, [{"role": "user", "content": "Say hi."}], max_tokens=3)
    finished["short"] = time.monotonic()
    worker.join(120)
    assert short.usage.completion_tokens <= 3 and finished["short"] < finished["long"]

    before = llm.batch_stats.remote().result().get("finished_cancelled", 0)
    with httpx.stream(
        "POST",
        f"{server}/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": "medlm", "messages": long_msgs, "max_tokens": 64, "stream": True},
        timeout=60,
    ) as r:
        for line in r.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                break  # hang up after the first token
    deadline = time.monotonic() + 30
    while (
        llm.batch_stats.remote().result().get("finished_cancelled", 0) == before
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    assert llm.batch_stats.remote().result().get("finished_cancelled", 0) == before + 1


@pytest.mark.slow
def test_readme_api_block_runs(server, tmp_path, monkeypatch):
    """The README's "Talking to the API" block, as written, against the running app."""
    import re

    from medlm.models.tts import speak, voice_bank

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### Talking to the API", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2, "the chat API's block and the Realtime API's"
    (wave,) = speak(["What is asthma?"], voice_bank(1, backend="piper")[0])
    (tmp_path / "question.wav").write_bytes(encode_wav(wave, 16000))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDLM_URL", server)
    monkeypatch.setenv("MEDLM_API_KEY", KEY)
    scope: dict = {}
    for block in blocks:  # in order, in one scope: the second uses the first's client
        exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - our own documentation
    assert scope["pcm"] and (tmp_path / "answer.wav").stat().st_size > 1000
    assert len(scope["said"]) > 24000 and scope["event"].response.status in ("completed", "incomplete")


@pytest.mark.slow
def test_transcription_and_understanding(client, server):
    tr = client.audio.transcriptions.create(model="medlm", file=("note.wav", encode_wav(tone(1.0), 22050)))
    assert isinstance(tr.text, str)
    text = client.audio.transcriptions.create(
        model="medlm", file=("n.flac", encode_wav(tone(1.0), 22050, "FLAC")), response_format="text"
    )
    assert isinstance(text, str)
    from medlm.eval.metrics import wer
    from medlm.models.tts import speak, voice_bank

    said = "I have had a dry cough for three days."  # the ASR baseline, served beside the SpeechLM
    (wave,) = speak([said], voice_bank(1, backend="piper")[0])
    tr = client.audio.transcriptions.create(model="whisper-tiny.en", file=("q.wav", encode_wav(wave, 16000)))
    assert wer([said], [tr.text]) <= 0.2, tr.text
    headers = {"Authorization": f"Bearer {KEY}"}
    base = server.removesuffix("/v1")
    for body in (
        {"audio": {"data": wav_b64(1.0), "format": "wav"}},
        {"text": "Chest pain since Monday, took aspirin."},
    ):
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
            scores = http.post(
                "/v1/ct/classify", json={**query, "labels": ["Emphysema", "Lung nodule"]}
            ).json()
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
        return body(
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "input_audio", "input_audio": {"data": data, "format": fmt}}],
                }
            ]
        )

    return [
        ("no API key", dict(url=chat_url, content=body(), headers={"Content-Type": "application/json"}), 401),
        (
            "wrong API key",
            dict(
                url=chat_url,
                content=body(),
                headers={"Authorization": "Bearer nope", "Content-Type": "application/json"},
            ),
            401,
        ),
        ("basic auth", dict(url=chat_url, content=body(), headers={"Authorization": "Basic " + KEY}), 401),
        (
            "metrics need a key",
            dict(url=f"{base}/metrics", method="GET"),
            401,
        ),  # no such route: the key first
        ("bad JSON", dict(url=chat_url, content=b'{"model": "medlm", "messages": [', headers=js), 400),
        ("not UTF-8", dict(url=chat_url, content=b"\xff\xfe\x00", headers=js), 400),
        ("JSON array", dict(url=chat_url, content=b"[1, 2]", headers=js), 400),
        (
            "wrong content type",
            dict(url=chat_url, content=body(), headers={**auth, "Content-Type": "text/plain"}),
            415,
        ),
        (
            "form to JSON route",
            dict(
                url=chat_url,
                content=b"a=b",
                headers={**auth, "Content-Type": "application/x-www-form-urlencoded"},
            ),
            415,
        ),
        ("oversize body", dict(url=chat_url, content=body(pad="x" * 1_100_000), headers=js), 413),
        (
            "no messages",
            dict(url=chat_url, content=json.dumps({"model": "medlm", "messages": []}), headers=js),
            400,
        ),
        (
            "unknown role",
            dict(url=chat_url, content=body(messages=[{"role": "robot", "content": "x"}]), headers=js),
            400,
        ),
        (
            "unknown part",
            dict(
                url=chat_url,
                content=body(
                    messages=[
                        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}
                    ]
                ),
                headers=js,
            ),
            400,
        ),
        (
            "last turn not user",
            dict(
                url=chat_url,
                content=body(messages=[*ok_msg, {"role": "assistant", "content": "x"}]),
                headers=js,
            ),
            400,
        ),
        ("too many turns", dict(url=chat_url, content=body(messages=ok_msg * 9), headers=js), 400),
        ("too many tokens", dict(url=chat_url, content=body(max_tokens=10_000), headers=js), 400),
        ("negative tokens", dict(url=chat_url, content=body(max_tokens=-1), headers=js), 400),
        ("n > 1", dict(url=chat_url, content=body(n=2), headers=js), 400),
        ("unknown model", dict(url=chat_url, content=body(model="gpt-9"), headers=js), 404),
        ("non-base64 audio", dict(url=chat_url, content=audio_msg("%%% not base64 %%%"), headers=js), 400),
        (
            "base64 of non-audio",
            dict(url=chat_url, content=audio_msg(base64.b64encode(b"hello " * 100).decode()), headers=js),
            400,
        ),
        ("empty audio", dict(url=chat_url, content=audio_msg(""), headers=js), 400),
        ("too-long audio", dict(url=chat_url, content=audio_msg(wav_b64(6.0, sr=8000)), headers=js), 400),
        ("unsupported format", dict(url=chat_url, content=audio_msg(wav_b64(0.5), "mp3"), headers=js), 400),
        (
            "audio in the text field",
            dict(
                url=chat_url,
                content=body(messages=[{"role": "user", "content": "a <|audio|> b"}]),
                headers=js,
            ),
            400,
        ),
        (
            "transcription without file",
            dict(
                url=f"{base}/v1/audio/transcriptions",
                data={"model": "medlm"},
                files={"x": ("a.txt", b"abc")},
                headers=auth,
            ),
            400,
        ),
        (
            "transcription of text",
            dict(
                url=f"{base}/v1/audio/transcriptions",
                data={"model": "medlm"},
                files={"file": ("a.wav", b"RIFF not really")},
                headers=auth,
            ),
            400,
        ),
        (
            "transcription as JSON",
            dict(url=f"{base}/v1/audio/transcriptions", content=body(), headers=js),
            415,
        ),
        (
            "understand both inputs",
            dict(
                url=f"{base}/v1/understand",
                content=json.dumps({"text": "x", "audio": {"data": wav_b64(0.2), "format": "wav"}}),
                headers=js,
            ),
            400,
        ),
        ("understand nothing", dict(url=f"{base}/v1/understand", content=b"{}", headers=js), 400),
        (
            "ct unknown label",
            dict(
                url=f"{base}/v1/ct/classify",
                content=json.dumps({"text": "x", "labels": ["Broken leg"]}),
                headers=js,
            ),
            400,
        ),
        (
            "ct search k=0",
            dict(url=f"{base}/v1/ct/search", content=json.dumps({"text": "x", "k": 0}), headers=js),
            400,
        ),
        (
            "unknown voice",
            dict(
                url=chat_url,
                content=body(modalities=["text", "audio"], audio={"voice": "nobody", "format": "wav"}),
                headers=js,
            ),
            400,
        ),
        (
            "audio out without modalities",
            dict(url=chat_url, content=body(audio={"voice": "joe", "format": "wav"}), headers=js),
            400,
        ),
        (
            "unknown audio format",
            dict(
                url=chat_url,
                content=body(modalities=["text", "audio"], audio={"voice": "joe", "format": "mp3"}),
                headers=js,
            ),
            400,
        ),
        (
            "audio reference only",
            dict(
                url=chat_url,
                content=body(messages=[*ok_msg, {"role": "assistant", "audio": {"id": "audio_1"}}, *ok_msg]),
                headers=js,
            ),
            400,
        ),
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
    counts = _poll_metrics(
        lambda m: _total(m, "ray_medlm_requests_total", route="/v1/chat/completions", status="401") > 0
    )  # in Ray's metrics (test_metrics_... below)
    assert _total(counts, "ray_medlm_requests_total", route="/v1/chat/completions", status="401") > 0
    assert (
        chat(client, [{"role": "user", "content": [audio_part(0.5)]}]).choices[0].message.content is not None
    )


def test_api_key_never_in_app_args():
    from medlm.serving import AppArgs

    digest = hashlib.sha256(KEY.encode()).hexdigest()
    args = AppArgs(model_dir="/x", api_key_sha256=digest)
    assert KEY not in args.model_dump_json()


def test_serve_config_is_valid_and_consistent():
    """serve/config.yaml fits Serve's schema and our AppArgs, names the app's deployments,
    and lets batches fill."""
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
    assert set(deployments) == {"Ingress", "SpeechEncoder", "LLM", "Speaker"}  # the app without a CT index
    for name, batching in (
        ("SpeechEncoder", args.encoder_batching),
        ("LLM", args.llm_batching),
        ("Speaker", args.speaker_batching),
    ):
        assert deployments[name]["max_ongoing_requests"] >= batching.max_batch_size
        assert 0 < deployments[name]["ray_actor_options"]["num_cpus"] < 1
        assert deployments[name]["autoscaling_config"]["min_replicas"] >= 1


def _app_shape(app) -> dict[str, dict]:
    """Deployment name -> the Serve options a built application carries (what `serve.run` deploys)."""
    from ray import serve

    shape: dict[str, dict] = {}

    def walk(node):
        d = node._bound_deployment
        auto = d._deployment_config.autoscaling_config
        shape[d.name] = {
            "max_ongoing_requests": d.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": d.ray_actor_options["num_cpus"]},
            "autoscaling_config": {
                "min_replicas": auto.min_replicas,
                "max_replicas": auto.max_replicas,
                "target_ongoing_requests": auto.target_ongoing_requests,
            },
        }
        for arg in (*d.init_args, *d.init_kwargs.values()):
            if isinstance(arg, serve.Application):
                walk(arg)

    walk(app)
    return shape


def test_one_deployment_shape_for_medlm_serve_and_serve_config():
    """serve/config.yaml's `deployments:` is what `medlm serve config` generates (rerun it when this fails),
    and build_app (what `medlm serve` / run_local deploy) gives every deployment those same options; each
    batching deployment's concurrency follows its own batching options."""
    import yaml

    from medlm.serving import AppArgs, build_app
    from medlm.serving.config import deployment_options, generate_serve_config

    path = Path(__file__).resolve().parent.parent / "serve" / "config.yaml"
    text = path.read_text()
    assert generate_serve_config(text) == text, "serve/config.yaml is stale: run `medlm serve config`"
    (app,) = yaml.safe_load(text)["applications"]
    committed = {d.pop("name"): d for d in app["deployments"]}
    args = AppArgs.model_validate(app["args"])
    assert _app_shape(build_app(args)) == committed == deployment_options(args)

    other = AppArgs(
        model_dir="/x",
        asr_model="whisper-tiny.en",
        ct_index_dir="/ct",
        encoder_batching={"max_batch_size": 2},
        speaker_batching={"max_batch_size": 3},
        asr_batching={"max_batch_size": 5},
        llm_batching={"max_batch_size": 7},
    )
    shape = _app_shape(build_app(other))
    assert shape == deployment_options(other)
    assert {
        n: (shape[n]["max_ongoing_requests"], shape[n]["autoscaling_config"]["target_ongoing_requests"])
        for n in ("SpeechEncoder", "Speaker", "WhisperTranscriber", "LLM")
    } == {"SpeechEncoder": (4, 2), "Speaker": (6, 3), "WhisperTranscriber": (10, 5), "LLM": (14, 7)}
    assert set(shape) == {"Ingress", "SpeechEncoder", "LLM", "WhisperTranscriber", "Speaker", "CTRetriever"}


def test_serve_config_generation_replaces_only_its_block(tmp_path):
    from medlm.config import ConfigError
    from medlm.serving.config import GENERATED_BEGIN, GENERATED_END, write_serve_config

    path = tmp_path / "config.yaml"
    head = (
        "applications:\n- name: medlm\n  import_path: medlm.serving.app:build_app\n  args:  # kept\n"
        "    model_dir: /x\n    ct_index_dir: /ct\n    speech: {enabled: false}\n"
    )
    path.write_text(f"{head}  {GENERATED_BEGIN}\n  deployments: []\n  {GENERATED_END}\n# after\n")
    assert write_serve_config(path, check=True) and write_serve_config(path)
    assert not write_serve_config(path, check=True)
    text = path.read_text()
    assert text.startswith(head) and text.endswith(f"  {GENERATED_END}\n# after\n")
    import yaml

    (app,) = yaml.safe_load(text)["applications"]
    assert [d["name"] for d in app["deployments"]] == ["Ingress", "SpeechEncoder", "LLM", "CTRetriever"]
    path.write_text(head)
    with pytest.raises(ConfigError, match="generated block"):
        write_serve_config(path)


# --- metrics: through Ray's metrics agent -------------------------------------------------------------------


def _scrape() -> list:
    """Every sample of the Ray cluster's Prometheus endpoints (one per node: its metrics agent)."""
    import ray
    from prometheus_client.parser import text_string_to_metric_families

    samples = []
    for node in ray.nodes():
        if node["Alive"] and node.get("MetricsExportPort", -1) > 0:
            text = httpx.get(
                f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics", timeout=10
            ).text
            samples += [
                s
                for fam in text_string_to_metric_families(text)
                if fam.name.startswith("ray_medlm_")
                for s in fam.samples
            ]
    return samples


def _total(samples: list, name: str, **labels: str) -> float:
    """Sum over every replica (and node) of the samples ``name`` whose labels include ``labels``."""
    return sum(
        s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def _poll_metrics(done, timeout: float = 60.0) -> list:
    """Scrape until ``done(samples)`` (Ray exports a replica's metrics every few seconds)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        samples = _scrape()
        if done(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(1.0)


@pytest.mark.slow
def test_metrics_reach_rays_prometheus_endpoint(client, server):
    """The app's counters are Ray metrics: recorded by every replica, exported by the node's metrics agent
    (not a hand-built page of one ingress replica); tags are routes, statuses, models and deployments,
    never content."""
    base = server.removesuffix("/v1")
    for _ in range(3):  # a route + status no other test sends
        r = httpx.post(
            f"{base}/v1/understand",
            content=b"x",
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "text/plain"},
            timeout=60,
        )
        assert r.status_code == 415
    said = chat(
        client,
        [{"role": "user", "content": [audio_part(1.0), {"type": "text", "text": "Secret words?"}]}],
        max_tokens=4,
    )
    assert said.usage.completion_tokens > 0

    def ready(m):
        return (
            _total(m, "ray_medlm_requests_total", route="/v1/understand", status="415") >= 3
            and all(
                _total(m, "ray_medlm_batch_size_count", deployment=d) > 0 for d in ("SpeechEncoder", "LLM")
            )
            and _total(m, "ray_medlm_completion_tokens_total", model="medlm") > 0
        )

    samples = _poll_metrics(ready)
    assert _total(samples, "ray_medlm_requests_total", route="/v1/understand", status="415") == 3
    assert _total(samples, "ray_medlm_requests_total", route="/v1/chat/completions", status="200") >= 1
    assert _total(samples, "ray_medlm_audio_seconds_total") >= 1.0
    assert _total(samples, "ray_medlm_completion_tokens_total", model="medlm") >= said.usage.completion_tokens
    for deployment in ("SpeechEncoder", "LLM"):
        assert _total(samples, "ray_medlm_batch_size_count", deployment=deployment) > 0
    requests = [s for s in samples if s.name == "ray_medlm_requests_total"]
    assert all(
        s.labels["deployment"] == "Ingress" and s.labels["application"] == "medlm" and s.labels["replica"]
        for s in requests
    )
    assert not any("Secret" in v for s in samples for v in s.labels.values())  # no request content in a tag


# --- the Realtime API ---------------------------------------------------------------------------------------


def _pcm24k(text: str) -> bytes:
    """``text`` said by the Piper voice as the Realtime API's input audio (pcm16, 24 kHz)."""
    from medlm import audio as audio_io
    from medlm.models.tts import speak, voice_bank

    (wave,) = speak([text], voice_bank(1, backend="piper")[0])
    return audio_io.pcm16(audio_io.resample(wave, 16000, 24000))


def _until(conn, last: str) -> list:
    """Server events up to and including the first of type ``last`` (an ``error`` on the way fails)."""
    events = []
    while True:
        event = conn.recv()
        events.append(event)
        assert event.type != "error" or last == "error", event
        if event.type == last:
            return events


@pytest.mark.slow
def test_realtime_spoken_and_text_turns_with_the_openai_client(server):
    import openai

    client = openai.OpenAI(base_url=server, api_key=KEY, max_retries=0)
    cancelled = _cancelled()
    question = "What is asthma? Tell me about its causes and its treatment."
    with client.realtime.connect(model="medlm") as conn:
        session = conn.recv()
        assert session.type == "session.created" and session.session.audio.output.voice == "joe"
        conn.session.update(
            session={
                "type": "realtime",
                "output_modalities": ["audio"],
                "max_output_tokens": 24,
                "audio": {"output": {"voice": "en-us"}},
                "instructions": "You are a careful doctor.",
            }
        )
        updated = _until(conn, "session.updated")[-1].session
        assert updated.audio.output.voice == "en-us" and updated.instructions == "You are a careful doctor."

        pcm = _pcm24k(question)
        for i in range(0, len(pcm), 9600):  # 200 ms per message, as a microphone sends them
            conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i : i + 9600]).decode())
        conn.input_audio_buffer.commit()
        events = _until(conn, "conversation.item.created")
        assert [e.type for e in events] == ["input_audio_buffer.committed", "conversation.item.created"]
        assert events[1].item.id == events[0].item_id and events[1].item.role == "user"

        conn.response.create()
        events = _until(conn, "response.done")
        types = [e.type for e in events]
        assert types[0] == "response.created" and "response.output_text.delta" not in types
        transcript = "".join(e.delta for e in events if e.type == "response.output_audio_transcript.delta")
        audio = b"".join(base64.b64decode(e.delta) for e in events if e.type == "response.output_audio.delta")
        done = events[-1].response
        assert transcript.strip() and len(audio) % 2 == 0 and len(audio) / 2 / 24000 > 0.5
        assert np.abs(np.frombuffer(audio, "<i2")).max() > 1000  # speech, not silence
        assert done.status in ("completed", "incomplete") and 0 < done.usage.output_tokens <= 24
        assert done.output[0].content[0].transcript == transcript
        first_turn = done.usage.input_tokens

        conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "And then?"}]}
        )
        assert _until(conn, "conversation.item.created")[-1].item.content[0].text == "And then?"
        conn.response.create(response={"output_modalities": ["text"], "max_output_tokens": 6})
        events = _until(conn, "response.done")
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert text and not any(e.type == "response.output_audio.delta" for e in events)
        assert events[-1].response.usage.input_tokens > first_turn  # the history went with the turn

        conn.response.create(response={"output_modalities": ["text"], "max_output_tokens": 64})
        assert _until(conn, "response.output_text.delta")  # decoding: the cancel must free its slot
        conn.response.cancel()
        assert _until(conn, "response.done")[-1].response.status == "cancelled"
    assert _cancelled() == cancelled + 1, "the cancelled reply left the decode batch"


def _cancelled() -> int:
    """Generations the LLM replica has dropped because their client went away or cancelled, once settled."""
    import time

    from ray import serve

    llm, seen = serve.get_deployment_handle("LLM", app_name="medlm"), None
    while (now := llm.batch_stats.remote().result().get("finished_cancelled", 0)) != seen:
        seen = now
        time.sleep(1.0)
    return now


def _socket(server: str, key: str | None = KEY, **kw):
    from websockets.sync.client import connect

    url = server.replace("http://", "ws://") + "/realtime?model=medlm"
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return connect(url, additional_headers=headers, max_size=None, **kw)


def _events(ws, n: int = 1) -> list[dict]:
    return [json.loads(ws.recv(timeout=60)) for _ in range(n)]


@pytest.mark.slow
def test_realtime_refuses_garbage_oversize_and_strangers_and_stays_up(server):
    from websockets.exceptions import ConnectionClosed

    with _socket(server) as ws:
        assert _events(ws)[0]["type"] == "session.created"
        for bad, code in (
            ("not json", "invalid_json"),
            (json.dumps({"type": "no.such.event"}), "invalid_event"),
            (json.dumps({"type": "input_audio_buffer.append", "audio": "***"}), "invalid_audio"),
            (json.dumps({"type": "input_audio_buffer.commit"}), "input_audio_buffer_commit_empty"),
            (json.dumps({"type": "response.cancel"}), "response_cancel_not_active"),
            (
                json.dumps({"type": "session.update", "session": {"audio": {"output": {"voice": "x"}}}}),
                "invalid_voice",
            ),
        ):
            ws.send(bad)
            (event,) = _events(ws)
            assert event["type"] == "error" and event["error"]["code"] == code, (bad, event)
        six_seconds = base64.b64encode(b"\0\0" * 24000 * 6).decode()  # the fixture's turn limit is 5 s
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": six_seconds}))
        assert _events(ws)[0]["error"]["code"] == "audio_too_long"
        ws.send(json.dumps({"type": "session.update", "session": {"instructions": "Be brief."}}))
        assert _events(ws)[0]["type"] == "session.updated"  # the socket survived all of it
        for _ in range(5):  # bad messages in a row: closed with a policy-violation code
            ws.send("{")
        assert all(e["type"] == "error" for e in _events(ws, 5))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd.code == 1008

    with _socket(server) as ws:
        _events(ws)
        ws.send("x" * (1024 * 1024 + 1))
        assert _events(ws)[0]["error"]["code"] == "message_too_large"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd.code == 1009

    for key in (None, "wrong"):
        with _socket(server, key) as ws:
            assert _events(ws)[0]["error"]["code"] == "invalid_api_key"
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
            assert closed.value.rcvd.code == 1008
    with _socket(server) as ws:  # a client that drops its socket mid-reply frees the reply's decode slot
        _events(ws)
        cancelled = _cancelled()
        ws.send(
            json.dumps(
                {
                    "type": "conversation.item.create",
                    "item": {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "Tell me about the heart."}],
                    },
                }
            )
        )
        ws.send(
            json.dumps(
                {
                    "type": "response.create",
                    "response": {"output_modalities": ["text"], "max_output_tokens": 64},
                }
            )
        )
        while _events(ws)[0]["type"] != "response.output_text.delta":
            pass
    assert _cancelled() == cancelled + 1
    with _socket(server) as ws:  # the fixture's idle timeout: 8 s without a message
        _events(ws)
        assert _events(ws)[0]["error"]["code"] == "idle_timeout"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd.code == 1000
    # a browser's form: the key in a subprotocol (browsers cannot set headers on a WebSocket)
    with _socket(server, None, subprotocols=["realtime", f"openai-insecure-api-key.{KEY}"]) as ws:
        assert _events(ws)[0]["type"] == "session.created" and ws.subprotocol == "realtime"
    assert httpx.get(server.removesuffix("/v1") + "/healthz", timeout=30).status_code == 200


# --- the consultation page in a real browser ---------------------------------------------------------------


ARTIFACTS = Path(__file__).resolve().parent.parent / "build" / "test-artifacts"


@pytest.mark.slow
def test_consultation_page_in_a_real_browser(server, tmp_path):
    """Debian's chromium, headless, with a fake microphone that says a question: two spoken turns (the second
    carries the first), replies as text and as audio, a typed turn stopped mid-reply, the errors in words."""
    import shutil

    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the lock's test extra")
    browser_path = shutil.which("chromium")
    if browser_path is None:
        pytest.skip("no chromium: ./scripts/test.sh installs Debian's chromium package (apt) where it can")
    import soundfile as sf

    from medlm.models.tts import speak, voice_bank

    (wave,) = speak(
        ["I have a cough and a fever. What should I do?"],
        voice_bank(1, backend="piper")[0],
    )
    mic = tmp_path / "mic.wav"  # what the fake microphone plays each time the page opens it
    sf.write(
        mic,
        np.concatenate([np.zeros(2000, np.float32), wave, np.zeros(4000, np.float32)]),
        16000,
        subtype="PCM_16",
    )
    hold_ms = int(1000 * (len(wave) + 4000) / 16000)  # the fixture's limit is 5 s a turn
    assert hold_ms < 4500
    base = server.removesuffix("/v1")
    args = [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic}%noloop",
        "--autoplay-policy=no-user-gesture-required",
    ]
    sent: list[dict] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=args, headless=True)
        page = browser.new_page()
        page.on(
            "request",
            lambda r: (
                sent.append(json.loads(r.post_data)) if r.url.endswith("/v1/chat/completions") else None
            ),
        )
        page.goto(base + "/")
        assert "default-src 'self'" in page.evaluate(
            "() => fetch('/').then(r => r.headers.get('content-security-policy'))"
        )

        page.fill("#key", "not-the-key")
        page.click("#start")
        page.wait_for_selector("#status.error")
        assert "API key was not accepted" in page.inner_text("#status")
        page.fill("#key", KEY)
        page.click("#start")
        page.wait_for_selector("#app:not([hidden])")
        assert page.eval_on_selector_all("#model option", "os => os.map(o => o.value)") == [
            "medlm",
            ADAPTER,
            "cascade",
        ]
        page.select_option("#voice", "en-us")

        def spoken_turn(n: int) -> None:
            page.hover("#talk")
            page.mouse.down()
            page.wait_for_timeout(hold_ms)
            page.mouse.up()
            page.wait_for_function("n => window.medlm.stats.replies >= n", arg=n, timeout=180_000)

        spoken_turn(1)
        spoken_turn(2)
        stats = page.evaluate("window.medlm.stats")
        assert stats["audioChunks"] >= 2 and stats["audioBytes"] > 24000 and stats["scheduledSeconds"] > 0.5
        assert stats["playerState"] == "running"
        turns = page.eval_on_selector_all(
            "#history li", "ls => ls.map(l => [l.className, l.innerText, !!l.querySelector('audio')])"
        )
        assert [t[0] for t in turns] == ["user", "assistant"] * 2 and turns[0][2] and turns[2][2]
        assert turns[1][1].split("\n", 1)[-1].strip(), "the reply's text is shown"
        first, second = sent[0]["messages"], sent[1]["messages"]
        assert len(first) == 1 and first[0]["content"][0]["type"] == "input_audio"
        assert [m["role"] for m in second] == ["user", "assistant", "user"] and second[:1] == first
        assert second[1]["content"] == page.evaluate("window.medlm.state.history[1].content")
        clip = base64.b64decode(first[0]["content"][0]["input_audio"]["data"])
        heard, rate = sf.read(__import__("io").BytesIO(clip))
        assert rate == 16000 and np.abs(heard).max() > 0.05, "the page recorded the microphone's speech"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "consultation-page.png"), full_page=True)

        page.select_option("#voice", "")  # a long typed reply, stopped as soon as it starts
        page.fill("#max-tokens", "64")
        page.fill("#text", "Explain in detail every cause of chest pain, one by one.")
        page.click("#send")
        page.wait_for_function(
            "() => document.querySelectorAll('#history li')[5].innerText.length > 8", timeout=120_000
        )
        page.click("#stop")
        page.wait_for_function("() => window.medlm.stats.stopped === 1", timeout=30_000)
        assert "stopped" in page.get_attribute("#history li:last-child", "class")
        assert not page.is_disabled("#talk")

        page.click("#new")
        assert page.eval_on_selector_all("#history li", "ls => ls.length") == 0
        assert page.evaluate("window.medlm.state.history.length") == 0
        browser.close()
    assert httpx.get(base + "/healthz", timeout=30).status_code == 200


@pytest.mark.slow
def test_the_screen_leads_emergencies_and_refuses_harmful_requests(server, triage_export):
    """The app redeployed with a screen (conftest.py's small real one, emergency number 112; the module's last
    test: the others run unscreened). Every patient turn is screened: a typed emergency gets the
    emergency instruction first (streamed and spoken first too), a harmful request gets the refusal and no
    generation, an ordinary question neither; a spoken turn gets what the screen says of its audio."""
    from ray import serve

    from medlm.data.medsafetybench import test_sample
    from medlm.eval.safety_sets import HELDOUT_EMERGENCIES
    from medlm.models import ModelSpec, build_model
    from medlm.models.triage import EMERGENCY_NOTICE, REFUSAL, Screen, item_frames
    from medlm.serving import run_local
    from medlm.serving.config import SafetyOptions
    from medlm.serving.replies import sentences

    serve.delete("medlm")
    assert (
        run_local(**DEPLOYED, safety=SafetyOptions(triage_dir=triage_export, emergency_number="112"))
        == server
    )

    notice, refusal = EMERGENCY_NOTICE.format(number="112"), REFUSAL.format(number="112")
    assert "112" in notice and "911" not in notice
    emergency = next(t for c, t in HELDOUT_EMERGENCIES if c == "cardiac")

    typed = _post_chat(server, messages=[{"role": "user", "content": emergency}])
    assert typed.status_code == 200 and typed.headers["x-medlm-screen"] == "emergency"
    content = typed.json()["choices"][0]["message"]["content"]
    assert (
        content.startswith(notice + "\n\n") and len(content) > len(notice) + 2
    )  # the model's answer follows

    question = spoken_question("My dad is clutching his chest, sweating and cannot breathe.")
    spoken = _post_chat(server, messages=[question])
    wave = decode_audio(base64.b64decode(question["content"][0]["input_audio"]["data"]), 5, "audio")
    screen, (speech_lm, _) = Screen(triage_export), build_model(ModelSpec(preset="real"))
    expected = screen.model.decide(screen.audio_probs(item_frames(speech_lm, [wave]))[0], "audio")
    assert spoken.status_code == 200 and spoken.headers["x-medlm-screen"] == expected  # from the audio itself

    stream = _post_chat(
        server,
        messages=[{"role": "user", "content": emergency}],
        stream=True,
        modalities=["text", "audio"],
        audio={"voice": "en-us", "format": "pcm16"},
    )
    assert stream.headers["x-medlm-screen"] == "emergency"
    deltas = [e["choices"][0]["delta"] for e in _sse(stream) if e.get("choices")]
    texts = [d["content"] for d in deltas if d.get("content")]
    audio = [d["audio"] for d in deltas if d.get("audio")]
    assert texts[0] == notice + "\n\n"
    assert [a["transcript"] for a in audio[: len(sentences(notice))]] == sentences(notice)  # all of it
    assert " ".join(sentences(notice)) == notice

    harmful = test_sample(1, seed=0)[0]["request"]
    refused = _post_chat(server, messages=[{"role": "user", "content": harmful}])
    assert refused.headers["x-medlm-screen"] == "harmful"
    assert refused.json()["choices"][0]["message"]["content"] == refusal
    assert refused.json()["usage"]["completion_tokens"] == 0  # the LLM never saw it
    streamed = _post_chat(server, messages=[{"role": "user", "content": harmful}], stream=True)
    assert (
        "".join(
            d.get("content") or ""
            for e in _sse(streamed)
            for d in [e["choices"][0]["delta"]]
            if e.get("choices")
        )
        == refusal
    )

    ordinary = _post_chat(server, messages=[{"role": "user", "content": "What are the symptoms of asthma?"}])
    assert ordinary.headers["x-medlm-screen"] == "none"
    assert not ordinary.json()["choices"][0]["message"]["content"].startswith(notice)
    samples = _poll_metrics(
        lambda m: (
            _total(m, "ray_medlm_screened_turns_total", result="emergency") >= 2
            and _total(m, "ray_medlm_screened_turns_total", result="harmful") >= 1
        )
    )
    results = {s.labels["result"] for s in samples if s.name == "ray_medlm_screened_turns_total"}
    assert results <= {"none", "emergency", "harmful"} and "harmful" in results

    with _socket(server) as ws:  # the Realtime API's turns are screened the same way
        _events(ws)
        for text in (emergency, harmful):
            item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
            ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
            ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
            events = []
            while not events or events[-1]["type"] != "response.done":
                events += _events(ws)
            said = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
            assert said.startswith(notice + "\n\n") if text == emergency else said == refusal
