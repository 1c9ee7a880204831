"""Pure rendering for the web UI: the conversation, each answer's sources, papers, Markdown exports.

Everything that comes from the corpus (titles, abstracts, URLs), from a user or from a browser's saved
state is escaped here, in one place, before it reaches HTML. The functions take plain dicts (an
`Answer.to_dict()` plus a few UI keys) so they are tested without Gradio.

Ids the page's script and tests rely on: each answer is `#turn-<t>` (t = 1, 2, … in the conversation),
its citations are links `a.rag-cite[href="#src-<t>-<n>"]`, its source cards are `#src-<t>-<n>` in the
side panel and `#src-<t>-<n>-m` in the answer's own (narrow-screen) accordion. Buttons carry
`data-action` (copy, up, down, comment, regenerate, ask-new, more, open-paper) and `data-turn`.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from urllib.parse import quote, urlparse

from markdown_it import MarkdownIt

from rag.answer.assistant import more_note
from rag.answer.citations import (
    MARKER,
    claims_by_source,
    expand,
    find_spans,
    merge_spans,
)
from rag.text import strip_bidi, terminal_safe

# Answers are Markdown from our own extractive answerer or an LLM: rendered with raw HTML escaped and no
# links, images or reference definitions (an answer cannot smuggle a link or a tracking pixel in).
_MARKDOWN = MarkdownIt("commonmark", {"html": False}).disable(["link", "image", "autolink", "reference"])
HIGH_CONFIDENCE = 0.85  # calibrated P(answerable) at or above which an answer is labelled "high confidence"

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



# ------------------------------------------------------------------------------ answers


def titles_by_n(turn: Mapping) -> dict[int, str]:
    """Citation number → title, from the citations (falling back to the sources)."""
    out = {int(s["n"]): s["title"] for s in turn.get("sources") or []}
    out.update({int(c["n"]): c["title"] for c in turn.get("citations") or []})
    return out


def answer_html(text: str, t: int, titles: Mapping[int, str]) -> str:
    """The answer's Markdown as HTML, each `[n]` a link to source card `#src-<t>-<n>` (title as tooltip)."""
    rendered = _MARKDOWN.render(strip_bidi(text or ""))

    def cite(match: re.Match) -> str:
        parts = []
        for n in expand(html.unescape(match.group(1)))[0]:
            title = titles.get(n)
            parts.append(str(n) if title is None else
                         f'<a class="rag-cite" href="#src-{t}-{n}" data-turn="{t}" data-n="{n}" '
                         f'title="[{n}] {esc(title)}">{n}</a>')
        return f"<sup>[{', '.join(parts)}]</sup>" if parts else ""

    return MARKER.sub(cite, rendered)


def confidence(turn: Mapping) -> tuple[str, str] | None:
    """(label, explanation) from the calibrated answer confidence, or None (abstained, scoped, error)."""
    judgement = turn.get("judgement") or {}
    if turn.get("abstained") or turn.get("error") or not judgement:
        return None
    if judgement.get("source") == "llm-evidence":
        best = int(judgement.get("best_relevance") or 0)
        label = "high" if best >= 8 else "medium"
        return label, (f"The LLM judged {judgement.get('passed')} of {judgement.get('judged')} papers relevant "
                       f"(best {best}/10).")
    level, p = judgement.get("level"), float(judgement.get("confidence") or 0.0)
    label = "low" if level == "low" else "high" if p >= HIGH_CONFIDENCE else "medium"
    return label, f"Calibrated probability that the papers answer this question: {p:.0%}."


def _stages_line(turn: Mapping) -> str:
    stages = [st for st in turn.get("stages") or [] if st.get("calls")]
    return " · ".join(f"{esc(st['name'])}: {int(st['calls'])} call{'s' if st['calls'] != 1 else ''}, "
                      f"{int(st['prompt_tokens']) + int(st['completion_tokens']):,} tokens, {float(st['ms']) / 1000:.1f} s"
                      for st in stages)


def _button(action: str, t: int, label: str, title: str = "", extra: str = "", cls: str = "") -> str:
    tip = f' title="{esc(title)}" aria-label="{esc(title)}"' if title else ""
    return (f'<button type="button" class="rag-btn {cls}" data-action="{action}" data-turn="{t}"{tip}{extra}>'
            f"{label}</button>")


