"""Evaluate the demo model on held-out conversations, through the real agent loop and real tools.

Every conversation runs `Agent.run` with the demo checkpoint on the real engine; the tools are
real: `python` in the sandboxed kernel, `simple_browser` in Chromium against a local
SearXNG-compatible server and local pages, `cogview` with a tiny random diffusers pipeline, and
user functions loaded from a generated `--tools` file. Requests, topics, function names,
parameter names and phrasings come from the held-out half of each pool (`data.generate(...,
split="eval")`).

Success per category:
  python    the python call prints the expected value; the answer contains that value
  browser   search("<topic>") then mclick; the answer cites 【id†title】 of an opened page
  cogview   cogview called with an English prompt naming the subject; an image was made; an answer
  function  the declared function with exactly the expected arguments; the answer contains its value
            (reported also apart for one and for two declared functions, where the call must choose)
  plain     no tool call; the reply for that kind of greeting or question
  error     after a real error observation (a broken python call, or invalid function arguments),
            the corrected call succeeds and the answer contains its value

    python3 scripts/demo/evaluate.py --count 200 --json results.json
    python3 scripts/demo/evaluate.py --count 5 --categories python,plain --model /tmp/run1
"""

from __future__ import annotations

import argparse
import http.server
import json
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import data  # noqa: E402

_CITE = re.compile(r"【(\d+)†([^】]*)】")


# ---- a local search engine and web site -----------------------------------------------------------

class LocalWeb:
    """A loopback server: `/search?q=...&format=json` in SearXNG's shape, and the pages it lists."""

    def __init__(self) -> None:
        self.queries: dict[str, list[dict]] = {}
        self.pages: dict[str, bytes] = {}
        web = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a) -> None:
                pass

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path == "/search":
                    q = parse_qs(parts.query).get("q", [""])[0]
                    body = json.dumps({"results": web.queries.get(" ".join(q.lower().split()), [])}).encode()
                    ctype = "application/json"
                else:
                    body = web.pages.get(parts.path, b"")
                    ctype = "text/html; charset=utf-8"
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def publish(self, task: dict) -> None:
        """Serve the task's search results and pages (see `data.browser_task`)."""
        results = []
        for r in task["results"]:
            path = "/" + r["slug"]
            paras = "".join(f"<p>{p}</p>" for p in r["body"])
            self.pages[path] = (f"<html><head><meta charset='utf-8'><title>{r['title']}</title></head>"
                                f"<body><article>{paras}</article></body></html>").encode()
            results.append({"url": self.url + path, "title": r["title"], "content": r["snippet"]})
        self.queries[" ".join(task["topic"].lower().split())] = results

    def close(self) -> None:
        self.server.shutdown()


# ---- tools ------------------------------------------------------------------------------------------

class Tools:
    """The built-ins, started once and shared; a registry per conversation adds its user functions."""

    def __init__(self, work: Path, web: LocalWeb, image_model: Path) -> None:
        from tools.registry import ToolRegistry

        self.work, self.web = work, web
        base = ToolRegistry(workdir=work / "data", artifacts_dir=work / "artifacts")
        (work / "data").mkdir(parents=True, exist_ok=True)
        (work / "artifacts").mkdir(parents=True, exist_ok=True)
        self.builtins = {
            "python": base.add_builtin("python"),
            "simple_browser": base.add_builtin("simple_browser", allow_private_network=True,
                                               search_backend="searxng", searxng_url=web.url),
            "cogview": base.add_builtin("cogview", model=str(image_model), device="cpu"),
        }
        self.base = base
        self.n = 0

    def registry(self, ex: data.Example):
        from tools.builtin.browser.citations import Sources
        from tools.registry import ToolRegistry

        reg = ToolRegistry(workdir=self.work / "data", artifacts_dir=self.work / "artifacts")
        for spec in ex.tools:
            if spec.kind in self.builtins:
                reg.add(self.builtins[spec.kind])
        browser = self.builtins["simple_browser"]
        browser.sources, browser._pages = Sources(), {}  # a fresh browser session's ids
        if ex.functions or any(s.kind == "function" for s in ex.tools):
            self.n += 1
            f = self.work / f"user_tools_{self.n}.py"
            f.write_text(user_tools_file(ex), encoding="utf-8")
            reg.load(str(f))
        return reg

    def close(self) -> None:
        self.base.close()


