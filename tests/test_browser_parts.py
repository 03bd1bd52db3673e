"""The browser's parts that need no Chromium: commands, policy, fetcher, search backends,
extraction, paging, citations and scoring. Servers are real, on loopback."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
from browser_fixtures.pdf import make_pdf
from browser_fixtures.site import Reply, Site

from glm_runtime.browser_commands import BrowserCommand, BrowserCommandError, parse_browser_commands
from tools.base import ToolContext
from tools.builtin.browser import BrowserTool, BrowseError, Page, UrlPolicy, make_search_backend
from tools.builtin.browser.citations import Sources, resolve_citations
from tools.builtin.browser import extraction
from tools.builtin.browser.extraction import extract_html, extract_pdf, read_page, read_rendered
from tools.builtin.browser.fetcher import fetch
from tools.builtin.browser.scoring import score_page, summarize, tokens
from tools.builtin.browser.search import BraveSearch, DuckDuckGoSearch, SearxngSearch

LOOPBACK = UrlPolicy(allow_private_network=True)


# -- commands (the grammar is glm_runtime.browser_commands, shared with the wire-format parser) --
def test_commands_parse_the_models_lines():
    text = 'search("GLM-4 \\"All Tools\\"", recency_days=7)\n\n  mclick([1, 3, 1])\nopen_url("https://a.example/x", page=2)'
    assert parse_browser_commands(text) == [
        BrowserCommand("search", query='GLM-4 "All Tools"', recency_days=7), BrowserCommand("mclick", ids=(1, 3)),
        BrowserCommand("open_url", url="https://a.example/x", page=2),
    ]
    assert parse_browser_commands("search(query='天气 北京')") == [BrowserCommand("search", query="天气 北京")]
    assert parse_browser_commands("mclick(4)") == [BrowserCommand("mclick", ids=(4,))]
    assert parse_browser_commands("open_url('https://a.example/', 3)")[0].page == 3


@pytest.mark.parametrize("bad, says", [
    ("", "no command"),
    ("# just a comment", "no command"),
    ("find('x')", "no function 'find'"),
    ("search(q)", "literals"),
    ("search('')", "non-empty query"),
    ("search('x', recency_days='week')", "recency_days"),
    ("search('x', recency_days=0)", "recency_days must be a whole number of days >= 1"),
    ("mclick([])", "non-empty list"),
    ("mclick(['a'])", "integer"),
    ("mclick([True])", "integer"),
    ("mclick(-1)", "integer"),
    ("open_url()", "URL string"),
    ("open_url('https://x', page=0)", "page must be an integer >= 1"),
    ("open_url('https://x', page='2')", "page must be an integer"),
    ("open_url('https://x', foo=1)", "no parameter 'foo'"),
    ("search('a', 1, 2)", "at most 2"),
    ("__import__('os').system('id')", "expects function calls"),
    ("search('a'", "could not read"),
])
def test_bad_commands_are_errors_for_the_model(bad, says):
    with pytest.raises(BrowserCommandError, match=says):
        parse_browser_commands(bad)


def test_a_bad_command_is_an_error_observation_not_an_exception(tmp_path: Path):
    tool = BrowserTool()
    result = tool.call("rm -rf /", ToolContext(workdir=tmp_path, artifacts_dir=tmp_path))
    assert result.is_error and "search(" in result.content
    assert tool.session._loop is None  # nothing was launched for a command that could not run
    tool.close()


def test_commands_and_python_style_arguments_parse_from_many_threads_at_once():
    """CPython 3.11's AST constructor shares its recursion counter across threads: a thread switch
    inside one parse (a collection running a finalizer) made another parse raise SystemError in CI.
    Here four threads parse while collections run finalizers and the interpreter switches often."""
    import gc
    import sys

    from glm_runtime.call_arguments import read_json_arguments

    class Finalized:
        def __del__(self):
            sum(range(200))  # long enough for the interpreter to switch threads

    interval, threshold = sys.getswitchinterval(), gc.get_threshold()
    lines = "\n".join(f'search("q {i}", recency_days={i})\nmclick([{i}, {i + 1}])' for i in range(1, 20))
    failures: list[BaseException] = []

    def parse_many():
        for _ in range(25):
            a, b = Finalized(), Finalized()
            a.other, b.other = b, a  # a cycle: only a collection frees it, running both finalizers
            del a, b
            try:
                parse_browser_commands(lines)
                assert read_json_arguments("f", "{'q': [[[1]]], 'n': (2,)}")[0] == {"q": [[[1]]], "n": [2]}
            except BaseException as e:  # noqa: BLE001 - collected and reported below
                failures.append(e)
                return

    sys.setswitchinterval(1e-6)
    gc.set_threshold(20)
    try:
        threads = [threading.Thread(target=parse_many) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
        gc.set_threshold(*threshold)
    assert not failures, failures[:3]


# -- policy -----------------------------------------------------------------------------
@pytest.mark.parametrize("url", [
    "http://127.0.0.1/", "http://localhost:8080/", "http://10.1.2.3/", "http://192.168.0.1/",
    "http://169.254.169.254/latest/meta-data/", "http://[::1]/", "http://[::ffff:127.0.0.1]/",
    "http://100.64.0.1/", "http://0.0.0.0/", "http://[fe80::1]/",
])
def test_private_loopback_and_link_local_addresses_are_refused_by_default(url):
    with pytest.raises(BrowseError, match="private, loopback or link-local"):
        UrlPolicy().check(url)
    assert LOOPBACK.check(url)[1]  # and allowed by the setting


@pytest.mark.parametrize("url", ["file:///etc/passwd", "javascript:alert(1)", "ftp://example.com/", "data:text/html,hi"])
def test_only_http_and_https(url):
    with pytest.raises(BrowseError, match="only http and https"):
        LOOPBACK.check(url)


def test_public_addresses_pass_and_unresolvable_names_say_so():
    assert UrlPolicy().check("https://93.184.215.14/") == ("93.184.215.14", ["93.184.215.14"])
    with pytest.raises(BrowseError, match="DNS lookup of no-such-host.invalid failed"):
        UrlPolicy().check("http://no-such-host.invalid/")


# -- fetcher ----------------------------------------------------------------------------
def _never_answers(req):
    req.handler.server.stop.wait(30)  # accepted, read, never answered


def _streams_forever(req):
    h = req.handler
    h.send_response(200)
    h.send_header("Content-Type", "text/html")
    h.end_headers()
    try:
        while not h.server.stop.is_set():
            h.wfile.write(b"<p>" + b"x" * 65536 + b"</p>")
    except OSError:
        pass
    h.close_connection = True


def _trickles(req):
    h = req.handler
    h.send_response(200)
    h.send_header("Content-Type", "text/html")
    h.end_headers()
    try:
        while not h.server.stop.wait(0.05):
            h.wfile.write(b"x")
            h.wfile.flush()
    except OSError:
        pass
    h.close_connection = True


ROUTES = {
    "/": lambda r: Reply(b"<html><title>Home</title><body><p>home</p></body></html>"),
    "/loop-a": lambda r: Reply(b"", 302, headers={"Location": "/loop-b"}),
    "/loop-b": lambda r: Reply(b"", 302, headers={"Location": "/loop-a"}),
    "/hop": lambda r: Reply(b"", 301, headers={"Location": "/"}),
    "/missing": lambda r: Reply(b"gone", 404, content_type="text/plain"),
    "/big": lambda r: Reply(b"a" * 6_000_000),
    "/zip": lambda r: Reply(b"PK\x03\x04", content_type="application/zip",
                            headers={"Content-Disposition": "attachment; filename=x.zip"}),
    "/png": lambda r: Reply(b"\x89PNG\r\n", content_type="image/png"),
    "/pdf": lambda r: Reply(make_pdf(["Quarterly revenue rose 12 percent."], "Report"), content_type="application/pdf"),
    "/never": _never_answers,
    "/stream": _streams_forever,
    "/trickle": _trickles,
}


@pytest.fixture(scope="module")
def site():
    with Site(ROUTES) as s:
        s.server.stop = threading.Event()
        yield s
        s.server.stop.set()


def test_fetch_follows_redirects_and_reads_the_page(site):
    doc = fetch(site.url("/hop"), LOOPBACK)
    assert doc.url == site.url("/") and doc.kind == "html" and b"home" in doc.body


@pytest.mark.parametrize("path, says", [
    ("/loop-a", "redirect loop"),
    ("/missing", "HTTP 404"),
    ("/big", "too large"),
    ("/stream", "too large"),
    ("/zip", "is a download"),
    ("/png", "not text or a page"),
])
def test_fetch_failures_say_what_went_wrong(site, path, says):
    with pytest.raises(BrowseError, match=says):
        fetch(site.url(path), LOOPBACK, max_bytes=5_000_000)


@pytest.mark.parametrize("path", ["/never", "/trickle"])
def test_servers_that_never_finish_end_by_the_deadline(site, path):
    start = time.monotonic()
    with pytest.raises(BrowseError, match="timed out"):
        fetch(site.url(path), LOOPBACK, timeout=1.0)
    assert time.monotonic() - start < 2.5


def test_every_redirect_hop_is_checked(site):
    class OnlyHome(UrlPolicy):
        # Stands in for a public site redirecting into the private network: /hop passes, / does not.
        def check(self, url):
            if not url.endswith("/hop"):
                raise BrowseError(f"refused {url}")
            return super().check(url)

    with pytest.raises(BrowseError, match="refused .*/$"):
        fetch(site.url("/hop"), OnlyHome(allow_private_network=True))


def test_connection_refused_is_reported():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(BrowseError, match="could not connect"):
            fetch(f"http://127.0.0.1:{port}/", LOOPBACK)


def test_pdfs_become_text(site):
    doc = fetch(site.url("/pdf"), LOOPBACK)
    assert doc.kind == "pdf"
    assert extract_pdf(doc.body).text == "Quarterly revenue rose 12 percent."
    with pytest.raises(ValueError, match="could not be read"):
        extract_pdf(b"%PDF-1.4 truncated")


# -- search backends --------------------------------------------------------------------
SEEN: dict[str, dict] = {}  # what each imitated engine was asked, by engine


def searxng_route(req):
    SEEN["searxng"] = req.query
    if req.query.get("format") != ["json"]:
        return Reply(b"<html>format not allowed</html>", 403)
    q = req.query["q"][0]
    results = [{"url": f"https://site{i}.example/{q}", "title": f"Result {i} for {q}", "content": f"snippet {i}",
                "engine": "bing", "publishedDate": "2024-05-01T00:00:00"} for i in range(3)]
    results.append({"title": "no url"})  # malformed entries are skipped
    return Reply(json.dumps({"query": q, "results": results, "time_range": req.query.get("time_range")}).encode(),
                 content_type="application/json")


DDG_PAGE = """<html><body><div id="links">
<div class="result results_links results_links_deep result--ad"><div class="links_main links_deep result__body">
<h2 class="result__title"><a class="result__a" href="https://ad.example/">An ad</a></h2></div></div>
<div class="result results_links results_links_deep web-result "><div class="links_main links_deep result__body">
<h2 class="result__title"><a rel="nofollow" class="result__a"
 href="//duckduckgo.com/l/?uddg=https%3A%2F%2Fwww.python.org%2Fdownloads%2F&amp;rut=abc">Download <b>Python</b></a></h2>
