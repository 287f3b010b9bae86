"""Continuous batching over the HF KV cache: requests join and leave the running batch between decode steps.

One thread per LLM replica owns the model and loops:

    admit   waiting requests (same LoRA adapter as the batch) -> one batched prefill of their prompt
            embeddings (left-padded) -> their first token; their KV cache is merged into the batch's
    decode  one token for every running row (one forward with the batch's DynamicCache)
    retire  rows that produced eos, reached their ``max_new_tokens`` or whose client went away: their rows
            leave the cache at once, and the cache's all-padding left columns are trimmed

``scheduling="static"`` admits only into an empty batch (the batch runs until its longest answer ends): the
classic dynamic batching, kept as the baseline the benchmark compares against. Tokens go back through a
callback per request (the LLM deployment turns them into an asyncio stream).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import DynamicCache

from medlm.models.modeling import positions

log = logging.getLogger("medlm.serving")

Emit = Callable[[int | None, str | None], None]  # (token or None, finish reason or None)


@dataclass
class Slot:
    """One request in the engine: its prompt embeddings (L, D), limits, sampling, and where its tokens go.

    ``emit(token, None)`` for each generated token (eos is not emitted), then ``emit(None, finish)`` once with
    finish in "stop" | "length" | "cancelled" | "error"."""

    embeds: torch.Tensor
    max_new_tokens: int
    emit: Emit
    temperature: float = 0.0
    top_p: float = 1.0
    adapter: str | None = None
    generated: int = 0
    cancelled: bool = False
    done: bool = False


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Next tokens of a (B, V) batch with per-row temperature / top-p; temperature 0 = greedy for that row."""
    greedy = logits.argmax(-1)
    if bool((temperature == 0).all()):
        return greedy
    scores = logits.float() / temperature.clamp(min=1e-5)[:, None]
    probs = scores.softmax(-1)
    sorted_p, order = probs.sort(-1, descending=True)
    drop = (sorted_p.cumsum(-1) - sorted_p) > top_p[:, None]  # keep the smallest set whose mass reaches p
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    drawn = order.gather(-1, torch.multinomial(sorted_p, 1)).squeeze(-1)
    return torch.where(temperature == 0, greedy, drawn)