def user_tools_file(ex: data.Example) -> str:
    """A `--tools` file defining every function the example declares, in the example's order (the
    registry declares them in the file's order, so the prompt is the one the example renders)."""
    known = {d["name"]: d for d in ex.functions}
    defs = {s.name: known.get(s.name) or _defn_from_spec(s) for s in ex.tools if s.kind == "function"}
    defs |= {n: d for n, d in known.items() if n not in defs}
    return "from tools import tool\n\n\n" + "\n\n".join(data.function_source(d) for d in defs.values())


def _defn_from_spec(spec) -> dict:
    params = [(p, s["type"]) for p, s in spec.parameters["properties"].items()]
    return {"name": spec.name, "description": spec.description, "params": params}


# ---- one conversation -------------------------------------------------------------------------------

def run_one(ex: data.Example, backend, tools: Tools, budgets) -> dict:
    from agent import Agent
    from agent.loop import call_message, validate_call
    from glm_runtime.messages import Message, ToolCall

    reg = tools.registry(ex)
    if ex.category == "browser":
        tools.web.publish(ex.expect["task"])
    history = None
    if ex.category == "error":
        bad_msg = ex.messages[2]
        bad = bad_msg.content if bad_msg.metadata == "python" else json.loads(bad_msg.content)
        call = ToolCall(bad_msg.metadata, bad)
        err = validate_call(reg, call)
        obs = f"Error: {err}" if err else reg.call(call.name, call.arguments).content
        history = ex.messages[:2] + [call_message(call), Message("observation", obs)]
    agent = Agent(backend=backend, tools=reg, system_prompt=ex.messages[0].content, budgets=budgets,
                  history=history)
    t0 = time.perf_counter()
    result = agent.run(None if history else ex.messages[1].content)
    calls = [(e.name, e.arguments) for e in result.events if e.type == "tool_call"]
    obs = [(e.name, e.content, e.is_error) for e in result.events if e.type == "tool_result"]
    ok, why = judge(ex, calls, obs, result.answer, result.error)
    return {"category": ex.category, "lang": ex.lang, "ok": ok, "why": why, "request": ex.messages[1].content,
            "functions": sum(t.kind == "function" for t in ex.tools),
            "calls": calls, "answer": result.answer, "seconds": round(time.perf_counter() - t0, 3),
            "error": result.error.message if result.error else None}


def judge(ex: data.Example, calls, obs, answer: str, error) -> tuple[bool, str]:
    if error is not None:
        return False, f"run error: {error.message}"
    c = ex.category
    if c == "plain":
        if calls:
            return False, "called a tool"
        return answer.strip() == ex.expect["answer"], "ok" if answer.strip() == ex.expect["answer"] else "other answer"
    if not calls:
        return False, "no tool call"
    exp = ex.expect
    if c in ("python", "error") and exp["tool"] == "python":
        good = [o for o in obs if o[0] == "python" and not o[2] and o[1].strip() == exp["value"]]
        if not good:
            return False, f"python output {[o[1][:40] for o in obs]} != {exp['value']}"
        return _has(answer, exp["value"])
    if c in ("function", "error"):
        good = [a for n, a in calls if n == exp["tool"] and a == exp["args"]]
        if not good:
            return False, f"calls {calls} != {exp['tool']} {exp['args']}"
        return _has(answer, exp["value"])
    if c == "cogview":
        name, prompt = calls[0]
        if name != "cogview" or not isinstance(prompt, str):
            return False, f"first call {name}"
        missing = [w for w in exp["words"] if w.lower() not in prompt.lower()]
        if missing or not re.fullmatch(r"[\x20-\x7e]+", prompt.strip()):
            return False, f"prompt {prompt!r} misses {missing} or is not English"
        if not obs or obs[0][2]:
            return False, "no image"
        return bool(answer.strip()) and len(calls) == 1, "ok"
    if c == "browser":
        name, first = calls[0]
        if name != "simple_browser" or first.strip() != f'search("{exp["query"]}")':
            return False, f"first call {name} {first!r}"
        if not any(n == "simple_browser" and str(a).startswith("mclick(") for n, a in calls):
            return False, "no mclick"
        opened = "\n".join(o[1] for o in obs if not o[2])
        for i, text in _CITE.findall(answer):
            if f"【{i}†{text}†" in opened:
                return True, "ok"
        return False, "no citation of an opened page"
    return False, "unknown category"


