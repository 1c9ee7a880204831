"""Pure rendering helpers for the web UI: answers, citations, sources, papers, exports.

Everything that comes from the corpus (titles, abstracts, URLs) or from a user is escaped here, in
one place, before it reaches any HTML or Markdown that a browser renders. The functions take plain
dicts (an `Answer.to_dict()` plus a few UI keys) so they are easy to test without Gradio.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from urllib.parse import urlparse

from rag.citations import MARKER, claims_by_source, expand, find_spans, merge_spans
from rag.text import strip_bidi

_MD_SPECIAL = re.compile(r"([\\`\[\]])")
_SNIPPET_CONTEXT = 160


def esc(text) -> str:
    """HTML-escape any value (quotes too, so the result is safe inside attributes)."""
    return html.escape(strip_bidi("" if text is None else str(text)), quote=True)


def md_text(text: str) -> str:
    """Make untrusted text safe for the chat's Markdown renderer.

    HTML is escaped (so `<script>` shows as text), and the characters that build links, code or
    escapes in Markdown are backslash-escaped. Emphasis (`**`) is left alone: answers use it.
    """
    return _MD_SPECIAL.sub(r"\\\1", html.escape(strip_bidi(text or ""), quote=False))


def safe_url(url: str | None) -> str | None:
    """An http(s) URL fit for an href, or None (no javascript:, data:, relative links)."""
    if not url or not isinstance(url, str):
        return None
    url = url.strip()
    if not re.match(r"^https?://", url, re.IGNORECASE):
        if re.match(r"^[a-z][a-z0-9+.-]*:(?!\d)", url, re.IGNORECASE):  # another scheme: javascript:, data:, ...
            return None
        url = "https://" + url
    try:
        parsed = urlparse(url)
        parsed.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return None
    if parsed.scheme.lower() not in ("http", "https") or not parsed.hostname or any(c.isspace() for c in url):
        return None
    return url


def link(url: str, label: str | None = None) -> str:
    href = safe_url(url)
    if href is None:
        return ""
    return f'<a href="{esc(href)}" target="_blank" rel="noopener noreferrer nofollow">{esc(label or short_url(href))}</a>'


def short_url(url: str) -> str:
    short = re.sub(r"^https?://(www\.)?", "", url).rstrip("/")
    return short if len(short) <= 60 else short[:59] + "…"


# ------------------------------------------------------------------------------ chat messages


def titles_by_n(turn: Mapping) -> dict[int, str]:
    """Citation number → title, from the citations (falling back to the sources)."""
    out = {int(s["n"]): s["title"] for s in turn.get("sources") or []}
    out.update({int(c["n"]): c["title"] for c in turn.get("citations") or []})
    return out


def render_citations(text: str, titles: Mapping[int, str]) -> str:
    """Escape `text` for Markdown and turn each `[n]` into a superscript with the title as tooltip."""
    out, pos = [], 0
    for match in MARKER.finditer(text):
        out.append(md_text(text[pos : match.start()]))
        for n in expand(match.group(1))[0]:
            title = titles.get(n)
            if title is None:
                out.append(md_text(f"[{n}]"))
            else:
                out.append(f'<sup class="rag-cite" title="[{n}] {esc(title)}">[{n}]</sup>')
        pos = match.end()
    out.append(md_text(text[pos:]))
    return "".join(out)


def render_streaming(text: str, note: str | None = None, stage: str | None = None) -> str:
    """What the chat shows while it works: the current stage ("judging 15 papers… 9 relevant"), then the
    tokens as they arrive (citations are verified only at the end)."""
    body = md_text(text) if text else f'<span class="rag-stage">{esc(stage or "Searching the papers…")}</span>'
    if note:
        body = f"<small>Note: {esc(note)}</small>\n\n" + body
    return body


def render_turn_answer(turn: Mapping) -> str:
    """The assistant message for a finished turn: answer, cited titles, abstention, notice, error."""
    if turn.get("error"):
        return f"⚠️ {md_text(turn['error'])}"
    parts = []
    if turn.get("abstained"):
        parts.append(f"**Not answered from the corpus.** {md_text(turn.get('answer', ''))}")
        related = turn.get("possibly_related") or []
        if related:
            parts.append("Possibly related papers:\n" + "\n".join(f"- {md_text(p['title'])}" for p in related))
    else:
        titles = titles_by_n(turn)
        parts.append(render_citations(turn.get("answer", ""), titles))
        cited = turn.get("citations") or []
        answer_text = turn.get("answer", "")
        if cited and not all(c["title"] in answer_text for c in cited):  # extractive answers name them inline
            lines = [f"<sup>[{c['n']}]</sup> {md_text(c['title'])}" for c in cited]
            parts.append("<small>**Cited papers**</small>  \n" + "  \n".join(lines))
    for flag in turn.get("flagged") or []:
        parts.append(f"<small>⚠️ Flagged: “{esc(flag['sentence'])}” {esc(flag['reason'])}</small>")
    if turn.get("notice"):
        parts.append(f"<small>Note: {esc(turn['notice'])}</small>")
    stages = [st for st in turn.get("stages") or [] if st.get("calls")]
    if stages:
        parts.append("<small>" + " · ".join(
            f"{esc(st['name'])}: {st['calls']} call{'s' if st['calls'] != 1 else ''}, "
            f"{st['prompt_tokens'] + st['completion_tokens']:,} tokens, {st['ms'] / 1000:.1f} s" for st in stages) + "</small>")
    return "\n\n".join(parts)


def chat_messages(turns: Iterable[Mapping], pending: Mapping | None = None) -> list[dict]:
    """Chatbot messages ({role, content}) for the finished turns plus an optional in-flight one."""
    messages = []
    for turn in turns:
        question = md_text(turn["question"])
        if turn.get("scope_title"):
            question += f"\n\n<small>about: {esc(turn['scope_title'])}</small>"
        messages.append({"role": "user", "content": question})
        messages.append({"role": "assistant", "content": render_turn_answer(turn)})
    if pending is not None:
        messages.append({"role": "user", "content": md_text(pending["question"])})
        messages.append({"role": "assistant", "content": render_streaming(pending.get("streamed", ""), pending.get("note"),
                                                                         pending.get("stage"))})
    return messages


def history(turns: Iterable[Mapping]) -> list[dict]:
    """The conversation as Assistant.ask_stream expects it: answered turns only."""
    out = []
    for turn in turns:
        if turn.get("error"):
            continue
        out.append({"role": "user", "content": turn["question"]})
        out.append({"role": "assistant", "content": turn.get("answer", "")})
    return out


# ------------------------------------------------------------------------------ highlighting


def support_spans(turn: Mapping, n: int, abstract: str) -> list[tuple[int, int, bool]]:
    """Where source `n`'s abstract supports the answer: the extractive answer's own quotes (exact), else the
    answer sentences citing `n` located in the abstract (rag.citations.find_spans)."""
    quotes = [q for q in turn.get("quotes") or [] if int(q.get("n", -1)) == n]
    if quotes:
        return merge_spans((int(q["start"]), int(q["end"]), True) for q in quotes
                           if abstract[int(q["start"]) : int(q["end"])] == q.get("text"))
    return find_spans(claims_by_source(turn.get("answer", "")).get(n, []), abstract)


def highlighted_snippet(abstract: str, spans: list[tuple[int, int, bool]], fallback: str) -> str:
    """HTML of the abstract around the supporting spans, each in <mark>; else the escaped fallback."""
    if not spans:
        return esc(fallback)
    start = max(0, spans[0][0] - _SNIPPET_CONTEXT)
    end = min(len(abstract), spans[-1][1] + _SNIPPET_CONTEXT)
    if start > 0:
        cut = abstract.find(" ", start)
        start = cut + 1 if 0 <= cut < spans[0][0] else spans[0][0]
    if end < len(abstract):
        cut = abstract.rfind(" ", spans[-1][1], end)
        end = max(spans[-1][1], cut)
    out = ["… " if start > 0 else ""]
    pos = start
    for s, e, exact in spans:
        out.append(esc(abstract[pos:s]))
        cls = "rag-mark" if exact else "rag-mark rag-approx"
        tip = "quoted in the answer" if exact else "closest sentence to the answer (paraphrased)"
        out.append(f'<mark class="{cls}" title="{tip}">{esc(abstract[s:e])}</mark>')
        pos = e
    out.append(esc(abstract[pos:end]))
    out.append(" …" if end < len(abstract) else "")
    return "".join(out)


# ------------------------------------------------------------------------------ sources panel

EMPTY_SOURCES = (
    '<div class="rag-sources rag-empty"><h3>Sources</h3>'
    "<p>Ask a question: the papers cited in the answer appear here, with the supporting passage highlighted.</p></div>"
)


def _paper_links(paper) -> str:
    links = [link(u) for u in (getattr(paper, "code_urls", ()) or ())]
    links = [lk for lk in links if lk]
    out = []
    if links:
        out.append("code: " + " · ".join(links))
    url = getattr(paper, "url", None)
    if url and safe_url(url):
        out.append(link(url, "paper"))
    return " · ".join(out)


def render_sources(turn: Mapping | None, papers: Mapping, seq: int | None = None) -> str:
    """The sources panel for one turn: cited papers with highlighted support, score and code links.

    `seq` (the turn number) is written as `data-turn` so scripts can tell a new panel from the last.
    """
    if not turn or turn.get("error"):
        return EMPTY_SOURCES
    return _render_sources(turn, papers).replace('<div class="rag-sources', f'<div data-turn="{int(seq or 0)}" class="rag-sources', 1)


def _render_sources(turn: Mapping, papers: Mapping) -> str:
    if turn.get("abstained"):
        items = []
        for rel in turn.get("possibly_related") or []:
            paper = papers.get(rel.get("paper_id"))
            abstract = paper.abstract if paper else ""
            snippet = abstract if len(abstract) <= 300 else abstract[:299].rsplit(" ", 1)[0] + "…"
            meta = _paper_links(paper) if paper else ""
            items.append(
                f'<div class="rag-src"><div class="rag-src-title">{esc(rel["title"])}</div>'
                f'<div class="rag-snippet">{esc(snippet)}</div>'
                + (f'<div class="rag-meta">{meta}</div>' if meta else "")
                + "</div>"
            )
        body = "".join(items) or "<p>No related papers either.</p>"
        return (
            '<div class="rag-sources rag-abstained"><h3>Sources</h3>'
            "<p class=\"rag-abstain-note\">The answer is not in the indexed papers. Possibly related:</p>"
            f"{body}</div>"
        )
    sources = {int(s["n"]): s for s in turn.get("sources") or []}
    cited_n = [int(c["n"]) for c in turn.get("citations") or []]
    items = []
    for n in cited_n:
        src = sources.get(n)
        if src is None:
            continue
        paper = papers.get(src["paper_id"])
        abstract = paper.abstract if paper else ""
        spans = support_spans(turn, n, abstract)
        snippet = highlighted_snippet(abstract, spans, src.get("snippet", ""))
        meta = [f'<span class="rag-score" title="retrieval score">score {float(src.get("score", 0.0)):.4f}</span>']
        links = _paper_links(paper) if paper else ""
        if links:
            meta.append(links)
        items.append(
            f'<div class="rag-src" id="rag-src-{n}">'
            f'<div class="rag-src-title"><span class="rag-n">[{n}]</span> {esc(src["title"])}</div>'
            f'<div class="rag-snippet">{snippet}</div>'
            f'<div class="rag-meta">{" · ".join(meta)}</div></div>'
        )
    uncited = [s for n, s in sorted(sources.items()) if n not in cited_n]
    extra = ""
    if uncited:
        rows = "".join(f"<li>[{int(s['n'])}] {esc(s['title'])}</li>" for s in uncited)
        extra = f'<details class="rag-uncited"><summary>Also retrieved, not cited ({len(uncited)})</summary><ul>{rows}</ul></details>'
    head = f"<h3>Sources <small>({len(items)} cited of {len(sources)} retrieved)</small></h3>"
    if turn.get("scope_title"):
        head += f'<p class="rag-scope-note">Scoped to: {esc(turn["scope_title"])}</p>'
    return f'<div class="rag-sources">{head}{"".join(items) or "<p>No citations.</p>"}{extra}</div>'


# ------------------------------------------------------------------------------ papers tab


def render_paper(paper) -> str:
    if paper is None:
        return '<div class="rag-paper rag-empty">Select a paper in the table to see its abstract.</div>'
    meta = []
    if paper.authors:
        authors = ", ".join(paper.authors[:8]) + (" et al." if len(paper.authors) > 8 else "")
        meta.append(esc(authors))
    if paper.date:
        meta.append(esc(paper.date))
    links = _paper_links(paper)
    return (
        f'<div class="rag-paper"><h3 class="rag-paper-title">{esc(paper.title)}</h3>'
        + (f'<div class="rag-meta">{" · ".join(meta)}</div>' if meta else "")
        + f'<p class="rag-abstract">{esc(paper.abstract)}</p>'
        + (f'<div class="rag-meta">{links}</div>' if links else '<div class="rag-meta">no code link in the abstract</div>')
        + "</div>"
    )


def filter_papers(papers: Mapping, query: str, code_only: bool = False) -> list:
    """Papers whose title or abstract contains every word of `query` (case-insensitive), title hits first."""
    words = (query or "").lower().split()
    title_hits, abstract_hits = [], []
    for paper in papers.values():
        if code_only and not paper.code_urls:
            continue
        title = paper.title.lower()
        if all(w in title for w in words):
            title_hits.append(paper)
        elif all(w in title or w in paper.abstract.lower() for w in words):
            abstract_hits.append(paper)
    key = lambda p: p.title.lower()
    return sorted(title_hits, key=key) + sorted(abstract_hits, key=key)


# ------------------------------------------------------------------------------ export


def _md_plain(text: str) -> str:
    """Corpus text inside a Markdown file: neutralise raw HTML, keep it readable."""
    return (text or "").replace("<", "&lt;")


def conversation_markdown(turns: Iterable[Mapping], status: str = "") -> str:
    lines = ["# Paper RAG conversation", "", f"_Exported {datetime.now().strftime('%Y-%m-%d %H:%M')}_" + (f" · {status}" if status else ""), ""]
    for i, turn in enumerate(turns, start=1):
        lines += [f"## {i}. {_md_plain(turn['question'])}", ""]
        if turn.get("scope_title"):
            lines += [f"_About the paper: {_md_plain(turn['scope_title'])}_", ""]
        if turn.get("error"):
            lines += [f"> Error: {_md_plain(turn['error'])}", ""]
            continue
        lines += [_md_plain(turn.get("answer", "")), ""]
        if turn.get("abstained") and turn.get("possibly_related"):
            lines += ["Possibly related papers:", ""] + [f"- {_md_plain(p['title'])}" for p in turn["possibly_related"]] + [""]
        if turn.get("citations"):
            lines += ["**Sources**", ""] + [f"[{c['n']}] {_md_plain(c['title'])}  " for c in turn["citations"]] + [""]
        if turn.get("notice"):
            lines += [f"_{_md_plain(turn['notice'])}_", ""]
    return "\n".join(lines).rstrip() + "\n"
