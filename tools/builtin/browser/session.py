"""One headless Chromium per tool instance, driven by Playwright on its own thread and event loop.

Callers on any thread submit work with `open(url, deadline)`; the loop runs opens
concurrently (`mclick` opens several pages at once), each in its own tab of one browser
context (cookies shared within the session, isolated from other sessions).

How a page is opened, and why:

1. The document is fetched by `fetcher.fetch` (policy on each redirect hop, size cap,
   deadline, downloads refused), so a 50 MB page or a server that never answers stops there.
2. PDFs and plain text become text directly; HTML is handed to Chromium through a route
   that fulfills the navigation with the fetched bytes, so the scripts run at the page's own
   origin. Every sub-request is checked by the policy. Images (never even requested), media,
   fonts, stylesheets, frames and plug-ins are refused inside the renderer by the document's
   Content-Security-Policy, and `<script src>` tags on hosts the policy refuses are made inert
   before parsing, so neither costs a round trip to Python; everything else goes through the
   route handler. Later navigations (a script or meta refresh leaving the page) are refused.
3. Nothing waits on subresources: after DOMContentLoaded the page gets a short, bounded
   settle window, waited for inside the page in one call: nothing pending (fetch, XHR, a
   script loading, a short timer, the load event; anything older than a second is taken as
   stalled) and no DOM change for 30 ms. Then the DOM is read in the same call, without its
   scripts and styles. If scripts never let the page finish (an endless loop, an `alert()`
   loop), or leave it, the text comes from the HTML as served, with a note saying so.
   Dialogs are dismissed (Playwright's default), pop-ups closed. Tabs that rendered cleanly
   are reused (readied in the background, after the page is returned); the others are closed.
4. The text is extracted after the render, never during it (a parsing thread would hold the
   GIL the route handlers wait on), and the served HTML only when it could change the answer.

    >>> session = BrowserSession(UrlPolicy(allow_private_network=True))   # doctest: +SKIP
    >>> session.open("http://127.0.0.1:8000/", deadline=time.monotonic() + 15).title  # doctest: +SKIP
    'A page'
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import os
import re
import shutil
import threading
import time
from urllib.parse import urldefrag, urlsplit

from tools.builtin.browser.extraction import extract_pdf, read_page
from tools.builtin.browser.fetcher import USER_AGENT, Document, fetch
from tools.builtin.browser.page import BrowseError, Page
from tools.builtin.browser.policy import UrlPolicy

__all__ = ["BrowserSession", "find_chromium", "CHROMIUM_ARGS"]

log = logging.getLogger(__name__)

QUIET = 0.03  # seconds without DOM change or network activity (nothing pending) that count as "settled"
STALLED = 1.0  # a request or script in flight longer than this is not waited for
SHORT_TIMER = 0.25  # a setTimeout this short, scheduled by the page's own work, is waited for

# Without these, Chromium on a closed network keeps retrying its own background services.
CHROMIUM_ARGS = [
    "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--mute-audio",
    "--disable-default-apps", "--disable-extensions",
]
SYSTEM_CHROMIUM = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser")

# Sub-requests that never carry a page's text, refused whatever `block` says.
_NEVER_TEXT = frozenset({"ping", "manifest", "texttrack", "beacon", "csp_report", "cspviolationreport"})

# Sub-requests of these kinds are refused by the page's own Content-Security-Policy, inside the
# renderer, so they never reach the route handler (a round trip to Python each).
_CSP_BLOCKS = {"image": "img-src 'none'", "media": "media-src 'none'", "font": "font-src 'none'",
               "stylesheet": "style-src 'unsafe-inline'"}  # inline styles stay: they are part of the page
_CSP_ALWAYS = ("frame-src 'none'", "object-src 'none'", "manifest-src 'none'")  # a frame's text is not read

# `<script ... src="[https:]//host/...">`: a script whose host is known before the page is parsed.
# Other hosts (IPv6, IDN, user info) are left to the route handler. The scan is bounded (tags
# looked at, bytes per tag), so a hostile page of endless half-open tags costs no more than that.
_SCRIPT_OPEN = re.compile(rb"<script\b", re.I)
_SRC_HOST = re.compile(rb"[^>]*?\ssrc\s*=\s*[\"']?\s*(?:https?:)?//([A-Za-z0-9.-]+(?::[0-9]+)?)[/\"'\s>?#]", re.I)
MAX_SCRIPT_TAGS, TAG_BYTES = 500, 2000
# The first of two `type`s wins, and an unknown type is never fetched nor run; the page still gets
# the tag's `error` event, as from a refused request (_ACTIVITY_WATCH). No quotes: the tag may sit
# in a script's string literal (document.write), which must still parse.
_REFUSED_TYPE = b"<script type=text/x-refused-by-policy"
PRECHECK = 0.3  # seconds the policy may take over a page's script hosts before it is handed over

# Installed in every document before its scripts run: records the page's last activity (DOM
# change, fetch/XHR or script load starting or ending, a short timer firing) and what is still
# pending, so the settle wait runs inside the page in one call instead of being polled from
# Python. A short timer is waited for only the first two times its callback (by source text) is
# scheduled: pages poll with setTimeout (font loaders, retries, agents), and a loop is not content.
_ACTIVITY_WATCH = """
(() => {
  if (window.__glmActivity) return;
  const now = () => performance.now();
  const a = window.__glmActivity = {last: now(), pending: new Map(), next: 0,
                                    setTimeout: window.setTimeout.bind(window)};
  const touch = () => { a.last = now(); };
  const begin = () => { const id = ++a.next; a.pending.set(id, now()); a.last = now(); return id; };
  const end = (id) => { if (a.pending.delete(id)) a.last = now(); };
  const JS = /^(|module|text\\/javascript|application\\/javascript|text\\/ecmascript|application\\/ecmascript)$/i;
  const script = (node) => {
    if (node.nodeName === 'SCRIPT' && node.type === '%(refused)s' && !node.__glmSeen) {
      node.__glmSeen = true;  // made inert before parsing: fails as the refused request would have
      a.setTimeout(() => node.dispatchEvent(new Event('error')), 0);
      return;
    }
    if (node.nodeName !== 'SCRIPT' || !node.src || node.noModule || node.__glmSeen || !JS.test(node.type.trim())) return;
    node.__glmSeen = true;
    const id = begin(), done = () => end(id);
    node.addEventListener('load', done);
    node.addEventListener('error', done);
  };
  new MutationObserver((records) => {
    touch();
    for (const r of records) for (const n of r.addedNodes) script(n);
  }).observe(document, {subtree: true, childList: true, characterData: true});
  const fetch = window.fetch;
  if (fetch) window.fetch = function (...args) {
    const id = begin();
    try {
      const p = fetch.apply(this, args);
      p.then(() => end(id), () => end(id));
      return p;
    } catch (e) { end(id); throw e; }
  };
  const send = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.send = function (...args) {
    const id = begin();
    this.addEventListener('loadend', () => end(id));
    try { return send.apply(this, args); } catch (e) { end(id); throw e; }
  };
  const set = window.setTimeout, clear = window.clearTimeout, timers = new Map(), seen = new Map();
  window.setTimeout = function (fn, delay, ...args) {
    const ms = Number(delay) || 0;
    if (typeof fn !== 'function' || ms > %(short)d || timers.size >= 50) return set(fn, delay, ...args);
    const key = String(fn), times = seen.get(key) || 0;  // the same callback again: a polling loop
    if (times >= 2) return set(fn, delay, ...args);
    seen.set(key, times + 1);
    const id = begin();
    const handle = set(function () {
      timers.delete(handle);
      end(id);
      return fn.apply(this, args);
    }, delay);
    timers.set(handle, id);
    return handle;
  };
  const forget = (handle) => { const id = timers.get(handle); if (id !== undefined) { timers.delete(handle); end(id); } };
  window.clearTimeout = function (handle) { forget(handle); return clear(handle); };
  const clearInterval = window.clearInterval;
  window.clearInterval = function (handle) { forget(handle); return clearInterval(handle); };
})();
""" % {"short": int(SHORT_TIMER * 1000), "refused": _REFUSED_TYPE.split(b"=", 1)[1].decode()}

# Waits, inside the page, until nothing is pending (younger than `stalled` ms) and nothing
# happened for `quiet` ms, or `cap` ms passed; then reads the DOM once. Scripts, styles and
# other markup that carry no text are dropped before serialising (the page is done with:
# the tab leaves it next), which halves what crosses to Python and what lxml parses.
_SETTLE_AND_READ = """
async ([quiet, stalled, cap]) => {
  const a = window.__glmActivity, start = performance.now();
  // A document without scripts (none, or only data and refused ones) changes no more after parsing.
  const code = /^(|module|text\\/javascript|application\\/javascript|text\\/ecmascript|application\\/ecmascript)$/i;
  if (![...document.scripts].some((s) => code.test(s.type.trim()))) quiet = 0;
  if (a) {
    for (;;) {
      const t = performance.now();
      let busy = document.readyState !== 'complete' && t < stalled;  // the load event, from navigation start
      for (const since of a.pending.values()) if (t - since < stalled) { busy = true; break; }
      if ((!busy && t - a.last >= quiet) || t - start >= cap) break;
      await new Promise((resolve) => a.setTimeout(resolve, 10));
    }
  }
  const root = document.documentElement;
  if (!root) return ['', document.title];
  for (const e of root.querySelectorAll(
      'script:not([type="application/ld+json"]), style, link, svg, iframe, template')) e.remove();
  return [root.outerHTML, document.title];
}
"""


def find_chromium(override: str | None = None) -> str | None:
    """The Chromium to launch: the override, else the system's (Debian's path first), else None,
    which makes Playwright launch its own build (`playwright install chromium`)."""
    if override:
        if not os.path.exists(override):
            raise FileNotFoundError(f"chromium_path={override!r} does not exist")
        return override
    for path in SYSTEM_CHROMIUM:
        if os.path.exists(path):
            system = path
            break
    else:
        system = shutil.which("chromium") or shutil.which("chromium-browser")
    return system  # None lets Playwright use its own download (see launch)


class BrowserSession:
    """A lazily launched Chromium and the thread that drives it. Thread-safe; `close()` is idempotent."""

    def __init__(self, policy: UrlPolicy, *, chromium_path: str | None = None, page_timeout: float = 15.0,
                 settle_timeout: float = 2.0, max_bytes: int = 5_000_000,
                 block: tuple[str, ...] = ("image", "media", "font", "stylesheet"), max_concurrency: int = 4) -> None:
        self.policy = policy
        self.chromium_path = chromium_path
        self.page_timeout = page_timeout
        self.settle_timeout = settle_timeout
        self.max_bytes = max_bytes
        self.block = set(block)
        self._csp = "; ".join([_CSP_BLOCKS[b] for b in sorted(self.block) if b in _CSP_BLOCKS] + list(_CSP_ALWAYS))
        self.max_concurrency = max_concurrency
        self.launch_seconds: float | None = None
        self._start_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._launch_lock: asyncio.Lock | None = None
        self._pw = self._browser = self._context = None
        self._slots: asyncio.Semaphore | None = None
        self._hosts = _HostCache()
        self._lookups: dict[str, asyncio.Future] = {}  # host -> its policy lookup in progress
        # Lookups have threads of their own: a host whose DNS stalls holds one for seconds, and
        # must not queue the fetches and extractions behind it (they use the loop's default pool).
        self._lookup_pool = _lookup_pool()
        self._idle: list[_Tab] = []  # tabs that rendered cleanly, kept for the next page
        self._releasing: set[asyncio.Task] = set()  # tabs going back to about:blank (kept referenced)

    # -- the loop thread ---------------------------------------------------------------
    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._start_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=run, name="browser-loop", daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def _submit(self, coro, timeout: float, cancelled: threading.Event | None = None):
        future = asyncio.run_coroutine_threadsafe(coro, self._ensure_loop())
        until = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                # Short waits so a user's cancel stops the work within a tenth of a second.
                return future.result(timeout=max(0.0, min(0.1, until - time.monotonic())))
            except concurrent.futures.TimeoutError:
                if cancelled is not None and cancelled.is_set():
                    future.cancel()
                    raise BrowseError("cancelled") from None
                if time.monotonic() >= until:
                    future.cancel()
                    raise BrowseError(f"timed out after {timeout:.1f} s") from None

    def start(self, timeout: float = 60.0) -> None:
        """Launch the browser now (otherwise the first open does)."""
        self._submit(self._ensure_browser(), timeout)

    def open(self, url: str, deadline: float, cancelled: threading.Event | None = None) -> Page:
        """Open `url` and return its readable text; raise BrowseError saying why not."""
        # The loop enforces the deadline itself; the extra second lets it report its own reason.
        return self._submit(self._open(url, deadline), deadline - time.monotonic() + 1.0, cancelled)

    def open_many(self, urls: list[str], deadline: float,
                  cancelled: threading.Event | None = None) -> list[Page | BrowseError]:
        """Open several URLs concurrently (at most `max_concurrency` at once); errors in place."""
        return self._submit(self._open_many(urls, deadline), deadline - time.monotonic() + 1.0, cancelled)

    def close(self) -> None:
        with self._start_lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=15)
        except (concurrent.futures.TimeoutError, RuntimeError, OSError) as e:
            log.warning("browser did not shut down cleanly: %s", e)
        loop.call_soon_threadsafe(loop.stop)
        pool, self._lookup_pool = self._lookup_pool, _lookup_pool()  # a closed session may start again
        pool.shutdown(wait=False, cancel_futures=True)
        if thread is not None:
            thread.join(timeout=5)
        if not loop.is_running():
            loop.close()

    # -- on the loop -------------------------------------------------------------------
    async def _ensure_browser(self):
        if self._launch_lock is None:
            self._launch_lock = asyncio.Lock()
            self._slots = asyncio.Semaphore(self.max_concurrency)
        async with self._launch_lock:
            if self._browser is not None and self._browser.is_connected():
                return self._context
            await self._shutdown()  # a crashed browser: release what is left, then launch again
            try:
                from playwright.async_api import async_playwright
            except ImportError as e:
                raise ImportError("the browser needs playwright: pip install playwright") from e
            started = time.perf_counter()
            executable = find_chromium(self.chromium_path)
            self._pw = await async_playwright().start()
            args = list(CHROMIUM_ARGS) + (["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])
            if "image" in self.block:
                # Images are then never requested, rather than each one being routed to us to refuse.
                args.append("--blink-settings=imagesEnabled=false")
            try:
                self._browser = await self._pw.chromium.launch(executable_path=executable, headless=True, args=args)
            except Exception as e:  # playwright raises its generic Error for every launch failure
                await self._shutdown()
                raise RuntimeError(f"could not launch Chromium ({executable or 'playwright build'}): {e}") from e
            self._context = await self._browser.new_context(
                accept_downloads=False, service_workers="block", user_agent=USER_AGENT,
                viewport={"width": 1280, "height": 900}, java_script_enabled=True,
            )
            await self._context.add_init_script(_ACTIVITY_WATCH)
            self.launch_seconds = time.perf_counter() - started
            return self._context

    async def _shutdown(self) -> None:
        for obj, method in ((self._context, "close"), (self._browser, "close"), (self._pw, "stop")):
            if obj is not None:
                try:
                    await asyncio.wait_for(getattr(obj, method)(), 10)
                except Exception as e:  # already gone (crashed, closed): nothing left to release
                    log.debug("closing %s: %s", type(obj).__name__, e)
        self._pw = self._browser = self._context = None
        self._idle = []
        lookups, self._lookups = list(self._lookups.values()), {}  # tasks of this loop; a relaunch may run on another
        for lookup in lookups:
            lookup.cancel()  # a stalled DNS lookup: its thread ends on its own, nothing waits for it
        await asyncio.gather(*lookups, return_exceptions=True)

    async def _open_many(self, urls: list[str], deadline: float) -> list[Page | BrowseError]:
        async def one(url: str) -> Page | BrowseError:
            try:
                return await self._open(url, deadline)
            except BrowseError as e:
                return e

        return list(await asyncio.gather(*(one(u) for u in urls)))

    async def _open(self, url: str, deadline: float) -> Page:
        await self._ensure_browser()  # launching is not the page's time
        async with self._slots:  # nor is waiting for a free tab
            timeout = min(deadline - time.monotonic(), self.page_timeout)
            if timeout <= 0:
                raise BrowseError(f"no time left to open {url}")
            page_deadline = time.monotonic() + timeout
            doc = await asyncio.to_thread(fetch, url, self.policy, timeout=timeout, max_bytes=self.max_bytes)
            kind = doc.kind
            if kind == "pdf":
                try:
                    ex = await asyncio.to_thread(extract_pdf, doc.body, doc.url)
                except ValueError as e:
                    raise BrowseError(f"{doc.url}: {e}") from None
                return Page(url=doc.url, title=ex.title, text=ex.text)
            if kind == "text":
                text = doc.body.decode(doc.charset or "utf-8", errors="replace")
                return Page(url=doc.url, title=urlsplit(doc.url).path.rsplit("/", 1)[-1] or doc.url, text=text)
            html, title, note = await self._render(doc, page_deadline)
        # Extraction runs after the render, not during it: a thread parsing HTML while the page
        # loads holds the GIL the route handlers need, and every sub-request waits on them.
        ex, fallback = await asyncio.to_thread(read_page, html, doc.body, doc.url, title)
        note = note or fallback  # the render's own reason says more than "did not finish"
        return Page(url=doc.url, title=ex.title or doc.url, text=ex.text, links=ex.links, note=note)

    async def _tab(self) -> "_Tab":
        """A clean tab: a reused one (on about:blank) or a new one with its handlers installed."""
        while self._idle:
            tab = self._idle.pop()
            if not tab.page.is_closed():
                return tab
        page = await self._context.new_page()
        tab = _Tab(page)
        page.on("popup", lambda p: asyncio.ensure_future(_quietly(p.close())))
        await page.route("**/*", lambda route: self._route(route, tab))
        return tab

    async def _release(self, tab: "_Tab", clean: bool) -> None:
        """Keep a tab that behaved for the next page (a new tab costs a renderer); close others.

        The tab goes back to about:blank first, in the background: a page loads faster into an
        empty tab than over a page it must first tear down (measured 168 vs 239 ms per goto),
        and the old page's scripts stop.
        """
        if clean and len(self._idle) < self.max_concurrency:
            try:
                await asyncio.wait_for(tab.page.goto("about:blank"), 2)
                tab.load(None)
                self._idle.append(tab)
                return
            except Exception as e:  # a tab that cannot even leave its page is not worth keeping
                log.debug("tab not reused: %s", e)
        await _quietly(asyncio.wait_for(tab.page.close(run_before_unload=False), 5))

    def _background(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._releasing.add(task)  # referenced until done, so it is not collected midway
        task.add_done_callback(self._releasing.discard)

    async def _render(self, doc: Document, deadline: float) -> tuple[str | None, str | None, str]:
        """The rendered DOM and title, or (None, None, note) when the page's scripts never let go."""
        from playwright.async_api import Error as PlaywrightError

        body = await self._without_refused_scripts(doc, deadline)
        tab = await self._tab()
        tab.load(doc, body)
        page, clean = tab.page, False
        try:
            left = lambda: max(0.05, deadline - time.monotonic())  # noqa: E731
            await page.goto(doc.url, wait_until="domcontentloaded", timeout=left() * 1000)
            html, title = await self._settle_and_read(page, deadline)
            if tab.navigations:
                raise _Navigated()
            clean = True
            return html, title, ""
        except (asyncio.TimeoutError, PlaywrightError, _Navigated) as e:
            if tab.navigations:
                # Refusing a navigation leaves Chromium's error page in the tab, not the page.
                return None, None, (f"the page tried to navigate to {tab.navigations[0]}; "
                                    "its text was taken from the HTML as served")
            log.debug("render of %s stopped: %s", doc.url, e)
            reason = "did not finish loading in time" if _is_timeout(e) else f"failed to render ({_first_line(e)})"
            return None, None, f"the page {reason}; its text was taken from the HTML as served"
        finally:
            # The page's text is read: readying the tab for the next page is not this page's time.
            self._background(self._release(tab, clean))

    async def _settle_and_read(self, page, deadline: float) -> tuple[str, str]:
        """Wait, at most `settle_timeout`, for the page to go quiet, then read its DOM and title.

        Quiet means nothing pending (a fetch, an XHR, a script loading, a short timer, the load
        event) that started less than `STALLED` ago, and no activity for `QUIET` seconds; older
        requests are taken as stalled third-party resources, which a reader never waits for.
        The wait runs in the page (one call, no polling across processes); a page whose
        scripts never yield cannot answer, and the Python-side timeout ends it.
        """
        cap = max(0.0, min(self.settle_timeout, deadline - time.monotonic()))
        limit = max(0.05, min(deadline - time.monotonic(), cap + 1.0))  # the extra second: serialising
        return tuple(await asyncio.wait_for(
            page.evaluate(_SETTLE_AND_READ, [QUIET * 1000, STALLED * 1000, cap * 1000]), limit))

    async def _without_refused_scripts(self, doc: Document, deadline: float) -> bytes:
        """The document with its `<script src>` tags on refused hosts made inert (never fetched).

        Such a script would be refused anyway, one request at a time, each holding the parser
        (and DOMContentLoaded) for a round trip through the route handler. The policy decides
        hosts it can within `PRECHECK` seconds (verdicts are cached per host); scripts on the
        others are left to the route handler, which still checks every request.
        """
        scheme = urlsplit(doc.url).scheme
        wait = max(0.0, min(PRECHECK, deadline - time.monotonic()))
        tags: list[tuple[int, str]] = []  # (where `<script` starts, the host of its src)
        for m in itertools.islice(_SCRIPT_OPEN.finditer(doc.body), MAX_SCRIPT_TAGS):
            src = _SRC_HOST.match(doc.body, m.end(), m.end() + TAG_BYTES)
            if src:
                tags.append((m.start(), src.group(1).decode("ascii")))
        hosts = {netloc: asyncio.ensure_future(self._verdict(f"{scheme}://{netloc}/", wait)) for netloc in
                 dict.fromkeys(netloc for _, netloc in tags)}
        if not hosts:
            return doc.body
        await asyncio.wait(hosts.values())
        refused = [at for at, netloc in tags if hosts[netloc].result() is False]
        if not refused:
            return doc.body
        parts, last = [], 0
        for at in refused:
            parts += [doc.body[last:at], _REFUSED_TYPE]
            last = at + len(b"<script")
        return b"".join(parts + [doc.body[last:]])

    async def _allowed(self, url: str) -> bool:
        """May the page fetch this sub-resource? Every address must pass the policy.

        The lookup is made even where private addresses are allowed: a host that does not
        resolve is refused here at once, where Chromium's own resolver can take seconds on
        a closed network, holding up the scripts the page waits for. A lookup still going
        after `STALLED` seconds refuses the request (a stalled resource, which a reader does
        not wait for); it goes on, and its verdict serves the next request to that host.
        """
        return await self._verdict(url, STALLED) is True

    async def _verdict(self, url: str, wait: float) -> bool | None:
        """The policy's verdict on `url`'s host, cached per host; None if not known within `wait` s.
        Concurrent requests to one host share one lookup."""
        host = urlsplit(url).hostname or ""
        allowed = self._hosts.get(host)
        if allowed is not None:
            return allowed
        lookup = self._lookups.get(host)
        if lookup is None:
            lookup = self._lookups[host] = asyncio.ensure_future(self._look_up(url, host))
        try:
            return await asyncio.wait_for(asyncio.shield(lookup), wait)
        except asyncio.TimeoutError:
            return None

    async def _look_up(self, url: str, host: str) -> bool:
        try:
            await asyncio.get_running_loop().run_in_executor(self._lookup_pool, self.policy.check, url)
            allowed = True
        except BrowseError:
            allowed = False
        except Exception as e:  # a policy that fails in another way refuses: the request is not let through
            log.warning("policy check of %s failed: %s", url, e)
            allowed = False
        finally:
            self._lookups.pop(host, None)
        self._hosts.put(host, allowed)
        return allowed

    async def _route(self, route, tab: "_Tab") -> None:
        request = route.request
        try:
            if request.is_navigation_request() and request.frame.parent_frame is None:
                doc = tab.doc
                if doc is not None and not tab.served and urldefrag(request.url)[0] == urldefrag(doc.url)[0]:
                    tab.served = True
                    await route.fulfill(status=200, body=tab.body,
                                        headers={"content-type": doc.content_type, "content-security-policy": self._csp})
                else:
                    if tab.served:  # before that, only the page the tab showed last can navigate
                        tab.navigations.append(request.url)
                    await route.abort("blockedbyclient")
                return
            if (request.resource_type in self.block or request.resource_type in _NEVER_TEXT
                    or request.is_navigation_request()  # a frame inside the page: its text is not read
                    or urlsplit(request.url).scheme not in ("http", "https")):
                await route.abort("blockedbyclient")
                return
            allowed = await self._allowed(request.url)
            await (route.continue_() if allowed else route.abort("blockedbyclient"))
        except Exception as e:  # the page closed under the route: nothing to answer any more
            log.debug("route %s: %s", request.url, e)


