"""Readable text from HTML: the main content a person would read, with its links numbered.

trafilatura finds the main content (headings and lists kept, as markdown); its links are
pulled out of the text into a list so the text reads cleanly and each link can get an id
the model may `mclick`. Pages too small for trafilatura's heuristics fall back to the
whole body's text. PDFs become text with pypdf.

    >>> page = extract_html("<html><head><title>T</title></head><body><article>"
    ...                     "<h1>Hello</h1><p>World, see <a href='/x'>this</a>.</p></article></body></html>",
    ...                     url="http://example.com/")
    >>> page.title, "World" in page.text, page.links[0].url
    ('T', True, 'http://example.com/x')
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

__all__ = ["Extracted", "Link", "extract_html", "extract_pdf", "read_page", "read_rendered"]

# [text](target) as trafilatura's markdown writes links; the target has no spaces or parens.
_MD_LINK = re.compile(r"\[([^\[\]]*)\]\(([^()\s]*)\)")
_BLANKS = re.compile(r"\n{3,}")
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Link:
    text: str
    url: str


@dataclass(frozen=True)
class Extracted:
    """What a page reads as: its title, main text and the links inside that text."""

    title: str
    text: str
    links: list[Link] = field(default_factory=list)


def _require_trafilatura():
    try:
        import trafilatura
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("the browser needs trafilatura: pip install trafilatura lxml_html_clean") from e
    return trafilatura


def _pull_links(markdown: str, base_url: str) -> tuple[str, list[Link]]:
    """Replace `[text](url)` by `text` and collect the http(s) links, first occurrence each."""
    links: list[Link] = []
    seen: set[str] = set()

    def plain(m: re.Match) -> str:
        text, target = m.group(1).strip(), m.group(2)
        url = urljoin(base_url, target) if target else ""
        if text and url and urlsplit(url).scheme in ("http", "https") and url not in seen:
            seen.add(url)
            links.append(Link(text=" ".join(text.split()), url=url))
        return m.group(1)

    return _MD_LINK.sub(plain, markdown), links


def _title(html: str | bytes) -> str:
    from lxml import html as lxml_html

    try:
        doc = lxml_html.fromstring(html)
    except (ValueError, TypeError, SyntaxError):  # lxml raises these on empty or odd documents
        return ""
    titles = doc.xpath("//title")
    return " ".join(titles[0].text_content().split()) if titles else ""


def extract_html(html: str | bytes, url: str = "", title: str | None = None) -> Extracted:
    """Main text of an HTML document, as markdown without link targets, and its links."""
    trafilatura = _require_trafilatura()
    if title is None:
        title = _title(html) if html else ""
    if not html or not (html.strip() if isinstance(html, str) else html.strip()):
        return Extracted(title=title, text="")
    md = trafilatura.extract(
        html, url=url or None, output_format="markdown", include_links=True,
        include_tables=True, include_images=False, include_comments=False,
    )
    if not md:
        # Too little text for the main-content heuristics (a short page): take all the body's text.
        md = trafilatura.html2txt(html) or ""
    text, links = _pull_links(md, url)
    return Extracted(title=title, text=_BLANKS.sub("\n\n", text).strip(), links=links)


def extract_pdf(data: bytes, url: str = "") -> Extracted:
    """Text of a PDF, page by page."""
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("the browser reads PDFs with pypdf: pip install pypdf") from e
    try:
        reader = PdfReader(io.BytesIO(data))
        title = str((reader.metadata or {}).get("/Title") or "") if reader.metadata else ""
        texts = [(p.extract_text() or "").strip() for p in reader.pages]
    except (PdfReadError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"the PDF could not be read: {e}") from e
    name = urlsplit(url).path.rsplit("/", 1)[-1] if url else ""
    return Extracted(title=title or name, text="\n\n".join(t for t in texts if t))


def read_rendered(rendered: str | None, served: Extracted, url: str = "", title: str | None = None,
                  from_dom: Extracted | None = None) -> tuple[Extracted, str]:
    """The text of the rendered DOM, unless rendering lost the page; then the HTML as served.

    `served` is `extract_html` of the HTML as served (the caller computes it while the page
    renders). Returns the text and a note for the model ("" when the rendered DOM was used).
    Scripts that cannot reach their third-party servers sometimes replace the article with
    an error panel ("this page is not available"); a rendered text with less than half the
    words of the served one is taken as such a loss. Pages whose scripts add content keep it.
    `from_dom` is `extract_html` of `rendered` where the caller has it already.
    """
    if rendered is None:
        return served, "the page did not finish rendering; its text was taken from the HTML as served"
    if from_dom is None:
        from_dom = extract_html(rendered, url, title or served.title)
    if len(_WORD.findall(from_dom.text)) < 0.5 * len(_WORD.findall(served.text)):
        note = "the page's scripts replaced most of its text; its text was taken from the HTML as served"
        return Extracted(title=from_dom.title or served.title, text=served.text, links=served.links), note
    return from_dom, ""


def _words_at_most(html: str | bytes) -> int:
    """About the most words `extract_html(html)` can return: every word of the document outside
    the elements trafilatura always deletes before looking for the main text (scripts, styles,
    navigation, asides, footers, forms' controls...). A tenth of an extraction's cost.

    A heuristic bound, not a proof (trafilatura's last-resort baseline reads the raw tree); on
    the 181 article fixtures it makes the same decisions as extracting both texts every time.
    """
    from lxml import etree
    from lxml import html as lxml_html
    from trafilatura.settings import MANUALLY_CLEANED

    try:
        doc = lxml_html.fromstring(html)
    except (ValueError, TypeError, SyntaxError):  # empty or odd documents: no bound, extract
        return 1 << 30
    # Forms are judged by their content and figures holding tables are kept: not counted out.
    etree.strip_elements(doc, *(t for t in MANUALLY_CLEANED if t not in ("form", "figure")), with_tail=False)
    return len(_WORD.findall(doc.text_content()))


def read_page(rendered: str | None, served_html: str | bytes, url: str = "", title: str | None = None) -> tuple[Extracted, str]:
    """`read_rendered`, extracting the served HTML only when its text could decide.

    A rendered text with at least half the words of the whole served document has at least
    half the words of the served extraction, so that extraction (the dearer half of the work)
    is skipped; the answer is the same as `read_rendered`'s.

        >>> read_page("<html><body><p>one two three</p></body></html>", b"<p>one</p>")[0].text
        'one two three'
    """
    if rendered is None:
        return read_rendered(None, extract_html(served_html, url))
    from_dom = extract_html(rendered, url, title or None)
    if len(_WORD.findall(from_dom.text)) >= 0.5 * _words_at_most(served_html):
        return from_dom, ""
    return read_rendered(rendered, extract_html(served_html, url), url, title, from_dom=from_dom)
