"""Benchmark the browser tool: launch, open + extract per page, memory, extraction quality.

Serves the 181 article fixtures (../shared/fixtures/articles) over loopback and opens them
one at a time with `open_url` through the real browser, after launch. Compares, in the same
run, extraction alone on the HTML as served (trafilatura, no browser) so the browser's
share reads as a ratio, which stays meaningful on a loaded machine.

    python3 bench/browser.py                # all pages
    python3 bench/browser.py --pages 40 --json
    python3 bench/browser.py --against d92c3dc --pages 80   # that commit's browser vs this one

`--against REV` runs REV's packages (the browser, the tool protocol, everything they import,
exported with `git archive`) and today's working tree in two worker processes, each with its
own Chromium, and opens every page with one then the other (alternating which goes first), so
both see the same machine load; it prints both medians and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = os.environ.get("BENCH_BROWSER_CODE", str(ROOT))  # whose packages a --worker imports (see --against)
sys.path[:0] = [CODE, str(ROOT / "tests")]

from browser_fixtures.site import Site, article_routes, load_articles  # noqa: E402

from tools.base import ToolContext  # noqa: E402
from tools.builtin.browser import BrowserTool  # noqa: E402
from tools.builtin.browser.extraction import extract_html  # noqa: E402
from tools.builtin.browser.scoring import score_page, summarize  # noqa: E402


def tree_memory_mb() -> tuple[float, int]:
    """Proportional set size (shared pages split between sharers, so Chromium's many
    processes are not counted several times) of this process and all its children
    (Playwright's driver, Chromium), and how many processes that is."""
    import psutil

    me = psutil.Process()
    procs = [me, *me.children(recursive=True)]
    total = 0
    for p in procs:
        try:
            info = p.memory_full_info()
            total += getattr(info, "pss", info.rss)
        except psutil.Error:
            pass  # a renderer that exited between listing and reading
    return total / 2**20, len(procs)


def measure_launch(runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        tool = BrowserTool(allow_private_network=True)
        start = time.perf_counter()
        tool.setup()
        times.append(time.perf_counter() - start)
        tool.close()
    return times


PACKAGES = ("tools", "glm_runtime", "prompts", "sandbox")  # what the browser tool can import


def export(rev: str) -> Path:
    """The Python packages as they were at git revision `rev`, in a temporary directory."""
    where = Path(tempfile.mkdtemp(prefix=f"bench-browser-{rev}-"))
    archive = subprocess.run(["git", "archive", rev, *PACKAGES], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return where


class Worker:
    """A process opening pages with the browser tool of the packages under `root`: one URL per line
    in, one JSON line out (the open's seconds, as timed inside the worker, and the text)."""

    def __init__(self, root: Path) -> None:
        env = {**os.environ, "BENCH_BROWSER_CODE": str(root)}
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker"], cwd=root, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.ask("") == {"ready": True}

    def ask(self, url: str) -> dict:
        self.proc.stdin.write(url + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def worker() -> None:
    """The `--worker` side of `Worker`: the tool is the one under BENCH_BROWSER_CODE."""
    assert BrowserTool.__module__.startswith("tools.") and Path(sys.modules["tools"].__file__).is_relative_to(CODE)
    tool = BrowserTool(allow_private_network=True, max_page_chars=10**9, page_timeout=30)
    tmp = tempfile.TemporaryDirectory(prefix="bench-browser-")
    ctx = ToolContext(workdir=Path(tmp.name), artifacts_dir=Path(tmp.name))
    tool.setup()
    try:
        for line in sys.stdin:
            url = line.strip()
            if not url:
                print(json.dumps({"ready": True}), flush=True)
                continue
            start = time.perf_counter()
            result = tool.call(f'open_url("{url}")', ctx)
            seconds = time.perf_counter() - start
            text = "" if result.is_error else tool.sources.get(result.metadata["sources"][0]["id"]).text
            print(json.dumps({"seconds": seconds, "text": text, "error": result.is_error}), flush=True)
    finally:
        tool.close()
        tmp.cleanup()


def compare(rev: str, keys: list[str], articles: dict, as_json: bool) -> None:
    """Open the same pages with `rev`'s browser and today's, interleaved (alternating which goes
    first), so both see the same machine load; print medians and their ratio."""
    then = export(rev)
    workers = {rev: Worker(then), "now": Worker(ROOT)}
    times = {k: [] for k in workers}
    scores = {k: [] for k in workers}
    try:
        with Site(article_routes(articles)) as site:
            for w in workers.values():  # first page warms imports
                w.ask(site.url("/" + keys[0] + ".html") + "?warm")
            for i, k in enumerate(keys):
                for name in (list(workers)[:: 1 if i % 2 else -1]):
                    answer = workers[name].ask(site.url(f"/{k}.html"))
                    times[name].append(answer["seconds"])
                    scores[name].append(score_page(answer["text"], articles[k]["articleBody"]))
    finally:
        for w in workers.values():
            w.close()
        shutil.rmtree(then, ignore_errors=True)
    figures = {name: {"open_extract_ms_median": 1000 * statistics.median(times[name]),
                      "open_extract_ms_p90": 1000 * statistics.quantiles(times[name], n=10)[-1],
                      "f1": summarize(scores[name]).f1} for name in workers}
    figures["now_over_then"] = statistics.median(times["now"]) / statistics.median(times[rev])
    if as_json:
        print(json.dumps(figures, indent=2))
        return
    for name in workers:
        f = figures[name]
        print(f"{name:>10}  open + extract median {f['open_extract_ms_median']:.0f} ms"
              f"  (p90 {f['open_extract_ms_p90']:.0f} ms)  F1 {f['f1']:.4f}")
    print(f"now / {rev}: {figures['now_over_then']:.2f}x  ({len(keys)} pages, interleaved)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", type=int, default=0, help="open only the first N fixtures (0: all 181)")
    ap.add_argument("--launches", type=int, default=3, help="how many launches to time")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--against", metavar="REV", help="compare the browser at git revision REV with today's")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker()
        return

    articles = load_articles()
    keys = sorted(articles)[: args.pages or None]
    if args.against:
        compare(args.against, keys, articles, args.json)
        return
    rss_before, _ = tree_memory_mb()
    launches = measure_launch(args.launches)

    tool = BrowserTool(allow_private_network=True, max_page_chars=10**9, page_timeout=30)
    tmp = Path(tempfile.mkdtemp(prefix="bench-browser-"))
    ctx = ToolContext(workdir=tmp, artifacts_dir=tmp)
    tool.setup()
    opens, baseline, scores, notes, peak, most = [], [], [], 0, 0.0, 0
    with Site(article_routes(articles)) as site:
        tool.call(f'open_url("{site.url("/" + keys[0] + ".html")}?warm")', ctx)  # first page warms imports
        for k in keys:
            start = time.perf_counter()
            result = tool.call(f'open_url("{site.url(f"/{k}.html")}")', ctx)
            opens.append(time.perf_counter() - start)
            text = tool.sources.get(result.metadata["sources"][0]["id"]).text if not result.is_error else ""
            notes += "\nNote: " in result.content
            scores.append(score_page(text, articles[k]["articleBody"]))
            start = time.perf_counter()
            extract_html(articles[k]["html"], articles[k]["url"])
            baseline.append(time.perf_counter() - start)
            mem, count = tree_memory_mb()
            peak, most = max(peak, mem), max(most, count)
    tool.close()
    summary = summarize(scores)
    figures = {
        "pages": len(keys),
        "launch_s_median": statistics.median(launches),
        "open_extract_ms_median": 1000 * statistics.median(opens),
        "open_extract_ms_p90": 1000 * statistics.quantiles(opens, n=10)[-1] if len(opens) >= 10 else None,
        "extract_only_ms_median": 1000 * statistics.median(baseline),
        "browser_over_extract_only": statistics.median(opens) / statistics.median(baseline),
        "pages_with_note": notes,
        "f1": summary.f1, "precision": summary.precision, "recall": summary.recall,
        "pss_mb_before": rss_before, "pss_mb_peak": peak, "processes_peak": most,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"pages                         {figures['pages']}")
    print(f"launch (median of {args.launches})          {figures['launch_s_median']:.2f} s")
    print(f"open + extract, median        {figures['open_extract_ms_median']:.0f} ms"
          + (f"  (p90 {figures['open_extract_ms_p90']:.0f} ms)" if figures["open_extract_ms_p90"] else ""))
    print(f"extract only (no browser)     {figures['extract_only_ms_median']:.0f} ms"
          f"  -> browser path is {figures['browser_over_extract_only']:.1f}x")
    print(f"pages read from served HTML   {notes}")
    print(f"F1 {summary.f1:.4f}  precision {summary.precision:.4f}  recall {summary.recall:.4f}")
    print(f"memory (PSS, process tree)    {rss_before:.0f} MB before launch, {peak:.0f} MB peak ({most} processes)")


if __name__ == "__main__":
    main()