<div class="result__extras"><div class="result__extras__url"><a class="result__url" href="#">www.python.org</a></div></div>
<a class="result__snippet" href="#">The official home of the <b>Python</b> Programming Language.</a>
</div></div>
<div class="result results_links web-result "><div class="links_main result__body">
<h2 class="result__title"><a class="result__a" href="https://docs.python.org/3/">Python docs</a></h2>
<a class="result__snippet" href="#">Documentation.</a></div></div>
</div></body></html>"""


def ddg_route(req):
    SEEN["ddg"] = req.form
    return Reply(DDG_PAGE.encode(), headers={"X-Df": ",".join(req.form.get("df", []))})


def brave_route(req):
    SEEN["brave"] = req.query
    if req.headers.get("X-Subscription-Token") != "key-123":
        return Reply(b'{"error": "unauthorized"}', 401, content_type="application/json")
    body = {"web": {"results": [{"url": "https://brave.example/a", "title": "A <strong>hit</strong>",
                                 "description": "about <strong>it</strong>", "page_age": "2024-01-02",
                                 "freshness": req.query.get("freshness", [""])[0]}]}}
    return Reply(json.dumps(body).encode(), content_type="application/json")


@pytest.fixture(scope="module")
def engines():
    with Site({"/search": searxng_route, "/html/": ddg_route, "/brave": brave_route}) as s:
        yield s


def test_searxng_backend_reads_the_json_api(engines):
    backend = make_search_backend("searxng", searxng_url=engines.url(""))
    results = backend.search("glm", recency_days=5)
    assert [r.title for r in results] == ["Result 0 for glm", "Result 1 for glm", "Result 2 for glm"]
    assert results[0].engine == "bing" and results[0].published.startswith("2024")
    assert engines.hits[-1] == "/search"
    assert SEEN["searxng"]["time_range"] == ["week"] and SEEN["searxng"]["format"] == ["json"]


def test_searxng_without_json_format_is_a_clear_error(engines):
    backend = SearxngSearch(url=engines.url("/html"))  # a path that answers HTML, not the JSON API
    with pytest.raises(BrowseError, match="SearXNG"):
        backend.search("x")


def test_duckduckgo_backend_parses_its_html_page(engines):
    results = DuckDuckGoSearch(url=engines.url("/html/")).search("python download", recency_days=3)
    assert [(r.url, r.title) for r in results] == [
        ("https://www.python.org/downloads/", "Download Python"), ("https://docs.python.org/3/", "Python docs"),
    ]
    assert results[0].snippet == "The official home of the Python Programming Language."
    assert SEEN["ddg"]["q"] == ["python download"] and SEEN["ddg"]["df"] == ["w"]


def test_brave_backend_sends_its_key_and_freshness(engines):
    results = BraveSearch(api_key="key-123", url=engines.url("/brave")).search("q", recency_days=7)
    assert results[0].title == "A hit" and results[0].snippet == "about it"
    assert SEEN["brave"]["q"] == ["q"] and SEEN["brave"]["freshness"][0].count("to") == 1
    with pytest.raises(BrowseError, match="HTTP 401"):
        BraveSearch(api_key="wrong", url=engines.url("/brave")).search("q")


def test_unreachable_search_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        with pytest.raises(BrowseError, match="could not be reached"):
            SearxngSearch(url=f"http://127.0.0.1:{s.getsockname()[1]}").search("x")


@pytest.mark.parametrize("settings, says", [
    ({"name": "searxng"}, "searxng_url"), ({"name": "brave"}, "search_api_key"), ({"name": "yahoo"}, "unknown"),
])
def test_backend_settings_errors_are_the_callers(settings, says):
    with pytest.raises(ValueError, match=says):
        make_search_backend(settings.pop("name"), **settings)


def test_search_observation_numbers_results_and_ids_resolve(engines, tmp_path):
    tool = BrowserTool(search_backend="searxng", searxng_url=engines.url(""))
    ctx = ToolContext(workdir=tmp_path, artifacts_dir=tmp_path)
    first = tool.call('search("alpha")', ctx)
    second = tool.call('search("beta")', ctx)
    assert first.content.startswith("【0†Result 0 for alpha†site0.example】\nsnippet 0")
    assert "【3†Result 0 for beta†site0.example】" in second.content  # ids stay unique across searches
    cites = tool.resolve_citations("A【1†snippet 1】 and B【4†x】, bogus【99†y】.")
    assert [(c.id, c.url) for c in cites] == [(1, "https://site1.example/alpha"), (4, "https://site1.example/beta")]
    assert tool.call("mclick([42])", ctx).is_error
    tool.close()


# -- extraction, paging, citations, scoring ------------------------------------------------
ARTICLE = (b"<html><head><title>Story</title></head><body><nav><a href='/'>Home</a> <a href='/news'>News</a></nav>"
           b"<article><h1>Big story</h1>" + b"<p>" + b"A sentence of the story with a <a href='/more'>link</a>. " * 30
           + b"</p><ul><li>first point</li><li>second point</li></ul></article><footer>Copyright</footer></body></html>")


def test_extraction_keeps_main_text_headings_lists_and_links_out_of_the_text():
    ex = extract_html(ARTICLE, "http://news.example/story")
    assert ex.title == "Story"
    assert ex.text.startswith("# Big story") and "- first point" in ex.text
    assert "Copyright" not in ex.text and "](" not in ex.text
    assert [(ln.text, ln.url) for ln in ex.links] == [("link", "http://news.example/more")]


def test_rendered_text_is_used_unless_scripts_destroyed_the_page():
    rendered_more = ARTICLE.decode().replace("</article>", "<p>" + "Loaded later by a script. " * 20 + "</p></article>")
    served = extract_html(ARTICLE, "http://news.example/story")
    ex, note = read_rendered(rendered_more, served, "http://news.example/story")
    assert "Loaded later by a script" in ex.text and note == ""
    wiped = "<html><body><h2>This page is not available right now</h2></body></html>"
    ex, note = read_rendered(wiped, served, "http://news.example/story")
    assert "A sentence of the story" in ex.text and "scripts replaced" in note


def test_read_page_extracts_the_served_html_only_when_it_could_decide(monkeypatch):
    # A served page whose menus and footer outweigh its article: those never count towards
    # the main text, so the rendered article alone decides and the served one is not extracted.
    menus = "<nav>" + "<a href='/s'>Section link</a> " * 200 + "</nav><footer>" + "Legal words here. " * 100 + "</footer>"
    served_html = ARTICLE.replace(b"<footer>Copyright</footer>", menus.encode())
    calls = []
    real = extraction.extract_html
    monkeypatch.setattr(extraction, "extract_html", lambda html, *a, **k: calls.append(html) or real(html, *a, **k))
    ex, note = read_page(ARTICLE.decode(), served_html, "http://news.example/story")
    assert "A sentence of the story" in ex.text and note == "" and len(calls) == 1
    calls.clear()
    ex, note = read_page("<html><body><h2>This page is not available</h2></body></html>", served_html,
                         "http://news.example/story")
    assert "A sentence of the story" in ex.text and "scripts replaced" in note and len(calls) == 2


def test_long_pages_split_at_breaks_and_lose_nothing():
    text = "\n\n".join(f"Paragraph {i} " + "word " * (i % 40) for i in range(200))
    chunks = Page(url="u", title="t", text=text).chunks(700)
    assert len(chunks) > 5 and all(len(c) <= 700 for c in chunks)
    assert tokens(" ".join(chunks)) == tokens(text)


def test_citations_resolve_known_ids_once():
    sources = Sources()
    a = sources.add("https://a.example/", "A")
    b = sources.add("https://b.example/", "B")
    cites = resolve_citations(f"x【{a}†q1】 y【{b}】 z【{a}†q1】 w【{a}†q2】 v【7†none】", sources)
    assert [(c.id, c.title, c.quote) for c in cites] == [(a, "A", "q1"), (b, "B", ""), (a, "A", "q2")]


def test_scoring_matches_the_benchmark_definition():
    same = score_page("one two three four five", "one two three four five")
    assert (same.precision, same.recall, same.f1) == (1.0, 1.0, 1.0)
    assert score_page("a b c d", "w x y z").f1 == 0.0
    # 4-token shingles: one wrong word in 8 breaks 4 of 5 shingles on each side.
    s = score_page("a b c d e f g h", "a b c d X f g h")
    assert s.tp == pytest.approx(1 / 9) and s.fp == pytest.approx(4 / 9) and s.fn == pytest.approx(4 / 9)
    # Empty predictions count against recall, not precision (as the benchmark does).
    summary = summarize([score_page("", "some real text here"), same])
    assert summary.precision == 1.0 and summary.recall == 0.5
    assert summary.f1 == pytest.approx(2 * 1.0 * 0.5 / 1.5)


def test_a_cancelled_call_runs_nothing(tmp_path: Path):
    tool = BrowserTool(allow_private_network=True)
    ctx = ToolContext(workdir=tmp_path, artifacts_dir=tmp_path)
    ctx.cancelled.set()
    result = tool.call('open_url("http://127.0.0.1:9/")\nsearch("x")', ctx)
    assert result.is_error and result.content == "cancelled"
    assert tool.session._loop is None
    tool.close()
