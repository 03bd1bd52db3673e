"""The browser tool end to end: real Chromium, pages served by a loopback server the test starts.

One tool (one Chromium) is shared by the module; every hostile page is followed by a normal
one to show the browser is still usable.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from pathlib import Path

import pytest
from browser_fixtures.pdf import make_pdf
from browser_fixtures.site import Reply, Site

from glm_runtime.chat_format import parse
from glm_runtime.messages import ToolSpec
from tools.base import ToolContext
from tools.builtin.browser import BrowserTool
from tools.builtin.browser.fetcher import fetch
from tools.builtin.browser.page import BrowseError
from tools.builtin.browser.policy import UrlPolicy
from tools.builtin.browser.session import BrowserSession

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PAGE_TIMEOUT = 4.0
JS_TEXT = "The quarterly numbers arrived by script after the page had loaded"


def html(title: str, body: str) -> Reply:
    return Reply(f"<!doctype html><html><head><title>{title}</title></head><body>{body}</body></html>".encode())


def article(title: str, sentence: str, n: int = 25) -> Reply:
    return html(title, f"<article><h1>{title}</h1><p>{(sentence + ' ') * n}</p></article>")


class Slow:
    """A page that takes `delay` seconds, counting how many requests overlap (for mclick)."""

    def __init__(self, delay: float) -> None:
        self.delay, self.now, self.most = delay, 0, 0
        self.lock = threading.Lock()

    def __call__(self, req) -> Reply:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(self.delay)
        with self.lock:
            self.now -= 1
        return article(f"Result page {req.path}", f"Body of {req.path} with facts worth citing.")


def searxng(req) -> Reply:
    q = req.query["q"][0]
    results = [{"url": f"http://127.0.0.1:{req.handler.server.server_address[1]}/result/{i}",
                "title": f"Result {i} about {q}", "content": f"Snippet {i}.", "engine": "loopback"} for i in range(3)]
    return Reply(json.dumps({"results": results}).encode(), content_type="application/json")


def never_answers(req):
    req.handler.server.stop.wait(60)


JS_PAGE = html("Rendered later", """<div id="app">Loading...</div>
<script>
window.addEventListener('load', () => fetch('/data.json').then(r => r.json()).then(d => setTimeout(() => {
  document.getElementById('app').innerHTML = '<article><h1>' + d.title + '</h1>' +
      d.paragraphs.map(p => '<p>' + p + '</p>').join('') + '</article>';
}, 50)));
</script>""")
DATA = {"title": "Late numbers", "paragraphs": [JS_TEXT + f", paragraph {i}, with enough words to count." for i in range(8)]}

HOSTILE_SPIN = html("Spin", "<p>Text before the script.</p><script>while (true) {}</script><p>after</p>")
HOSTILE_LATE_SPIN = html("Late spin", "<p>Text before a late loop.</p><script>setTimeout(() => { while (true) {} }, 0)</script>")
HOSTILE_ALERTS = html("Alerts", "<p>Text before the alerts.</p><script>while (true) { alert('hi'); }</script>")
HOSTILE_NAV = html("Leaves", "<article><p>" + "Original text of a page that leaves. " * 20
                   + "</p></article><script>location.href = '/elsewhere';</script>")
DOWNLOADS = html("Downloads", "<article><p>" + "A page that starts a download. " * 20 + "</p></article>"
                 "<a id=d href='/file.zip' download>file</a><script>document.getElementById('d').click();"
                 "window.open('/popup');</script>")
LONG = article("Long read", "A sentence that fills a long page with words.", n=400)
# Content from a script the page inserts after load, which the server takes 0.3 s to send (longer
# than the quiet window), while a polling loop keeps setting timers: the script is waited for.
LATE_SCRIPT = html("Late script", """<article><h1>Late script</h1><div id="late">Waiting...</div></article><script>
(function poll() { setTimeout(poll, 20); })();
window.addEventListener('load', () => {
  const s = document.createElement('script'); s.src = '/r/slow.js'; document.head.appendChild(s);
});
</script>""")
# Every kind of sub-request, same-origin and on a host the policy refuses (`localhost`, below).
RESOURCES = html("Resources", """<link rel=stylesheet href="/r/style.css">
<style>@font-face { font-family: f; src: url(/r/font.woff); } body { font-family: f; }</style>
<img src="/r/img.png"><iframe src="/r/frame"></iframe><video src="/r/movie.mp4"></video>
<script src="http://localhost:PORT/r/private.js" onerror="window.refusedFailed = true"></script>
<article><h1>Resources</h1><p>""" + "A page that asks for every kind of resource. " * 20 + """</p>
<script src="/r/own.js"></script>
<script>document.write("<script src='http://localhost:PORT/r/written.js'></scr" + "ipt><p>Written by the page.</p>");</script>
<p id="after">Inline scripts ran after the refused one: </p></article>
<script>
fetch('http://localhost:PORT/r/private.json').catch(() => {});
const s = document.createElement('script'); s.src = 'http://localhost:PORT/r/late.js'; document.head.appendChild(s);
document.getElementById('after').textContent += typeof privateLoaded + '.';
setTimeout(() => { if (window.refusedFailed) document.getElementById('after').textContent += ' It failed.'; }, 100);
</script>""")
ROUTES = {
    "/": article("Home", "A calm page that always works."),
    "/js": JS_PAGE,
    "/data.json": Reply(json.dumps(DATA).encode(), content_type="application/json"),
    "/search": searxng,
    "/loop": Reply(b"", 302, headers={"Location": "/loop2"}),
    "/loop2": Reply(b"", 302, headers={"Location": "/loop"}),
    "/spin": HOSTILE_SPIN,
    "/alerts": HOSTILE_ALERTS,
    "/late-spin": HOSTILE_LATE_SPIN,
    "/leaves": HOSTILE_NAV,
    "/huge": Reply(b"<p>" + b"x" * 50_000_000 + b"</p>"),
    "/never": never_answers,
    "/file.zip": Reply(b"PK\x03\x04" + b"\0" * 1000, content_type="application/zip",
                       headers={"Content-Disposition": "attachment; filename=file.zip"}),
    "/downloads": DOWNLOADS,
    "/report.pdf": Reply(make_pdf(["Revenue rose 12 percent in the third quarter.", "Costs were flat."], "Q3 report"),
                         content_type="application/pdf"),
    "/long": LONG,
    "/resources": lambda req: Reply(RESOURCES.body.replace(b"PORT", str(req.handler.server.server_address[1]).encode())),
    "/r/own.js": Reply(b"document.write('<p>The page\\'s own script ran.</p>');", content_type="text/javascript"),
    "/late-script": LATE_SCRIPT,
    "/r/slow.js": lambda req: time.sleep(0.3) or Reply(
        b"document.getElementById('late').innerHTML = '<p>" + (JS_TEXT + ", from a late script. ").encode() * 5
        + b"</p>';", content_type="text/javascript"),
    "/r/private.js": Reply(b"var privateLoaded = true;", content_type="text/javascript"),
}


@pytest.fixture(scope="module")
def site():
    slow = Slow(0.6)
    routes = {k: (v if callable(v) else (lambda req, v=v: v)) for k, v in ROUTES.items()}
    routes.update({f"/result/{i}": slow for i in range(3)})
    with Site(routes) as s:
        s.server.stop = threading.Event()
        s.slow = slow
        yield s
        s.server.stop.set()


@pytest.fixture(scope="module")
def tool(site):
    t = BrowserTool(allow_private_network=True, search_backend="searxng", searxng_url=site.url(""),
                    page_timeout=PAGE_TIMEOUT, max_page_chars=4000)
    yield t
    t.close()
    t.close()  # closing twice is fine


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    return ToolContext(workdir=tmp_path, artifacts_dir=tmp_path)


def test_content_rendered_by_javascript_after_load_is_read(tool, site, ctx):
    result = tool.call(f'open_url("{site.url("/js")}")', ctx)
    assert not result.is_error, result.content
    assert "# Late numbers" in result.content and JS_TEXT in result.content
    assert "Loading..." not in result.content
    # A plain HTTP fetch of the same URL does not see it.
    assert JS_TEXT.encode() not in fetch(site.url("/js"), tool.policy).body


def test_content_from_a_script_inserted_after_load_is_waited_for(tool, site, ctx):
    result = tool.call(f'open_url("{site.url("/late-script")}")', ctx)
    assert not result.is_error and JS_TEXT + ", from a late script." in result.content, result.content
    assert "Waiting..." not in result.content and "Note:" not in result.content


def test_search_then_mclick_opens_results_concurrently_and_citations_resolve(tool, site, ctx):
    found = tool.call('search("loopback facts")', ctx)
    assert not found.is_error, found.content
    ids = [s["id"] for s in found.metadata["sources"]]
    assert f"【{ids[0]}†Result 0 about loopback facts†127.0.0.1】\nSnippet 0." in found.content
    start = time.monotonic()
    opened = tool.call(f"mclick({ids})", ctx)
    took = time.monotonic() - start
    assert not opened.is_error, opened.content
    for i, source_id in enumerate(ids):
        assert f"【{source_id}†Result page /result/{i}†127.0.0.1】" in opened.content
        assert f"Body of /result/{i} with facts worth citing." in opened.content
    assert site.slow.most >= 2, "mclick opened the results one at a time"
    assert took < 3 * 0.6 + 2.5
    answer = f"The facts are cited【{ids[1]}†Body of /result/1】 and again【{ids[2]}†facts】."
    cites = tool.resolve_citations(answer)
    assert [(c.id, c.url, c.title) for c in cites] == [
        (ids[1], site.url("/result/1"), "Result page /result/1"), (ids[2], site.url("/result/2"), "Result page /result/2"),
    ]


@pytest.mark.parametrize("path, says", [
    ("/loop", "redirect loop"),
    ("/huge", "too large"),
    ("/never", "timed out"),
    ("/file.zip", "is a download"),
])
def test_hostile_servers_end_in_time_with_a_clear_observation(tool, site, ctx, path, says):
    start = time.monotonic()
    result = tool.call(f'open_url("{site.url(path)}")', ctx)
    assert time.monotonic() - start < PAGE_TIMEOUT + 1.5
    assert result.is_error and says in result.content, result.content
    assert "A calm page" in tool.call(f'open_url("{site.url("/")}?after={path}")', ctx).content


@pytest.mark.parametrize("path, kept, says", [
    ("/spin", "Text before the script.", "did not finish loading"),
    ("/alerts", "Text before the alerts.", "did not finish loading"),
    ("/late-spin", "Text before a late loop.", "did not finish loading"),
    ("/leaves", "Original text of a page that leaves.", "tried to navigate"),
    ("/downloads", "A page that starts a download.", ""),
])
def test_hostile_pages_end_in_time_and_the_browser_stays_usable(tool, site, ctx, path, kept, says):
    start = time.monotonic()
    result = tool.call(f'open_url("{site.url(path)}")', ctx)
    assert time.monotonic() - start < PAGE_TIMEOUT + 1.5
    assert not result.is_error and kept in result.content, result.content
    assert says in result.content
    again = tool.call(f'open_url("{site.url("/")}?after={path}")', ctx)
    assert "A calm page" in again.content, again.content


def test_pdf_by_url_becomes_text(tool, site, ctx):
    result = tool.call(f'open_url("{site.url("/report.pdf")}")', ctx)
    assert "【" in result.content and "†Q3 report†" in result.content
    assert "Revenue rose 12 percent in the third quarter.\n\nCosts were flat." in result.content


def test_long_pages_come_in_pieces_the_model_can_ask_for(tool, site, ctx):
    first = tool.call(f'open_url("{site.url("/long")}")', ctx)
    hint = f'open_url("{site.url("/long")}", page=2)'
    assert "(page 1 of " in first.content and hint in first.content
    # The wire-format parser lets the model's call through: it checks with the browser's own grammar.
    turn = parse("simple_browser\n" + hint, tools=[ToolSpec("simple_browser", kind="simple_browser")])
    assert turn.error is None and turn.tool_calls[0].arguments == hint
    hits = len(site.hits)
    second = tool.call(turn.tool_calls[0].arguments, ctx)
    assert "(page 2 of " in second.content and len(site.hits) == hits  # served from the session, no refetch
    assert len(second.content) < 4000 + 300
    assert tool.call(f'open_url("{site.url("/long")}", page=99)', ctx).is_error


def test_several_commands_and_several_threads_share_one_session(tool, site, ctx):
    text = f'open_url("{site.url("/")}?a")\nopen_url("{site.url("/missing")}")'
    result = tool.call(text, ctx)
    assert not result.is_error and "A calm page" in result.content and "Error: HTTP 404" in result.content
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: tool.call(f'open_url("{site.url("/")}?t={i}")', ctx), range(6)))
    assert all("A calm page" in r.content for r in results)
    ids = [r.metadata["sources"][0]["id"] for r in results]
    assert len(set(ids)) == 6


def test_private_addresses_are_refused_without_the_setting(site, ctx):
    tool = BrowserTool()
    try:
        result = tool.call(f'open_url("{site.url("/")}")', ctx)
        assert result.is_error and "private, loopback or link-local" in result.content
        assert "allow_private_network=True" in result.content
    finally:
        tool.close()


def test_closed_tool_starts_again_on_next_call(site, ctx):
    tool = BrowserTool(allow_private_network=True, page_timeout=PAGE_TIMEOUT)
    try:
        assert "A calm page" in tool.call(f'open_url("{site.url("/")}")', ctx).content
        tool.close()
        assert "A calm page" in tool.call(f'open_url("{site.url("/")}?again")', ctx).content
    finally:
        tool.close()


def test_cancel_stops_a_call_that_is_waiting(tool, site, tmp_path):
    ctx = ToolContext(workdir=tmp_path, artifacts_dir=tmp_path)
    timer = threading.Timer(0.5, ctx.cancelled.set)
    timer.start()
    start = time.monotonic()
    result = tool.call(f'open_url("{site.url("/never")}?cancel")', ctx)
    assert time.monotonic() - start < 1.5
    assert result.is_error and "cancelled" in result.content


def test_sub_requests_are_refused_by_kind_and_by_policy_and_the_page_still_renders(site):
    class NotLocalhost(UrlPolicy):
        # Stands in for a public page pulling from the private network: `localhost` is refused.
        def check(self, url):
            if "//localhost:" in url:
                raise BrowseError(f"refused {url}")
            return super().check(url)

    session = BrowserSession(NotLocalhost(allow_private_network=True), page_timeout=PAGE_TIMEOUT)
    try:
        before = len(site.hits)
        page = session.open(site.url("/resources"), time.monotonic() + PAGE_TIMEOUT)
    finally:
        session.close()
    asked = site.hits[before:]
    assert asked[:2] == ["/resources", "/r/own.js"]  # the document, then the only sub-request let through
    assert set(asked) == {"/resources", "/r/own.js"}, asked  # no style, font, image, frame, media; no localhost
    assert "The page's own script ran." in page.text and "Written by the page." in page.text
    assert "Inline scripts ran after the refused one: undefined. It failed." in page.text and page.note == ""

