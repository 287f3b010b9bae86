"""A streamed reply, whatever carries it to the client (the chat API's SSE chunks, the Realtime API's events).

The safety screen's lead comes first, then the LLM's text as it arrives; with a voice, each finished sentence
goes to the (batching) Speaker at once and its audio follows, in order, while the text goes on streaming.
Closing a reply (the client hung up or cancelled) stops the synthesis and frees its decode slot at once.
"""

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

_SENTENCE_END = re.compile(r"(?<=[^\W\d_][.!?])\s+|(?<=[)\"'][.!?])\s+|\n+")


def complete_sentences(text: str) -> tuple[list[str], str]:
    """Complete sentences of ``text`` (ended by . ! ? after a letter, then a space; or a newline: a list
    item's "1." is not a sentence) and the unfinished rest."""
    pieces = _SENTENCE_END.split(text)
    return [p.strip() for p in pieces[:-1] if p.strip()], pieces[-1]


def sentences(text: str) -> list[str]:
    """All of ``text`` as sentences to speak: the complete ones and the unfinished rest."""
    done, rest = complete_sentences(text)
    return done + ([rest.strip()] if rest.strip() else [])


@dataclass
class Piece:
    """One step of a streamed reply: new ``text``, or the ``audio`` of one finished ``sentence``."""

    text: str = ""
    sentence: str = ""
    audio: np.ndarray | None = None


class Reply:
    """A reply being streamed: ``chunks`` is the LLM deployment's stream (None when nothing is generated, e.g.
    a refused request) whose ``first`` chunk has arrived; ``lead`` is said first; ``say`` speaks one sentence
    (None: a text-only reply). Iterate :meth:`pieces` once; ``finish`` and ``usage`` are set when it ends."""

    def __init__(
        self,
        chunks: Any,
        first: Any,
        lead: str = "",
        say: Callable[[str], Awaitable[np.ndarray]] | None = None,
    ):
        self.chunks, self.first, self.lead, self.say = chunks, first, lead, say
        self.finish, self.usage = "stop", None
        self.text = ""  # everything said so far
        self._generating = first is not None
        self._pending: list[tuple[str, asyncio.Task]] = []  # sentences at the Speaker, in order

    def _speak(self, sentence: str) -> None:
        self._pending.append((sentence, asyncio.create_task(self.say(sentence))))

    async def _spoken(self, wait: bool) -> AsyncIterator[Piece]:
        while self._pending and (wait or self._pending[0][1].done()):
            sentence, task = self._pending.pop(0)
            yield Piece(sentence=sentence, audio=await task)

    def _said(self, text: str) -> Piece:
        self.text += text
        return Piece(text=text)

    async def pieces(self) -> AsyncIterator[Piece]:
        chunk, unsaid = self.first, ""
        try:
            if self.lead:
                yield self._said(self.lead + ("\n\n" if chunk is not None else ""))
                if self.say:
                    for sentence in sentences(self.lead):
                        self._speak(sentence)
            while chunk is not None:
                if chunk.text:
                    yield self._said(chunk.text)
                    if self.say:
                        done, unsaid = complete_sentences(unsaid + chunk.text)
                        for sentence in done:
                            self._speak(sentence)
                        async for piece in self._spoken(wait=False):
                            yield piece
                self.finish, self.usage = chunk.finish_reason or self.finish, chunk.usage or self.usage
                chunk = await anext(self.chunks, None)
            self._generating = False
            if self.say:
                if unsaid.strip():
                    self._speak(unsaid.strip())
                async for piece in self._spoken(wait=True):
                    yield piece
        finally:
            self.close()

    def close(self) -> None:
        """Stop synthesising and free the request's decode slot (idempotent)."""
        for _, task in self._pending:
            task.cancel()
        self._pending.clear()
        if self._generating:
            self._generating = False
            self.chunks.cancel()
