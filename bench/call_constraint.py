"""What constrained tool names (`glm_runtime.call_constraint`) cost per generated token.

With GLM-4's real tokenizer (151k tokens, `../shared/glm4`) and a real rendered prompt of about
1,000 tokens with eight tools declared, one reply is replayed token by token through the logits
processor, as `Engine.generate` calls it: a call (`get_weather_v2\\n{...}` with 300 tokens of
arguments), then an answer. Reported: the one-off table build, the processor's time per token
while a header is written and after it (the arguments, the answer), and the time of one
unconstrained pass over the same logits (`logits + 0`) for scale.

    python3 bench/call_constraint.py
    python3 bench/call_constraint.py --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared" / "glm4"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    import torch

    from glm_runtime.call_constraint import CallHeaderConstraint, TokenTable
    from glm_runtime.chat_format import ASSISTANT, call_name, render_ids
    from glm_runtime.messages import Message, ToolSpec
    from glm_runtime.tokenizer import load_tokenizer

    tok = load_tokenizer(SHARED)
    t0 = time.perf_counter()
    table = TokenTable(tok)
    build = time.perf_counter() - t0

    props = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}
    tools = [ToolSpec("python", kind="python"), ToolSpec("simple_browser", kind="simple_browser"),
             ToolSpec("cogview", kind="cogview")] + [
        ToolSpec(n, "Look something up.", props) for n in
        ("get_weather", "get_weather_v2", "get_stock_price", "search_flights", "convert_currency")]
    prompt = render_ids([Message("user", "北京和上海今天的天气怎么样？请详细比较一下。 " * 40)], tools, tok)
    reply = tok.encode('get_weather_v2\n{"city": "' + "北京, 上海, " * 100 + '", "days": 3}',
                       add_special_tokens=False)
    answer = tok.encode("\n" + "The weather in Beijing is sunny. " * 40, add_special_tokens=False)
    assistant = tok.convert_tokens_to_ids(ASSISTANT)
    logits = torch.randn(151552)

    header_steps, body_steps, plain_steps = [], [], []
    for _ in range(args.repeats):
        proc = CallHeaderConstraint(table, [call_name(t) for t in tools], assistant)
        seq = list(prompt)
        for segment in (reply, [assistant] + answer):
            for tok_id in segment:
                t = time.perf_counter()
                out = proc(seq, logits)
                dt = time.perf_counter() - t
                (header_steps if out is not logits else body_steps).append(dt)
                t = time.perf_counter()
                _ = logits + 0
                plain_steps.append(time.perf_counter() - t)
                seq.append(tok_id)

    res = {
        "vocab": len(tok), "prompt_tokens": len(prompt), "reply_tokens": len(reply) + 1 + len(answer),
        "table_build_s": round(build, 3),
        "header_step_ms_median": round(statistics.median(header_steps) * 1e3, 3),
        "header_step_ms_max": round(max(header_steps) * 1e3, 3),
        "header_steps_per_reply": len(header_steps) // args.repeats,
        "free_step_ms_median": round(statistics.median(body_steps) * 1e3, 4),
        "logits_copy_ms_median": round(statistics.median(plain_steps) * 1e3, 4),
    }
    if args.json:
        print(json.dumps(res))
    else:
        print(f"GLM-4 tokenizer, {res['vocab']} tokens; prompt {res['prompt_tokens']} tokens, "
              f"reply {res['reply_tokens']} tokens, {len(tools)} tools")
        print(f"token table build (once per tokenizer)  {res['table_build_s']:.3f} s")
        print(f"per header token ({res['header_steps_per_reply']} per reply)  median "
              f"{res['header_step_ms_median']:.3f} ms, max {res['header_step_ms_max']:.3f} ms")
        print(f"per token after the header             median {res['free_step_ms_median']:.4f} ms")
        print(f"for scale, logits + 0 (151,552 floats)  median {res['logits_copy_ms_median']:.4f} ms")
    return res


if __name__ == "__main__":
    main()
