"""SpeechLM: shapes, placeholder expansion, trainable sets, save/load, generate, losses, presets."""

import io
import subprocess
import tempfile

import numpy as np
import pytest
import torch

from medlm.audio import SAMPLING_RATE as SR
from medlm.models import (
    PRESETS,
    ModelSpec,
    SpeechLM,
    SpeechLMProcessor,
    build_model,
    build_processor,
    replace_placeholders_and_build_targets,
)
from medlm.models.encoder import num_audio_tokens


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * SR)) * 0.1).astype(np.float32)


def audio_part(wav, transcript=None):
    part = {"type": "audio", "audio": wav, "sampling_rate": SR}
    if transcript is not None:
        part["transcript"] = transcript
    return part


def mixed_conversations():
    """Audio in the first turn, audio (twice, interleaved with text) in a later turn, and text only."""
    return [
        [
            {"role": "system", "content": "You are a careful medical assistant."},
            {
                "role": "user",
                "content": [audio_part(noise(1.3, 1)), {"type": "text", "text": "Is this serious?"}],
            },
            {"role": "assistant", "content": "No."},
        ],
        [
            {"role": "user", "content": "Hello there."},
            {"role": "assistant", "content": "Hi, how can I help?"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Listen:"},
                    audio_part(noise(3.7, 2)),
                    {"type": "text", "text": "and"},
                    audio_part(noise(0.4, 3)),
                ],
            },
            {"role": "assistant", "content": "Both recordings mention chest pain."},
        ],
        [
            {"role": "user", "content": "Text only question."},
            {"role": "assistant", "content": "Text answer."},
        ],
    ]


def tiny(**kw):
    torch.manual_seed(0)
    return build_model(ModelSpec(**kw))


