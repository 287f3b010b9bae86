"""CT-CLIP teacher (CTViT-like 3D encoder + a text encoder) and the SpeechCT-CLIP speech student.

Picture::

    volume (1, D, H, W) --Conv3d patches (tp x p x p)--> [spatial attention per slice group,
        temporal attention per patch column] x L --mean--> Linear --> image latent     (teacher)
    report tokens (whole, or each sentence alone) --text encoder (BERT, or a decoder such as SmolLM2)
        [--TextAdapter]--> CLS (or masked mean) --> Linear --> text latent           (teacher)
    spoken report --log-mel chunks--> speech encoder --masked mean--> Linear --> speech latent  (student)

All latents are L2-normalised; similarities are scaled by a learned temperature (CLIP's logit_scale).
Both models are ``PreTrainedModel``s: ``save_pretrained(dir)`` / ``from_pretrained(dir)``.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from medlm.ct.preprocess import speech_features
from medlm.models.encoder import AudioFrontend, build_audio_encoder
from medlm.models.modeling import as_config

# CTViT shapes by preset. ``full`` is CT-CLIP's (dim 512, image 480, patch 20, temporal patch 10, 4+4 layers).
CTVIT_PRESETS: dict[str, dict] = {
    "tiny": dict(
        volume_shape=(16, 32, 32),
        patch_size=8,
        temporal_patch_size=4,
        dim=64,
        spatial_layers=1,
        temporal_layers=1,
        heads=4,
    ),
    "small": dict(
        volume_shape=(48, 96, 96),
        patch_size=12,
        temporal_patch_size=6,
        dim=192,
        spatial_layers=2,
        temporal_layers=2,
        heads=6,
    ),
    "full": dict(
        volume_shape=(240, 480, 480),
        patch_size=20,
        temporal_patch_size=10,
        dim=512,
        spatial_layers=4,
        temporal_layers=4,
        heads=8,
    ),
}
# Text encoder shapes (BERT) by preset; ``full`` is CXR-BERT's (BERT-base) shape, normally loaded from
# text_path.
TEXT_PRESETS: dict[str, dict] = {
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=512,
    ),
    "small": dict(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        max_position_embeddings=512,
    ),
    "full": dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
    ),
}


def text_model_kwargs(config: PretrainedConfig) -> dict:
    """``AutoModel`` kwargs for a text encoder config: BERT-likes drop their pooler
    (``add_pooling_layer=False``); other models (e.g. a decoder such as SmolLM2's ``LlamaModel``) take no such
    argument."""
    import inspect

    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        cls = MODEL_MAPPING[type(config)]
    except KeyError:
        return {}
    return (
        {"add_pooling_layer": False}
        if "add_pooling_layer" in inspect.signature(cls.__init__).parameters
        else {}
    )


def clip_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between L2-normalised embeddings ``a[i]`` <-> ``b[i]`` (pairs on the diagonal)."""
    logits = logit_scale.exp() * a @ b.t()
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """KL(teacher || student) of the similarity distributions, both ways (rows: query -> volumes, and
    columns)."""
    t = temperature
    loss = 0.0
    for s_l, t_l in ((student_logits, teacher_logits), (student_logits.t(), teacher_logits.t())):
        loss = (
            loss
            + F.kl_div(
                F.log_softmax(s_l / t, -1), F.log_softmax(t_l / t, -1), log_target=True, reduction="batchmean"
            )
            * t
            * t
        )
    return loss / 2


# --- CT encoder ---------------------------------------------------------------------------------


class CTViT(nn.Module):
    """3D patch transformer with factorised attention (CTViT-like): spatial within each slab, temporal along
    depth."""

    def __init__(
        self,
        volume_shape,
        patch_size: int,
        temporal_patch_size: int,
        dim: int,
        spatial_layers: int,
        temporal_layers: int,
        heads: int,
    ):
        super().__init__()
        d, h, w = volume_shape
        if h % patch_size or w % patch_size or d % temporal_patch_size:
            raise ValueError(
                f"volume_shape {tuple(volume_shape)} must be divisible by the patch sizes "
                f"({temporal_patch_size}, {patch_size}, {patch_size})"
            )
        self.grid = (d // temporal_patch_size, h // patch_size, w // patch_size)
        self.patch = nn.Conv3d(
            1,
            dim,
            kernel_size=(temporal_patch_size, patch_size, patch_size),
            stride=(temporal_patch_size, patch_size, patch_size),
        )
        self.spatial_pos = nn.Parameter(torch.zeros(1, self.grid[1] * self.grid[2], dim))
        self.temporal_pos = nn.Parameter(torch.zeros(1, self.grid[0], dim))
        nn.init.normal_(self.spatial_pos, std=0.02)
        nn.init.normal_(self.temporal_pos, std=0.02)

        def layer():
            return nn.TransformerEncoderLayer(
                dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
            )

        self.spatial = nn.ModuleList(layer() for _ in range(spatial_layers))
        self.temporal = nn.ModuleList(layer() for _ in range(temporal_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W) preprocessed volume -> (B, dim) pooled features."""
        x = self.patch(volume.unsqueeze(1))  # (B, C, t, h, w)
        b, c, t, h, w = x.shape
        x = x.permute(0, 2, 3, 4, 1).reshape(b * t, h * w, c) + self.spatial_pos
        for blk in self.spatial:
            x = blk(x)
        x = x.reshape(b, t, h * w, c).transpose(1, 2).reshape(b * h * w, t, c) + self.temporal_pos
        for blk in self.temporal:
            x = blk(x)
        return self.norm(x.reshape(b, h * w * t, c).mean(1))


# --- teacher ------------------------------------------------------------------------------------

SENTENCE_BREAK = re.compile(r"(?<=[.!?:])\s+")


def text_inputs(tokenizer, texts: list[str], max_length: int = 512, per_sentence: bool = False) -> dict:
    """``texts`` tokenized for :meth:`CTClipModel.encode_text`. ``per_sentence``: every sentence is a
    sequence of its own and ``text_index`` says whose text it is, so that the encoder sees each sentence alone
    (see ``CTClipModelConfig.text_per_sentence``); ``max_length`` then bounds each sentence."""

    def tokens(batch: list[str]) -> dict:
        enc = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    if not per_sentence:
        return tokens(texts)
    sentences, owner = [], []
    for i, text in enumerate(texts):
        parts = split_sentences(text)
        sentences += parts
        owner += [i] * len(parts)
    return {**tokens(sentences), "text_index": torch.tensor(owner)}


def split_sentences(text: str) -> list[str]:
    """A report's sentences (and headings such as "Findings:"), in order."""
    return [p for p in SENTENCE_BREAK.split(text.strip()) if p] or [text]


def pad_text_states(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpadded (T_i, hidden) text states -> right-padded (B, T, hidden) states and their (B, T) attention
    mask, as ``CTClipModel.encode_text(text_states=..., attention_mask=...)`` takes them."""
    mask = torch.zeros(len(seqs), max(len(x) for x in seqs), dtype=torch.long, device=seqs[0].device)
    for i, x in enumerate(seqs):
        mask[i, : len(x)] = 1
    return nn.utils.rnn.pad_sequence(seqs, batch_first=True), mask


class TextAdapter(nn.Module):
    """A small trained transformer over a (frozen) text encoder's token states, LiT-style: a linear map of
    pooled states barely learns that "X is not present." means the opposite of "X is present." (frozen
    SmolLM2 with perfect image features, ``bench/ct_text_oracle.py``: zero-shot AUROC 0.75 mean-pool + linear,
    0.81 with a 2-layer adapter; BENCHMARKS.md), while attention over the tokens can learn which finding a
    sentence is about and whether it is negated. Bidirectional, so a decoder's early tokens see the rest."""

    def __init__(self, in_dim: int, dim: int = 128, layers: int = 2, heads: int = 4):
        super().__init__()
        self.inp = nn.Linear(in_dim, dim)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.inp(states), src_key_padding_mask=attention_mask == 0)


class CTClipModelConfig(PretrainedConfig):
    model_type = "medlm_ct_clip"

    def __init__(
        self,
        vision: dict | None = None,
        text_config=None,
        latent_dim: int = 512,
        text_pooling: str = "cls",
        init_logit_scale: float = math.log(1 / 0.07),
        text_trainable: bool = True,
        text_adapter_layers: int = 0,
        text_adapter_dim: int = 128,
        text_per_sentence: bool = False,
        **kwargs,
    ):
        self.vision = dict(vision or CTVIT_PRESETS["tiny"])
        self.vision["volume_shape"] = tuple(self.vision["volume_shape"])
        self.text_config = as_config(text_config)
        if text_pooling not in ("cls", "mean"):
            raise ValueError(f"text_pooling must be 'cls' or 'mean', got {text_pooling!r}")
        self.latent_dim = latent_dim
        self.text_pooling = text_pooling
        self.init_logit_scale = init_logit_scale
        self.text_trainable = text_trainable  # False: the text encoder is frozen (only text_proj trains)
        self.text_adapter_layers = (
            text_adapter_layers  # > 0: a small trained transformer over the text states
        )
        self.text_adapter_dim = text_adapter_dim
        # True: the text encoder reads each sentence on its own (``text_inputs(per_sentence=True)``) and a
        # report's states are its sentences' states in order. A decoder's states for "X is present." then do
        # not depend on what came before it, so a one-sentence zero-shot prompt is encoded as the same
        # sentence in a report is.
        self.text_per_sentence = text_per_sentence
        super().__init__(**kwargs)

    def to_dict(self):
        out = super().to_dict()
        if self.text_config is not None:
            out["text_config"] = self.text_config.to_dict()
        return out


class CTClipModel(PreTrainedModel):
    """Text-image CLIP over CT volumes: ``encode_volume``, ``encode_text``, ``forward`` -> InfoNCE loss."""

    config_class = CTClipModelConfig
    base_model_prefix = "ct_clip"
    main_input_name = "volume"

    def __init__(self, config: CTClipModelConfig, text_model: PreTrainedModel | None = None):
        super().__init__(config)
        if config.text_config is None:
            raise ValueError("CTClipModelConfig needs a text_config")
        self.visual = CTViT(**config.vision)
        self.text = (
            text_model
            if text_model is not None
            else AutoModel.from_config(config.text_config, **text_model_kwargs(config.text_config))
        )
        if not config.text_trainable:
            self.text.requires_grad_(False)
        self.visual_proj = nn.Linear(config.vision["dim"], config.latent_dim, bias=False)
        hidden = config.text_config.hidden_size
        self.text_adapter = (
            TextAdapter(hidden, config.text_adapter_dim, config.text_adapter_layers)
            if config.text_adapter_layers
            else None
        )
        self.text_proj = nn.Linear(
            config.text_adapter_dim if self.text_adapter else hidden, config.latent_dim, bias=False
        )
        self.logit_scale = nn.Parameter(
            torch.full((1,), float(config.init_logit_scale))
        )  # 1-D: DeepSpeed broadcasts bytes
        self.post_init()

    def _init_weights(self, module):  # sub-modules initialise themselves
        pass

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        model = super().from_pretrained(*args, **kwargs)
        if not model.config.text_trainable:  # loading materialises fresh parameters: freeze them again
            model.text.requires_grad_(False)
        return model

    def encode_volume(self, volume: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual_proj(self.visual(volume)), dim=-1)

    def text_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, text_index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The text encoder's last hidden states and their mask, (B, T, hidden) and (B, T); with
        ``text_index`` (:func:`text_inputs` per sentence) each text's sentences' states are joined in order. A
        frozen encoder's are the same every epoch, so training computes them once per report, or per sentence,
        and passes them as ``encode_text(text_states=...)``."""
        states = self.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if text_index is None:
            return states, attention_mask
        keep = attention_mask.bool()
        return pad_text_states(
            [
                torch.cat([states[j][keep[j]] for j in torch.nonzero(text_index == i)[:, 0]])
                for i in range(int(text_index.max()) + 1)
            ]
        )

    def pool_text(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Text states -> (B, d) before ``text_proj``: through the adapter (if any), then CLS or the masked
        mean (the choice for decoders such as SmolLM2, whose first token sees nothing)."""
        if self.text_adapter is not None:
            states = self.text_adapter(states.to(self.text_proj.weight.dtype), attention_mask)
        if self.config.text_pooling == "cls":
            return states[:, 0]
        m = attention_mask.unsqueeze(-1).to(states.dtype)
        return (states * m).sum(1) / m.sum(1).clamp(min=1)

    def encode_text(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        text_states: torch.Tensor | None = None,
        text_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:func:`text_inputs` (or precomputed :meth:`text_states` + their mask) -> (B, latent)."""
        if text_states is None:
            text_states, attention_mask = self.text_states(input_ids, attention_mask, text_index)
        pooled = self.pool_text(text_states, attention_mask)
        return F.normalize(self.text_proj(pooled.to(self.text_proj.weight.dtype)), dim=-1)

    def forward(
        self,
        volume: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        text_states: torch.Tensor | None = None,
        text_index: torch.Tensor | None = None,
        **_,
    ):
        """Returns ``(loss, image_embeds, text_embeds)``."""
        img = self.encode_volume(volume)
        txt = self.encode_text(input_ids, attention_mask, text_states, text_index)
        self.logit_scale.data.clamp_(0, math.log(100))
        return clip_loss(txt, img, self.logit_scale), img, txt


# --- student ------------------------------------------------------------------------------------


class SpeechCTConfig(PretrainedConfig):
    model_type = "medlm_speech_ct"

    def __init__(
        self,
        encoder_config=None,
        latent_dim: int = 512,
        audio_window_seconds: float = 20.0,
        init_logit_scale: float = math.log(1 / 0.07),
        **kwargs,
    ):
        self.encoder_config = as_config(encoder_config)
        self.latent_dim = latent_dim
        self.audio_window_seconds = audio_window_seconds
        self.init_logit_scale = init_logit_scale
        super().__init__(**kwargs)

    def to_dict(self):
        out = super().to_dict()
        if self.encoder_config is not None:
            out["encoder_config"] = self.encoder_config.to_dict()
        return out


class SpeechCTModel(PreTrainedModel):
    """The speech student: ``medlm.models`` audio encoder -> masked mean over frames -> projection to the
    latent."""

    config_class = SpeechCTConfig
    base_model_prefix = "speech_ct"
    main_input_name = "input_features"

    def __init__(self, config: SpeechCTConfig, encoder: nn.Module | None = None):
        super().__init__(config)
        if config.encoder_config is None:
            raise ValueError("SpeechCTConfig needs an encoder_config")
        self.encoder = encoder if encoder is not None else build_audio_encoder(config.encoder_config)
        self.proj = nn.Linear(self.encoder.hidden_size, config.latent_dim, bias=False)
        self.logit_scale = nn.Parameter(
            torch.full((1,), float(config.init_logit_scale))
        )  # 1-D: DeepSpeed broadcasts bytes
        self.frontend = AudioFrontend(config.encoder_config, config.audio_window_seconds)
        self.post_init()

    def _init_weights(self, module):
        pass

    def featurize(self, waveforms) -> dict:
        """16 kHz mono waveforms -> numpy inputs of :meth:`encode_speech`."""
        return speech_features(self.frontend, waveforms)

    def encode_speech(
        self, input_features: torch.Tensor, frame_mask: torch.Tensor, chunks: torch.Tensor
    ) -> torch.Tensor:
        """Chunks (N, mels, frames) of ``len(chunks)`` items -> (B, latent) L2-normalised embeddings."""
        frames = self.encoder(input_features)  # (N, T, d)
        mask = frame_mask[:, : frames.shape[1]].to(frames.dtype).unsqueeze(-1)
        item = torch.repeat_interleave(torch.arange(len(chunks), device=frames.device), chunks)
        sums = frames.new_zeros(len(chunks), frames.shape[-1]).index_add_(0, item, (frames * mask).sum(1))
        counts = frames.new_zeros(len(chunks)).index_add_(0, item, mask.sum((1, 2)))
        pooled = sums / counts.clamp(min=1).unsqueeze(-1)
        return F.normalize(self.proj(pooled), dim=-1)

    def forward(self, input_features, frame_mask, chunks, **_):
        return self.encode_speech(input_features, frame_mask, chunks)


def build_text_tokenizer(text_path: str | None = None):
    """The teacher's tokenizer: the text encoder's own (``text_path``) or the preset byte-level BPE."""
    if text_path:
        from transformers import AutoTokenizer

        from medlm.storage import local_copy

        return AutoTokenizer.from_pretrained(local_copy(text_path))
    from medlm.models.tokenizer import build_byte_tokenizer

    return build_byte_tokenizer()


AutoConfig.register(CTClipModelConfig.model_type, CTClipModelConfig, exist_ok=True)
AutoModel.register(CTClipModelConfig, CTClipModel, exist_ok=True)
AutoConfig.register(SpeechCTConfig.model_type, SpeechCTConfig, exist_ok=True)
AutoModel.register(SpeechCTConfig, SpeechCTModel, exist_ok=True)
