"""The FastAPI ingress (OpenAI-compatible API) and the application builder.

Request path: the ingress authenticates, enforces limits, parses and validates the body, decodes audio
(soundfile + soxr -> float32 mono 16 kHz) and then composes the model deployments through handles:

    audio parts --SpeechEncoder.embed (batched)--> adapter-space embeddings (n_i, D)
    messages with embeddings --LLM.generate (continuous batching, LoRA multiplexed by `model`)-->
        streamed text
    reply sentences --Speaker.speak (batched)--> spoken replies (``modalities: ["text", "audio"]``)
    text / embeddings --CTRetriever--> CT search hits / finding scores

``model: cascade`` is the baseline beside the end-to-end model: WhisperTranscriber transcribes the audio
parts and the same LLM answers the transcribed chat.

Every client error is a 4xx JSON body in OpenAI's error format; nothing a client sends can crash a
replica. Audio and transcripts are never logged unless ``log_payloads`` is set.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartParser
from starlette.websockets import WebSocket

from medlm.audio import SAMPLING_RATE
from medlm.serving.audio import decode_audio, decode_base64
from medlm.serving.config import AppArgs, deployment_options
from medlm.serving.defaults import default_ct_index_dir, default_model_dir
from medlm.serving.errors import APIError, as_api_error, unwrap
from medlm.serving.metrics import IngressMetrics
from medlm.serving.realtime import RealtimeSession, api_key, new_id
from medlm.serving.replies import Reply, sentences
from medlm.serving.schemas import (
    AudioOrText,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    CTClassifyRequest,
    CTClassifyResponse,
    CTSearchRequest,
    CTSearchResponse,
    Delta,
    ModelCard,
    ModelList,
    ReplyAudio,
    ResponseMessage,
    Transcription,
    Understanding,
    UnderstandRequest,
    Usage,
    audio_id,
    completion_id,
)
from medlm.serving.tasks import (
    ASR_PROMPT,
    NER_PROMPT,
    SENTIMENT_PROMPT,
    parse_entities,
    parse_sentiment,
    task_messages,
)

if TYPE_CHECKING:
    from medlm.serving.deployments import EncodedAudio

log = logging.getLogger("medlm.serving")

M = TypeVar("M", bound=BaseModel)

# no key needed: health, and the consultation page and its files (they hold nothing; the page asks for it)
PUBLIC_PATHS = {"/healthz", "/"}
PAGE_PREFIX = "/page/"
PAGE_FILES = {
    "index.html": "text/html",
    "page.js": "text/javascript",
    "capture.js": "text/javascript",
    "page.css": "text/css",
}
PAGE_HEADERS = {  # the page runs only its own code and talks only to this server
    "Content-Security-Policy": "default-src 'self'; media-src 'self' blob:; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
CASCADE = "cascade"  # the model id of the ASR -> LLM baseline
# the safety screen's label of the turn: emergency | harmful | none | unscreened
SCREEN_HEADER = "X-Medlm-Screen"
JSON_TYPES = ("application/json",)

api = FastAPI(
    title="medlm",
    description="OpenAI-compatible medical speech LLM API",
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)


# --- errors -------------------------------------------------------------------------------------------------


@api.exception_handler(APIError)
async def _api_error(_: Request, exc: APIError) -> JSONResponse:
    return exc.response()


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return APIError(exc.status_code, str(exc.detail)).response()


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return validation_error(exc.errors()).response()


@api.exception_handler(Exception)
async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.error("internal error: %s", type(exc).__name__)  # no message: it could carry request content
    return APIError(500, "internal server error").response()


def validation_error(errors: list[dict]) -> APIError:
    first = errors[0]
    loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
    detail = "; ".join(
        f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body') or '<body>'}: {e['msg']}"
        for e in errors[:5]
    )
    return APIError(400, f"invalid request: {detail}", param=loc or None, code="invalid_request")


async def retried(call, attempts: int = 3):
    """``await call()``, again when the replica serving it died before answering (Serve routes the next try to
    a live or restarted replica). Only for calls whose effect is their answer:
    nothing has reached the client."""
    for attempt in range(attempts):
        try:
            return await call()
        except RayActorError:
            if attempt == attempts - 1:
                raise
            log.warning("a replica died under a request; retrying (%d/%d)", attempt + 2, attempts)


# --- request parsing ---------------------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes (by header, then while reading)."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise APIError(413, f"request body exceeds {limit} bytes", code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"request body exceeds {limit} bytes", code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def require_content_type(request: Request, accepted: tuple[str, ...]) -> None:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in accepted:
        raise APIError(
            415,
            f"content type {ctype or '(none)'!r} is not supported; send {' or '.join(accepted)}",
            code="unsupported_media_type",
        )


async def parse_json(request: Request, schema: type[M], limit: int) -> M:
    require_content_type(request, JSON_TYPES)
    body = await read_body(request, limit)
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(
            400,
            f"body is not valid JSON: {e.msg if hasattr(e, 'msg') else 'bad encoding'}",
            code="invalid_json",
        ) from None
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise validation_error(e.errors()) from None


async def parse_form(request: Request, body: bytes) -> FormData:
    """A multipart form from an already size-checked body."""

    async def stream() -> AsyncIterator[bytes]:
        yield body

    return await MultiPartParser(request.headers, stream(), max_files=1, max_fields=16).parse()


def sse(payload: BaseModel | str) -> bytes:
    data = payload if isinstance(payload, str) else payload.model_dump_json(exclude_none=True)
    return f"data: {data}\n\n".encode()


@api.middleware("http")
async def _guard(request: Request, call_next) -> Response:
    """Authenticate every route but /healthz, and count requests by route and status in Ray's metrics
    (``medlm.serving.metrics``; never logs bodies)."""
    replica: Ingress = serve.get_replica_context().servable_object
    try:
        replica.authenticate(request)
    except APIError as e:
        response = e.response()
    else:
        response = await call_next(request)
    route = request.url.path if request.url.path in ROUTES else "other"
    replica.metrics.request(route, response.status_code)
    return response


ROUTES = {
    "/",
    "/healthz",
    "/v1/models",
    "/v1/chat/completions",
    "/v1/audio/transcriptions",
    "/v1/understand",
    "/v1/ct/search",
    "/v1/ct/classify",
    "/v1/realtime",
}


def encode_reply(wave: np.ndarray, fmt: str) -> str:
    """A spoken reply (or one sentence of it) as base64 in the requested format."""
    from medlm import audio as audio_io
    from medlm.serving.deployments import REPLY_RATE

    raw = audio_io.pcm16(wave) if fmt == "pcm16" else audio_io.encode(wave, REPLY_RATE, "WAV", "PCM_16")
    return base64.b64encode(raw).decode()


def page_file(name: str) -> Response:
    from importlib.resources import files

    body = (files("medlm.serving") / "page" / name).read_bytes()
    return Response(body, media_type=PAGE_FILES[name], headers=PAGE_HEADERS)


# --- the ingress deployment ------------------------------------------------------------------------------


@serve.deployment  # options: medlm.serving.config.DEPLOYMENTS (applied by build_app)
@serve.ingress(api)
class Ingress:
    def __init__(
        self,
        encoder: DeploymentHandle,
        llm: DeploymentHandle,
        ct: DeploymentHandle | None,
        args: AppArgs,
        asr: DeploymentHandle | None = None,
        speaker: DeploymentHandle | None = None,
    ):
        self.encoder, self.llm, self.ct, self.asr, self.speaker = encoder, llm, ct, asr, speaker
        self.args = args
        self.limits = args.limits
        self.key_digest = (
            bytes.fromhex(args.api_key_sha256) if args.api_key_sha256 else self._key_from_env(args)
        )
        self.metrics = IngressMetrics()
        if args.safety.triage_dir is None:
            log.warning(
                "no safety screen (safety.triage_dir): patient turns are not screened for emergencies"
            )
        self._models: tuple[float, list[str]] = (0.0, [])
        self._voices: list[str] | None = None

    @staticmethod
    def _key_from_env(args: AppArgs) -> bytes:
        key = os.environ.get(args.api_key_env)
        if not key:
            raise RuntimeError(f"no API key: set {args.api_key_env} (or api_key_sha256) for the ingress")
        return hashlib.sha256(key.encode()).digest()

    def authenticate(self, request: Request) -> None:
        """Bearer API key check (constant-time, on the key's SHA-256); run by the middleware for
        every route."""
        if request.url.path in PUBLIC_PATHS or request.url.path.startswith(PAGE_PREFIX):
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        self.check_key(token if scheme.lower() == "bearer" else None)

    def check_key(self, token: str | None) -> None:
        if not token or not token.strip():
            raise APIError(401, "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
        if not hmac.compare_digest(hashlib.sha256(token.strip().encode()).digest(), self.key_digest):
            raise APIError(401, "invalid API key", code="invalid_api_key")

    # --- models ---

    async def model_ids(self) -> list[str]:
        stamp, ids = self._models
        if time.monotonic() - stamp > 30 or not ids:
            ids = await self.llm.model_ids.remote() + ([CASCADE] if self.asr is not None else [])
            self._models = (time.monotonic(), ids)
        return ids

    async def voices(self) -> list[str]:
        """The Speaker's voices, the default first ([] when spoken replies are off)."""
        if self._voices is None:
            self._voices = await self.speaker.voice_names.remote() if self.speaker is not None else []
        return self._voices

    async def check_model(self, model: str | None) -> str:
        if model is None:
            return self.args.served_model_name
        if model not in await self.model_ids():
            raise APIError(404, f"The model '{model}' does not exist", param="model", code="model_not_found")
        return model

    # --- audio ---

    def decode(self, data: str, fmt: str | None, param: str) -> np.ndarray:
        wave = decode_audio(decode_base64(data, param), self.limits.max_audio_seconds, param, fmt)
        self.metrics.audio(len(wave) / SAMPLING_RATE)
        return wave

    async def embed(self, waves: list[np.ndarray]) -> list["EncodedAudio"]:
        """Adapter-space embeddings of each waveform (and its screen label), computed by the (batching)
        SpeechEncoder deployment."""
        return list(await asyncio.gather(*(retried(lambda w=w: self.encoder.embed.remote(w)) for w in waves)))

    async def transcribe_parts(self, waves: list[np.ndarray]) -> list[dict[str, str]]:
        """The cascade's view of audio parts: Whisper's transcripts as text parts."""
        texts = await asyncio.gather(*(retried(lambda w=w: self.asr.transcribe.remote(w)) for w in waves))
        return [{"type": "text", "text": t} for t in texts]

    async def to_model_messages(
        self, req: ChatCompletionRequest, cascade: bool = False
    ) -> tuple[list[dict[str, Any]], str]:
        """API messages -> the model's messages with audio as precomputed embeddings (``audio_embeds`` parts),
        or for the cascade as Whisper transcripts (text parts); and the safety screen's label of the last
        user turn (:meth:`screen`)."""
        if len(req.messages) > self.limits.max_turns:
            raise APIError(
                400,
                f"{len(req.messages)} messages; the limit is {self.limits.max_turns}",
                param="messages",
                code="too_many_turns",
            )
        out, waves, slots, chars = [], [], [], 0
        last_user = max((i for i, m in enumerate(req.messages) if m.role == "user"), default=-1)
        turn_text, turn_waves = [], []  # the last user turn's text and audio (what the screen reads)
        for i, msg in enumerate(req.messages):
            if msg.role == "assistant" and msg.audio is not None and not msg.content:
                raise APIError(
                    400,
                    "a previous spoken reply cannot be referenced by its audio id (the server keeps "
                    "no audio): send the reply's transcript as the assistant message's content",
                    param=f"messages.{i}.audio",
                    code="unsupported_audio_reference",
                )
            if isinstance(msg.content, str) or msg.content is None:
                text = msg.content or ""
                chars += len(text)
                turn_text += [text] if i == last_user else []
                out.append({"role": "system" if msg.role == "developer" else msg.role, "content": text})
                continue
            parts = []
            for j, part in enumerate(msg.content):
                if part.type == "text":
                    chars += len(part.text)
                    parts.append({"type": "text", "text": part.text})
                    turn_text += [part.text] if i == last_user else []
                else:
                    param = f"messages.{i}.content.{j}.input_audio"
                    if len(waves) >= self.limits.max_audio_parts:
                        raise APIError(
                            400,
                            f"more than {self.limits.max_audio_parts} audio inputs",
                            param=param,
                            code="too_many_audio_inputs",
                        )
                    waves.append(self.decode(part.input_audio.data, part.input_audio.format, param))
                    turn_waves += [len(waves) - 1] if i == last_user else []
                    slots.append((len(out), len(parts)))
                    parts.append(None)
            if msg.role != "user":  # system / assistant turns are text
                parts = "".join(p["text"] for p in parts)
            out.append({"role": "system" if msg.role == "developer" else msg.role, "content": parts})
        if chars > self.limits.max_text_chars:
            raise APIError(
                400,
                f"{chars} characters of text; the limit is {self.limits.max_text_chars}",
                param="messages",
                code="too_much_text",
            )
        if cascade:  # the screen still reads the audio itself, not Whisper's transcript
            parts, encoded = await asyncio.gather(
                self.transcribe_parts(waves),
                self.embed([waves[i] for i in turn_waves] if self.screening else []),
            )
        else:
            encoded = await self.embed(waves)
            parts = [{"type": "audio_embeds", "embeds": e.tokens} for e in encoded]
            encoded = [encoded[i] for i in turn_waves]
        for (m, p), part in zip(slots, parts):
            out[m]["content"][p] = part
        return out, await self.screen(" ".join(turn_text), encoded)

    async def encode_turn(self, wave: np.ndarray, cascade: bool = False) -> tuple[dict, str]:
        """One spoken turn as the model reads it (adapter embeddings; for the cascade Whisper's transcript)
        and the screen's label of it (read from the audio itself in both cases)."""
        if cascade:
            (part,), encoded = await asyncio.gather(
                self.transcribe_parts([wave]), self.embed([wave] if self.screening else [])
            )
        else:
            encoded = await self.embed([wave])
            part = {"type": "audio_embeds", "embeds": encoded[0].tokens}
        return part, await self.screen("", encoded)

    @property
    def screening(self) -> bool:
        return self.args.safety.triage_dir is not None

    async def screen(self, text: str, audio: list["EncodedAudio"]) -> str:
        """The safety screen's label of a patient turn: ``emergency`` if any of its parts (the typed text,
        each audio item) is one, else ``harmful`` likewise, else ``none``; ``unscreened`` when the app has no
        screen or the screen failed (it fails open: logged and counted, never a 5xx). Counted by result and
        modality; nothing of the turn is logged."""
        if not self.screening:
            return "unscreened"
        labels = [a.screen for a in audio]
        try:
            if text.strip():
                labels.append(await retried(lambda: self.encoder.screen_text.remote(text)))
        except Exception as e:
            log.warning("safety screen failed (%s): the turn goes on unscreened", type(unwrap(e)).__name__)
            self.metrics.screen_failure()
            return "unscreened"
        result = next((k for k in ("emergency", "harmful") if k in labels), "none")
        modality = "mixed" if audio and text.strip() else "audio" if audio else "text"
        self.metrics.screened(result, modality)
        return result

    def lead(self, screen: str) -> str:
        """What a reply must say first for the screen's label ('' when nothing)."""
        from medlm.models.triage import EMERGENCY_NOTICE, REFUSAL

        number = self.args.safety.emergency_number
        return {"emergency": EMERGENCY_NOTICE, "harmful": REFUSAL}.get(screen, "").format(number=number)

    def token_limit(self, requested: int | None) -> int:
        n = requested or self.limits.default_max_tokens
        if n > self.limits.max_tokens:
            raise APIError(
                400,
                f"max_tokens {n} exceeds the limit of {self.limits.max_tokens}",
                param="max_tokens",
                code="too_many_tokens",
            )
        return n

    # --- generation ---

    def generation(
        self, model: str, messages: list[dict], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0
    ):
        """A streaming call to the LLM deployment (LoRA adapter selected by ``model``)."""
        from medlm.serving.deployments import GenerationRequest

        request = GenerationRequest(
            messages=messages, max_new_tokens=max_tokens, temperature=temperature, top_p=top_p
        )
        if self.args.log_payloads:
            log.info("generation request: %s", messages)
        return self.llm.options(stream=True, multiplexed_model_id=model).generate.remote(request)

    async def complete(
        self, model: str, messages: list[dict], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0
    ) -> tuple[str, str, Usage]:
        """Run a generation to the end: (text, finish_reason, usage); again from the start if the LLM replica
        dies (nothing has been sent yet)."""

        async def run():
            text, finish, usage = [], "stop", None
            async for chunk in self.generation(model, messages, max_tokens, temperature, top_p):
                text.append(chunk.text)
                finish, usage = chunk.finish_reason or finish, chunk.usage or usage
            return text, finish, usage

        try:
            text, finish, usage = await retried(run)
        except Exception as e:
            raise unwrap(e) from None
        self.metrics.tokens(model, usage.completion_tokens if usage else 0)
        return "".join(text), finish, usage or Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)

    async def check_voice(self, req: ChatCompletionRequest) -> None:
        if not req.spoken:
            return
        voices = await self.voices()
        if not voices:
            raise APIError(
                400,
                "spoken replies are not enabled on this server",
                param="modalities",
                code="audio_output_disabled",
            )
        if req.audio.voice not in voices:
            raise APIError(
                400,
                f"unknown voice {req.audio.voice!r}; this server speaks with {voices}",
                param="audio.voice",
                code="invalid_voice",
            )

    async def say(self, sentence: str, voice: str) -> np.ndarray:
        """One sentence spoken by the (batching) Speaker deployment."""
        return await retried(lambda: self.speaker.speak.remote((sentence, voice)))

    async def speak(self, text: str, voice: str) -> np.ndarray:
        """``text`` spoken (sentence by sentence, the sentences in parallel through the batching Speaker)."""
        from medlm.serving.deployments import REPLY_RATE

        waves = await asyncio.gather(*(self.say(t, voice) for t in sentences(text)))
        gap = np.zeros(int(0.15 * REPLY_RATE), dtype=np.float32)
        return np.concatenate([x for w in waves for x in (w, gap)][:-1]) if waves else np.zeros(0, np.float32)

    async def start_reply(
        self,
        served: str,
        messages: list[dict],
        max_tokens: int,
        screen: str,
        temperature: float = 0.0,
        top_p: float = 1.0,
        voice: str | None = None,
    ) -> Reply:
        """A streamed reply (:class:`~medlm.serving.replies.Reply`) once its first token has arrived: errors
        before it still become a 4xx (and a dead replica a retry). What the screen's label makes the reply say
        (:meth:`lead`) comes first; a ``harmful`` turn gets only that. ``voice``: each sentence spoken too."""

        async def start():
            if screen == "harmful":  # refused: nothing is generated
                return None, None
            stream = self.generation(served, messages, max_tokens, temperature, top_p).__aiter__()
            try:
                return stream, await stream.__anext__()
            except StopAsyncIteration:
                return stream, None
            except asyncio.CancelledError:  # the client left (or cancelled) before the first token
                stream.cancel()
                raise

        try:
            chunks, first = await retried(start)
        except Exception as e:
            raise unwrap(e) from None
        say = (lambda sentence: self.say(sentence, voice)) if voice else None
        return Reply(chunks, first, self.lead(screen), say)

    async def stream_chat(
        self,
        req: ChatCompletionRequest,
        model: str,
        served: str,
        messages: list[dict],
        max_tokens: int,
        screen: str = "unscreened",
    ) -> StreamingResponse:
        """SSE chunks as the reply streams (:meth:`start_reply`); a spoken sentence's audio is a
        ``delta.audio`` chunk."""
        spoken = req.audio if req.spoken else None
        reply = await self.start_reply(
            served, messages, max_tokens, screen, req.temperature, req.top_p, spoken and spoken.voice
        )
        cid, created, reply_id = completion_id(), int(time.time()), audio_id()
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def event(delta: Delta, finish: str | None = None, usage: Usage | None = None, choices: bool = True):
            return sse(
                ChatCompletionChunk(
                    id=cid,
                    created=created,
                    model=model,
                    usage=usage,
                    choices=[ChunkChoice(delta=delta, finish_reason=finish)] if choices else [],
                )
            )

        async def events() -> AsyncIterator[bytes]:
            yield event(Delta(role="assistant", content=""))
            try:
                async for piece in reply.pieces():
                    if piece.audio is None:
                        yield event(Delta(content=piece.text))
                        continue
                    data = encode_reply(piece.audio, spoken.format)
                    audio = ReplyAudio(
                        id=reply_id, data=data, transcript=piece.sentence, expires_at=int(time.time())
                    )
                    yield event(Delta(audio=audio))
            except Exception as e:  # the stream has started: report in-band, as OpenAI does
                yield sse(as_api_error(e).body().model_dump_json())
                return
            finally:  # the client went away: stop synthesising and free the request's decode slot now
                reply.close()
            yield event(Delta(), finish=reply.finish)
            if include_usage and reply.usage is not None:
                yield event(Delta(), usage=reply.usage, choices=False)
            self.metrics.tokens(served, reply.usage.completion_tokens if reply.usage else 0)
            yield sse("[DONE]")

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", SCREEN_HEADER: screen},
        )

    # --- routes ---

    @api.get("/healthz")
    async def healthz(self) -> dict:
        """Liveness of the ingress and every model deployment (no auth)."""
        handles = [self.encoder, self.llm] + [h for h in (self.ct, self.asr, self.speaker) if h is not None]
        try:
            await asyncio.wait_for(asyncio.gather(*(h.ready.remote() for h in handles)), timeout=10)
        except Exception:
            raise APIError(503, "a model deployment is not ready", code="not_ready") from None
        return {"status": "ok"}

    @api.get("/", response_model=None)
    async def page(self) -> Response:
        """The consultation page (``medlm/serving/page``: plain HTML + JS over the chat API)."""
        return page_file("index.html")

    @api.get("/page/{name}", response_model=None)
    async def page_asset(self, name: str) -> Response:
        if name not in PAGE_FILES:
            raise APIError(404, "not found", code="not_found")
        return page_file(name)

    @api.get("/v1/models")
    async def list_models(self) -> ModelList:
        asr = [ModelCard(id=self.args.asr_model, kind="transcription")] if self.asr is not None else []
        voices = await self.voices() or None
        return ModelList(data=[ModelCard(id=m, voices=voices) for m in await self.model_ids()] + asr)

    @api.post("/v1/chat/completions", response_model=None)
    async def chat_completions(
        self, request: Request, response: Response
    ) -> ChatCompletion | StreamingResponse:
        req = await parse_json(request, ChatCompletionRequest, self.limits.max_body_bytes)
        model = await self.check_model(req.model)
        served = (
            self.args.served_model_name if model == CASCADE else model
        )  # the cascade's LLM is the same one
        max_tokens = self.token_limit(req.max_completion_tokens or req.max_tokens)
        await self.check_voice(req)
        messages, screen = await self.to_model_messages(req, cascade=model == CASCADE)
        if req.stream:
            return await self.stream_chat(req, model, served, messages, max_tokens, screen)
        response.headers[SCREEN_HEADER] = screen
        if screen == "harmful":  # refused: the LLM never sees the request
            text, finish, usage = (
                self.lead(screen),
                "stop",
                Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0),
            )
        else:
            text, finish, usage = await self.complete(
                served, messages, max_tokens, req.temperature, req.top_p
            )
            text = "\n\n".join(t for t in (self.lead(screen), text) if t)
        audio = None
        if req.spoken and text.strip():
            wave = await self.speak(text, req.audio.voice)
            audio = ReplyAudio(
                id=audio_id(),
                data=encode_reply(wave, req.audio.format),
                transcript=text,
                expires_at=int(time.time()),
            )
        return ChatCompletion(
            model=model,
            usage=usage,
            choices=[Choice(message=ResponseMessage(content=text, audio=audio), finish_reason=finish)],
        )

    @api.websocket("/v1/realtime")
    async def realtime(self, ws: WebSocket, model: str | None = None) -> None:
        """OpenAI's Realtime API (:mod:`medlm.serving.realtime`); the key as for HTTP, or in a browser's
        ``openai-insecure-api-key.<key>`` subprotocol. A refused socket gets an ``error`` event, then close
        1008."""
        await ws.accept(subprotocol="realtime" if "realtime" in ws.scope.get("subprotocols", []) else None)
        try:
            self.check_key(api_key(ws))
            model = await self.check_model(model)
        except APIError as e:
            self.metrics.request("/v1/realtime", e.status)
            error = {"event_id": new_id("event"), "type": "error", "error": e.body().error.model_dump()}
            await ws.send_text(json.dumps(error))
            await ws.close(code=1008, reason=e.message[:120])
            return
        self.metrics.request("/v1/realtime", 101)
        await RealtimeSession(self, ws, model).run()

    @api.post("/v1/audio/transcriptions", response_model=None)
    async def transcriptions(self, request: Request) -> Transcription | PlainTextResponse:
        """OpenAI's multipart upload (``file``, ``model``, ``response_format`` json | text)."""
        require_content_type(request, ("multipart/form-data",))
        body = await read_body(request, self.limits.max_body_bytes)
        try:
            form = await parse_form(request, body)
        except Exception:
            raise APIError(400, "body is not a valid multipart form", code="invalid_form") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise APIError(400, "the form needs an audio 'file' part", param="file", code="missing_file")
        model = str(form.get("model") or self.args.served_model_name)
        baseline = self.asr is not None and model in (self.args.asr_model, CASCADE)
        if not baseline:
            model = await self.check_model(model)
        response_format = str(form.get("response_format") or "json")
        if response_format not in ("json", "text"):
            raise APIError(
                400,
                f"response_format {response_format!r} is not supported (json | text)",
                param="response_format",
                code="invalid_request",
            )
        wave = decode_audio(await upload.read(), self.limits.max_audio_seconds, "file")
        self.metrics.audio(len(wave) / SAMPLING_RATE)
        text = (
            (await retried(lambda: self.asr.transcribe.remote(wave)))
            if baseline
            else await self.transcribe(model, wave)
        )
        return PlainTextResponse(text) if response_format == "text" else Transcription(text=text)

    async def transcribe(self, model: str, wave: np.ndarray) -> str:
        (emb,) = await self.embed([wave])
        messages = task_messages(ASR_PROMPT, {"type": "audio_embeds", "embeds": emb.tokens})
        text, _, _ = await self.complete(model, messages, self.limits.default_max_tokens)
        return text.strip()

    @api.post("/v1/understand")
    async def understand(self, request: Request) -> Understanding:
        """Medical entities + sentiment of a spoken or written utterance (two task prompts,
        answered in parallel)."""
        req = await parse_json(request, UnderstandRequest, self.limits.max_body_bytes)
        model = await self.check_model(req.model)
        if req.audio is not None:
            wave = self.decode(req.audio.data, req.audio.format, "audio.data")
            (emb,) = await self.embed([wave])
            content: dict | str = {"type": "audio_embeds", "embeds": emb.tokens}
        else:
            content = self.check_text(req.text)
        (ner, _, _), (sentiment, _, _) = await asyncio.gather(
            self.complete(model, task_messages(NER_PROMPT, content), self.limits.default_max_tokens),
            self.complete(model, task_messages(SENTIMENT_PROMPT, content), 8),
        )
        return Understanding(model=model, entities=parse_entities(ner), sentiment=parse_sentiment(sentiment))

    def check_text(self, text: str) -> str:
        if len(text) > self.limits.max_text_chars:
            raise APIError(
                400,
                f"text longer than {self.limits.max_text_chars} characters",
                param="text",
                code="too_much_text",
            )
        return text

    def ct_handle(self) -> DeploymentHandle:
        if self.ct is None:
            raise APIError(404, "CT retrieval is not enabled on this server", code="not_enabled")
        return self.ct

    async def ct_call(self, method: str, *args):
        try:
            return await getattr(self.ct_handle(), method).remote(*args)
        except RayTaskError as e:
            raise unwrap(e) from None

    def ct_query(self, req: AudioOrText) -> tuple[str, Any]:
        """('text', str) or ('audio', waveform): the CT speech student embeds speech itself."""
        if req.text is not None:
            return "text", self.check_text(req.text)
        return "audio", self.decode(req.audio.data, req.audio.format, "audio.data")

    @api.post("/v1/ct/search")
    async def ct_search(self, request: Request) -> CTSearchResponse:
        """The CT volumes closest to a spoken or written report."""
        req = await parse_json(request, CTSearchRequest, self.limits.max_body_bytes)
        self.ct_handle()
        kind, query = self.ct_query(req)
        return CTSearchResponse(results=await self.ct_call("search", kind, query, req.k))

    @api.post("/v1/ct/classify")
    async def ct_classify(self, request: Request) -> CTClassifyResponse:
        """Zero-shot finding scores for a spoken or written report."""
        req = await parse_json(request, CTClassifyRequest, self.limits.max_body_bytes)
        self.ct_handle()
        kind, query = self.ct_query(req)
        return CTClassifyResponse(scores=await self.ct_call("classify", kind, query, req.labels))