class _HostCache:
    """Policy verdicts per host for sub-requests, kept a minute: pages pull dozens of resources
    from a handful of hosts, and a lookup per request would cost more than the page."""

    ttl = 60.0

    def __init__(self) -> None:
        self._verdicts: dict[str, tuple[bool, float]] = {}

    def get(self, host: str) -> bool | None:
        verdict = self._verdicts.get(host)
        return verdict[0] if verdict and time.monotonic() - verdict[1] < self.ttl else None

    def put(self, host: str, allowed: bool) -> None:
        self._verdicts[host] = (allowed, time.monotonic())


class _Tab:
    """A browser tab and what its route handler observed for the page it shows now: whether
    the document was served, navigations refused. `load(doc)` readies it for the next page."""

    def __init__(self, page) -> None:
        self.page = page
        self.load(None)

    def load(self, doc: Document | None, body: bytes = b"") -> None:
        self.doc = doc
        self.body = body  # what the browser is given for the document
        self.served = False
        self.navigations: list[str] = []


class _Navigated(Exception):
    """The page tried to leave for another URL (refused); its DOM is not the page's any more."""


def _lookup_pool() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="browser-policy")


async def _quietly(awaitable) -> None:
    try:
        await awaitable
    except Exception as e:  # closing something already closed or crashed
        log.debug("ignored: %s", e)


def _is_timeout(e: BaseException) -> bool:
    return isinstance(e, asyncio.TimeoutError) or type(e).__name__ == "TimeoutError"


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
