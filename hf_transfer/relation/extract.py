"""Knowledge graphs extracted from data, by deterministic, documented rules.

The rule (:func:`graph_from_texts`):

1. **Tokens.** Lower-case, Unicode NFKC; a token is a run of letters/digits/apostrophes that starts with a letter
   (``[a-z][a-z0-9']*``), at least ``min_token_length`` long, not in :data:`STOPWORDS`.
2. **Salient terms per group** (a group is a class or a domain): the log-odds ratio with an informative Dirichlet
   prior (Monroe, Colaresi & Quinn 2008, "Fightin' Words", eq. 22), each group against all the others. With
   ``y_w`` the count of term ``w`` in the group, ``r_w`` in the rest, ``n`` and ``m`` their token totals and the
   prior ``a_w = prior * (y_w + r_w)`` (``a_0 = sum_w a_w``)::

       delta_w = log((y_w + a_w) / (n + a_0 - y_w - a_w)) - log((r_w + a_w) / (m + a_0 - r_w - a_w))
       z_w     = delta_w / sqrt(1 / (y_w + a_w) + 1 / (r_w + a_w))

   The ``top_k`` terms with the largest ``z`` (ties broken by term, alphabetically), among terms seen at least
   ``min_count`` times in the group and with ``z > min_z``, become edges ``group -[has_term]-> term`` of weight
   ``z``.
3. **Co-occurrence** (optional): two selected terms that appear in the same document at least ``min_cooccurrence``
   times are joined by ``term -[co_occurs]-> term`` (alphabetical order) with weight = normalised PMI over
   documents, ``npmi = log(p(a,b) / (p(a) p(b))) / -log p(a,b)``, kept when ``npmi > min_npmi``.

Same input, same graph: no randomness, no model.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations

from ..errors import DataError
from .graph import KnowledgeGraph

_TOKEN = re.compile(r"[a-z][a-z0-9']*")

#: A small English stop list (function words and review boilerplate); salient terms are content words.
STOPWORDS = frozenset(
    """a about above after again against all also am an and any are aren't as at be because been before being below
    between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down during each few
    for from further get got had hadn't has hasn't have haven't having he her here hers herself him himself his how
    i if in into is isn't it it's its itself just let's like me more most much my myself no nor not now of off on
    once one only or other ought our ours ourselves out over own really same she should shouldn't so some such than
    that that's the their theirs them themselves then there there's these they this those through to too two under
    until up us very was wasn't we were weren't what when where which while who whom why will with won't would
    wouldn't you your yours yourself yourselves 's n't br quot amp""".split()
)


def tokenize(text: str, *, min_token_length: int = 3, stopwords: frozenset[str] = STOPWORDS) -> list[str]:
    """The tokens of rule 1 (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text).lower()
    return [t.strip("'") for t in _TOKEN.findall(text) if len(t.strip("'")) >= min_token_length
            and t.strip("'") not in stopwords]


def log_odds_z(group: Counter, rest: Counter, *, prior: float = 0.01) -> dict[str, float]:
    """Rule 2's ``z`` of every term of ``group`` (the informative-Dirichlet log-odds, group vs rest)."""
    if prior <= 0:
        raise DataError(f"prior: must be > 0, got {prior}")
    n, m = sum(group.values()), sum(rest.values())
    vocabulary = set(group) | set(rest)
    alpha = {w: prior * (group[w] + rest[w]) for w in vocabulary}
    a0 = sum(alpha.values())
    out = {}
    for w in group:
        y, r, a = group[w], rest[w], alpha[w]
        delta = math.log((y + a) / (n + a0 - y - a)) - math.log((r + a) / (m + a0 - r - a))
        out[w] = delta / math.sqrt(1.0 / (y + a) + 1.0 / (r + a))
    return out


