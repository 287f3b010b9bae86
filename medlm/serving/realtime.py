"""OpenAI's Realtime API at ``/v1/realtime`` (GA event shapes): the subset a push-to-talk voice agent needs.

Client events: ``session.update`` (instructions, voice, output modalities, audio formats),
``input_audio_buffer.append`` / ``.commit`` / ``.clear``, ``conversation.item.create`` (text turns),
``response.create`` / ``response.cancel``. Server events: ``session.created`` / ``.updated``,
``input_audio_buffer.committed`` / ``.cleared``, ``conversation.item.created``, ``response.created``,
``response.output_text.delta`` (text replies), ``response.output_audio.delta`` (pcm16, 24 kHz) with
``response.output_audio_transcript.delta`` (spoken replies), ``response.done`` (with usage) and ``error``: a
bad event gets an ``error`` and the socket stays open.

Audio is ``audio/pcm`` at 24 kHz, as in OpenAI's API; turns are push-to-talk (no server VAD). A committed
spoken turn is encoded once (the SpeechEncoder's adapter embeddings, or Whisper's transcript for
``model=cascade``) and screened like a chat turn; the conversation lives in the socket's memory only and goes
with it. Replies stream through the same :class:`~medlm.serving.replies.Reply` as the chat API's. Limits
(``Limits``): one message's size, a turn's seconds (``max_audio_seconds``), the items a reply reads
(``max_turns``, oldest dropped), the session's length, an idle timeout, and bad messages in a row before the
server closes (code 1008).
"""

import asyncio
import base64
import binascii
import json
import secrets
import time
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from medlm import audio as audio_io
from medlm.serving.errors import APIError, as_api_error

RATE = 24000  # audio/pcm in both directions (OpenAI's only pcm rate)
KEY_PROTOCOL = "openai-insecure-api-key."  # the subprotocol a browser can send its key in
CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_NORMAL = 1008, 1009, 1000


class Event(BaseModel):
    model_config = ConfigDict(extra="ignore")
    event_id: str | None = None


class AudioFormat(BaseModel):
    type: Literal["audio/pcm"] = "audio/pcm"
    rate: Literal[24000] = RATE


class AudioInput(BaseModel):
    model_config = ConfigDict(extra="ignore")
    format: AudioFormat | None = None
    turn_detection: None = None  # push-to-talk only: the client commits each turn


class AudioOutput(BaseModel):
    model_config = ConfigDict(extra="ignore")
    format: AudioFormat | None = None
    voice: str | None = None


class AudioConfig(BaseModel):
    input: AudioInput | None = None
    output: AudioOutput | None = None


Modalities = Annotated[list[Literal["text", "audio"]], Field(min_length=1, max_length=1)]


class SessionConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["realtime"] | None = None
    instructions: str | None = None
    output_modalities: Modalities | None = None
    audio: AudioConfig | None = None
    max_output_tokens: int | Literal["inf"] | None = None


class SessionUpdate(Event):
    type: Literal["session.update"]
    session: SessionConfig


class AudioAppend(Event):
    type: Literal["input_audio_buffer.append"]
    audio: str


class AudioCommit(Event):
    type: Literal["input_audio_buffer.commit"]


class AudioClear(Event):
    type: Literal["input_audio_buffer.clear"]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["input_text", "output_text", "text"]
    text: str