def _has(answer: str, value: str) -> tuple[bool, str]:
    return (value in answer), ("ok" if value in answer else f"answer lacks {value}")


# ---- main -------------------------------------------------------------------------------------------

def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="Evaluate the demo model through the real loop and tools.")
    p.add_argument("--model", default="demo", help="checkpoint directory (default: the shipped demo model)")
    p.add_argument("--count", type=int, default=200, help="conversations per category")
    p.add_argument("--categories", default=",".join(data.CATEGORIES))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="write figures and every conversation here")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--constrain-calls", action=argparse.BooleanOptionalAction, default=True,
                   help="let the model name only declared tools, as glm-agent does by default (see "
                        "glm_runtime.call_constraint); --no-constrain-calls measures the model alone")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from agent.decision import Budgets
    from glm_runtime.backends.local import LocalBackend
    from glm_runtime.demo import demo_model_dir
    from tools.builtin.cogview_testing import build_tiny_sd_pipeline

    model = str(demo_model_dir()) if args.model == "demo" else args.model
    backend = LocalBackend.from_model(model, quantize="none", dtype="float32", device="cpu",
                                      constrain_calls=args.constrain_calls)
    budgets = Budgets(max_steps=6, max_new_tokens=160)
    work = Path(tempfile.mkdtemp(prefix="demo-eval-"))
    web = LocalWeb()
    tools = Tools(work, web, build_tiny_sd_pipeline(work / "tiny-sd"))
    figures: dict = {}
    rows: list[dict] = []
    t0 = time.time()
    try:
        for cat in args.categories.split(","):
            got = [run_one(ex, backend, tools, budgets)
                   for ex in data.generate(cat, args.count, seed=args.seed, split="eval")]
            rows += got
            n_ok = sum(r["ok"] for r in got)
            figures[cat] = {"n": len(got), "success": n_ok / len(got),
                            "en": _rate(got, "en"), "zh": _rate(got, "zh")}
            choosing = ""
            if cat == "function":  # choosing between two declared functions is a skill of its own
                for k, key in ((1, "one_function"), (2, "two_functions")):
                    sel = [r for r in got if r["functions"] == k]
                    figures[cat][key] = {"n": len(sel), "success": sum(r["ok"] for r in sel) / len(sel) if sel else None}
                    if sel:
                        choosing += f", {key.replace('_', ' ')} declared {figures[cat][key]['success']:.1%} of {len(sel)}"
            print(f"{cat:9s} {n_ok}/{len(got)} = {n_ok / len(got):.1%}  (en {figures[cat]['en']:.1%}, "
                  f"zh {figures[cat]['zh']:.1%}{choosing})  {time.time() - t0:.0f}s", flush=True)
            if args.verbose:
                for r in got:
                    if not r["ok"]:
                        print("   FAIL", r["request"], "|", r["why"], "|", r["calls"], "|", r["answer"][:120])
    finally:
        tools.close()
        web.close()
    out = {"model": model, "count": args.count, "seed": args.seed, "constrain_calls": args.constrain_calls,
           "figures": figures,
           "seconds": round(time.time() - t0, 1)}
    if args.json:
        args.json.write_text(json.dumps(out | {"conversations": rows}, ensure_ascii=False, indent=1))
    return out


def _rate(rows, lang):
    sel = [r for r in rows if r["lang"] == lang]
    return sum(r["ok"] for r in sel) / len(sel) if sel else 0.0


if __name__ == "__main__":
    main()