def test_placeholder_expansion_pure_function():
    ph = 9
    ids = torch.tensor([[5, ph, 6, 7, ph, 8], [5, 6, 7, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    labels = torch.tensor([[-100, -100, -100, 7, -100, 8], [-100, 6, 7, -100, -100, -100]])
    text = torch.arange(12, dtype=torch.float32).reshape(2, 6, 1).repeat(1, 1, 2)
    audio = [torch.full((3, 2), -1.0), torch.full((2, 2), -2.0)]
    emb, m, lab = replace_placeholders_and_build_targets(ids, mask, text, audio, ph, labels)
    assert emb.shape == (2, 9, 2) and m.tolist() == [[1] * 9, [1, 1, 1] + [0] * 6]
    assert emb[0, :, 0].tolist() == [0, -1, -1, -1, 2, 3, -2, -2, 5]
    assert lab[0].tolist() == [-100, -100, -100, -100, -100, 7, -100, -100, 8]
    assert lab[1].tolist() == [-100, 6, 7] + [-100] * 6
    # left padding stays left padding (generation)
    left_ids, left_mask = (
        torch.tensor([[0, 0, 5, ph], [5, ph, 6, 7]]),
        torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]),
    )
    emb, m, _ = replace_placeholders_and_build_targets(left_ids, left_mask, text[:, :4], audio, ph)
    assert m.tolist() == [[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert emb[0, :, 0].tolist() == [0, 2, -1, -1, -1] and emb[1, :, 0].tolist() == [6, -2, -2, 8, 9]
    with pytest.raises(ValueError, match="2 audio placeholders.*1 audio items"):
        replace_placeholders_and_build_targets(ids[:1], mask[:1], text[:1], audio[:1], ph)


def test_mixed_batch_shapes_and_expansion():
    model, proc = tiny()
    model.eval()
    feats = [proc.featurize(m) for m in mixed_conversations()]
    assert [len(f["audio_chunks"]) for f in feats] == [1, 2, 0]
    assert feats[2]["input_features"].shape == (0, 80, 1000)
    # labels: exactly the assistant turns, each through its end-of-turn token
    decoded = [proc.tokenizer.decode(f["input_ids"][f["labels"] != -100]) for f in feats]
    assert decoded == [
        "No.<|im_end|>",
        "Hi, how can I help?<|im_end|>Both recordings mention chest pain.<|im_end|>",
        "Text answer.<|im_end|>",
    ]
    batch = proc.collate(feats)
    assert batch["input_features"].shape == (3, 80, 1000) and batch["audio_chunks"].tolist() == [1, 1, 1]
    out = model(**batch)
    full = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    lengths = [int(f["num_tokens"]) for f in feats]
    assert full.shape == (3, max(lengths), len(proc.tokenizer))
    assert out.attention_mask.sum(-1).tolist() == lengths
    # with labels the LM head runs on the target positions only: the same logits there, and the same loss
    targets = out.labels[:, 1:] != -100
    torch.testing.assert_close(out.logits, full[:, :-1][targets], atol=1e-5, rtol=1e-4)
    flat = torch.nn.functional.cross_entropy(full[:, :-1].flatten(0, 1), out.labels[:, 1:].flatten())
    torch.testing.assert_close(out.lm_loss, flat, atol=1e-5, rtol=1e-4)
    assert lengths[0] == len(feats[0]["input_ids"]) - 1 + num_audio_tokens(math_frames(1.3), 4)
    # the expanded labels keep every assistant token, in order
    for b, f in enumerate(feats):
        assert out.labels[b][out.labels[b] != -100].tolist() == f["labels"][f["labels"] != -100].tolist()
    # audio slots hold exactly the adapter output of each audio item, in reading order
    audio_in = {k: batch[k] for k in ("input_features", "audio_chunks", "audio_chunk_lengths")}
    embeds, _mask, _, audio, _ = model._inputs_embeds(
        batch["input_ids"], batch["attention_mask"], None, audio_in
    )
    assert [a.shape[0] for a in audio] == [num_audio_tokens(math_frames(s), 4) for s in (1.3, 3.7, 0.4)]
    ids = feats[1]["input_ids"].tolist()
    first = ids.index(proc.audio_token_id)
    torch.testing.assert_close(embeds[1, first : first + audio[1].shape[0]], audio[1])
    second = ids.index(proc.audio_token_id, first + 1) + audio[1].shape[0] - 1
    torch.testing.assert_close(embeds[1, second : second + audio[2].shape[0]], audio[2])
    # a text-only example gives the same logits alone as inside the padded mixed batch
    alone = model(**{k: v for k, v in proc.collate([feats[2]]).items() if k != "labels"}).logits[0]
    torch.testing.assert_close(full[2, : alone.shape[0]], alone, atol=1e-5, rtol=1e-4)


def math_frames(seconds: float) -> int:
    """Whisper encoder frames for a clip shorter than one window: 100 mel frames/s, conv stride 2."""
    return int(np.ceil(np.ceil(seconds * SR / 160) / 2))


def test_long_audio_is_chunked_not_truncated():
    model, proc = tiny()
    model.eval()
    wav = noise(23.0, 4)  # tiny preset window is 10 s
    conv = [{"role": "user", "content": [audio_part(wav)]}, {"role": "assistant", "content": "ok"}]
    f = proc.featurize(conv)
    assert f["audio_chunks"].tolist() == [3] and f["audio_chunk_lengths"].tolist() == [160000, 160000, 48000]
    assert f["input_features"].shape == (3, 80, 1000)
    expected = 125 + 125 + num_audio_tokens(math_frames(3.0), 4)
    assert int(f["num_tokens"]) == len(f["input_ids"]) - 1 + expected
    batch = proc.collate([f])
    emb = model.embed_audio(batch["input_features"], batch["audio_chunks"], batch["audio_chunk_lengths"])
    assert emb[0].shape[0] == expected
    # the last second of audio reaches the embeddings (nothing is cut off)
    wav2 = wav.copy()
    wav2[-SR:] = noise(1.0, 5)
    b2 = proc.collate([proc.featurize([{"role": "user", "content": [audio_part(wav2)]}, conv[1]])])
    emb2 = model.embed_audio(b2["input_features"], b2["audio_chunks"], b2["audio_chunk_lengths"])
    assert torch.equal(emb[0][:250], emb2[0][:250]) and not torch.allclose(emb[0][250:], emb2[0][250:])


@pytest.mark.parametrize(
    "kw,expect",
    [
        ({"lora_r": 4, "num_classes": 3}, {"adapter", "lora:llm", "classifier"}),
        (
            {"encoder_lora_r": 2, "trainable": [r"^adapter\.", r"^encoder\..*lora_"]},
            {"adapter", "lora:encoder"},
        ),
        ({"trainable": [r"^llm\.", r"^adapter\."]}, {"adapter", "llm"}),
    ],
)
def test_gradients_reach_exactly_the_configured_parameters(kw, expect):
    model, proc = tiny(**kw)
    with torch.no_grad():  # LoRA B starts at zero, which would zero the A gradients
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    batch = proc.collate([proc.featurize(m, class_label=i) for i, m in enumerate(mixed_conversations())])
    model(**batch).loss.backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert got == trainable
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    parts = {("lora:" + n.split(".")[0]) if "lora_" in n else n.split(".")[0] for n in got}
    assert parts == expect
    report = model.parameter_report()
    assert report["total"]["trainable"] == sum(
        p.numel() for n, p in model.named_parameters() if n in trainable
    )


@pytest.mark.parametrize(
    "kw",
    [
        {"lora_r": 4, "num_classes": 3, "kd_weight": 0.5},
        {"encoder_lora_r": 2, "trainable": [r"^adapter\.", r"^encoder\..*lora_"]},
        {"trainable": [r"^llm\.", r"^adapter\."], "kd_weight": 0.5},
        {"kd_weight": 0.5, "ctc_weight": 0.5},
    ],
)
def test_every_batch_runs_the_same_modules_and_reaches_every_trainable_parameter(kw):
    """Data-parallel ranks draw different mixes of text and speech; with a loss, the model must call the
    same modules in the same order (ZeRO-3 gathers parameters per module call) and give every trainable
    parameter a gradient (gradient reduction covers all of them), whatever the batch holds."""
    model, proc = tiny(**kw)
    model.train()
    calls: list[str] = []
    for name, m in model.named_modules():
        if name and not list(m.children()):
            m.register_forward_hook(lambda mod, args, out, name=name: calls.append(name))
    convs = mixed_conversations()
    spoken = [
        {"role": "user", "content": [audio_part(noise(1.0, 9), "It hurts here.")]},
        {"role": "assistant", "content": "Where exactly?"},
    ]
    seqs = {}
    for label, batch_convs in (
        ("text", [convs[2]]),
        ("spoken", [spoken]),
        ("mixed", [spoken, convs[0], convs[2]]),
    ):
        model.zero_grad()
        calls.clear()
        batch = proc.collate([proc.featurize(c) for c in batch_convs])
        out = model(**batch, lockstep=True)  # as the training core calls it for more than one rank
        out.loss.backward()
        seqs[label] = list(calls)
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert missing == [], (label, missing)
        if label == "text":
            assert out.loss.item() == pytest.approx(out.lm_loss.item())  # the stand-ins add exactly zero
            assert out.kd_loss is None  # no example to distil: not reported
    assert seqs["text"] == seqs["spoken"] == seqs["mixed"]


def test_save_load_identical_logits(tmp_path, s3):
    model, proc = tiny(lora_r=4, encoder_lora_r=2, num_classes=3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or name.startswith("classifier"):
                p.normal_(0, 0.1)
    model.eval()
    batch = proc.collate([proc.featurize(m) for m in mixed_conversations()])
    ref = model(**batch)
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    loaded = SpeechLM.from_pretrained(tmp_path).eval()
    proc2 = SpeechLMProcessor.from_pretrained(str(tmp_path))
    batch2 = proc2.collate([proc2.featurize(m) for m in mixed_conversations()])
    assert batch2.keys() == batch.keys() and all(torch.equal(batch[k], batch2[k]) for k in batch)
    out = loaded(**batch2)
    assert torch.equal(out.logits, ref.logits) and torch.equal(out.class_logits, ref.class_logits)
    assert {n for n, p in loaded.named_parameters() if p.requires_grad} == {
        n for n, p in model.named_parameters() if p.requires_grad
    }
    # the same export through S3 (init_from) with the trainable set taken from the new spec
    from medlm.storage import copy_tree

    uri = f"{s3.root}/exports/tiny-lora"
    copy_tree(str(tmp_path), uri)
    again, _proc3 = build_model(ModelSpec(init_from=uri, trainable=[r"^classifier\."]))
    assert torch.equal(again.eval()(**batch).logits, ref.logits)
    assert {n for n, p in again.named_parameters() if p.requires_grad} == {
        "classifier.weight",
        "classifier.bias",
    }
    assert build_processor(ModelSpec(init_from=uri)).audio_token_id == proc.audio_token_id


def test_greedy_generate_equals_stepwise_reference():
    model, proc = tiny(lora_r=4)
    model.eval()
    convs = [c[:-1] for c in mixed_conversations()]  # end on the user turn
    steps = 6
    batched = model.generate(
        **proc.prepare_generation(convs), max_new_tokens=steps, min_new_tokens=steps, do_sample=False
    )
    assert batched.shape == (3, steps)
    for b, conv in enumerate(convs):
        inputs = proc.prepare_generation([conv])
        ids = inputs["input_ids"]
        for _ in range(steps):  # no cache: full forward each step, append the argmax
            logits = model(**{**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids)}).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        assert ids[0, -steps:].tolist() == batched[b].tolist()


def test_kd_loss_zero_on_teacher_path_positive_otherwise():
    model, proc = tiny(lora_r=4, kd_weight=1.0)
    model.eval()
    text = [
        {"role": "user", "content": "The patient reports chest pain."},
        {"role": "assistant", "content": "Go now."},
    ]
    f = proc.featurize(text)
    same = proc.collate(
        [
            {
                **f,
                "teacher_input_ids": f["input_ids"],
                "teacher_attention_mask": f["attention_mask"],
                "teacher_labels": f["labels"],
            }
        ]
    )
    assert model(**same).kd_loss.item() < 1e-6
    spoken = [
        {"role": "user", "content": [audio_part(noise(2.0, 6), "The patient reports chest pain.")]},
        {"role": "assistant", "content": "Go now."},
    ]
    fs = proc.featurize(spoken)
    assert proc.tokenizer.decode(fs["teacher_input_ids"]) == proc.tokenizer.decode(f["input_ids"])
    out = model(**proc.collate([fs]))
    assert out.kd_loss.item() > 1e-3
    torch.testing.assert_close(out.loss, out.lm_loss + out.kd_loss)
    with torch.no_grad():  # the teacher is the LLM without LoRA: a non-zero LoRA makes the text path differ
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    assert model(**same).kd_loss.item() > 1e-3
    # a mixed batch (spoken + text-only): KD covers the spoken example only, same value as alone
    mixed = proc.collate([fs, f])
    assert mixed["kd_mask"].tolist() == [True, False]
    torch.testing.assert_close(model(**mixed).kd_loss, model(**proc.collate([fs])).kd_loss)
    # LoRA that this run does not train (stage 1's, under an adapter-only stage 2) belongs to the teacher
    model.configure_trainable([r"^adapter\."])
    assert model(**same).kd_loss.item() < 1e-6


def test_presets_build_on_meta_with_expected_sizes():
    sizes = {}
    for preset in ("base", "large"):
        model, _ = build_model(ModelSpec(preset=preset, lora_r=8), device="meta")
        report = model.parameter_report()
        sizes[preset] = report
        assert report["adapter"]["share"] < 0.02 and report["lora"]["share"] < 0.01
        assert report["total"]["trainable"] == report["adapter"]["params"] + report["lora"]["params"]
    assert 0.45e9 < sizes["base"]["llm"]["params"] < 0.55e9  # Qwen2.5-0.5B
    assert 80e6 < sizes["base"]["encoder"]["params"] < 95e6  # whisper-small encoder
    assert 7.0e9 < sizes["large"]["llm"]["params"] < 8.0e9  # Qwen2.5-7B
    assert 600e6 < sizes["large"]["encoder"]["params"] < 660e6  # whisper-large-v3 encoder
    assert set(PRESETS) == {"tiny", "small", "base", "large", "real"}


def test_real_weights_load_from_paths(tmp_path):
    """encoder_path / llm_path load HF checkpoints (tiny ones saved here); <|audio|> is added."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
        WhisperConfig,
        WhisperModel,
    )

    from medlm.models.tokenizer import CHATML_TEMPLATE

    torch.manual_seed(1)
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer, raw.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    raw.train_from_iterator(
        ["a real llm tokenizer without an audio token"],
        trainer=trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = CHATML_TEMPLATE
    llm = Qwen2ForCausalLM(
        Qwen2Config(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=64,
            vocab_size=len(tok),
        )
    )
    llm.save_pretrained(tmp_path / "llm")
    tok.save_pretrained(tmp_path / "llm")
    whisper = WhisperModel(
        WhisperConfig(
            d_model=32,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            max_source_positions=250,
            vocab_size=100,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=1,
        )
    )
    whisper.save_pretrained(tmp_path / "enc")
    model, proc = build_model(ModelSpec(llm_path=str(tmp_path / "llm"), encoder_path=str(tmp_path / "enc")))
    assert proc.audio_token_id == len(tok) and model.llm.config.vocab_size == len(tok) + 1
    torch.testing.assert_close(
        model.llm.model.layers[0].mlp.up_proj.weight, llm.model.layers[0].mlp.up_proj.weight
    )
    torch.testing.assert_close(model.encoder.model.layers[0].fc1.weight, whisper.encoder.layers[0].fc1.weight)
    f = proc.featurize(mixed_conversations()[1])  # 5 s window
    assert f["input_features"].shape == (2, 80, 500)
    assert model(**proc.collate([f])).loss.isfinite()


def test_wav2vec2_encoder_chunks_and_runs():
    model, proc = tiny(encoder_type="wav2vec2", audio_window_seconds=2.0)
    f = proc.featurize(
        [{"role": "user", "content": [audio_part(noise(5.0, 7))]}, {"role": "assistant", "content": "ok"}]
    )
    assert f["input_features"].shape == (3, 1, 32000) and f["audio_chunk_lengths"].tolist() == [
        32000,
        32000,
        16000,
    ]
    out = model(**proc.collate([f]))
    assert out.labels.shape[1] == int(f["num_tokens"]) and out.loss.isfinite()


@pytest.mark.parametrize(
    "messages,match",
    [
        ([{"role": "user", "content": [audio_part(np.zeros((2, 16000), np.float32))]}], "mono"),
        ([{"role": "user", "content": [audio_part(np.zeros(16000, np.int16))]}], "float"),
        ([{"role": "user", "content": [audio_part(np.zeros(0, np.float32))]}], "empty"),
        ([{"role": "user", "content": "sneaky <|audio|>"}], "may not contain"),
        ([{"role": "doctor", "content": "hi"}], "role"),
        ([{"role": "assistant", "content": [audio_part(noise(1.0))]}], "only allowed in user"),
        ([{"role": "user", "content": [{"type": "image"}]}], "part type"),
    ],
)
def test_bad_input_is_a_clear_error(messages, match):
    proc = build_processor(ModelSpec())
    with pytest.raises(ValueError, match=match):
        proc.featurize(messages)


def test_resamples_other_rates():
    proc = build_processor(ModelSpec())
    wav = noise(1.0)
    f = proc.featurize(
        [{"role": "user", "content": [{"type": "audio", "audio": wav[:8000], "sampling_rate": 8000}]}]
    )
    assert f["audio_chunk_lengths"].tolist() == [16000]


def _espeak(text: str) -> np.ndarray:
    import soundfile as sf
    import soxr

    raw = subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "160", "--stdout", text], capture_output=True, check=True
    ).stdout
    wav, sr = sf.read(io.BytesIO(raw), dtype="float32")
    return soxr.resample(wav, sr, SR).astype(np.float32)


def test_tiny_model_overfits_spoken_examples():
    """Four spoken sentences, one fixed text prompt: only the audio tells the answers apart."""
    texts = [
        "The patient has chest pain.",
        "Take aspirin twice a day.",
        "No pulmonary embolism seen.",
        "Blood pressure is high.",
    ]
    model, proc = tiny(trainable=[r"^adapter\.", r"^llm\."])  # encoder frozen
    batch = proc.collate(
        [
            proc.featurize(
                [
                    {
                        "role": "user",
                        "content": [audio_part(_espeak(t)), {"type": "text", "text": "Transcribe."}],
                    },
                    {"role": "assistant", "content": t},
                ]
            )
            for t in texts
        ]
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    losses = []
    for _ in range(60):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], losses[::10]
    model.eval()
    prompts = proc.prepare_generation(
        [
            [{"role": "user", "content": [audio_part(_espeak(t)), {"type": "text", "text": "Transcribe."}]}]
            for t in texts
        ]
    )
    out = proc.decode(model.generate(**prompts, max_new_tokens=20, do_sample=False))
    assert out == texts


def test_ctc_alignment_skips_the_llm_and_teaches_the_adapter_the_words():
    """CTC only (lm_weight = kd_weight = 0): the LLM never runs, and the adapter's frames come to point at
    the transcript's own token embeddings (greedy CTC decode over the LLM's embedding table recovers the
    words). Examples without a transcript count -1 and add nothing. (The tiny encoder is random-init, so it
    trains too; the real preset keeps Whisper frozen.)"""
    texts = ["The patient has chest pain.", "Take aspirin twice a day."]
    model, proc = tiny(ctc_weight=1.0, lm_weight=0.0, kd_weight=0.0, trainable=[r"^adapter\.", r"^encoder\."])
    assert model.config.ctc_blank_id == proc.ctc_blank_id
    convs = [
        [
            {"role": "user", "content": [audio_part(_espeak(t), t), {"type": "text", "text": "Transcribe."}]},
            {"role": "assistant", "content": t},
        ]
        for t in texts
    ]
    untranscribed = [
        {"role": "user", "content": [audio_part(noise(1.0, 4))]},
        {"role": "assistant", "content": "Ok."},
    ]
    batch = proc.collate([proc.featurize(c) for c in [*convs, untranscribed]])
    assert batch["ctc_label_lengths"].tolist()[-1] == -1
    assert batch["ctc_labels"].numel() == sum(batch["ctc_label_lengths"].tolist()[:-1])
    llm_calls = []
    model.llm.register_forward_hook(lambda *a: llm_calls.append(1))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    losses = []
    for _ in range(80):
        out = model(**batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.ctc_loss.item())
    assert out.logits is None and not llm_calls and out.lm_loss is None
    assert losses[-1] < 0.2 * losses[0], losses[::10]
    model.eval()
    with torch.no_grad():
        frames = model.embed_audio(
            batch["input_features"], batch["audio_chunks"], batch["audio_chunk_lengths"]
        )
    table = torch.nn.functional.normalize(model.llm.get_input_embeddings().weight, dim=-1)
    for text, f in zip(texts, frames):
        best = (torch.nn.functional.normalize(f, dim=-1) @ table.T).argmax(-1).tolist()
        collapsed = [t for i, t in enumerate(best) if t != proc.ctc_blank_id and (i == 0 or t != best[i - 1])]
        assert proc.tokenizer.decode(collapsed) == text


def test_classifier_regularizer_learns_sentiment_and_entity_types():
    """With num_entity_labels the head predicts the sentiment (CE) and which entity types an utterance
    mentions (BCE, -1 = unknown); the targets come from collate as (B, 1 + K) even when a text-only example
    (no targets) is in the batch, and a few steps on fixed targets fit both parts."""
    model, proc = tiny(
        num_classes=3,
        num_entity_labels=2,
        classifier_weight=1.0,
        lm_weight=0.0,
        trainable=[r"^adapter\.", r"^classifier\."],
    )
    convs = mixed_conversations()
    targets = [[2, 1, 0], [0, 0, 1], None]  # sentiment, entity types; the text-only example has none
    batch = proc.collate([proc.featurize(m, class_label=t) for m, t in zip(convs, targets)])
    assert batch["class_labels"].tolist() == [[2, 1, 0], [0, 0, 1], [-100, -100, -100]]
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    first = None
    for _ in range(40):
        out = model(**batch)
        first = first if first is not None else out.loss.item()
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert out.loss.item() < 0.2 * first
    logits = model(**batch).class_logits[:2].detach()
    assert logits[:, :3].argmax(-1).tolist() == [2, 0]
    assert (logits[:, 3:] > 0).long().tolist() == [[1, 0], [0, 1]]
    # a head without entity outputs reads only the sentiment target of the same labels
    plain, proc2 = tiny(num_classes=3)
    assert plain.classifier.out_features == 3 and model.classifier.out_features == 5
    assert plain(**proc2.collate([proc2.featurize(convs[0], class_label=[2, 1, 0])])).loss.isfinite()


# --- one source for the spec's fields; init_from refuses a spec that contradicts the export -----------------


def _other(value):
    """A value of the same kind as ``value`` and unequal to it (a string: the other audio compression)."""
    if isinstance(value, str) or value is None:  # audio_compression (None: not chosen, i.e. "none")
        return {"none": "ctc", "ctc": "none", None: "ctc"}[value]
    return [*value, "other"] if isinstance(value, list) else value + 1


def test_spec_fields_are_declared_once():
    """SpeechLMConfig carries SPEC_FIELDS as ModelSpec declares them: the same defaults (a config without one,
    e.g. an older export, reads the spec's) and build copies each from the spec. The config's own parameters
    that ModelSpec also has are the ones build resolves from the preset (None in the spec)."""
    import inspect

    from medlm.models import SpeechLMConfig
    from medlm.models.build import speechlm_config

    defaults = {n: f.get_default(call_default_factory=True) for n, f in ModelSpec.model_fields.items()}
    assert set(SpeechLMConfig.SPEC_FIELDS) <= set(defaults)
    assert {n: getattr(SpeechLMConfig(), n) for n in SpeechLMConfig.SPEC_FIELDS} == {
        n: defaults[n] for n in SpeechLMConfig.SPEC_FIELDS
    }
    resolved = set(inspect.signature(SpeechLMConfig.__init__).parameters) & set(defaults)
    assert resolved == {"stack_factor", "adapter_hidden"} and all(defaults[n] is None for n in resolved)
    spec = ModelSpec(**{n: _other(defaults[n]) for n in SpeechLMConfig.SPEC_FIELDS})
    config = speechlm_config(spec, build_processor(spec))
    assert {n: getattr(config, n) for n in SpeechLMConfig.SPEC_FIELDS} == {
        n: getattr(spec, n) for n in SpeechLMConfig.SPEC_FIELDS
    }
    assert (config.stack_factor, config.adapter_hidden) == (
        PRESETS["tiny"]["stack_factor"],
        PRESETS["tiny"]["adapter_hidden"],
    )


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"lora_r": 8}, "lora_r=8 .* whose lora_r is 4"),
        ({"lora_alpha": 32}, "lora_alpha=32 .* whose lora_alpha is 16"),
        ({"encoder_lora_r": 2}, "encoder_lora_r=2 .* whose encoder_lora_r is 0"),
        ({"num_classes": 2}, "num_classes=2 .* whose num_classes is 3"),
        ({"num_entity_labels": 7}, "num_entity_labels=7 .* whose num_entity_labels is 0"),
        ({"stack_factor": 8}, "stack_factor=8 .* whose stack_factor is 4"),
        ({"adapter_hidden": 256}, "adapter_hidden=256 .* whose adapter_hidden is 128"),
        ({"encoder_type": "wav2vec2"}, "encoder_type='wav2vec2' .* whose encoder_type is 'whisper'"),
        (
            {"encoder_window_seconds": 5.0},
            "encoder_window_seconds=5.0 .* whose encoder_window_seconds is 10.0",
        ),
        ({"encoder_path": "whisper-tiny.en"}, "encoder_path='whisper-tiny.en' with model.init_from"),
    ],
)
def test_init_from_refuses_structure_that_contradicts_the_export(kw, field):
    from medlm.models.build import check_structure

    model, _ = tiny(lora_r=4, num_classes=3)
    with pytest.raises(ValueError, match=field):
        check_structure(ModelSpec(init_from="s3://runs/x/export", **kw), model.config)


def test_init_from_accepts_agreeing_or_default_structure_and_applies_the_job_choices(tmp_path):
    """Fields equal to the export's or left at their default pass (also after the full dump a training worker
    gets); the preset, loss weights, trainable set and dtype are the job's.
    build_model refuses before loading."""
    from medlm.models.build import check_structure

    model, proc = tiny(lora_r=4, num_classes=3)
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model.lora_r=8 contradicts the export"):
        build_model(ModelSpec(init_from=str(tmp_path), lora_r=8))
    from medlm.models.build import check_init_from  # the driver's check: the export's config.json alone

    with pytest.raises(ValueError, match="model.lora_r=8 contradicts the export"):
        check_init_from(ModelSpec(init_from=str(tmp_path), lora_r=8))
    check_init_from(ModelSpec(init_from=str(tmp_path), lora_r=4))
    spec = ModelSpec(
        init_from=str(tmp_path),
        preset="real",
        lora_r=4,
        num_classes=3,
        stack_factor=4,
        adapter_hidden=128,
        encoder_window_seconds=10.0,
        kd_weight=0.5,
        ctc_weight=0.25,
        trainable=[r"^classifier\."],
    )
    check_structure(ModelSpec.model_validate(spec.model_dump(mode="json")), model.config)
    loaded, _ = build_model(spec)
    assert (loaded.config.lora_r, loaded.config.kd_weight, loaded.config.ctc_weight) == (4, 0.5, 0.25)
    assert {n for n, p in loaded.named_parameters() if p.requires_grad} == {
        "classifier.weight",
        "classifier.bias",
    }


def _export_config(job: str, *overrides: str):
    """The SpeechLMConfig a run of ``configs/<job>.yaml`` exports (no weights are built)."""
    from medlm.config import load_config
    from medlm.models.build import resolve_spec, speechlm_config
    from medlm.train import TrainJobConfig

    spec = resolve_spec(load_config(TrainJobConfig, f"{job}.yaml", list(overrides)).model)
    return speechlm_config(spec, build_processor(spec))


def _job_spec(job: str, *overrides: str) -> ModelSpec:
    """``configs/<job>.yaml``'s model with ``overrides`` as a training worker receives it (a full dump)."""
    from medlm.config import load_config
    from medlm.train import TrainJobConfig

    cfg = load_config(TrainJobConfig, f"{job}.yaml", [*overrides, "model.init_from=s3://medlm/runs/x/export"])
    return ModelSpec.model_validate(cfg.model.model_dump(mode="json"))


# The structure the real preset's alignment run sets for every later run
# (configs/presets/reproduce-real.yaml).
_REAL_ALIGN = [
    "model.preset=real",
    "model.lora_r=16",
    "model.lora_alpha=32",
    "model.num_classes=3",
    "model.num_entity_labels=7",
    "model.classifier_weight=0",
]


@pytest.mark.parametrize(
    "export,runs",
    [
        # reproduce, preset real: every SpeechLM starts from the alignment run; stage 2 from stage 1
        (
            ("stage2_ctc_real", *_REAL_ALIGN),
            [
                ("stage1_real",),
                ("stage2_real",),
                ("joint_sft_real",),
                ("multitask_real",),
                ("multitask_real", "model.classifier_weight=0"),
                ("stage2_real", "model.lm_weight=1.0", "model.trainable=['lora_', '^adapter\\.']"),
            ],
        ),
        # demo, preset real: stage 1 (LoRA), then the CTC alignment and stage 2, each from the last export
        (
            ("stage1_real", "model.preset=real"),
            [("stage2_ctc_real",), ("stage2_real",), ("stage2_self_real",)],
        ),
        # tiny: stage 2 from stage 1
        (("stage1", "model.preset=tiny"), [("stage2",)]),
    ],
)
def test_init_from_accepts_the_shipped_job_chains(export, runs):
    from medlm.models import pretrained as P
    from medlm.models.build import check_structure

    if "model.preset=real" in export and not all(
        P.is_fetched(n) for n in ("whisper-tiny.en", "smollm2-135m-instruct")
    ):
        pytest.skip("model store not fetched (run `medlm models fetch`)")
    config = _export_config(*export)
    preset = next(o for o in export if o.startswith("model.preset="))
    for job, *overrides in runs:
        check_structure(_job_spec(job, preset, *overrides), config)


def test_forward_stays_short():
    """SpeechLM.forward reads as the list of its steps: the loss terms are methods of their own."""
    import inspect

    assert len(inspect.getsource(SpeechLM.forward).splitlines()) <= 60


# --- frozen work done once: cached encoder frames ----------------------------------------------------------


def _cached_twin(model, proc, convs):
    """The conversations with each audio part replaced by its encoder frames, through the cache's own
    packing (float16), as the pipeline featurizes them."""
    from medlm.data.frames import pack, unpack

    out = []
    for conv in convs:
        new = []
        for m in conv:
            if isinstance(m["content"], str):
                new.append(m)
                continue
            parts = []
            for p in m["content"]:
                if p["type"] != "audio":
                    parts.append(p)
                    continue
                feats, _, lengths = proc.frontend.features([p["audio"]], return_lengths=True)
                with torch.no_grad():
                    chunks = [
                        f.numpy()
                        for f in model.encoder_frames(torch.from_numpy(feats), torch.tensor(lengths))
                    ]
                (cached,) = unpack(pack([(chunks, len(p["audio"]) / SR)]))
                parts.append({"type": "audio_frames", **cached, "transcript": p.get("transcript")})
            new.append({**m, "content": parts})
        out.append(new)
    return out


def test_a_step_on_cached_frames_equals_a_step_on_live_audio():
    """The loss and the adapter's gradients of one step (LM + CTC + classifier) are the same whether the
    encoder runs on the audio or its frames come from the cache: exactly with float32 frames, to float16
    rounding through the cache's storage. Long audio (two encoder windows) included."""
    model, proc = tiny(ctc_weight=0.5, num_classes=3)
    convs = [
        [
            {"role": "user", "content": [audio_part(noise(13.0, 1), "chest pain since monday")]},
            {"role": "assistant", "content": "How bad is it?"},
        ],
        [
            {"role": "user", "content": [audio_part(noise(2.2, 2), "a dry cough")]},
            {"role": "assistant", "content": "Any fever?"},
        ],
        [{"role": "user", "content": "typed only"}, {"role": "assistant", "content": "Fine."}],
    ]

    def step(batch):
        model.zero_grad()
        out = model(**batch)
        out.loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    live = proc.collate([proc.featurize(c, class_label=1) for c in convs])
    cached_examples = [
        proc.featurize(c, class_label=1, cached_audio=True) for c in _cached_twin(model, proc, convs)
    ]
    cached = proc.collate(cached_examples)
    assert "input_features" not in cached and cached["audio_frames"].dtype == torch.float16
    assert cached["audio_frame_counts"].tolist() == [500, 150, 110] and cached["audio_chunks"].tolist() == [
        2,
        1,
    ]
    assert [int(e["num_tokens"]) for e in cached_examples] == live["num_tokens"].tolist()
    out_live, g_live = step(live)
    out_cached, g_cached = step(cached)
    assert g_live.keys() == g_cached.keys() and any(n.startswith("adapter.") for n in g_live)
    for name in ("loss", "lm_loss", "ctc_loss", "cls_loss"):
        torch.testing.assert_close(getattr(out_cached, name), getattr(out_live, name), rtol=2e-3, atol=2e-4)
    for n in g_live:
        torch.testing.assert_close(g_cached[n], g_live[n], rtol=5e-2, atol=5e-4)
    # float32 frames (no storage rounding): the same step to float32 precision
    exact = {
        **cached,
        "audio_frames": torch.cat(
            [
                model.encoder_frames(live["input_features"], live["audio_chunk_lengths"])[c].detach()
                for c in range(3)
            ]
        ),
    }
    out_exact, g_exact = step(exact)
    torch.testing.assert_close(out_exact.loss, out_live.loss, rtol=1e-5, atol=1e-6)
    for n in g_live:
        torch.testing.assert_close(g_exact[n], g_live[n], rtol=1e-4, atol=1e-6)


def test_cached_frames_and_audio_do_not_mix():
    model, proc = tiny()
    conv = [
        {"role": "user", "content": [audio_part(noise(1.0))]},
        {"role": "assistant", "content": "ok"},
    ]
    (cached_conv,) = _cached_twin(model, proc, [conv])
    with pytest.raises(ValueError, match="cached_audio=True"):
        proc.featurize(cached_conv)
    with pytest.raises(ValueError, match="every audio part"):
        proc.featurize(conv, cached_audio=True)
    with pytest.raises(ValueError, match="mixes"):
        proc.collate([proc.featurize(conv), proc.featurize(cached_conv, cached_audio=True)])


def test_cached_frames_are_checked_as_audio_is():
    """The cache holds every length: the run's limit applies on reading; a row whose recordings outnumber its
    frames, a corrupt entry and frames of the wrong width are the row's errors, named."""
    from medlm.data.frames import pack, unpack
    from medlm.data.pipeline import Featurizer
    from medlm.data.schema import BadRecord, encode_flac, to_messages

    model, proc = tiny()
    row = {"id": "u1", "audio": encode_flac(noise(3.0), SR), "sample_rate": SR, "transcript": "chest pain"}
    frames = [np.zeros((150, proc.frame_dim), np.float32)]
    cached = unpack(pack([(frames, 3.0)]))
    messages, _ = to_messages(row, "utterance", "asr", 5.0, cached)
    parts = [p for m in messages if isinstance(m["content"], list) for p in m["content"]]
    assert [p["type"] for p in parts if p["type"] != "text"] == ["audio_frames"]
    with pytest.raises(BadRecord, match="audio_too_long"):
        to_messages(row, "utterance", "asr", 2.0, cached)
    with pytest.raises(BadRecord, match="more recordings"):
        to_messages(row, "utterance", "asr", 5.0, [])
    bad = [{"frames": [np.zeros((150, proc.frame_dim + 1), np.float32)], "seconds": 3.0}]
    with pytest.raises(ValueError, match=f"must be \\(n, {proc.frame_dim}\\)"):
        proc.featurize(to_messages(row, "utterance", "asr", 5.0, bad)[0], cached_audio=True)
    featurizer = Featurizer.__new__(Featurizer)  # its row step alone, without building a processor
    featurizer.processor, featurizer.max_audio_seconds, featurizer.cached = proc, 5.0, True
    with pytest.raises(BadRecord, match="unreadable cached frames"):
        featurizer.featurize_row("utterance", "asr", row, b"not an npz")
    example, seconds = featurizer.featurize_row("utterance", "asr", row, pack([(frames, 3.0)]))
    assert seconds == pytest.approx(3.0) and example["audio_frame_counts"].tolist() == [150]


def test_an_exports_audio_compression_is_kept_unless_the_job_chooses():
    model, proc = tiny(audio_compression="ctc")
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        proc.save_pretrained(d)
        assert build_model(ModelSpec(init_from=d))[0].config.audio_compression == "ctc"
        assert (
            build_model(ModelSpec(init_from=d, audio_compression="none"))[0].config.audio_compression
            == "none"
        )


def test_encoder_fingerprint_changes_with_the_weights_and_refuses_a_changed_encoder():
    from medlm.data.encoder_cache import check_frozen
    from medlm.data.frames import check_key
    from medlm.models.encoder import encoder_fingerprint

    model, _ = tiny()
    key = encoder_fingerprint(model.encoder, model.frontend)
    assert key == encoder_fingerprint(model.encoder, model.frontend) and len(key) == 16
    import copy

    bf16 = copy.deepcopy(model.encoder).to(torch.bfloat16)  # a bfloat16 run's encoder: the cache's, cast
    assert encoder_fingerprint(bf16, model.frontend, "bfloat16") == encoder_fingerprint(
        model.encoder, model.frontend, "bfloat16"
    )
    assert encoder_fingerprint(bf16, model.frontend) != key
    # a bf16 run keys by bf16 weights: the export of a bf16 run (its encoder rounded to bf16) keeps the key of
    # the encoder it started from, so the frames computed for the first run serve the next
    from medlm.config import load_config
    from medlm.train import TrainJobConfig
    from medlm.train.core import key_spec

    assert key_spec(load_config(TrainJobConfig, "stage2_self_real.yaml")).dtype == "bfloat16"
    assert key_spec(load_config(TrainJobConfig, "stage2.yaml")).dtype == "float32"
    with torch.no_grad():
        next(model.encoder.parameters())[0, 0] += 1e-3  # fine-tuned by one step, say
    changed = encoder_fingerprint(model.encoder, model.frontend)
    assert changed != key
    check_key(None, changed)
    with pytest.raises(ValueError, match=f"computed by encoder {key}.*this run's encoder is {changed}"):
        check_key(key, changed)
    check_frozen(ModelSpec(), model.encoder)
    with pytest.raises(ValueError, match="frozen encoder.*model.trainable"):
        check_frozen(ModelSpec(trainable=["^encoder\\."]), model.encoder)
    with pytest.raises(ValueError, match="encoder_lora_r"):
        check_frozen(ModelSpec(encoder_lora_r=4), model.encoder)


def test_ctc_compression_gives_the_llm_mixtures_of_its_own_embeddings():
    """audio_compression=ctc: blank frames dropped, runs merged, each kept run a convex mixture of the LLM's
    input embeddings; the CTC loss still reads the uncompressed frames; training flows through it."""
    model, proc = tiny(audio_compression="ctc", ctc_weight=1.0)
    conv = [
        {"role": "user", "content": [audio_part(noise(3.0, 3), "chest pain")]},
        {"role": "assistant", "content": "Since when?"},
    ]
    batch = proc.collate([proc.featurize(conv)])
    raw = model.audio_tokens(batch["input_features"], batch["audio_chunks"], batch["audio_chunk_lengths"])
    (compressed,) = model.embed_audio(
        batch["input_features"], batch["audio_chunks"], batch["audio_chunk_lengths"]
    )
    best = model.ctc_logits(raw[0]).argmax(-1)
    runs = [int(b) for i, b in enumerate(best) if i == 0 or b != best[i - 1]]
    kept = [b for b in runs if b != model.config.ctc_blank_id]
    assert compressed.shape[0] == max(1, len(kept)) <= raw[0].shape[0]
    table = model.llm.get_input_embeddings().weight
    # a mixture of table rows lies in their convex hull: within the table's coordinate-wise range
    assert (compressed >= table.min(0).values - 1e-5).all() and (
        compressed <= table.max(0).values + 1e-5
    ).all()
    out = model(**batch)
    out.loss.backward()
    assert out.ctc_loss is not None and out.lm_loss is not None
    assert model.adapter.up.weight.grad is not None and model.adapter.up.weight.grad.abs().sum() > 0
