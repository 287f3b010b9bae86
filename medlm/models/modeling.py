"""SpeechLM: audio encoder -> frame-stacking SwiGLU adapter -> causal LLM (optional LoRA), HF-native.

Picture::

    waveform --chunks--> encoder (Whisper / wav2vec2, frozen by default, optional LoRA)   50 Hz frames
             --stack k--> RMSNorm -> Linear -> SwiGLU -> Linear -> RMSNorm                  50/k Hz, LLM width
             --splice at <|audio|>--> causal LLM (Qwen2 / Llama, LoRA or full FT) -> LM loss (assistant)
    pooled adapter output -> classifier head (optional auxiliary loss)
    same LLM fed the transcript (no LoRA, no grad) -> KL teacher (optional KD loss)
    adapter output . LLM input embeddings -> CTC against the transcript's tokens (optional CTC loss)

Every ``<|audio|>`` token in ``input_ids`` stands for one audio item and is expanded to that item's
embeddings by :func:`replace_placeholders_and_build_targets`, the one place where this happens.

An export (``save_pretrained``) is a standard sharded HF checkpoint whose shards are the model's two parts:
``model-audio.safetensors`` (encoder + adapter + classifier) and ``model-llm.safetensors`` (the LLM with its
LoRA layers), tied by ``model.safetensors.index.json``. ``from_pretrained`` loads the whole model;
:meth:`SpeechLM.from_pretrained_part` loads one part and never reads the other's file (a serving replica).
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from medlm.models.encoder import AudioEncoder, AudioFrontend, build_audio_encoder, num_audio_tokens
from medlm.models.spec import field_default

IGNORE_INDEX = -100

#: The export's shards: part -> (file, parameter prefixes). Every weight belongs to exactly one part.
EXPORT_PARTS = {
    "audio": ("model-audio.safetensors", ("encoder.", "adapter.", "classifier.")),
    "llm": ("model-llm.safetensors", ("llm.",)),
}
INDEX_FILE = "model.safetensors.index.json"
#: The audio arguments of ``forward`` / ``generate`` (``SpeechLM.audio_tokens``'): features or cached frames.
AUDIO_KEYS = ("input_features", "audio_chunks", "audio_chunk_lengths", "audio_frames", "audio_frame_counts")


def as_config(value) -> PretrainedConfig | None:
    """A sub-model config from what a saved config holds (a dict with ``model_type``), or as given (a config,
    None)."""
    if value is None or isinstance(value, PretrainedConfig):
        return value
    value = dict(value)
    return AutoConfig.for_model(value.pop("model_type"), **value)


#: The spec fields a job chooses even when the structure comes from an export (``init_from``): the loss
#: weights and how the LLM reads audio.
JOB_CHOICES = (
    "classifier_weight",
    "lm_weight",
    "kd_weight",
    "kd_temperature",
    "ctc_weight",
    "ctc_scale",
    "audio_compression",
)


class SpeechLMConfig(PretrainedConfig):
    """Everything needed to rebuild a SpeechLM: encoder + LLM configs, adapter, LoRA, heads and losses.

    The fields named in :attr:`SPEC_FIELDS` are :class:`~medlm.models.spec.ModelSpec`'s, declared there once
    (type, default, meaning): ``build_model`` copies them from the spec, and one that is absent or None takes
    the spec's default. The others are resolved by ``build_model`` (shapes, the stack factor and adapter width
    of the preset, the tokenizer's ids)."""

    model_type = "medlm_speechlm"
    #: The ModelSpec fields carried as they are: LoRA, heads, loss weights and the trainable set.
    SPEC_FIELDS = (
        "audio_window_seconds",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "lora_targets",
        "encoder_lora_r",
        "encoder_lora_targets",
        "num_classes",
        "num_entity_labels",
        *JOB_CHOICES,
        "trainable",
    )

    def __init__(
        self,
        encoder_config=None,
        text_config=None,
        audio_token_id: int | None = None,
        stack_factor: int = 4,
        adapter_hidden: int = 1024,
        ctc_blank_id: int | None = None,
        **kwargs,
    ):
        self.encoder_config = as_config(encoder_config)
        self.text_config = as_config(text_config)
        self.audio_token_id = audio_token_id
        self.stack_factor = stack_factor
        self.adapter_hidden = adapter_hidden
        self.ctc_blank_id = ctc_blank_id
        for name in self.SPEC_FIELDS:
            value = kwargs.pop(name, None)
            value = field_default(name) if value is None else value
            setattr(self, name, list(value) if isinstance(value, (list, tuple)) else value)
        super().__init__(**kwargs)