# --- the application ----------------------------------------------------------------------------------------


def build_app(args: AppArgs | dict) -> serve.Application:
    """The Serve application (``serve run serve/config.yaml`` calls this with the config's ``args``)."""
    from medlm.serving.deployments import LLM, CTRetriever, Speaker, SpeechEncoder, WhisperTranscriber

    args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    shape = deployment_options(args)  # the one source of the deployments' options (serve/config.yaml's too)
    encoder = SpeechEncoder.options(**shape["SpeechEncoder"]).bind(
        args.model_dir, args.encoder_batching, args.safety.triage_dir
    )
    llm = LLM.options(**shape["LLM"]).bind(
        args.model_dir, args.served_model_name, args.adapters_dir, args.llm_batching
    )
    ct = CTRetriever.options(**shape["CTRetriever"]).bind(args.ct_index_dir) if args.ct_index_dir else None
    asr = (
        WhisperTranscriber.options(**shape["WhisperTranscriber"]).bind(args.asr_model, args.asr_batching)
        if args.asr_model
        else None
    )
    speaker = (
        Speaker.options(**shape["Speaker"]).bind(args.speech, args.speaker_batching)
        if args.speech.enabled
        else None
    )
    return Ingress.options(**shape["Ingress"]).bind(encoder, llm, ct, args, asr, speaker)


