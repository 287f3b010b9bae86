"""Request / response schemas of the HTTP API (OpenAI's shapes where a convention exists).

Requests ignore unknown top-level fields (as OpenAI's API does) but content parts are strict:
a part is ``text`` or ``input_audio`` and nothing else.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Request(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


# --- chat completions ------------------------------------------------------------------------------


class TextPart(Strict):
    type: Literal["text"]
    text: str


class InputAudio(Strict):
    data: str = Field(description="base64-encoded audio file")
    format: Literal["wav", "flac"]


class InputAudioPart(Strict):
    type: Literal["input_audio"]
    input_audio: InputAudio


ContentPart = Annotated[TextPart | InputAudioPart, Field(discriminator="type")]


class SystemMessage(Strict):
    role: Literal["system", "developer"]
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(Strict):
    role: Literal["user"]
    content: str | list[ContentPart]
    name: str | None = None


class AudioReference(Strict):
    id: str


class AssistantMessage(Strict):
    role: Literal["assistant"]
    content: str | list[TextPart] | None = None
    audio: AudioReference | None = Field(
        default=None,
        description=(
            "a previous spoken reply by id: not supported (the server keeps no audio); "
            "send its transcript as content"
        ),
    )
    name: str | None = None


Message = Annotated[SystemMessage | UserMessage | AssistantMessage, Field(discriminator="role")]


class StreamOptions(Request):
    include_usage: bool = False


class AudioOutput(Strict):
    """How a spoken reply sounds and is encoded: ``wav`` (16-bit, 24 kHz; streamed as one WAV file per
    sentence) or ``pcm16`` (raw little-endian 16-bit mono at 24 kHz; streamed chunks concatenate)."""

    voice: str
    format: Literal["wav", "pcm16"] = "wav"


class ChatCompletionRequest(Request):
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    audio: AudioOutput | None = None

    @model_validator(mode="after")
    def _last_turn_is_user(self) -> ChatCompletionRequest:
        if self.messages[-1].role != "user":
            raise ValueError("the last message must be a user message")
        return self

    @model_validator(mode="after")
    def _audio_out_is_configured(self) -> ChatCompletionRequest:
        if self.spoken and self.audio is None:
            raise ValueError("modalities include 'audio': give the 'audio' parameter (voice and format)")
        if self.audio is not None and not self.spoken:
            raise ValueError(
                "'audio' is given but modalities do not include 'audio' (use [\"text\", \"audio\"])"
            )
        return self

    @property
    def spoken(self) -> bool:
        return "audio" in (self.modalities or ())

    def token_limit(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ReplyAudio(BaseModel):
    """A spoken reply (or, streamed, one sentence of it). The server keeps no audio: ``expires_at`` is the
    time of the response and the ``id`` cannot be referenced later."""

    id: str
    data: str = Field(description="base64 audio in the requested format")
    transcript: str
    expires_at: int


def audio_id() -> str:
    return f"audio_{uuid.uuid4().hex}"


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    audio: ReplyAudio | None = None


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: Literal["stop", "length"]


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


class ChatCompletion(BaseModel):
    id: str = Field(default_factory=completion_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    audio: ReplyAudio | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


# --- transcription / understanding -----------------------------------------------------------------


class Transcription(BaseModel):
    text: str


class AudioOrText(Request):
    """A spoken input (``audio``) or a written one (``text``); exactly one of them."""

    model: str | None = None
    audio: InputAudio | None = None
    text: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self):
        if (self.audio is None) == (self.text is None):
            raise ValueError("give exactly one of 'audio' or 'text'")
        return self


class UnderstandRequest(AudioOrText):
    pass


class Entity(BaseModel):
    text: str
    label: str


class Understanding(BaseModel):
    model: str
    entities: list[Entity]
    sentiment: Literal["positive", "neutral", "negative"] | None = Field(
        description="null when the model's answer named no sentiment"
    )


# --- CT retrieval ------------------------------------------------------------------------------------


class CTSearchRequest(AudioOrText):
    k: int = Field(default=5, ge=1, le=100)


class CTHit(BaseModel):
    id: str
    score: float


class CTSearchResponse(BaseModel):
    results: list[CTHit]


class CTClassifyRequest(AudioOrText):
    labels: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="candidate findings; the index's default label set when omitted",
    )


class LabelScore(BaseModel):
    label: str
    score: float


class CTClassifyResponse(BaseModel):
    scores: list[LabelScore]


# --- models / errors ---------------------------------------------------------------------------------


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "medlm"
    voices: list[str] | None = Field(default=None, description="voices of spoken replies (chat models)")
    kind: Literal["chat", "transcription"] = Field(
        default="chat", description="chat: /v1/chat/completions; transcription: /v1/audio/transcriptions only"
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