def turn_html(turn: Mapping, t: int, papers: Mapping, last: bool = False) -> str:
    """One finished question and answer, with its signals, actions and (narrow screens) its sources."""
    question = f'<div class="rag-q">{esc(turn.get("question", ""))}'
    if turn.get("scope_title"):
        question += f'<div class="rag-scope-note">about: {esc(turn["scope_title"])}</div>'
    question += "</div>"
    if turn.get("error"):
        return (f'<article class="rag-turn rag-error" id="turn-{t}" data-turn="{t}">{question}'
                f'<div class="rag-a">⚠️ {esc(turn["error"])}</div></article>')
    parts = []
    if turn.get("standalone_question"):
        parts.append(f'<div class="rag-searched">Searched for: “{esc(turn["standalone_question"])}” '
                     + _button("ask-new", t, "Ask as a new question", "Ask the question as typed, without the "
                               "conversation") + "</div>")
    label = confidence(turn)
    if label:
        parts.append(f'<span class="rag-conf rag-conf-{label[0]}" title="{esc(label[1])}">{label[0]} confidence</span>')
    if turn.get("abstained"):
        parts.append(f'<div class="rag-answer"><p><strong>Not answered from the corpus.</strong> '
                     f'{esc(turn.get("answer", ""))}</p></div>')
        related = turn.get("possibly_related") or []
        if related:
            parts.append('<div class="rag-related">Possibly related: '
                         + "; ".join(_paper_link(p["paper_id"], p["title"]) for p in related) + "</div>")
    else:
        parts.append(f'<div class="rag-answer">{answer_html(turn.get("answer", ""), t, titles_by_n(turn))}</div>')
    for flag in turn.get("flagged") or []:
        parts.append(f'<div class="rag-flag">⚠️ Flagged: “{esc(flag.get("sentence"))}” {esc(flag.get("reason"))}</div>')
    if turn.get("more_papers"):
        more = int(turn["more_papers"])
        parts.append(f'<div class="rag-more">{more} more paper{"s" if more > 1 else ""} passed the relevance check. '
                     + _button("more", t, "Show them", "List every paper that passed") + "</div>")
    notice = turn.get("notice") or ""
    if turn.get("more_papers"):  # the "Show them" button says it better
        notice = " ".join(notice.replace(more_note(int(turn["more_papers"])) or "", "").split())
    if notice:
        parts.append(f'<div class="rag-notice">{esc(notice)}</div>')
    stages = _stages_line(turn)
    if stages:
        parts.append(f'<div class="rag-stages">{stages}</div>')
    cards = turn_sources_html(turn, t, papers, suffix="-m")
    parts.append(f'<details class="rag-inline-sources"><summary>Sources</summary>{cards}</details>')
    rated = turn.get("feedback")
    actions = [
        _button("copy", t, "Copy", "Copy the answer as Markdown", f' data-md="{esc(turn_markdown(turn))}"'),
        _button("up", t, "▲ Good", "Good answer (thumbs up)", cls="rag-fb" + (" rag-on" if rated == "up" else "")),
        _button("down", t, "▼ Bad", "Bad answer (thumbs down)", cls="rag-fb" + (" rag-on" if rated == "down" else "")),
    ]
    if last:
        actions.append(_button("regenerate", t, "Regenerate", "Answer this question again"))
    parts.append(f'<div class="rag-actions">{"".join(actions)}</div>')
    if rated and not turn.get("feedback_comment"):
        parts.append('<div class="rag-comment">Thanks, your rating is saved. Add a comment (optional): '
                     '<textarea rows="2" maxlength="2000" aria-label="comment"></textarea>'
                     + _button("comment", t, "Send comment") + "</div>")
    elif rated:
        parts.append('<div class="rag-comment">Thanks, your rating and comment are saved.</div>')
    return f'<article class="rag-turn" id="turn-{t}" data-turn="{t}">{question}<div class="rag-a">{"".join(parts)}</div></article>'