def run_local(model_dir: str | None, port: int, api_key: str, **overrides: Any) -> str:
    """Start the app on the connected Ray (HTTP on 127.0.0.1:``port``); returns the base URL (``.../v1``).

    ``model_dir=None`` serves the embedded defaults (``default_model_dir``: the real preset when the model
    store has it, else the tiny one; + a tiny CT index; exported locally once).
    ``overrides`` are further ``AppArgs`` fields (``adapters_dir``, ``ct_index_dir``, ``limits``, ...).
    """
    if model_dir is None:  # embedded defaults: exports served like any other export
        model_dir = default_model_dir()
        overrides.setdefault("ct_index_dir", default_ct_index_dir())
    from medlm.models.pretrained import is_fetched

    if is_fetched(
        "whisper-tiny.en", verify=False
    ):  # the ASR baseline beside the SpeechLM, from the model store
        overrides.setdefault("asr_model", "whisper-tiny.en")
    args = AppArgs(
        model_dir=model_dir, api_key_sha256=hashlib.sha256(api_key.encode()).hexdigest(), **overrides
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(args), name="medlm", route_prefix="/", blocking=False)
    _wait_healthy(f"http://127.0.0.1:{port}/healthz")
    return f"http://127.0.0.1:{port}/v1"


def _wait_healthy(url: str, timeout: float = 300.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not become healthy within {timeout:.0f}s")
