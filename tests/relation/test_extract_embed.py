"""Extraction rules against hand computations; embeddings against networkx / scipy references."""

from __future__ import annotations

import math
from collections import Counter

import networkx as nx
import numpy as np
import pytest
import scipy.linalg

from hf_transfer.errors import UserError
from hf_transfer.relation import (
    KnowledgeGraph,
    graph_from_descriptions,
    graph_from_texts,
    random_walk_embedding,
    salient_terms,
    spectral_eigenvalues,
    spectral_embedding,
    tokenize,
)
from hf_transfer.relation.embed import netmf_matrix
from hf_transfer.relation.extract import cooccurrence_edges, log_odds_z


def test_tokenize():
    assert tokenize("The Camera's lens is GREAT, isn't it? 4k  ok") == ["camera's", "lens", "great"]


def test_log_odds_matches_hand_computation():
    group, rest = Counter({"lens": 3, "good": 1}), Counter({"plot": 4, "good": 2})
    prior = 0.5
    n, m = 4, 6
    alpha = {"lens": 1.5, "good": 1.5, "plot": 2.0}
    a0 = 5.0
    y, r, a = 3, 0, alpha["lens"]
    delta = math.log((y + a) / (n + a0 - y - a)) - math.log((r + a) / (m + a0 - r - a))
    expected_lens = delta / math.sqrt(1 / (y + a) + 1 / (r + a))
    y, r, a = 1, 2, alpha["good"]
    delta = math.log((y + a) / (n + a0 - y - a)) - math.log((r + a) / (m + a0 - r - a))
    expected_good = delta / math.sqrt(1 / (y + a) + 1 / (r + a))
    z = log_odds_z(group, rest, prior=prior)
    assert z["lens"] == pytest.approx(expected_lens)
    assert z["good"] == pytest.approx(expected_good)
    assert z["lens"] > 0 > z["good"]


def test_salient_terms_and_graph_are_deterministic():
    texts = ["great lens sharp photos", "lens cap broke", "sharp zoom lens",
             "great plot characters", "boring plot", "characters felt flat plot"]
    groups = ["camera"] * 3 + ["books"] * 3
    terms = salient_terms(texts, groups, top_k=2, min_count=2)
    assert [t for t, _ in terms["camera"]] == ["lens", "sharp"]
    assert [t for t, _ in terms["books"]] == ["plot", "characters"]
    kg = graph_from_texts(texts, groups, top_k=2, min_count=2, min_cooccurrence=2)
    assert kg.graph.nodes["camera"]["kind"] == "domain" and kg.graph.nodes["lens"]["kind"] == "term"
    assert ("camera", "has_term", "lens", terms["camera"][0][1]) in kg.triples()
    # "lens" and "sharp" share 2 of 6 documents, lens alone is in 3, sharp in 2:
    npmi = math.log((2 / 6) / ((3 / 6) * (2 / 6))) / -math.log(2 / 6)
    assert ("lens", "co_occurs", "sharp", pytest.approx(npmi)) in kg.triples()
    again = graph_from_texts(list(texts), list(groups), top_k=2, min_count=2, min_cooccurrence=2)
    assert again.triples() == kg.triples()


def test_cooccurrence_skips_rare_and_ubiquitous_pairs():
    edges = cooccurrence_edges(["aaa bbb", "aaa bbb", "aaa ccc"], ["aaa", "bbb", "ccc"], min_cooccurrence=1)
    # aaa is in every document: p(aaa, x) = p(x), npmi(aaa, bbb) = log(1) / ... = 0, not > 0
    assert edges == []


def test_descriptions():
    kg = graph_from_descriptions({"camera_photo": "digital cameras, lenses and photo gear",
                                  "electronics": "consumer electronics, digital gadgets"})
    assert ("camera_photo", "mentions", "digital", 1.0) in kg.triples()
    assert kg.shortest_path("camera_photo", "electronics") == ["camera_photo", "digital", "electronics"]


def ring_of_cliques() -> KnowledgeGraph:
    kg = KnowledgeGraph()
    for c in range(3):
        members = [f"c{c}n{i}" for i in range(4)]
        for i in range(4):
            for j in range(i + 1, 4):
                kg.add_triple(members[i], "r", members[j], 1.0 + 0.1 * (i + j))
        kg.add_triple(members[0], "bridge", f"c{(c + 1) % 3}n1", 0.2)
    return kg


def test_spectral_embedding_solves_generalised_eigenproblem():
    kg = ring_of_cliques()
    vectors, order = spectral_embedding(kg, dim=3)
    values = spectral_eigenvalues(kg, dim=3)
    a = kg.adjacency(order)[0].toarray()
    d = np.diag(a.sum(1))
    ref_values = scipy.linalg.eigh(d - a, d, eigvals_only=True)
    np.testing.assert_allclose(values, ref_values[1:4], atol=1e-10)
    np.testing.assert_allclose((d - a) @ vectors, d @ vectors * values, atol=1e-10)
    # the normalised Laplacian spectrum networkx computes has the same eigenvalues
    nx_values = np.sort(nx.normalized_laplacian_spectrum(kg.undirected(), weight="weight"))
    np.testing.assert_allclose(values, nx_values[1:4], atol=1e-10)
    # members of one clique sit together: nearest other node is always in the same clique
    for i, node in enumerate(order):
        dist = np.linalg.norm(vectors - vectors[i], axis=1)
        dist[i] = np.inf
        assert order[int(dist.argmin())][:2] == node[:2]


def test_spectral_sparse_path_matches_dense(monkeypatch):
    kg = ring_of_cliques()
    dense_values = spectral_eigenvalues(kg, dim=3)
    monkeypatch.setattr("hf_transfer.relation.embed.DENSE_LIMIT", 3)
    sparse, order = spectral_embedding(kg, dim=3)
    # the ring's symmetry makes eigenvalues repeat, so compare the eigen-equation rather than the vectors
    np.testing.assert_allclose(spectral_eigenvalues(kg, dim=3), dense_values, atol=1e-8)
    a = kg.adjacency(order)[0].toarray()
    d = np.diag(a.sum(1))
    np.testing.assert_allclose((d - a) @ sparse, d @ sparse * dense_values, atol=1e-6)
    with pytest.raises(UserError, match="dim: 12 is too large"):
        spectral_embedding(kg, dim=12)


def test_netmf_matrix_window_one_closed_form():
    # T = 1: M = vol(G) / b * D^-1 A D^-1, i.e. M_ij = vol * A_ij / (b d_i d_j)
    a = np.array([[0, 2, 1], [2, 0, 0], [1, 0, 0]], dtype=float)
    d = a.sum(1)
    m = netmf_matrix(a, window=1, negative=2.0)
    np.testing.assert_allclose(m, d.sum() * a / (2.0 * np.outer(d, d)))
    # T = 2 adds P^2 D^-1 (P = D^-1 A), averaged over the window
    p = a / d[:, None]
    np.testing.assert_allclose(netmf_matrix(a, window=2, negative=1.0), d.sum() / 2 * (p + p @ p) / d[None, :])


def test_random_walk_embedding_separates_communities():
    kg = ring_of_cliques()
    vectors, order = random_walk_embedding(kg, dim=4, window=3)
    assert vectors.shape == (12, 4)
    for i, node in enumerate(order):
        sims = vectors @ vectors[i] / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(vectors[i]) + 1e-12)
        sims[i] = -np.inf
        assert order[int(sims.argmax())][:2] == node[:2]