def pending_html(pending: Mapping, t: int) -> str:
    """The answer being worked on: the stage ("judging 15 papers… 9 relevant"), then the streamed text."""
    question = f'<div class="rag-q">{esc(pending.get("question", ""))}</div>'
    note = f'<div class="rag-notice">{esc(pending["note"])}</div>' if pending.get("note") else ""
    text = pending.get("streamed") or ""
    body = (f'<div class="rag-answer">{_MARKDOWN.render(strip_bidi(text))}</div>' if text else
            f'<div class="rag-stage" role="status">{esc(pending.get("stage") or "Searching the papers…")}</div>')
    return f'<article class="rag-turn rag-pending" id="turn-{t}" data-turn="{t}">{question}<div class="rag-a">{note}{body}</div></article>'


EMPTY_CONVERSATION = ('<div class="rag-conv-empty">Ask about the indexed ML papers. Every claim cites its paper; '
                      "follow-up questions keep the context.</div>")


def conversation_html(turns: list[Mapping], papers: Mapping, pending: Mapping | None = None) -> str:
    """The whole conversation (finished turns, then the one in progress) as one HTML block."""
    items = [turn_html(turn, t, papers, last=(t == len(turns) and pending is None))
             for t, turn in enumerate(turns, start=1)]
    if pending is not None:
        items.append(pending_html(pending, len(turns) + 1))
    inner = "".join(items) or EMPTY_CONVERSATION
    return f'<div class="rag-conv" data-turns="{len(turns)}" data-busy="{int(pending is not None)}">{inner}</div>'


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
    answer sentences citing `n` located in the abstract (rag.answer.citations.find_spans)."""
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


# ------------------------------------------------------------------------------ sources

EMPTY_SOURCES = (
    '<div class="rag-sources rag-empty"><h3>Sources</h3>'
    "<p>Ask a question: the papers cited in the answer appear here, with the supporting passage highlighted. "
    "Click a citation in any answer to see that answer's sources.</p></div>"
)


def _paper_link(pid: str, title: str) -> str:
    """A title that opens the paper in the Papers tab."""
    return (f'<a class="rag-paper-link" href="#paper" data-action="open-paper" data-pid="{esc(pid)}" '
            f'title="Open in the Papers tab">{esc(title)}</a>')


def _paper_links(paper) -> str:
    links = [link(u) for u in (getattr(paper, "code_urls", ()) or ())]
    links = [lk for lk in links if lk]
    out = []
    if links:
        out.append("code: " + " · ".join(links))
    url = getattr(paper, "url", None)
    if url and safe_url(url):
        out.append(link(url, "paper ↗"))
    return " · ".join(out)


def _scores(src: Mapping, mode: str | None) -> str:
    bits = [f"retrieval score {float(src.get('score') or 0.0):.4f}" + (f" ({esc(mode)})" if mode else "")]
    if src.get("similarity") is not None:
        bits.append(f"cosine similarity {float(src['similarity']):.3f}")
    return ('<details class="rag-scores"><summary>scores</summary>' + " · ".join(bits)
            + "<br><small>Rank-fusion scores only order papers within one answer; the confidence label is "
              "the calibrated signal.</small></details>")


def source_card(turn: Mapping, t: int, src: Mapping, paper, suffix: str = "") -> str:
    n = int(src["n"])
    abstract = paper.abstract if paper else ""
    snippet = highlighted_snippet(abstract, support_spans(turn, n, abstract), src.get("snippet", ""))
    links = _paper_links(paper) if paper else ""
    return (f'<div class="rag-src" id="src-{t}-{n}{suffix}" data-turn="{t}" data-n="{n}" tabindex="-1">'
            f'<div class="rag-src-title"><span class="rag-n">[{n}]</span> {_paper_link(src["paper_id"], src["title"])}</div>'
            f'<div class="rag-snippet">{snippet}</div>'
            + (f'<div class="rag-meta">{links}</div>' if links else "")
            + f'<div class="rag-meta">{_scores(src, turn.get("retrieval_mode"))}</div></div>')


def turn_sources_html(turn: Mapping, t: int, papers: Mapping, suffix: str = "") -> str:
    """One answer's source cards: the cited papers with their support highlighted, then the rest."""
    if turn.get("abstained"):
        items = []
        for rel in turn.get("possibly_related") or []:
            paper = papers.get(rel.get("paper_id"))
            abstract = paper.abstract if paper else ""
            snippet = abstract if len(abstract) <= 300 else abstract[:299].rsplit(" ", 1)[0] + "…"
            meta = _paper_links(paper) if paper else ""
            items.append(f'<div class="rag-src"><div class="rag-src-title">{_paper_link(rel["paper_id"], rel["title"])}</div>'
                         f'<div class="rag-snippet">{esc(snippet)}</div>'
                         + (f'<div class="rag-meta">{meta}</div>' if meta else "") + "</div>")
        return ('<p class="rag-abstain-note">The answer is not in the indexed papers. Possibly related:</p>'
                + ("".join(items) or "<p>No related papers either.</p>"))
    sources = {int(s["n"]): s for s in turn.get("sources") or []}
    cited = [int(c["n"]) for c in turn.get("citations") or [] if int(c["n"]) in sources]
    cards = "".join(source_card(turn, t, sources[n], papers.get(sources[n]["paper_id"]), suffix) for n in cited)
    uncited = [s for n, s in sorted(sources.items()) if n not in cited]
    extra = ""
    if uncited:
        rows = "".join(f"<li>[{int(s['n'])}] {_paper_link(s['paper_id'], s['title'])}</li>" for s in uncited)
        extra = f'<details class="rag-uncited"><summary>Also retrieved, not cited ({len(uncited)})</summary><ul>{rows}</ul></details>'
    scope = f'<p class="rag-scope-note">Scoped to: {esc(turn["scope_title"])}</p>' if turn.get("scope_title") else ""
    return f'{scope}{cards or "<p>No citations.</p>"}{extra}'