def _pad_left(t: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    pad = length - t.shape[dim]
    if pad == 0:
        return t
    shape = list(t.shape)
    shape[dim] = pad
    return torch.cat([t.new_zeros(shape), t], dim=dim)


@dataclass
class Batch:
    """The running rows: their slots, attention mask (B, T) over the cache, the cache, and the next inputs."""

    slots: list[Slot] = field(default_factory=list)
    mask: torch.Tensor | None = None
    cache: DynamicCache | None = None
    next_tokens: torch.Tensor | None = None  # (B,) the last sampled token of each row, fed at the next step
    adapter: str | None = None

    def __len__(self) -> int:
        return len(self.slots)

    def merge(self, other: Batch) -> None:
        """Append ``other``'s rows (left-padding whichever cache is shorter)."""
        if not self.slots:
            self.slots, self.mask, self.cache, self.next_tokens = (
                other.slots,
                other.mask,
                other.cache,
                other.next_tokens,
            )
            self.adapter = other.adapter
            return
        length = max(self.mask.shape[1], other.mask.shape[1])
        layers = [
            (
                torch.cat([_pad_left(a.keys, length, 2), _pad_left(b.keys, length, 2)]),
                torch.cat([_pad_left(a.values, length, 2), _pad_left(b.values, length, 2)]),
            )
            for a, b in zip(self.cache.layers, other.cache.layers)
        ]
        self.cache = DynamicCache(ddp_cache_data=layers)
        self.mask = torch.cat([_pad_left(self.mask, length, 1), _pad_left(other.mask, length, 1)])
        self.next_tokens = torch.cat([self.next_tokens, other.next_tokens])
        self.slots = self.slots + other.slots

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows``; drop the cache columns that are padding in every kept row."""
        if len(rows) == len(self.slots):
            return
        self.slots = [self.slots[i] for i in rows]
        if not rows:
            self.mask = self.cache = self.next_tokens = None
            return
        index = torch.tensor(rows)
        mask = self.mask[index]
        start = int((mask.sum(0) > 0).nonzero()[0])
        layers = [
            (layer.keys[index, :, start:], layer.values[index, :, start:]) for layer in self.cache.layers
        ]
        self.cache = DynamicCache(ddp_cache_data=layers)
        self.mask, self.next_tokens = mask[:, start:], self.next_tokens[index]


class Engine:
    """The decode loop of one LLM replica (see the module docstring). ``activate(adapter)`` switches the LLM's
    LoRA adapter; ``lock`` is held for every step (adapter loading takes it too); ``on_step(rows)``, if given,
    is called with the running rows of every decode step (the replica's batch-size metric)."""

    def __init__(
        self,
        llm,
        eos_token_id: int,
        activate: Callable[[str | None], None],
        lock: threading.Lock,
        max_batch_size: int = 16,
        scheduling: Literal["continuous", "static"] = "continuous",
        batch_wait_timeout_s: float = 0.01,
        on_step: Callable[[int], None] | None = None,
    ):
        self.llm, self.eos, self.activate, self.lock = llm, eos_token_id, activate, lock
        self.on_step = on_step
        self.max_batch_size, self.scheduling, self.wait_s = max_batch_size, scheduling, batch_wait_timeout_s
        self.waiting: list[Slot] = []
        self.batch = Batch()
        self.cond = threading.Condition()
        self.sizes: Counter[int] = Counter()  # running rows per decode step
        self.events: Counter[str] = Counter()  # admitted / finished_<reason>
        self.closed = False
        self.thread = threading.Thread(target=self._loop, name="medlm-decode", daemon=True)
        self.thread.start()

    # --- the outside (any thread) ---

    def submit(self, slot: Slot) -> None:
        with self.cond:
            self.waiting.append(slot)
            self.cond.notify()

    def cancel(self, slot: Slot) -> None:
        """End ``slot`` at the next step boundary (a client went away)."""
        slot.cancelled = True
        with self.cond:
            self.cond.notify()

    def close(self) -> None:
        """Stop the decode thread after its current step (requests still waiting are ended as cancelled)."""
        with self.cond:
            self.closed = True
            self.cond.notify()
        self.thread.join()
        for slot in self.batch.slots + self._take_all():
            if not slot.done:
                self._finish(slot, "cancelled")

    def stats(self) -> dict[str, Any]:
        steps = sum(self.sizes.values())
        rows = sum(k * v for k, v in self.sizes.items())
        return {
            "scheduling": self.scheduling,
            "batches": steps,
            "items": rows,
            "max_batch": max(self.sizes, default=0),
            "mean_batch": rows / steps if steps else 0.0,
            "sizes": dict(self.sizes),
            **self.events,
        }

    # --- the decode thread ---

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.waiting and not self.batch and not self.closed:
                    self.cond.wait()
                if self.closed:
                    return
            if not self.batch and self.wait_s:
                time.sleep(self.wait_s)  # let requests that arrive together share the first prefill
            try:
                with self.lock, torch.inference_mode():
                    self._step()
            except Exception as e:  # noqa: BLE001 - a failed step ends the requests in it (and those waiting), never the replica
                log.error(
                    "decode step failed: %s", type(e).__name__
                )  # no message: it could carry request content
                for slot in self.batch.slots + self._take_all():
                    if not slot.done:
                        self._finish(slot, "error")
                self.batch = Batch()

    def _take_all(self) -> list[Slot]:
        with self.cond:
            taken, self.waiting = self.waiting, []
        return taken

    def _admit(self) -> list[Slot]:
        """Waiting requests that may join now: up to the free rows, same adapter as the running batch."""
        if self.scheduling == "static" and self.batch:
            return []
        with self.cond:
            for slot in [s for s in self.waiting if s.cancelled]:
                self.waiting.remove(slot)
                self._finish(slot, "cancelled")
            adapter = (
                self.batch.adapter if self.batch else (self.waiting[0].adapter if self.waiting else None)
            )
            free = self.max_batch_size - len(self.batch)
            joining = [s for s in self.waiting if s.adapter == adapter][:free]
            for slot in joining:
                self.waiting.remove(slot)
        return joining

    def _step(self) -> None:
        joining = self._admit()
        if joining:
            if not self.batch:
                self.activate(joining[0].adapter)
            self.batch.merge(self._prefill(joining))
            self.events["admitted"] += len(joining)
            self._retire()
        if not self.batch:
            return
        self.sizes[len(self.batch)] += 1
        if self.on_step is not None:
            try:
                self.on_step(len(self.batch))
            except Exception:  # noqa: BLE001, S110 - a metric must never fail the requests of a step
                pass
        b = self.batch
        tokens = b.next_tokens[:, None]
        b.mask = torch.cat([b.mask, b.mask.new_ones((len(b), 1))], dim=1)
        out = self.llm(
            input_ids=tokens,
            attention_mask=b.mask,
            position_ids=positions(b.mask)[:, -1:],
            cache=b.cache,
            use_cache=True,
        )
        b.cache = out.cache
        b.next_tokens = self._sample(out.logits[:, -1], b.slots)
        self._retire()

    def _prefill(self, slots: list[Slot]) -> Batch:
        length = max(s.embeds.shape[0] for s in slots)
        embeds = torch.stack([_pad_left(s.embeds, length, 0) for s in slots])
        mask = torch.stack(
            [_pad_left(torch.ones(s.embeds.shape[0], dtype=torch.long), length, 0) for s in slots]
        )
        out = self.llm(
            inputs_embeds=embeds.to(self.llm.dtype),
            attention_mask=mask,
            position_ids=positions(mask),
            cache=DynamicCache(),
            use_cache=True,
            logits_to_keep=1,
        )
        return Batch(slots, mask, out.cache, self._sample(out.logits[:, -1], slots), slots[0].adapter)

    def _sample(self, logits: torch.Tensor, slots: list[Slot]) -> torch.Tensor:
        """The rows' next tokens, each handed to its request (eos ends the row instead)."""
        tokens = sample(
            logits, torch.tensor([s.temperature for s in slots]), torch.tensor([s.top_p for s in slots])
        )
        for slot, tok in zip(slots, tokens.tolist()):
            if slot.cancelled:
                continue
            if tok == self.eos:
                self._finish(slot, "stop")
                continue
            slot.generated += 1
            slot.emit(tok, None)
            if slot.generated >= slot.max_new_tokens:
                self._finish(slot, "length")
        return tokens

    def _retire(self) -> None:
        for slot in self.batch.slots:
            if slot.cancelled and not slot.done:
                self._finish(slot, "cancelled")
        self.batch.keep([i for i, s in enumerate(self.batch.slots) if not s.done])

    def _finish(self, slot: Slot, reason: str) -> None:
        slot.done = True
        self.events[f"finished_{reason}"] += 1
        slot.emit(None, reason)