class MessageItem(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str | None = None
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system"]
    content: list[ContentPart] = Field(min_length=1)


class ItemCreate(Event):
    type: Literal["conversation.item.create"]
    item: MessageItem


class ResponseOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    instructions: str | None = None
    output_modalities: Modalities | None = None
    max_output_tokens: int | Literal["inf"] | None = None
    audio: AudioConfig | None = None


class ResponseCreate(Event):
    type: Literal["response.create"]
    response: ResponseOptions = ResponseOptions()


class ResponseCancel(Event):
    type: Literal["response.cancel"]
    response_id: str | None = None


ClientEvent = TypeAdapter(
    Annotated[
        SessionUpdate | AudioAppend | AudioCommit | AudioClear | ItemCreate | ResponseCreate | ResponseCancel,
        Field(discriminator="type"),
    ]
)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def api_key(ws: WebSocket) -> str | None:
    """The key of a socket: ``Authorization: Bearer <key>`` or a browser's ``openai-insecure-api-key.<key>``
    subprotocol. (Not a query parameter: URLs end up in access logs.)"""
    scheme, _, token = ws.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    keys = [p[len(KEY_PROTOCOL) :] for p in ws.scope.get("subprotocols", []) if p.startswith(KEY_PROTOCOL)]
    return keys[0] if keys else None


class Closed(Exception):
    """The socket is done (the client left, or the server closed it)."""


class Turn:
    """One conversation item: the API's view (``item``), the model's message (``message``) and, for a user
    turn, the safety screen's label."""

    def __init__(self, item: dict, message: dict, screen: str = "none"):
        self.item, self.message, self.screen = item, message, screen
        content = message["content"]
        self.chars = len(content) if isinstance(content, str) else 0
        self.audio = 0 if isinstance(content, str) else 1


class RealtimeSession:
    """One socket's session: its settings, its conversation, its input buffer and the response in flight."""

    def __init__(self, ingress: Any, ws: WebSocket, model: str):
        """``ingress``: the app's ``Ingress`` replica (medlm.serving.app, which imports this module), whose
        model calls, screen and limits the session uses."""
        self.ingress, self.ws, self.model = ingress, ws, model
        self.limits = ingress.limits
        self.id = new_id("sess")
        self.instructions = ""
        self.modalities: list[str] = ["text"]
        self.voice: str | None = None
        self.max_output_tokens: int = ingress.limits.default_max_tokens
        self.turns: list[Turn] = []
        self.buffer = bytearray()
        self.response: asyncio.Task | None = None
        self.response_id: str | None = None
        self.bad = 0  # consecutive bad messages
        self.closed = False
        self.deadline = time.monotonic() + self.limits.realtime_max_session_seconds
        self.send_lock = asyncio.Lock()

    # --- the socket ---

    async def emit(self, type_: str, **fields: Any) -> None:
        async with self.send_lock:
            await self.ws.send_text(json.dumps({"event_id": new_id("event"), "type": type_, **fields}))

    async def error(self, err: APIError, event_id: str | None = None) -> None:
        await self.emit_quietly("error", error={**err.body().error.model_dump(), "event_id": event_id})

    async def close(self, code: int, reason: str) -> None:
        try:
            await self.ws.close(code=code, reason=reason)
        finally:
            raise Closed(reason)

    async def receive(self) -> str:
        """The next client message (text or UTF-8 bytes); closes the socket on an idle or session timeout and
        on an oversized message."""
        receiving = asyncio.ensure_future(self.ws.receive())
        while True:  # a socket is idle when neither side has anything going on (no client message, no reply)
            left = self.deadline - time.monotonic()
            timeout = min(self.limits.realtime_idle_seconds, left)
            done, _ = await asyncio.wait([receiving], timeout=max(timeout, 0.001))
            if done or self.response is None or timeout >= left:
                break
        if not done:
            receiving.cancel()
            idle = timeout < left
            await self.error(
                APIError(
                    408,
                    "no message for too long" if idle else "the session reached its time limit",
                    code="idle_timeout" if idle else "session_expired",
                )
            )
            await self.close(CLOSE_NORMAL, "idle timeout" if idle else "session time limit")
        message = receiving.result()
        if message["type"] == "websocket.disconnect":
            raise Closed("client disconnected")
        data = message.get("text")
        if data is None:
            data = (message.get("bytes") or b"").decode("utf-8", errors="replace")
        if len(data) > self.limits.realtime_max_message_bytes:
            await self.error(
                APIError(
                    413,
                    f"message exceeds {self.limits.realtime_max_message_bytes} bytes",
                    code="message_too_large",
                )
            )
            await self.close(CLOSE_TOO_BIG, "message too large")
        return data

    # --- the loop ---

    async def run(self) -> None:
        self.voice = (await self.ingress.voices() or [None])[0]
        self.modalities = ["audio"] if self.voice else ["text"]
        await self.emit("session.created", session=self.session())
        try:
            while True:
                data = await self.receive()
                try:
                    event = ClientEvent.validate_python(json.loads(data))
                except (json.JSONDecodeError, UnicodeDecodeError, ValidationError, TypeError) as e:
                    await self.bad_message(e)
                    continue
                try:
                    await self.handle(event)
                    self.bad = 0
                except (Closed, WebSocketDisconnect):
                    raise
                except Exception as e:  # a model call failed: the client hears why, the session goes on
                    await self.error(as_api_error(e), event.event_id)
        except (Closed, WebSocketDisconnect):
            pass
        finally:  # a dropped client frees its generation at once
            self.closed = True
            if self.response is not None:
                self.response.cancel()

    async def bad_message(self, e: Exception) -> None:
        self.bad += 1
        if isinstance(e, ValidationError):
            errors = e.errors()
            loc = ".".join(str(x) for x in errors[0].get("loc", ()))
            err = APIError(
                400,
                f"invalid event: {loc or '<event>'}: {errors[0]['msg']}",
                param=loc or None,
                code="invalid_event",
            )
        else:
            err = APIError(400, "message is not a JSON event object", code="invalid_json")
        await self.error(err)
        if self.bad >= self.limits.realtime_max_bad_messages:
            await self.close(CLOSE_POLICY, f"{self.bad} bad messages in a row")

    async def handle(self, event: BaseModel) -> None:
        match event:
            case SessionUpdate():
                await self.update(event.session)
                await self.emit("session.updated", session=self.session())
            case AudioAppend():
                self.append(event.audio)
            case AudioCommit():
                await self.commit()
            case AudioClear():
                self.buffer.clear()
                await self.emit("input_audio_buffer.cleared")
            case ItemCreate():
                await self.add_text(event.item)
            case ResponseCreate():
                await self.start_response(event.response)
            case ResponseCancel():
                if self.response is None or (event.response_id and event.response_id != self.response_id):
                    raise APIError(
                        400, "no response in progress to cancel", code="response_cancel_not_active"
                    )
                self.response.cancel()

    # --- session ---

    def session(self) -> dict:
        fmt = AudioFormat().model_dump()
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": self.id,
            "model": self.model,
            "instructions": self.instructions,
            "output_modalities": self.modalities,
            "max_output_tokens": self.max_output_tokens,
            "audio": {
                "input": {"format": fmt, "turn_detection": None},
                "output": {"format": fmt, "voice": self.voice},
            },
        }

    async def check_modalities(self, modalities: list[str] | None, voice: str | None, param: str) -> None:
        if modalities == ["audio"] and not await self.ingress.voices():
            raise APIError(
                400,
                "spoken replies are not enabled on this server",
                param=param,
                code="audio_output_disabled",
            )
        if voice is not None and voice not in await self.ingress.voices():
            raise APIError(
                400,
                f"unknown voice {voice!r}; this server speaks with {await self.ingress.voices()}",
                param="audio.output.voice",
                code="invalid_voice",
            )

    def token_limit(self, n: int | str | None, param: str) -> int:
        if n is None:
            return self.max_output_tokens
        if n == "inf":
            return self.limits.max_tokens
        if not 1 <= n <= self.limits.max_tokens:
            raise APIError(
                400,
                f"max_output_tokens must be 1..{self.limits.max_tokens}",
                param=param,
                code="too_many_tokens",
            )
        return n

    async def update(self, cfg: SessionConfig) -> None:
        voice = cfg.audio.output.voice if cfg.audio and cfg.audio.output else None
        await self.check_modalities(cfg.output_modalities, voice, "session.output_modalities")
        max_tokens = self.token_limit(cfg.max_output_tokens, "session.max_output_tokens")
        if cfg.instructions is not None:
            self.instructions = self.ingress.check_text(cfg.instructions)
        self.modalities = cfg.output_modalities or self.modalities
        self.voice = voice or self.voice
        self.max_output_tokens = max_tokens

    # --- input ---

    def append(self, data: str) -> None:
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise APIError(400, "audio is not valid base64", param="audio", code="invalid_audio") from None
        limit = int(self.limits.max_audio_seconds * RATE) * 2
        if len(self.buffer) + len(raw) > limit:
            raise APIError(
                400,
                f"the turn would exceed {self.limits.max_audio_seconds:g} s of audio; commit or "
                "clear the buffer",
                param="audio",
                code="audio_too_long",
            )
        self.buffer += raw

    async def commit(self) -> None:
        if len(self.buffer) < 2 * RATE // 10:
            raise APIError(
                400,
                "the input audio buffer holds less than 100 ms of audio",
                code="input_audio_buffer_commit_empty",
            )
        pcm = np.frombuffer(bytes(self.buffer[: len(self.buffer) // 2 * 2]), dtype="<i2")
        self.buffer.clear()
        wave = audio_io.resample(pcm.astype(np.float32) / 32768.0, RATE)
        self.ingress.metrics.audio(len(wave) / audio_io.SAMPLING_RATE)
        item_id, previous = new_id("item"), self.last_id()
        await self.emit("input_audio_buffer.committed", item_id=item_id, previous_item_id=previous)
        part, screen = await self.ingress.encode_turn(wave, cascade=self.served[1])
        item = {
            "id": item_id,
            "type": "message",
            "object": "realtime.item",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        await self.add(Turn(item, {"role": "user", "content": [part]}, screen), previous)

    async def add_text(self, msg: MessageItem) -> None:
        text = self.ingress.check_text("".join(p.text for p in msg.content))
        kind = "output_text" if msg.role == "assistant" else "input_text"
        item = {
            "id": msg.id or new_id("item"),
            "type": "message",
            "object": "realtime.item",
            "status": "completed",
            "role": msg.role,
            "content": [{"type": kind, "text": text}],
        }
        screen = await self.ingress.screen(text, []) if msg.role == "user" else "none"
        await self.add(Turn(item, {"role": msg.role, "content": text}, screen), self.last_id())

    async def add(self, turn: Turn, previous: str | None) -> None:
        self.keep(turn)
        await self.emit("conversation.item.created", item=turn.item, previous_item_id=previous)

    def keep(self, turn: Turn) -> None:
        """Add a turn; the session holds the newest ``max_turns`` (what a reply can read), no more."""
        self.turns = [*self.turns, turn][-self.limits.max_turns :]

    def last_id(self) -> str | None:
        return self.turns[-1].item["id"] if self.turns else None

    @property
    def served(self) -> tuple[str, bool]:
        """(the LLM's model id, whether this session is the cascade)."""
        cascade = self.model == "cascade"
        return (self.ingress.args.served_model_name if cascade else self.model), cascade

    # --- responses ---

    async def start_response(self, opts: ResponseOptions) -> None:
        if self.response is not None:
            raise APIError(
                400, "a response is already in progress", code="conversation_already_has_active_response"
            )
        voice = opts.audio.output.voice if opts.audio and opts.audio.output else None
        await self.check_modalities(opts.output_modalities, voice, "response.output_modalities")
        max_tokens = self.token_limit(opts.max_output_tokens, "response.max_output_tokens")
        modalities = opts.output_modalities or self.modalities
        voice = (voice or self.voice) if modalities == ["audio"] else None
        instructions = (
            self.instructions if opts.instructions is None else self.ingress.check_text(opts.instructions)
        )
        rid = new_id("resp")
        response = {
            "id": rid,
            "object": "realtime.response",
            "status": "in_progress",
            "output": [],
            "output_modalities": modalities,
            "max_output_tokens": max_tokens,
        }
        await self.emit("response.created", response=response)
        self.response_id = rid
        self.response = asyncio.create_task(self.respond(response, instructions, voice, max_tokens))
        self.response.add_done_callback(lambda task: self.responded(task, response))

    def responded(self, task: asyncio.Task, response: dict) -> None:
        """A response task ended: the next may start; one cancelled before it could say so still gets its
        ``response.done``."""
        self.response = None
        if response["status"] == "in_progress" and not self.closed:
            response.update(
                status="cancelled", status_details={"type": "cancelled", "reason": "client_cancelled"}
            )
            asyncio.ensure_future(self.emit_quietly("response.done", response=response))

    async def emit_quietly(self, type_: str, **fields: Any) -> None:
        try:
            await self.emit(type_, **fields)
        except Exception:  # the client is gone
            pass

    def messages(self, instructions: str) -> tuple[list[dict], str]:
        """The model's messages (the newest ``max_turns`` items) and the screen's label of the last user
        turn."""
        turns, chars, audio = [], len(instructions), 0
        for turn in reversed(self.turns):  # the newest items that fit the chat API's per-request limits
            chars += turn.chars
            audio += turn.audio
            if (
                len(turns) == self.limits.max_turns
                or (turns and chars > self.limits.max_text_chars)
                or audio > self.limits.max_audio_parts
            ):
                break
            turns.insert(0, turn)
        system = [{"role": "system", "content": instructions}] if instructions else []
        screen = next((t.screen for t in reversed(turns) if t.item["role"] == "user"), "none")
        return system + [t.message for t in turns], screen

    async def respond(self, response: dict, instructions: str, voice: str | None, max_tokens: int) -> None:
        """Stream one reply as events (OpenAI's order: output item and content part added, deltas, their
        ``.done`` events, ``response.done`` with usage), whatever ends it: completion, the token limit, a
        cancel or an error."""
        item_id = new_id("item")
        kind, field = ("output_audio", "transcript") if voice else ("output_text", "text")
        where = {"response_id": response["id"], "item_id": item_id, "output_index": 0}
        item = {
            "id": item_id,
            "type": "message",
            "object": "realtime.item",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        served, _ = self.served
        messages, screen = self.messages(instructions)
        status, details, reply = "completed", None, None
        try:
            await self.emit(
                "response.output_item.added", response_id=response["id"], output_index=0, item=item
            )
            await self.emit(
                "response.content_part.added", **where, content_index=0, part={"type": kind, field: ""}
            )
            reply = await self.ingress.start_reply(served, messages, max_tokens, screen, voice=voice)
            async for piece in reply.pieces():
                if piece.audio is not None:
                    data = base64.b64encode(audio_io.pcm16(piece.audio)).decode()
                    await self.emit("response.output_audio.delta", delta=data, **where, content_index=0)
                else:
                    delta = (
                        "response.output_audio_transcript.delta" if voice else "response.output_text.delta"
                    )
                    await self.emit(delta, delta=piece.text, **where, content_index=0)
            if reply.finish == "length":
                status, details = "incomplete", {"type": "incomplete", "reason": "max_output_tokens"}
        except asyncio.CancelledError:
            status, details = "cancelled", {"type": "cancelled", "reason": "client_cancelled"}
        except Exception as e:
            err = as_api_error(e)
            status, details = (
                "failed",
                {"type": "failed", "error": {"type": err.body().error.type, "code": err.code}},
            )
            await self.error(err)
        finally:
            if reply is not None:
                reply.close()
        text = reply.text if reply is not None else ""
        usage = reply.usage if reply is not None else None
        part = {"type": kind, field: text}
        item.update(status="completed" if status == "completed" else "incomplete", content=[part])
        if text:
            self.keep(Turn(item, {"role": "assistant", "content": text}))
        n_in, n_out = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
        self.ingress.metrics.tokens(served, n_out)
        if voice:
            await self.emit_quietly(
                "response.output_audio_transcript.done", **where, content_index=0, transcript=text
            )
            await self.emit_quietly("response.output_audio.done", **where, content_index=0)
        else:
            await self.emit_quietly("response.output_text.done", **where, content_index=0, text=text)
        await self.emit_quietly("response.content_part.done", **where, content_index=0, part=part)
        await self.emit_quietly(
            "response.output_item.done", response_id=response["id"], output_index=0, item=item
        )
        response.update(
            status=status,
            status_details=details,
            output=[item] if text else [],
            usage={"total_tokens": n_in + n_out, "input_tokens": n_in, "output_tokens": n_out},
        )
        await self.emit_quietly("response.done", response=response)