class StackingAdapter(nn.Module):
    """Stack ``k`` encoder frames, then RMSNorm -> Linear -> SwiGLU -> Linear -> RMSNorm (Ultravox)."""

    def __init__(self, in_dim: int, out_dim: int, stack_factor: int, hidden: int):
        super().__init__()
        if hidden % 2:
            raise ValueError(f"adapter_hidden must be even (SwiGLU halves it), got {hidden}")
        self.stack_factor = stack_factor
        self.norm_in = nn.RMSNorm(in_dim * stack_factor)
        self.up = nn.Linear(in_dim * stack_factor, hidden, bias=False)
        self.down = nn.Linear(hidden // 2, out_dim, bias=False)
        self.norm_out = nn.RMSNorm(out_dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, T, d) -> (N, ceil(T / k), out_dim); the last group is zero-padded."""
        n, t, d = frames.shape
        pad = -t % self.stack_factor
        if pad:
            frames = F.pad(frames, (0, 0, 0, pad))
        x = frames.reshape(n, (t + pad) // self.stack_factor, d * self.stack_factor)
        x, gate = self.up(self.norm_in(x)).chunk(2, dim=-1)
        return self.norm_out(self.down(F.silu(gate) * x))


def replace_placeholders_and_build_targets(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    text_embeds: torch.Tensor,
    audio_embeds: list[torch.Tensor],
    audio_token_id: int,
    labels: torch.Tensor | None = None,
    padding_side: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Splice audio embeddings into the text embeddings, expanding each placeholder to its audio's length.

    Args:
        input_ids, attention_mask: (B, L), right- or left-padded; each ``audio_token_id`` is one audio item.
        text_embeds: (B, L, D) embeddings of ``input_ids`` (placeholder rows are replaced).
        audio_embeds: one (n_i, D) tensor per audio item, in reading order (row by row, left to right).
        labels: optional (B, L) targets aligned with ``input_ids``; audio slots get ``-100``.

        padding_side: output padding, "left" (generation) or "right"; None = as the input (right if none).

    Returns ``(inputs_embeds, attention_mask, labels)`` of length ``L' = max expanded row length``.
    """
    n_placeholders = int((input_ids == audio_token_id).sum())
    if n_placeholders != len(audio_embeds):
        raise ValueError(
            f"{n_placeholders} audio placeholders in input_ids but {len(audio_embeds)} audio items"
        )
    if padding_side is None:
        padding_side = "left" if bool((attention_mask[:, 0] == 0).any()) else "right"
    left_padded = padding_side == "left"
    rows_e, rows_l = [], []
    item = 0
    for b in range(input_ids.shape[0]):
        keep = attention_mask[b].bool()
        ids, emb = input_ids[b][keep], text_embeds[b][keep]
        lab = labels[b][keep] if labels is not None else None
        pieces_e, pieces_l, start = [], [], 0
        for pos in (ids == audio_token_id).nonzero().flatten().tolist():
            audio = audio_embeds[item].to(emb.dtype)
            item += 1
            pieces_e += [emb[start:pos], audio]
            if lab is not None:
                pieces_l += [lab[start:pos], lab.new_full((audio.shape[0],), IGNORE_INDEX)]
            start = pos + 1
        pieces_e.append(emb[start:])
        rows_e.append(torch.cat(pieces_e))
        if lab is not None:
            pieces_l.append(lab[start:])
            rows_l.append(torch.cat(pieces_l))
    length = max(r.shape[0] for r in rows_e)
    out_e = text_embeds.new_zeros((len(rows_e), length, text_embeds.shape[-1]))
    out_m = attention_mask.new_zeros((len(rows_e), length))
    out_l = input_ids.new_full((len(rows_e), length), IGNORE_INDEX) if labels is not None else None
    for b, row in enumerate(rows_e):
        span = slice(length - row.shape[0], length) if left_padded else slice(0, row.shape[0])
        out_e[b, span] = row
        out_m[b, span] = 1
        if out_l is not None:
            out_l[b, span] = rows_l[b]
    return out_e, out_m, out_l


@dataclass
class SpeechLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # (B, L', V); with labels only at the target positions, (N, V)
    lm_loss: torch.Tensor | None = None
    cls_loss: torch.Tensor | None = None
    kd_loss: torch.Tensor | None = None
    ctc_loss: torch.Tensor | None = None
    class_logits: torch.Tensor | None = None
    labels: torch.Tensor | None = None  # (B, L') targets after placeholder expansion (see next_targets)
    attention_mask: torch.Tensor | None = None  # mask after placeholder expansion


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a padded batch (left or right padding): 0, 1, ... over each row's real tokens."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def next_targets(labels: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: the positions whose next token is a target (``labels[:, 1:] != -100``), the last False."""
    return F.pad(labels[:, 1:] != IGNORE_INDEX, (0, 1), value=False)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token CE, fp32: ``logits`` (N, V) at the :func:`next_targets` positions of ``labels``, in
    order."""
    return F.cross_entropy(logits.float(), labels[:, 1:][labels[:, 1:] != IGNORE_INDEX])


def classifier_loss(
    class_logits: torch.Tensor, class_labels: torch.Tensor, has_audio: torch.Tensor, num_classes: int
) -> torch.Tensor | None:
    """The classifier regularizer on the spoken examples (text-only ones have no pooled audio): CE of the
    first ``num_classes`` logits on ``class_labels[:, 0]`` (sentiment) plus, where the head has more outputs
    and the labels (B, 1 + K) carry entity-type presence, BCE of the other logits on ``class_labels[:, 1:]``
    (targets < 0 ignored). None when the batch has no labelled spoken example."""
    labels = class_labels.long() if class_labels.dim() == 2 else class_labels.long()[:, None]
    targets = labels[:, 0].masked_fill(~has_audio, IGNORE_INDEX)
    loss = None
    if (targets != IGNORE_INDEX).any():
        loss = F.cross_entropy(class_logits[:, :num_classes].float(), targets, ignore_index=IGNORE_INDEX)
    k = min(class_logits.shape[-1] - num_classes, labels.shape[-1] - 1)
    if k > 0:
        multi = labels[:, 1 : 1 + k]
        keep = (multi >= 0) & has_audio[:, None]
        if keep.any():
            bce = F.binary_cross_entropy_with_logits(
                class_logits[:, num_classes : num_classes + k].float()[keep], multi[keep].float()
            )
            loss = bce if loss is None else loss + bce
    return loss


def shard_by_part(directory: str | Path) -> None:
    """Regroup an HF checkpoint's safetensors shards into one file per part of :data:`EXPORT_PARTS` + the
    index."""
    from safetensors.torch import load_file, save_file

    d = Path(directory)
    index = d / INDEX_FILE
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.exists()
        else ["model.safetensors"]
    )
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        tensors.update(load_file(str(d / f)))
    weight_map, groups = {}, {file: {} for file, _ in EXPORT_PARTS.values()}
    for name, t in tensors.items():
        file = next((f for f, prefixes in EXPORT_PARTS.values() if name.startswith(prefixes)), None)
        if file is None:
            raise ValueError(f"weight {name!r} belongs to no part of {sorted(EXPORT_PARTS)}")
        groups[file][name], weight_map[name] = t, file
    for f in files:
        (d / f).unlink()
    for file, group in groups.items():
        save_file(group, str(d / file), metadata={"format": "pt"})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index.write_text(
        json.dumps(
            {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2
        )
    )


def _lora_config(r: int, alpha: int, dropout: float, targets: list[str]):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none")


class SpeechLM(PreTrainedModel):
    """Audio encoder + adapter + causal LLM.

    ``SpeechLM(config)`` builds everything (LoRA included) from config; ``encoder`` / ``llm`` may be passed
    in already loaded with real weights (see ``medlm.models.build_model``).
    """

    config_class = SpeechLMConfig
    base_model_prefix = "speechlm"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(
        self, config: SpeechLMConfig, encoder: AudioEncoder | None = None, llm: PreTrainedModel | None = None
    ):
        super().__init__(config)
        if config.encoder_config is None or config.text_config is None or config.audio_token_id is None:
            raise ValueError("SpeechLMConfig needs encoder_config, text_config and audio_token_id")
        self.encoder = encoder if encoder is not None else build_audio_encoder(config.encoder_config)
        self.llm = llm if llm is not None else AutoModelForCausalLM.from_config(config.text_config)
        self.adapter = StackingAdapter(
            self.encoder.hidden_size,
            config.text_config.hidden_size,
            config.stack_factor,
            config.adapter_hidden,
        )
        heads = config.num_classes + getattr(config, "num_entity_labels", 0)  # + entity-type presence
        self.classifier = nn.Linear(config.text_config.hidden_size, heads) if heads else None
        self.frontend = AudioFrontend(config.encoder_config, config.audio_window_seconds)
        self.post_init()
        if config.lora_r:
            from peft import inject_adapter_in_model

            inject_adapter_in_model(
                _lora_config(config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_targets),
                self.llm,
            )
        if config.encoder_lora_r:
            from peft import inject_adapter_in_model

            inject_adapter_in_model(
                _lora_config(
                    config.encoder_lora_r, config.lora_alpha, config.lora_dropout, config.encoder_lora_targets
                ),
                self.encoder,
            )
        self.configure_trainable(config.trainable)

    @classmethod
    def from_pretrained(cls, *args, **kwargs) -> SpeechLM:
        """HF loading (local dir; ``medlm.storage.local_copy`` for s3://), then the trainable set."""
        model = super().from_pretrained(*args, **kwargs)
        model.configure_trainable(model.config.trainable)
        return model

    def save_pretrained(self, save_directory, *args, is_main_process: bool = True, **kwargs) -> None:
        """HF's ``save_pretrained`` (config, tied weights, ``state_dict=`` for gathered ZeRO-3 weights), then
        the weights regrouped into one shard per part (:data:`EXPORT_PARTS`) under a standard index."""
        super().save_pretrained(save_directory, *args, is_main_process=is_main_process, **kwargs)
        if is_main_process:
            shard_by_part(save_directory)

    @classmethod
    def from_pretrained_part(cls, directory: str, part: str) -> SpeechLM:
        """Only ``part`` of an export: ``"audio"`` (for :meth:`audio_tokens`; ``llm`` is None) or ``"llm"``
        (``encoder`` / ``adapter`` / ``classifier`` are None). The other part is built on the meta device and
        its shard is never opened; the weights keep their saved dtype, as ``from_pretrained`` does."""
        from accelerate import init_empty_weights
        from safetensors.torch import load_file

        if part not in EXPORT_PARTS:
            raise ValueError(f"unknown part {part!r}; one of {sorted(EXPORT_PARTS)}")
        file, prefixes = EXPORT_PARTS[part]
        path = Path(directory) / file
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: {directory} is not a SpeechLM export in parts "
                "(re-export it with save_pretrained)"
            )
        config = SpeechLMConfig.from_pretrained(directory)
        with init_empty_weights(include_buffers=False):  # shapes only; buffers (rotary tables) stay real
            model = cls(config)
        state = load_file(str(path))
        wrong = [k for k in state if not k.startswith(prefixes)]
        if wrong:
            raise ValueError(f"{path} holds weights of another part: {wrong[:3]}")
        model.load_state_dict(state, strict=False, assign=True)
        if part == "llm":
            model.encoder = model.adapter = model.classifier = None
            model.llm.tie_weights()
        else:
            model.llm = None
        missing = [n for n, p in model.named_parameters() if p.is_meta]
        if missing:
            raise ValueError(f"{path} lacks weights of the {part} part: {missing[:3]}")
        model.configure_trainable(model.config.trainable)
        return model.eval()

    def _init_weights(self, module):  # adapter/classifier init themselves; sub-models use their own init
        pass

    # ---- trainable parameters --------------------------------------------------------------------
    def configure_trainable(self, patterns: list[str]) -> list[str]:
        """Train exactly the parameters whose name matches a pattern (re.search); returns their names."""
        regexes = [re.compile(p) for p in patterns]
        names = []
        for name, p in self.named_parameters():
            p.requires_grad_(any(r.search(name) for r in regexes))
            if p.requires_grad:
                names.append(name)
        self.config.trainable = list(patterns)
        return names

    def parameter_report(self) -> dict[str, dict[str, float]]:
        """Counts per part (encoder / adapter / llm / lora / classifier / total), trainable, shares."""
        parts: dict[str, dict[str, float]] = {}
        for name, p in self.named_parameters():
            part = "lora" if "lora_" in name else name.split(".", 1)[0]
            d = parts.setdefault(part, {"params": 0, "trainable": 0})
            d["params"] += p.numel()
            d["trainable"] += p.numel() if p.requires_grad else 0
        total = sum(d["params"] for d in parts.values())
        parts["total"] = {"params": total, "trainable": sum(d["trainable"] for d in parts.values())}
        for d in parts.values():
            d["share"] = d["params"] / max(total, 1)
            d["trainable_share"] = d["trainable"] / max(total, 1)
        return parts

    def get_input_embeddings(self):
        return self.llm.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.llm.set_input_embeddings(value)

    # ---- audio -----------------------------------------------------------------------------------
    def encoder_frames(
        self, input_features: torch.Tensor, audio_chunk_lengths: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Features (chunks, ...) -> each chunk's encoder frames that carry audio, (f_c, d) per chunk (all
        frames when ``audio_chunk_lengths`` is None). What the encoder cache stores."""
        out = self.encoder(input_features)  # (chunks, T, d)
        if audio_chunk_lengths is None:
            return list(out)
        return [
            out[c, : self.frontend.encoder_frames(int(n))] for c, n in enumerate(audio_chunk_lengths.tolist())
        ]

    def adapt(self, frames: list[torch.Tensor], audio_chunks) -> list[torch.Tensor]:
        """Each chunk's encoder frames (f_c, d) -> one (n_i, D) tensor per audio item: every chunk stacked
        (zero-padded to a multiple of the stack factor) and adapted on its own, then an item's chunks
        concatenated. ``audio_chunks``: chunks per item."""
        counts = [int(c) for c in (audio_chunks.tolist() if torch.is_tensor(audio_chunks) else audio_chunks)]
        if sum(counts) != len(frames):
            raise ValueError(
                f"audio_chunks sum to {sum(counts)} but there are {len(frames)} chunks of frames"
            )
        if not frames:
            return [self.adapter.down.weight.new_zeros((0, self.config.text_config.hidden_size))] * len(
                counts
            )
        padded = nn.utils.rnn.pad_sequence(list(frames), batch_first=True).to(self.adapter.down.weight.dtype)
        tokens = self.adapter(padded)  # (chunks, T_tok, D)
        k = self.config.stack_factor
        per_chunk = [tokens[c, : num_audio_tokens(len(f), k)] for c, f in enumerate(frames)]
        out, start = [], 0
        for count in counts:
            out.append(torch.cat(per_chunk[start : start + count]))
            start += count
        return out

    def audio_tokens(
        self,
        input_features: torch.Tensor | None = None,
        audio_chunks: torch.Tensor | None = None,
        audio_chunk_lengths: torch.Tensor | None = None,
        audio_frames: torch.Tensor | None = None,
        audio_frame_counts: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """The adapter's output per audio item, (n_i, D), from features through the encoder (live), or from
        ``audio_frames`` (sum f_c, d), the encoder's frames of every chunk concatenated, and
        ``audio_frame_counts`` (chunks,) (cached: the encoder does not run)."""
        if audio_frames is not None:
            frames = list(torch.split(audio_frames, [int(n) for n in audio_frame_counts.tolist()]))
        elif input_features is not None and input_features.shape[0]:
            frames = self.encoder_frames(input_features, audio_chunk_lengths)
        else:
            frames = []
        return self.adapt(frames, audio_chunks)

    def embed_audio(self, *args, **kwargs) -> list[torch.Tensor]:
        """What the LLM reads for each audio item: :meth:`audio_tokens` (same arguments), CTC-compressed when
        ``config.audio_compression == "ctc"`` (:meth:`compress`)."""
        return self.compress(self.audio_tokens(*args, **kwargs))

    def compress(self, audio: list[torch.Tensor]) -> list[torch.Tensor]:
        """``audio_compression == "ctc"`` (Soundwave, Speech-LLaMA): each item's frames scored by the CTC
        head (:meth:`ctc_logits`); frames whose best token is the blank dropped, runs of the same best token
        merged, each run becoming the mixture of the LLM's input embeddings weighted by its mean posterior, so
        the LLM reads a text-length sequence of points in its own embedding space. An item whose every frame
        is blank keeps one mixture over all its frames. ``"none"``: unchanged."""
        if self.config.audio_compression != "ctc" or not audio:
            return audio
        if self.config.ctc_blank_id is None:
            raise ValueError("audio_compression='ctc' needs the CTC blank token (config.ctc_blank_id)")
        table = self.llm.get_input_embeddings().weight.detach().float()  # not trained through the mixture
        posts = self.ctc_logits(torch.cat(audio)).softmax(-1).split([len(a) for a in audio])  # (n_i, V) each
        out = []
        for item, post in zip(audio, posts):
            if item.shape[0] == 0:
                out.append(item)
                continue
            best = post.argmax(-1)
            start = torch.ones_like(best, dtype=torch.bool)
            start[1:] = best[1:] != best[:-1]
            run = start.long().cumsum(0) - 1  # run index of each frame
            keep = best[start] != self.config.ctc_blank_id  # (runs,)
            mean = torch.zeros((int(run[-1]) + 1, post.shape[-1]), dtype=post.dtype, device=post.device)
            mean = mean.index_add(0, run, post) / torch.bincount(run)[:, None].to(post.dtype)
            mean = mean[keep] if bool(keep.any()) else post.mean(0, keepdim=True)
            out.append((mean @ table).to(item.dtype))
        return out

    def ctc_logits(self, frames: torch.Tensor) -> torch.Tensor:
        """(..., D) adapter frames -> (..., V) CTC logits in fp32: ``ctc_scale`` x cosine with every row of
        the LLM's input embedding table (the table is not trained through them)."""
        table = self.llm.get_input_embeddings().weight
        if table.dim() != 2 or table.shape[0] == 0:
            raise ValueError("CTC needs the LLM's input embeddings whole (ZeRO stage <= 2)")
        # the vocabulary-wide matmul in the frames' dtype (bf16 in bf16 training: twice as fast on CPUs with
        # avx512_bf16, and cosines to ~3 digits are plenty for a softmax at scale 20); the result in fp32
        table = F.normalize(table.detach().float(), dim=-1).to(frames.dtype)
        cos = F.normalize(frames, dim=-1) @ table.T
        return self.config.ctc_scale * cos.float()

    def _inputs_embeds(
        self, input_ids, attention_mask, labels, audio_in: dict, padding_side=None, lockstep=False
    ):
        """-> (embeds, mask, labels, audio, silence): text embeddings with each audio item spliced in.

        ``audio_in``: :meth:`audio_tokens`' arguments. ``audio`` is the adapter's output per item (what the
        CTC loss and the classifier read); the LLM reads it through :meth:`compress`. ``silence`` is
        :meth:`_lockstep_silence` (added to the text embeddings) for a batch without audio when ``lockstep``
        is on, else None."""
        text_embeds = self.get_input_embeddings()(
            input_ids.masked_fill(input_ids == self.config.audio_token_id, 0)
        )
        chunks = audio_in.get("audio_chunks")
        audio = self.audio_tokens(**audio_in) if chunks is not None and len(chunks) else []
        silence = None
        if lockstep and not audio:
            silence = self._lockstep_silence(text_embeds, cached=audio_in.get("audio_frames") is not None)
            text_embeds = text_embeds + silence
        embeds, mask, labels = replace_placeholders_and_build_targets(
            input_ids,
            attention_mask,
            text_embeds,
            self.compress(audio),
            self.config.audio_token_id,
            labels,
            padding_side,
        )
        return embeds, mask, labels, audio, silence

    # ---- ranks in lockstep (distributed training only) -------------------------------------------
    # ``forward(..., lockstep=True)``: the training core passes it when data-parallel ranks each draw their
    # own batches (world size > 1). Every loss-computing forward then calls the same modules, forward and
    # backward, whatever its batch holds: ZeRO-3 gathers parameters per module call and ZeRO-2 / DDP reduce
    # every trainable parameter's gradient, so a rank that skipped a module (a text-only batch has no audio, a
    # batch without transcripts no KD teacher) would wait on collectives the others never issue. The remedy is
    # the standard one (nothing in DeepSpeed or FSDP removes the need): run the missing module on a stand-in
    # input and add its output x 0. Off (the default) in single-process training, evaluation and serving.

    def _lockstep_silence(self, like: torch.Tensor, cached: bool = False) -> torch.Tensor:
        """0 x the audio path's output on one silent chunk (a scalar). Added to a text-only batch's LLM
        input (and classifier input), so backward also runs through the first LLM layer and the adapter
        as it does with audio, even when the LLM itself is frozen. ``cached``: the batches read cached encoder
        frames, so no rank runs the encoder and neither does the stand-in."""
        if cached:
            frames = like.new_zeros((1, self.config.stack_factor, self.encoder.hidden_size))
        else:
            frames = self.encoder(like.new_zeros((1, *self.frontend.feature_shape)))
        return 0.0 * self.adapter(frames.to(self.adapter.down.weight.dtype)).sum()

    def _lockstep_teacher(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """A one-token KD teacher input, masked out, for a batch where no example has a text view."""
        ids = input_ids[:, :1]
        return {
            "teacher_input_ids": ids,
            "teacher_attention_mask": torch.ones_like(ids),
            "teacher_labels": torch.full_like(ids, IGNORE_INDEX),
            "kd_mask": torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device),
        }

    @contextlib.contextmanager
    def _adapters_disabled(self):
        """The KD teacher's LLM: the LoRA layers this run trains switched off (the text model before this
        run's changes). Frozen LoRA layers (e.g. stage 1's knowledge under an adapter-only stage 2) stay
        on."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [
            m
            for m in self.llm.modules()
            if isinstance(m, BaseTunerLayer)
            and any(p.requires_grad for n, p in m.named_parameters() if "lora_" in n)
        ]
        for m in layers:
            m.enable_adapters(False)
        try:
            yield
        finally:
            for m in layers:
                m.enable_adapters(True)

    # ---- forward / generate ----------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        audio_chunks: torch.Tensor | None = None,
        audio_chunk_lengths: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        teacher_input_ids: torch.Tensor | None = None,
        teacher_attention_mask: torch.Tensor | None = None,
        teacher_labels: torch.Tensor | None = None,
        kd_mask: torch.Tensor | None = None,
        ctc_labels: torch.Tensor | None = None,
        ctc_label_lengths: torch.Tensor | None = None,
        audio_frames: torch.Tensor | None = None,
        audio_frame_counts: torch.Tensor | None = None,
        lockstep: bool = False,
        **kwargs,
    ) -> SpeechLMOutput:
        """embed (text + spliced audio) -> LLM -> lm_weight x LM CE on ``labels`` + classifier_weight x CE
        (``class_labels``) + kd_weight x KL(text teacher || student) + ctc_weight x CTC(``ctc_labels``). With
        labels and ``lm_weight == kd_weight == 0`` the LLM is not run (``logits`` None). ``lockstep``: every
        batch with labels calls the same modules (see "ranks in lockstep"; set by the training core when world
        size > 1). Audio comes as features (``input_features``, ``audio_chunk_lengths``) or as cached encoder
        frames (``audio_frames``, ``audio_frame_counts``), see :meth:`audio_tokens`. Extra keys trainers carry
        (``num_tokens``) are ignored; generation: :meth:`generate`."""
        lockstep = lockstep and labels is not None
        audio_in = {k: v for k, v in locals().items() if k in AUDIO_KEYS}
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        embeds, mask, labels, audio, silence = self._inputs_embeds(
            input_ids, mask, labels, audio_in, lockstep=lockstep
        )
        logits = None
        if labels is None or self.config.lm_weight > 0 or self.config.kd_weight > 0:
            logits = self.llm_logits(
                mask, None if labels is None else next_targets(labels), inputs_embeds=embeds
            )
        terms = {}  # loss name -> (loss to report or None, lockstep stand-in output x 0 or None)
        if labels is not None and logits is not None:
            terms["lm_loss"] = lm_loss(logits, labels), None
        class_logits = None
        if self.classifier is not None:
            class_logits, terms["cls_loss"] = self._classifier_term(
                input_ids, audio, silence, embeds.dtype, class_labels, lockstep
            )
        if labels is not None and self.config.ctc_weight > 0:
            terms["ctc_loss"] = self._ctc_term(audio, silence, ctc_labels, ctc_label_lengths)
        if labels is not None and self.config.kd_weight > 0:
            teacher = dict(teacher_input_ids=teacher_input_ids, teacher_attention_mask=teacher_attention_mask)
            teacher.update(teacher_labels=teacher_labels, kd_mask=kd_mask)
            terms["kd_loss"] = self._kd_term(logits, labels, input_ids, teacher, lockstep)
        losses = {name: loss for name, (loss, _) in terms.items() if loss is not None}
        zero = sum((s for _, s in terms.values() if s is not None), embeds.new_zeros(()))  # stand-ins x 0
        loss = self._weighted_loss(losses, zero)
        return SpeechLMOutput(
            loss=loss, logits=logits, class_logits=class_logits, labels=labels, attention_mask=mask, **losses
        )

    def llm_logits(self, mask: torch.Tensor, targets: torch.Tensor | None = None, **inputs) -> torch.Tensor:
        """The LLM's next-token logits on ``inputs`` (``input_ids`` or ``inputs_embeds``): (B, L, V) at every
        position, or, with ``targets`` (B, L) bool (:func:`next_targets`), only where the next token is a
        target, (N, V) in row-major order: the LM head (a vocabulary-wide matmul) runs on those alone."""
        if targets is None:
            return self.llm(
                **inputs, attention_mask=mask, position_ids=positions(mask), use_cache=False
            ).logits
        hidden = self.llm.get_decoder()(
            **inputs, attention_mask=mask, position_ids=positions(mask), use_cache=False
        ).last_hidden_state
        return self.llm.get_output_embeddings()(hidden[targets])

    def _weighted_loss(self, losses: dict[str, torch.Tensor], zero: torch.Tensor) -> torch.Tensor | None:
        """lm_weight x LM + classifier_weight x cls + kd_weight x KD + ctc_weight x CTC, + ``zero`` (the
        lockstep stand-ins' outputs x 0); None when the forward computed no loss."""
        if not losses:
            return None
        c = self.config
        return (
            c.lm_weight * losses.get("lm_loss", 0.0)
            + c.classifier_weight * losses.get("cls_loss", 0.0)
            + c.kd_weight * losses.get("kd_loss", 0.0)
            + c.ctc_weight * losses.get("ctc_loss", 0.0)
            + zero
        )

    def _classifier_term(self, input_ids, audio, silence, dtype, class_labels, lockstep):
        """-> (class_logits, (cls_loss, stand-in)): the head on each example's pooled audio embeddings (+ the
        lockstep ``silence``). A batch without spoken examples reports a zero loss; without ``class_labels``,
        under lockstep the logits x 0 keep the head in the graph."""
        pooled = self._pool_audio(input_ids, audio, dtype)
        class_logits = self.classifier(pooled if silence is None else pooled + silence)
        if class_labels is None:
            return class_logits, (None, 0.0 * class_logits.sum() if lockstep else None)
        has_audio = (input_ids == self.config.audio_token_id).any(-1)
        cls = classifier_loss(class_logits, class_labels, has_audio, self.config.num_classes)
        return class_logits, (cls if cls is not None else 0.0 * class_logits.sum(), None)

    def _ctc_term(self, audio, silence, ctc_labels, ctc_label_lengths):
        """-> (ctc_loss, stand-in): :meth:`_ctc_loss`, or, for a batch without a transcript, the audio path's
        output x 0 (the adapter stays in the graph: lockstep, and a loss to backward)."""
        ctc = self._ctc_loss(audio, ctc_labels, ctc_label_lengths) if ctc_labels is not None else None
        if ctc is not None:
            return ctc, None
        return None, silence if silence is not None else 0.0 * sum(a.sum() for a in audio)

    def _kd_term(self, logits, labels, input_ids, teacher: dict, lockstep: bool):
        """-> (kd_loss, stand-in): :meth:`_kd_loss` on the batch's ``teacher_*`` views (under lockstep a
        one-token stand-in when it has none); reported when some example has a view, else only kept in the
        graph."""
        if teacher["teacher_input_ids"] is None and lockstep:
            teacher = self._lockstep_teacher(input_ids)
        if teacher["teacher_input_ids"] is None:
            return None, None
        kd = self._kd_loss(logits, labels, **teacher)
        if teacher["kd_mask"] is None or bool(teacher["kd_mask"].any()):
            return kd, None
        return None, kd

    def _ctc_loss(
        self, audio: list[torch.Tensor], ctc_labels: torch.Tensor, ctc_label_lengths: torch.Tensor
    ) -> torch.Tensor | None:
        """CTC of each audio item's embeddings (n_i, D) against its transcript's tokens; the per-frame logits
        are ``ctc_scale`` x cosine with every row of the LLM's input embedding table (``ctc_blank_id``, the
        token of a space, is the blank). ``ctc_labels``: the items' targets concatenated;
        ``ctc_label_lengths`` (items,): -1 for an item without a transcript. None when no item has one."""
        if self.config.ctc_blank_id is None:
            raise ValueError(
                "ctc_weight > 0 needs config.ctc_blank_id (build the model with medlm.models.build)"
            )
        lengths = ctc_label_lengths.tolist()
        if len(lengths) != len(audio):
            raise ValueError(
                f"ctc_label_lengths has {len(lengths)} items but the batch has {len(audio)} audio items"
            )
        keep = [i for i, n in enumerate(lengths) if n >= 0]
        if not keep:
            return None
        frames = nn.utils.rnn.pad_sequence([audio[i] for i in keep])  # (T, N, D)
        log_probs = self.ctc_logits(frames).log_softmax(-1)
        return F.ctc_loss(
            log_probs,
            ctc_labels.long(),
            torch.tensor([len(audio[i]) for i in keep]),
            torch.tensor([lengths[i] for i in keep]),
            blank=self.config.ctc_blank_id,
            zero_infinity=True,
        )

    def _pool_audio(self, input_ids: torch.Tensor, audio: list[torch.Tensor], dtype) -> torch.Tensor:
        """Mean of each example's audio embeddings (zeros for text-only examples): (B, D)."""
        pooled = torch.zeros(
            (input_ids.shape[0], self.config.text_config.hidden_size), dtype=dtype, device=input_ids.device
        )
        counts = (input_ids == self.config.audio_token_id).sum(-1).tolist()
        start = 0
        for b, n in enumerate(counts):
            if n:
                pooled[b] = torch.cat(audio[start : start + n]).mean(0)
            start += n
        return pooled

    def _kd_loss(
        self, logits, labels, teacher_input_ids, teacher_attention_mask, teacher_labels, kd_mask=None
    ) -> torch.Tensor:
        """KL(teacher || student) on assistant tokens at temperature T (x T^2); teacher = LLM fed the text.

        ``logits``: the student's at its target positions (N, V); ``kd_mask`` (B,) selects the examples that
        have a teacher view (default: all)."""
        if teacher_labels is None:
            raise ValueError("teacher_input_ids given without teacher_labels")
        if teacher_attention_mask is None:
            teacher_attention_mask = torch.ones_like(teacher_input_ids)
        if (teacher_input_ids == self.config.audio_token_id).any():
            raise ValueError("teacher_input_ids must be text only (transcripts in place of audio)")
        with torch.no_grad(), self._adapters_disabled():
            t = self.llm_logits(
                teacher_attention_mask, next_targets(teacher_labels), input_ids=teacher_input_ids
            )
        s = logits  # (N, V) at the student's target positions, row-major
        if kd_mask is not None:  # the targets of the examples that have a teacher view
            targets = next_targets(labels)
            s = s[kd_mask.to(targets.device)[:, None].expand_as(targets)[targets]]
        if s.shape[0] != t.shape[0]:
            raise ValueError(f"student has {s.shape[0]} target tokens but teacher has {t.shape[0]}")
        if s.shape[0] == 0:
            return logits.sum() * 0.0
        temp = self.config.kd_temperature
        return (
            F.kl_div(
                F.log_softmax(s.float() / temp, -1),
                F.log_softmax(t.float() / temp, -1),
                log_target=True,
                reduction="batchmean",
            )
            * temp
            * temp
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        audio_chunks: torch.Tensor | None = None,
        audio_chunk_lengths: torch.Tensor | None = None,
        audio_frames: torch.Tensor | None = None,
        audio_frame_counts: torch.Tensor | None = None,
        **generate_kwargs,
    ) -> torch.Tensor:
        """The LLM's ``generate`` (KV cache) on the spliced embeddings; returns only the new tokens.

        Use left-padded inputs for batches (``SpeechLMProcessor.prepare_generation``).
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if bool((attention_mask[:, -1] == 0).any()):
            raise ValueError("generate needs left padding (use processor.prepare_generation)")
        audio_in = {k: v for k, v in locals().items() if k in AUDIO_KEYS}
        embeds, mask, _, _, _ = self._inputs_embeds(
            input_ids, attention_mask, None, audio_in, padding_side="left"
        )
        for key in (
            "labels",
            "class_labels",
            "num_tokens",
            "teacher_input_ids",
            "teacher_attention_mask",
            "teacher_labels",
        ):
            generate_kwargs.pop(key, None)
        return self.llm.generate(inputs_embeds=embeds, attention_mask=mask, **generate_kwargs)
