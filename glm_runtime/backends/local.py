"""`LocalBackend`: the local GLM-4 engine behind the `ChatBackend` seam.

One step is `render_ids` (the checkpoint's own chat template) -> `engine.generate` (which
reuses the KV cache of the longest common prefix with the previous step) -> incremental
detokenizing -> `StreamParser` (answer text streams out; calls arrive parsed at the end).

    >>> backend = LocalBackend.from_model("THUDM/glm-4-9b-chat", quantize="int4")   # doctest: +SKIP
    >>> for chunk in backend.stream([Message("user", "Hi")], []):                   # doctest: +SKIP
    ...     print(chunk)
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable, Iterator, Sequence

from glm_runtime.backends.base import BackendError, StreamChunk, TextDelta, TurnDone, Usage
from glm_runtime.messages import Message, ToolSpec

__all__ = ["LocalBackend"]


class LocalBackend:
    """Stream turns from an `Engine`.

    `sampling` is a `SamplingParams` (default: the checkpoint's generation_config, else
    greedy). `logits_processor` goes to every generate call; a list gives one per step, in
    order (how tests force a scripted reply out of a real model). `constrain_calls` (on by
    default; "glm4" format) lets the model name only declared tools: see `call_constraint`. A
    step with its own `logits_processor` is not constrained.
    """

    def __init__(self, engine: Any, *, fmt: str | None = None, sampling: Any = None,
                 logits_processor: Any = None, lang: str = "zh", constrain_calls: bool = True) -> None:
        from glm_runtime.chat_format import detect_format

        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.fmt = fmt or detect_format(engine.tokenizer)
        self.sampling = sampling
        self.logits_processor = logits_processor
        self.lang = lang
        self.constrain_calls = constrain_calls
        self._constraint: tuple[tuple[str, ...], Any] | None = None  # (tool names, its processor)
        self.context_window: int | None = engine.max_context
        self.name = str(getattr(engine, "checkpoint_dir", ""))
        self.steps = 0
        self._count_lock = threading.Lock()
        self._tools_cost: dict[str, int] = {}

    @classmethod
    def from_model(cls, model: str, *, quantize: str = "auto", device: str = "auto", dtype: str = "auto",
                   max_cache_tokens: int | None = None, progress: Callable | None = None,
                   offline: bool = False, prompt_cache_dir: str | None = None,
                   prompt_cache_bytes: int | None = None, quantized_cache_dir: str | None = None,
                   **kwargs: Any) -> LocalBackend:
        """Load `model` (a directory or a Hugging Face id, downloaded on first use).

        `prompt_cache_dir`: keep the KV cache of the system prompt on disk, so the next process
        starts without prefilling it (`glm_runtime.prompt_cache`). `quantized_cache_dir`: a model
        quantized on load is saved there once and loaded from there later.
        """
        from glm_runtime.engine import load_engine

        engine = load_engine(model, quantize=quantize, dtype=dtype, device=device,
                             max_cache_tokens=max_cache_tokens, progress=progress, offline=offline,
                             prompt_cache_dir=prompt_cache_dir, prompt_cache_bytes=prompt_cache_bytes,
                             quantized_cache_dir=quantized_cache_dir)
        return cls(engine, **kwargs)

    def _processor(self, tools: Sequence[ToolSpec]) -> Any:
        p = self.logits_processor
        if isinstance(p, (list, tuple)):
            p = p[self.steps] if self.steps < len(p) else None
        if p is None and self.constrain_calls and self.fmt == "glm4":
            from glm_runtime.call_constraint import CallHeaderConstraint, TokenTable
            from glm_runtime.chat_format import ASSISTANT, call_name

            # One per tool set, kept across steps with its masks (the engine resets it per generation).
            names = tuple(call_name(t) for t in tools)
            if self._constraint is None or self._constraint[0] != names:
                table = self._constraint[1].table if self._constraint else TokenTable(self.tokenizer)
                self._constraint = (names, CallHeaderConstraint(table, names,
                                                                self.tokenizer.convert_tokens_to_ids(ASSISTANT)))
            p = self._constraint[1]
        return p

    def stream(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        *,
        max_new_tokens: int = 1024,
        cancel: threading.Event | None = None,
    ) -> Iterator[StreamChunk]:
        from glm_runtime.chat_format import StreamParser
        from glm_runtime.chat_format import TextDelta as ParsedText
        from glm_runtime.chat_format import render_ids
        from glm_runtime.engine import SamplingParams
        from glm_runtime.tokenizer import unfinished

        t0 = time.perf_counter()
        ids = render_ids(messages, tools, self.tokenizer, fmt=self.fmt, lang=self.lang)
        room = self.engine.max_context - len(ids)
        if room <= 0:
            raise BackendError(f"the prompt of {len(ids)} tokens fills the context of {self.engine.max_context}")
        parser = StreamParser(fmt=self.fmt, tools=tools)
        new: list[int] = []
        shown = ""
        ttft = 0.0
        try:
            gen = self.engine.generate(ids, max_new_tokens=min(max_new_tokens, room),
                                       sampling=self.sampling or SamplingParams(),
                                       logits_processor=self._processor(tools), cancel=cancel)
            for tok in gen:
                if not new:
                    ttft = time.perf_counter() - t0
                new.append(tok)
                text = self.engine.decode(new)
                if unfinished(text):  # half of a character or a case mark: wait for the rest
                    continue
                delta, shown = text[len(shown):], text
                for ev in parser.feed(delta):
                    if isinstance(ev, ParsedText):
                        yield TextDelta(ev.text)
        except (RuntimeError, ValueError) as e:
            raise BackendError(f"generation failed: {type(e).__name__}: {e}") from e
        finally:
            self.steps += 1
        for ev in parser.flush():
            if isinstance(ev, ParsedText):
                yield TextDelta(ev.text)
        stats = self.engine.last_stats
        usage = Usage(prompt_tokens=stats.prompt_tokens, completion_tokens=stats.new_tokens,
                      reused_tokens=stats.reused_tokens, time_to_first_token=ttft,
                      seconds=time.perf_counter() - t0, stop_reason=stats.stop_reason)
        yield TurnDone(parser.finish(), usage, raw=parser.text)

    def count_tokens(self, message: Message) -> int:
        # <|role|> + metadata + "\n" + content; role markers are single special ids.
        with self._count_lock:
            n = len(self.tokenizer.encode(message.content, add_special_tokens=False))
            if message.metadata:
                n += len(self.tokenizer.encode(message.metadata, add_special_tokens=False))
        return n + 2

    def count_tools(self, tools: Sequence[ToolSpec]) -> int:
        """Tokens the tools' declarations add to the prompt, exactly as rendered (cached)."""
        from glm_runtime.chat_format import render_ids

        key = json.dumps([(t.name, t.kind, t.description, t.parameters) for t in tools], sort_keys=True, default=str)
        if key not in self._tools_cost:
            probe = [Message("user", "x")]
            with_tools = render_ids(probe, list(tools), self.tokenizer, fmt=self.fmt, lang=self.lang)
            without = render_ids(probe, [], self.tokenizer, fmt=self.fmt, lang=self.lang)
            self._tools_cost[key] = max(0, len(with_tools) - len(without))
        return self._tools_cost[key]

    def close(self) -> None:
        pass
