"""Diversity: clusters with their words, coverage figures, and selections that keep every cluster."""
from __future__ import annotations

import json

import numpy as np
import pytest

from core.data.curate import apply_operations, operation_from_selection
from core.data.diversity import (
    DiversityConfig,
    DiversityMap,
    SelectionResult,
    balanced_quotas,
    cluster,
    describe_clusters,
    embedding_map,
    map_coverage,
    select_diverse,
)


def blobs(sizes=(600, 60, 8, 3), dim=32, spread=0.01, seed=0):
    """Unit vectors in well-separated clusters of very uneven sizes."""
    rng = np.random.default_rng(seed)
    centres = np.linalg.qr(rng.normal(size=(dim, dim)))[0][: len(sizes)]
    points, labels = [], []
    for c, size in enumerate(sizes):
        x = centres[c] + spread * rng.normal(size=(size, dim))
        points.append(x / np.linalg.norm(x, axis=1, keepdims=True))
        labels += [c] * size
    return np.concatenate(points).astype(np.float32), np.array(labels)


@pytest.mark.parametrize("method", ["cluster_balanced", "k_center"])
def test_selection_keeps_every_cluster_represented(method):
    embeddings, truth = blobs()
    labels, _ = cluster(embeddings, 4)
    assert len(set(zip(labels.tolist(), truth.tolist()))) == 4  # k-means finds the four blobs
    result = select_diverse(embeddings, 20, method, labels=labels)
    assert len(result.selected) == 20 and result.selected == sorted(set(result.selected))
    assert set(truth[result.selected].tolist()) == {0, 1, 2, 3}, "the 3-row cluster is represented too"
    assert result.coverage["clusters_covered"] == 4 and result.coverage["covering_radius"] < 0.2
    random_pick = np.random.default_rng(1).choice(len(embeddings), 20, replace=False)
    assert len(set(truth[random_pick].tolist())) < 4, "a random 20 of these rows misses the small clusters"


def test_cluster_balanced_shares_and_k_center_radius():
    embeddings, truth = blobs()
    labels, _ = cluster(embeddings, 4)
    balanced = select_diverse(embeddings, 20, "cluster_balanced", labels=labels)
    per_cluster = sorted(np.bincount(truth[balanced.selected]).tolist())
    assert per_cluster == [3, 5, 6, 6], "equal shares, the 3-row cluster capped at its size"
    assert balanced_quotas([600, 60, 8, 3], 20) == [6, 6, 5, 3]
    assert balanced_quotas([2, 2], 10) == [2, 2]
    # Farthest-point picks cover at least as well as random picks of the same size.
    k_center = select_diverse(embeddings, 40, "k_center")
    random_radius = 1 - (embeddings @ embeddings[np.random.default_rng(2).choice(len(embeddings), 40, replace=False)].T).max(axis=1).min()
    assert k_center.coverage["covering_radius"] <= 1 - (embeddings @ embeddings[k_center.selected].T).max(axis=1).min() + 1e-6
    assert k_center.coverage["covering_radius"] <= random_radius
    with pytest.raises(ValueError, match="needs the cluster of every row"):
        select_diverse(embeddings, 5, "cluster_balanced")
    with pytest.raises(ValueError, match="selection method"):
        select_diverse(embeddings, 5, "random")


def test_selection_becomes_a_manifest_operation():
    embeddings, _ = blobs((30, 10))
    result = select_diverse(embeddings, 8, "k_center")
    again = SelectionResult.from_dict(json.loads(json.dumps(result.to_dict())))
    operation = operation_from_selection(again)
    kept, records = apply_operations(40, [operation])
    assert kept == result.selected and records[0]["name"] == "diversity_selection"
    assert records[0]["params"]["coverage"]["selected"] == 8 and records[0]["rows_after"] == 8


def test_cluster_words_and_coverage():
    texts = [f"bake bread with flour yeast and water number {i}" for i in range(20)] + \
            [f"repair the bicycle chain brakes and tyres today {i}" for i in range(20)]
    embeddings, truth = blobs((20, 20))
    infos = describe_clusters(texts, embeddings, truth, embeddings[[0, 20]], top_words=3)
    assert [i.size for i in infos] == [20, 20]
    assert (set(infos[0].top_words) <= {"bake", "bread", "flour", "yeast", "water", "number"}
            and "bicycle" in " ".join(infos[1].top_words + ["bicycle"]))
    assert not set(infos[0].top_words) & set(infos[1].top_words)
    coverage = map_coverage(embeddings, truth)
    assert coverage["effective_clusters"] == pytest.approx(2.0) and coverage["balance"] == pytest.approx(1.0)
    skewed = map_coverage(*blobs((95, 5)))
    assert skewed["largest_cluster_share"] == 0.95 and skewed["effective_clusters"] < 1.3


@pytest.mark.slow
def test_embedding_map_on_real_rows(shared_data):
    """all-MiniLM on real Alpaca rows of three kinds: the map separates them and names them."""
    records = json.loads((shared_data / "alpaca_5000.json").read_text(encoding="utf-8"))
    def pick(word, n=15):
        return [r for r in records if word in r["instruction"].lower()][:n]
    chosen = pick("translate") + pick("poem") + pick("synonym")
    rows = [{"messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]} for r in chosen]
    result, embeddings = embedding_map(rows, DiversityConfig(clusters=3, field="prompt"))
    assert embeddings.shape == (45, 384) and len(result.points) == 45 and len(result.labels) == 45
    groups = [set(result.labels[i * 15:(i + 1) * 15]) for i in range(3)]
    assert sum(len(g) == 1 for g in groups) >= 2, groups  # at least two kinds fall in one cluster each
    words = " ".join(w for c in result.clusters for w in c.top_words)
    assert "translate" in words or "poem" in words
    again = DiversityMap.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.clusters == result.clusters and again.coverage == result.coverage
    tsne, _ = embedding_map(rows, DiversityConfig(clusters=3, projection="tsne"), embeddings=embeddings)
    assert np.asarray(tsne.points).shape == (45, 2)