def sources_panel(turns: list[Mapping], papers: Mapping, active: int | None = None) -> str:
    """The side panel: every answer's sources, one section per answer; `active` (default the last answer)
    is shown, and clicking a citation in another answer shows that answer's section."""
    sections = []
    shown = [t for t, turn in enumerate(turns, start=1) if not turn.get("error")]
    if not shown:
        return EMPTY_SOURCES
    active = active if active in shown else shown[-1]
    for t in shown:
        turn = turns[t - 1]
        cited = len(turn.get("citations") or [])
        count = "" if turn.get("abstained") else f" ({cited} cited of {len(turn.get('sources') or [])})"
        sections.append(
            f'<section class="rag-turn-src{" active" if t == active else ""}" data-turn="{t}">'
            f'<h3>Sources <small>answer {t}{count}: {esc(turn.get("question", ""))}</small></h3>'
            f"{turn_sources_html(turn, t, papers)}</section>")
    nav = ""
    if len(shown) > 1:
        nav = ('<nav class="rag-src-nav" aria-label="sources of which answer">Answer: '
               + "".join(f'<button type="button" class="rag-btn{" active" if t == active else ""}" data-show="{t}" '
                         f'title="{esc(turns[t - 1].get("question", ""))}">{t}</button>' for t in shown) + "</nav>")
    return f'<div class="rag-sources" data-turn="{active}">{nav}{"".join(sections)}</div>'


# ------------------------------------------------------------------------------ papers tab


