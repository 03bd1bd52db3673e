"""Constrained call headers: the line after `<|assistant|>` is empty or a declared tool's name.

The table and the processor are checked on the real GLM-4 tokenizer; the backend test runs a real
random GLM-4 checkpoint, whose unconstrained headers are garbage, through `LocalBackend`.
"""

from __future__ import annotations

import pytest
import torch

from glm_runtime.call_constraint import CallHeaderConstraint, TokenTable
from glm_runtime.messages import Message, ToolSpec

NAMES = ["python", "get_weather", "get_weather_v2", "simple_browser"]


@pytest.fixture(scope="module")
def table(glm4_tokenizer):
    return TokenTable(glm4_tokenizer)


@pytest.fixture(scope="module")
def assistant_id(glm4_tokenizer):
    return glm4_tokenizer.convert_tokens_to_ids("<|assistant|>")


def _ok(written: str, targets: list[str]) -> bool:
    return any(t.startswith(written) or written.startswith(t) for t in targets)


@pytest.mark.parametrize("written", ["", "g", "get", "get_weather", "get_weather_", "pyth", "simple_browser"])
def test_every_allowed_token_keeps_the_header_on_a_declared_name(table, written):
    targets = ["\n"] + [n + "\n" for n in NAMES]
    allowed = table.continuing(written, targets)
    assert allowed
    for i in allowed:
        assert _ok(written + table.texts[i], targets), repr(table.texts[i])
    # and nothing that would stay on track is missing, among the tokens that start like a target
    for first in {t[len(written)] for t in targets if t.startswith(written) and len(t) > len(written)}:
        for i in table.by_first[first]:
            if _ok(written + table.texts[i], targets):
                assert i in allowed


def test_a_finished_name_may_end_its_line_or_grow_into_a_longer_name(table):
    texts = {table.texts[i] for i in table.continuing("get_weather", ["\n", "get_weather\n", "get_weather_v2\n"])}
    assert "\n" in texts and "_" in texts
    assert "s" not in texts and " " not in texts


def test_special_tokens_and_pieces_of_characters_are_never_in_a_header(table, glm4_tokenizer):
    specials = set(glm4_tokenizer.all_special_ids)
    allowed = set(table.continuing("", ["\n"] + [n + "\n" for n in NAMES]))
    assert not allowed & specials
    assert all("\ufffd" not in table.texts[i] for i in allowed)


def test_the_processor_masks_only_while_a_header_is_written(table, assistant_id, glm4_tokenizer):
    proc = CallHeaderConstraint(table, ["get_weather"], assistant_id)
    enc = lambda s: glm4_tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    logits = torch.zeros(151552)
    # one reply as the engine grows it: the header, the arguments, a second segment, its header
    seq = enc("hi") + [assistant_id]
    at_start = proc(seq, logits)
    assert torch.isfinite(at_start).sum() == len(table.continuing("", proc.targets))
    seq += enc("get")
    assert torch.isfinite(proc(seq, logits)).sum() == len(table.continuing("get", proc.targets))
    seq += enc("_weather\n{")
    assert torch.equal(proc(seq, logits), logits)  # the arguments are free
    seq += enc('"city": "Oslo"}')
    assert torch.equal(proc(seq, logits), logits)
    seq += [assistant_id]
    assert torch.equal(proc(seq, logits), at_start)  # a second segment gets a header again
    proc.reset()  # another generation
    assert torch.equal(proc(enc("hi") + [assistant_id] + enc("\nSure"), logits), logits)  # so is an answer
    proc.reset()
    assert torch.equal(proc(enc("no assistant marker"), logits), logits)


def _turns(engine, *, constrain: bool, seeds=range(6)):
    from glm_runtime.backends.base import TurnDone
    from glm_runtime.backends.local import LocalBackend
    from glm_runtime.engine import SamplingParams

    tools = [ToolSpec(name="get_weather", description="Weather of a city.",
                      parameters={"type": "object", "properties": {"city": {"type": "string"}}}),
             ToolSpec(name="python", description="", kind="python")]
    out = []
    backend = LocalBackend(engine, constrain_calls=constrain)  # one: its token table is built once
    for seed in seeds:
        backend.sampling = SamplingParams(temperature=1.0, seed=seed)
        done = [c for c in backend.stream([Message("user", f"weather {seed}?")], tools, max_new_tokens=24)
                if isinstance(c, TurnDone)]
        out.append(done[0])
    return out


@pytest.mark.engine
def test_a_random_model_names_only_declared_tools_when_constrained(tiny_glm_checkpoint):
    from glm_runtime.engine import load_engine

    engine = load_engine(tiny_glm_checkpoint, quantize="none", device="cpu")
    free = _turns(engine, constrain=False)
    # unconstrained, a random model's first line is not a declared name (what the test guards against)
    assert any(d.raw.split("\n")[0] not in ("", "get_weather", "python") for d in free)
    for d in _turns(engine, constrain=True):
        header, nl, _ = d.raw.partition("\n")
        assert nl, d.raw
        assert header in ("", "get_weather", "python"), d.raw
        assert all(c.name in ("get_weather", "python") for c in d.turn.tool_calls)
        assert "no tool named" not in (d.turn.error or "")


def test_the_cli_setting_reaches_the_backend(tmp_path):
    from agent.cli.builder import build_backend
    from agent.cli.settings import load_settings

    on = build_backend(load_settings({"model": "demo"}, environ={}))
    off = build_backend(load_settings({"model": "demo"}, environ={"GLM_AGENT_CONSTRAIN_CALLS": "false"}))
    assert on.constrain_calls and not off.constrain_calls
    assert isinstance(on._processor([ToolSpec(name="f")]), CallHeaderConstraint)
    assert off._processor([ToolSpec(name="f")]) is None