def salient_terms(
    texts: Sequence[str],
    groups: Sequence[str],
    *,
    top_k: int = 20,
    min_count: int = 3,
    min_z: float = 0.0,
    prior: float = 0.01,
    min_token_length: int = 3,
) -> dict[str, list[tuple[str, float]]]:
    """``{group: [(term, z), ...]}``, the ``top_k`` salient terms of each group by rule 2, strongest first."""
    if len(texts) != len(groups):
        raise DataError(f"texts and groups: {len(texts)} texts but {len(groups)} group names")
    counts: dict[str, Counter] = {}
    for text, group in zip(texts, groups):
        counts.setdefault(str(group), Counter()).update(tokenize(text, min_token_length=min_token_length))
    if len(counts) < 2:
        raise DataError("groups: salient terms contrast groups with each other; give at least two groups")
    total = Counter()
    for c in counts.values():
        total.update(c)
    out = {}
    for group in sorted(counts):
        rest = total.copy()
        rest.subtract(counts[group])
        z = log_odds_z(counts[group], +rest, prior=prior)
        kept = [(w, s) for w, s in z.items() if counts[group][w] >= min_count and s > min_z]
        out[group] = sorted(kept, key=lambda ws: (-ws[1], ws[0]))[:top_k]
    return out


def cooccurrence_edges(
    texts: Iterable[str],
    terms: Iterable[str],
    *,
    min_cooccurrence: int = 3,
    min_npmi: float = 0.0,
    min_token_length: int = 3,
) -> list[tuple[str, str, float]]:
    """Rule 3: ``(term_a, term_b, npmi)`` for pairs of ``terms`` that co-occur in documents, ``a < b``."""
    vocabulary = set(terms)
    docs = [sorted(vocabulary.intersection(tokenize(t, min_token_length=min_token_length))) for t in texts]
    n = len(docs)
    if n == 0:
        return []
    single, pair = Counter(), Counter()
    for doc in docs:
        single.update(doc)
        pair.update(combinations(doc, 2))
    edges = []
    for (a, b), c in sorted(pair.items()):
        if c < min_cooccurrence:
            continue
        p_ab = c / n
        if p_ab >= 1.0:
            continue  # in every document: npmi is undefined (0/0) and the pair says nothing
        npmi = math.log(p_ab / ((single[a] / n) * (single[b] / n))) / -math.log(p_ab)
        if npmi > min_npmi:
            edges.append((a, b, npmi))
    return edges


def graph_from_texts(
    texts: Sequence[str],
    groups: Sequence[str],
    *,
    group_kind: str = "domain",
    top_k: int = 20,
    min_count: int = 3,
    prior: float = 0.01,
    cooccurrence: bool = True,
    min_cooccurrence: int = 3,
    min_npmi: float = 0.0,
    min_token_length: int = 3,
) -> KnowledgeGraph:
    """Extract a graph from texts tagged with a group (a class or a domain) by the module's rules.

    Returns a graph with ``group`` nodes (``kind=group_kind``), ``term`` nodes (``kind="term"``), ``has_term`` edges
    weighted by ``z`` and, with ``cooccurrence``, ``co_occurs`` edges weighted by NPMI.
    """
    salient = salient_terms(
        texts, groups, top_k=top_k, min_count=min_count, prior=prior, min_token_length=min_token_length
    )
    kg = KnowledgeGraph()
    for group, terms in salient.items():
        kg.add_node(group, kind=group_kind)
        for term, z in terms:
            if term not in kg:
                kg.add_node(term, kind="term")
            kg.add_triple(group, "has_term", term, z)
    if cooccurrence:
        selected = sorted({t for terms in salient.values() for t, _ in terms})
        for a, b, npmi in cooccurrence_edges(
            texts, selected, min_cooccurrence=min_cooccurrence, min_npmi=min_npmi, min_token_length=min_token_length
        ):
            kg.add_triple(a, "co_occurs", b, npmi)
    return kg


def graph_from_descriptions(
    descriptions: Mapping[str, str], *, kind: str = "domain", min_token_length: int = 3
) -> KnowledgeGraph:
    """A graph from one short description per domain (or class): ``name -[mentions]-> term`` (weight 1) for every
    distinct token of its description (rule 1). Domains whose descriptions share words meet at those term nodes, so
    random-walk relatedness (:func:`hf_transfer.relation.relatedness`) ranks them close."""
    kg = KnowledgeGraph()
    for name in descriptions:
        kg.add_node(str(name), kind=kind)
    for name, text in descriptions.items():
        for term in sorted(set(tokenize(text, min_token_length=min_token_length))):
            if term not in kg:
                kg.add_node(term, kind="term")
            kg.add_triple(str(name), "mentions", term)
    return kg
