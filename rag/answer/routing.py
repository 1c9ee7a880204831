"""What shape an answer must take, decided before retrieval from the question and the conversation's records:

- a follow-up about the previous answer ("which of them …", "the second one", "papers like [2]") is answered
  from that answer's papers (rag.answer.followup);
- a comparison or two-part question gets one part per item or sub-question (rag.answer.comparison);
- a question naming something no indexed paper mentions says so (rag.judge.names); one naming something rare
  is answered only from the papers that mention it;
- a constraint the index holds no data for (years, authors, venues) is said to be unanswerable here.

A `Route` only chooses papers, the query to quote for and the words around the answer; the assistant's usual
steps (judge, compose, verify) still produce the answer, so every citation stays verified.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from rag.answer.comparison import COMPARISON, MULTIPART, split_question
from rag.answer.followup import ITEM, SIMILAR, Referent, resolve
from rag.judge.names import Name, NameCheck, absent_message, check_names, named_things
from rag.text import content_terms, matched_terms

RARE_MENTIONS = 20  # a name mentioned by at most this many papers restricts the answer to them
NAME_CANDIDATES = 200  # lexical hits checked for a name's mentions
# Words that ask for more about a paper without saying what: "tell me more about", "explain", "summarise".
_FILLER = frozenset(content_terms("tell me more about explain detail details summarize summarise summary describe "
                                  "anything else what's whats it its about paper"))
_YEAR = re.compile(r"\b(?:published|appeared|released|written|from|in|since|after|before|during|between)\s+"
                   r"(?:the\s+)?(?:year\s+)?(?:19|20)\d\d\b|\b(?:19|20)\d\d\s+papers\b|\bpublication (?:year|date)s?\b", re.I)
_AUTHOR = re.compile(r"\b(?:papers?|works?|articles?)\s+(?:written\s+)?by\s+[A-Z][a-z]+|\bauthored\s+by\b|"
                     r"\bwho\s+(?:wrote|authored)\b|\bauthors?\s+of\b", re.I)
_VENUE = re.compile(r"\b(?:at|in|to)\s+(?:NeurIPS|NIPS|ICML|ICLR|ACL|EMNLP|NAACL|CVPR|ICCV|ECCV|AAAI|IJCAI|KDD|"
                    r"SIGIR|COLING|Interspeech|ICASSP)\b|\baccepted\s+(?:at|to)\b|\bvenue\b|\baffiliat\w*\b", re.I)


@dataclass
class Route:
    """How to answer. `paper_ids`: answer from these papers only, in this order (None: retrieve);
    `query`: what to judge and quote for (None: the question); `listing`: force one bullet per paper;
    `restrict`: after retrieval keep only these papers; `lead` / `tail`: words before / lines after the
    answer; `final`: answer with this statement and no sources (with `related` papers as possibly related)."""

    paper_ids: list[str] | None = None
    query: str | None = None
    listing: bool | None = None
    restrict: list[str] | None = None
    lead: str | None = None
    tail: list[str] = field(default_factory=list)
    final: str | None = None
    related: list[str] = field(default_factory=list)
    referent: dict | None = None
    names: NameCheck | None = None
    empty_note: str | None = None  # said when the papers chosen hold nothing for the query

    @property
    def plain(self) -> bool:
        return (self.paper_ids is None and self.query is None and self.listing is None and self.restrict is None
                and self.final is None and not self.lead and not self.tail)


class Router:
    """Routes questions over one index. Its parts are passed in: the index (papers, lexical search, paper
    vectors), the retriever (for two-part questions) and the sentence vectors (for ranking within a set)."""

    def __init__(self, index, retriever, sentences, list_top_k: int):
        self._index = index
        self._retriever = retriever
        self._sentences = sentences
        self._list_top_k = list_top_k
        self._metadata: dict[tuple, bool] = {}

    # -- names ---------------------------------------------------------------------------------

    def _candidates(self, name: Name):
        seen = []
        for chunk_id, _score in self._index.lexical(name.text, NAME_CANDIDATES):
            pid = chunk_id.rsplit(":", 1)[0]
            if pid not in seen:
                seen.append(pid)
        return [p for p in (self._index.get(pid) for pid in seen) if p is not None]

    def check(self, names: list[Name]) -> NameCheck:
        return check_names(names, self._candidates)

    # -- the route -----------------------------------------------------------------------------

    def route(self, question: str, previous_papers: list[str] | None, has_history: bool) -> Route:
        """Raises QuestionError when the question refers to a previous answer that is not there."""
        referent = resolve(question, previous_papers) if (previous_papers or not has_history) else None
        if referent is not None:
            return self._over_referent(question, referent)
        constraint = self._missing_metadata(question)
        if constraint is not None:
            return Route(final=constraint)
        parts = split_question(question)
        if parts is not None and parts.kind == COMPARISON:
            compared = self._comparison(question, parts.items)
            if compared is not None:
                return compared
        names = named_things(question)
        if parts is not None and parts.kind == MULTIPART:
            return self._multipart(question, parts.items, names)
        if not names:
            return Route()
        check = self.check(names)
        if check.absent_subjects:
            related = [pid for pid in check.any_mention()][:3]
            return Route(final=absent_message(check.absent_subjects), names=check, related=related)
        # A name given as an example ("word2vec-style") neither restricts the answer nor, when absent, refuses
        # it: the answer is about the rest of the question, and says the example is in no paper.
        lead = absent_message(check.absent)[:-1] + "; the closest papers:" if check.absent else None
        rare = [ids for name, ids in zip(check.names, check.mentioned_by)
                if not name.example and len(ids) <= RARE_MENTIONS]
        if rare:
            allowed = list(dict.fromkeys(pid for ids in rare for pid in ids))
            return Route(restrict=allowed, names=check, lead=lead)
        return Route(names=check, lead=lead)

    def _over_referent(self, question: str, referent: Referent) -> Route:
        reference = referent.reference
        record = {"kind": referent.kind, "paper_ids": list(referent.paper_ids), "lead": referent.lead(),
                  "of": referent.of_total}
        rest_terms = [t for t in content_terms(reference.rest) if t not in _FILLER]
        if referent.kind == ITEM:
            paper = self._index.get(referent.paper_ids[0])
            query = reference.rest if rest_terms else (paper.title if paper else reference.rest)
            return Route(paper_ids=list(referent.paper_ids), query=query, listing=False,
                         lead=f"{referent.lead()}", referent=record)
        if referent.kind == SIMILAR:
            pid = referent.paper_ids[0]
            vectors = self._index.paper_vectors([pid])
            near = self._index.nearest_papers(vectors[pid], self._list_top_k + 1) if pid in vectors else []
            similar = [p.paper_id for p in near if p.paper_id != pid][: self._list_top_k]
            paper = self._index.get(pid)
            return Route(paper_ids=similar, query=paper.title if paper else question, listing=True,
                         lead=referent.lead(), referent=record)
        # SET: the papers of the previous answer that carry what is asked of them, best first
        if not rest_terms:
            return Route(paper_ids=list(referent.paper_ids), query=reference.rest or question, listing=True,
                         lead=referent.lead(), referent=record)
        chosen = self._within(reference.rest, list(referent.paper_ids))
        note = None
        if not chosen:
            note = (f"None of the {referent.of_total} papers of the previous answer matches "
                    f"“{_what(reference.rest)}”.")
        return Route(paper_ids=chosen, query=reference.rest, listing=True, lead=None if note else referent.lead(),
                     referent=record, empty_note=note)

    def _within(self, ask: str, paper_ids: list[str]) -> list[str]:
        """The papers whose text carries what `ask` asks of them: every named thing it names, and its rarest
        content terms; ranked by the closest sentence's similarity to `ask`."""
        papers = [p for p in (self._index.get(pid) for pid in paper_ids) if p is not None]
        names = named_things(ask)
        terms = [t for t in dict.fromkeys(content_terms(ask)) if t not in _FILLER]
        weights = {t: self._index.idf(t) for t in terms}
        total = sum(weights.values()) or 1.0
        qv = self._retriever.embed_query(ask)
        sims = self._sentences.best_similarity(qv, papers) if papers else []
        kept = []
        for paper, sim in zip(papers, sims):
            text = f"{paper.title}\n{paper.abstract}"
            if names and not all(n.in_text(text) for n in names):
                continue
            have = matched_terms(set(terms), set(content_terms(text)))
            coverage = sum(weights[t] for t in have) / total
            if names or coverage >= WITHIN_COVERAGE:
                kept.append((sim + coverage, paper.paper_id))
        kept.sort(reverse=True)
        return [pid for _, pid in kept]

    def _comparison(self, question: str, items: tuple[str, ...]) -> Route | None:
        """One paper per compared item: a named item ("MACE", "the 'mirage' paper") by the papers that
        mention its name; a described one ("the loss-perspective paper") by retrieval, never "absent"."""
        items = tuple(i for i in items if not _WH_OPENING.match(i))
        if len(items) < 2:
            return None
        plan: list[tuple[Name | None, str]] = []  # (the item's name, or None and the description to search)
        for item in items:
            inner = named_things(item)
            if inner:
                plan.append((inner[0], item))
            elif _DESCRIBED.search(item) or len(item.split()) > 3:
                plan.append((None, _DESCRIBED.sub(" ", item).strip() or item))
            else:
                plan.append((Name(item, exact_case=item.isupper() and len(item) > 1), item))
        names = [name for name, _ in plan if name is not None]
        check = self.check(names)
        mentioned = dict(zip((n.text for n in names), check.mentioned_by))
        chosen, tail = [], []
        for name, text in plan:
            if name is None:  # the description, in the question's context without the other items
                context = question
                for other in items:
                    context = context.replace(other, " ")
                hits = self._retriever.search(f"{text} {context}", 5)
                best = next((h.paper_id for h in hits if h.paper_id not in chosen), None)
            elif not mentioned[name.text]:
                tail.append(f"- **{name.text}** — {absent_message([name.text])}")
                continue
            else:
                best = self._best_for(name, mentioned[name.text])
            if best and best not in chosen:
                chosen.append(best)
        if not chosen:
            return Route(final=absent_message(check.absent), names=check)
        return Route(paper_ids=chosen, listing=True, tail=tail, names=check)

    def _best_for(self, name: Name, ids: tuple[str, ...]) -> str | None:
        """The paper that is about `name`: one naming it in its title, else the first that mentions it."""
        papers = [p for p in (self._index.get(pid) for pid in ids) if p is not None]
        titled = [p for p in papers if name.in_text(p.title)]
        return (titled or papers)[0].paper_id if papers else None

    def _multipart(self, question: str, parts: tuple[str, ...], names: list[Name]) -> Route:
        chosen, absent_lines = [], []
        check = self.check(names) if names else None
        inherited: list[Name] = []
        for part in parts:
            part_names = named_things(part)
            if not part_names and _LEANS.search(part):
                part_names = inherited  # "what speedup does it report?" asks about the previous part's subject
            inherited = part_names or inherited
            part_check = self.check(part_names) if part_names else None
            if part_check is not None and part_check.absent:
                line = f"- {absent_message(part_check.absent)}"
                if line not in absent_lines:
                    absent_lines.append(line)
                continue
            allowed = set(part_check.any_mention()) if part_check is not None else None
            hits = self._retriever.search(part, 10)
            best = next((h.paper_id for h in hits if allowed is None or h.paper_id in allowed), None)
            if best is None and allowed:
                best = next(iter(part_check.any_mention()))
            if best and best not in chosen:
                chosen.append(best)
        if not chosen:
            return Route(final=" ".join(dict.fromkeys(line[2:] for line in absent_lines)) or None, names=check)
        return Route(paper_ids=chosen, listing=True, tail=absent_lines, names=check)

    def _holds(self, field: str) -> bool:
        """Whether any indexed paper has `field` (read once per index generation, only when a question asks)."""
        key = (self._index.generation, field)
        if key not in self._metadata:
            self._metadata[key] = any(getattr(p, field) for p in self._index.papers())
        return self._metadata[key]

    def _missing_metadata(self, question: str) -> str | None:
        """A plain statement when the question filters on metadata the index does not hold."""
        if _YEAR.search(question) and not self._holds("date"):
            return "The indexed papers carry no publication years, so the papers cannot be filtered by year."
        if _AUTHOR.search(question) and not self._holds("authors"):
            return "The indexed papers carry no author names, so the papers cannot be filtered by author."
        if _VENUE.search(question):
            return "The indexed papers carry no venues or affiliations, so the papers cannot be filtered by them."
        return None


WITHIN_COVERAGE = 0.5  # idf-weighted share of a follow-up's terms a paper must carry (chosen on tune dialogues)


def _what(ask: str) -> str:
    """What a set follow-up asks of the papers: "do any work on audio?" -> "work on audio"."""
    return _ASK_OPENING.sub("", ask).strip(" ?.!") or ask


_ASK_OPENING = re.compile(r"^\s*(?:(?:which|what|who|do|does|did|are|is|were|can|could)\s+)+"
                          r"(?:(?:any|all|some|ones?|of)\s+)*", re.I)
_WH_OPENING = re.compile(r"^(?:what|which|how|why|who|where|when|does|do|is|are)\b", re.I)
# A compared item that describes a paper instead of naming it: "the loss-perspective paper", "the guardrail
# study", "the original work".
_DESCRIBED = re.compile(r"\b(?:paper|papers|study|studies|work|works|article|approach|method|analysis)\b", re.I)
_LEANS = re.compile(r"\b(?:it|its|they|their|them|this (?:method|model|paper|approach))\b", re.I)