def render_paper(paper, similar: Iterable[tuple] = ()) -> str:
    """The paper view: title, authors, date, abstract, links, and its nearest papers by paper vector."""
    if paper is None:
        return '<div class="rag-paper rag-empty">Select a paper in the table to see its abstract.</div>'
    meta = []
    if paper.authors:
        authors = ", ".join(paper.authors[:8]) + (" et al." if len(paper.authors) > 8 else "")
        meta.append(esc(authors))
    if paper.date:
        meta.append(esc(paper.date))
    links = _paper_links(paper)
    near = [(p, sim) for p, sim in similar if p is not None]
    similar_html = ""
    if near:
        rows = "".join(f'<li>{_paper_link(p.paper_id, p.title)} <small title="cosine of the paper vectors">{sim:.2f}</small></li>'
                       for p, sim in near)
        similar_html = f'<div class="rag-similar"><h4>Similar papers</h4><ol>{rows}</ol></div>'
    return (
        f'<div class="rag-paper" data-pid="{esc(paper.paper_id)}"><h3 class="rag-paper-title">{esc(paper.title)}</h3>'
        + (f'<div class="rag-meta">{" · ".join(meta)}</div>' if meta else "")
        + f'<p class="rag-abstract">{esc(paper.abstract)}</p>'
        + (f'<div class="rag-meta">{links}</div>' if links else '<div class="rag-meta">no code link in the abstract</div>')
        + similar_html + "</div>"
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


# ------------------------------------------------------------------------------ Markdown (copy and export)


_MD_LINK_AFTER = ("(", "[", ":")  # after "[n]" these would make a link or a link definition of it
_URL_SAFE = ":/?#@!$&*+,;=%-._~()"  # kept as is in an exported URL; anything else (quotes, <, >, ...) %-encoded


def md_inert(text: str, one_line: bool = False) -> str:
    """Corpus, user or LLM text inside the Markdown export, inert in any Markdown renderer: no HTML can form
    (`<` and `>` as entities), no link, image or link definition (every `[` and `]` escaped except the answer's
    citation markers `[n]`), no escape sequences, control or bidi characters. Bare http(s) URLs stay text that
    a renderer may turn into a link, which is what "only http(s) links" allows."""
    text = terminal_safe(text or "").replace("\\", "\\\\").replace("<", "&lt;").replace(">", "&gt;")
    if one_line:
        text = " ".join(text.split())
    out, pos = [], 0
    for m in MARKER.finditer(text):
        if text[m.end():m.end() + 1] in _MD_LINK_AFTER:  # "[1](javascript:...)" or "[1]: url": not a citation
            continue
        out += [_escape_brackets(text[pos:m.start()]), m.group()]
        pos = m.end()
    out.append(_escape_brackets(text[pos:]))
    return "".join(out)


def _escape_brackets(text: str) -> str:
    return text.replace("[", "\\[").replace("]", "\\]")


def md_url(url: str | None) -> str | None:
    """An http(s) URL for the Markdown export as an autolink `<...>`, %-encoded so it cannot end the link or
    start HTML; None for anything else."""
    href = safe_url(url)
    return f"<{quote(href, safe=_URL_SAFE)}>" if href else None


def references_markdown(turn: Mapping) -> list[str]:
    """The numbered reference list of one answer: `[n] Title. <URL>` for each cited paper."""
    urls = {int(s["n"]): s.get("url") for s in turn.get("sources") or []}
    lines = []
    for c in turn.get("citations") or []:
        url = md_url(urls.get(int(c["n"])))
        lines.append(f"- [{int(c['n'])}] {md_inert(c['title'], one_line=True)}" + (f". {url}" if url else ""))
    return lines


def turn_markdown(turn: Mapping) -> str:
    """One answer as clean Markdown (what Copy puts on the clipboard): the text with its [n] markers and
    the numbered references; no HTML."""
    if turn.get("error"):
        return f"Error: {md_inert(turn['error'])}\n"
    lines = [md_inert(turn.get("answer", "")).strip(), ""]
    if turn.get("abstained") and turn.get("possibly_related"):
        lines += ["Possibly related papers:", ""] + [f"- {md_inert(p['title'], one_line=True)}" for p in turn["possibly_related"]] + [""]
    refs = references_markdown(turn)
    if refs:
        lines += ["**References**", ""] + refs + [""]
    return "\n".join(lines).rstrip() + "\n"


def conversation_markdown(turns: Iterable[Mapping], status: str = "") -> str:
    lines = ["# Paper RAG conversation", "", f"_Exported {datetime.now().strftime('%Y-%m-%d %H:%M')}_" + (f" · {status}" if status else ""), ""]
    for i, turn in enumerate(turns, start=1):
        lines += [f"## {i}. {md_inert(turn['question'], one_line=True)}", ""]
        if turn.get("scope_title"):
            lines += [f"_About the paper: {md_inert(turn['scope_title'], one_line=True)}_", ""]
        if turn.get("standalone_question"):
            lines += [f"_Searched for: {md_inert(turn['standalone_question'], one_line=True)}_", ""]
        lines += [turn_markdown(turn)]
        if turn.get("notice") and not turn.get("error"):
            lines += [f"_{md_inert(turn['notice'], one_line=True)}_", ""]
    return "\n".join(lines).rstrip() + "\n"
