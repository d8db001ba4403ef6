"""Diversity: what a dataset covers, and choosing N rows that cover it.

- The map: every row's text embedded with all-MiniLM-L6-v2 (`core.embeddings`, unit vectors, so a dot
  product is the cosine), projected to 2-D (PCA by default; t-SNE on request) for a scatter plot.
- Clusters: k-means on the embeddings (k chosen from the set's size unless given), each with its size,
  share and top words (class-based TF-IDF over the cluster's texts: words frequent in the cluster and rare
  elsewhere) and the rows nearest its centre as examples.
- Coverage figures: how evenly the rows spread over the clusters (effective number of clusters, largest
  cluster's share), the mean cosine distance to a row's nearest neighbour and between random rows.
- Selection of N rows for diversity: ``k_center`` (greedy farthest-point: each pick is the row farthest from
  everything picked so far, a 2-approximation of the smallest covering radius) or ``cluster_balanced``
  (every cluster gets an equal share of N, capped at its size, the rest shared out again; inside a cluster
  the rows are picked farthest-point too). Every cluster is represented whenever N >= the number of clusters.
  The selection reports the coverage it reached (clusters covered, largest and mean distance from any row to
  its nearest selected row) and becomes the ``diversity_selection`` operation of the manifest.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import asdict, dataclass
from dataclasses import field as dc_field  # "field" is also a config attribute (prompt/answer/both)
from typing import Any, Callable, Optional, Sequence

import numpy as np

from core.data.text import FIELDS, row_texts, words
from core.embeddings import embed_texts

Progress = Optional[Callable[[float, str], None]]

PROJECTIONS = ("pca", "tsne")
SELECTION_METHODS = {"k_center": "k-center (farthest point)", "cluster_balanced": "cluster-balanced"}
TSNE_MAX_ROWS = 20_000
SAMPLE_FOR_SPREAD = 2000


@dataclass
class DiversityConfig:
    field: str = dc_field(default="both", metadata={"help": "which text of a row is embedded: prompt, answer or both"})
    clusters: int = dc_field(default=0, metadata={"help": "number of k-means clusters; 0 = about sqrt(rows / 2), between 2 and 50"})
    projection: str = dc_field(default="pca", metadata={"help": "2-D projection of the embeddings: pca (fast) or tsne (slower, local "
                                                                "structure)"})
    seed: int = dc_field(default=0, metadata={"help": "seed of k-means and t-SNE"})
    top_words: int = dc_field(default=6, metadata={"help": "words shown per cluster"})

    def __post_init__(self) -> None:
        if self.field not in FIELDS:
            raise ValueError(f"field must be one of {', '.join(FIELDS)}, got {self.field!r}")
        if self.projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {', '.join(PROJECTIONS)}, got {self.projection!r}")
        if not isinstance(self.clusters, int) or self.clusters < 0:
            raise ValueError(f"clusters must be an integer >= 0, got {self.clusters!r}")


@dataclass
class ClusterInfo:
    index: int
    size: int
    share: float
    top_words: list[str]
    examples: list[int]  # rows nearest the cluster's centre


@dataclass
class DiversityMap:
    n_rows: int
    field: str
    points: list[list[float]]  # (n, 2) projection
    labels: list[int]  # cluster of each row
    clusters: list[ClusterInfo]
    coverage: dict[str, float]
    params: dict[str, Any]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DiversityMap":
        return cls(**(dict(data) | {"clusters": [ClusterInfo(**c) for c in data["clusters"]]}))


@dataclass
class SelectionResult:
    method: str
    n_rows: int
    selected: list[int]  # row indices, ascending
    coverage: dict[str, float]
    params: dict[str, Any]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SelectionResult":
        return cls(**data)


def default_clusters(n_rows: int) -> int:
    return int(min(50, max(2, round(math.sqrt(n_rows / 2)))))


def embedding_map(rows: Sequence[Any], config: DiversityConfig | None = None, progress: Progress = None,
                  *, embeddings: np.ndarray | None = None) -> tuple[DiversityMap, np.ndarray]:
    """(the map, the embeddings it was made from). Pass `embeddings` to skip the embedding step."""
    config = config or DiversityConfig()
    started = time.perf_counter()
    texts = row_texts(rows, config.field)
    if len(texts) < 3:
        raise ValueError(f"a diversity map needs at least 3 rows, the dataset has {len(texts)}")
    if embeddings is None:
        embeddings = embed_texts(texts, progress=(lambda f, m: progress(0.8 * f, m)) if progress else None)
    k = min(config.clusters or default_clusters(len(texts)), len(texts) - 1)
    _say(progress, 0.82, f"k-means into {k} clusters")
    labels, centres = cluster(embeddings, k, config.seed)
    _say(progress, 0.9, f"{config.projection.upper()} projection")
    points = project(embeddings, config.projection, config.seed)
    infos = describe_clusters(texts, embeddings, labels, centres, config.top_words)
    coverage = map_coverage(embeddings, labels, config.seed)
    _say(progress, 1.0, f"{k} clusters")
    params = asdict(config) | {"clusters": k, "model": "all-MiniLM-L6-v2"}
    result = DiversityMap(len(texts), config.field, np.round(points, 4).tolist(), labels.tolist(), infos, coverage, params,
                          round(time.perf_counter() - started, 3))
    return result, embeddings


def cluster(embeddings: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k-means labels and unit-length centres (mini-batch k-means above 20,000 rows)."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if len(embeddings) > 20_000:
        model = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4096)
    else:
        model = KMeans(n_clusters=k, random_state=seed, n_init=3)
    labels = model.fit_predict(embeddings).astype(np.int64)
    centres = model.cluster_centers_.astype(np.float32)
    centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    return labels, centres


def project(embeddings: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """(n, 2) coordinates."""
    centred = embeddings - embeddings.mean(axis=0, keepdims=True)
    if method == "tsne":
        if len(embeddings) > TSNE_MAX_ROWS:
            raise ValueError(f"t-SNE is limited to {TSNE_MAX_ROWS:,} rows here (this set has {len(embeddings):,}); use pca")
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (len(embeddings) - 1) / 3)))
        return TSNE(n_components=2, random_state=seed, init="pca", perplexity=perplexity).fit_transform(centred)
    _, _, components = np.linalg.svd(centred[: min(len(centred), 50_000)], full_matrices=False)
    return centred @ components[:2].T


def describe_clusters(texts: Sequence[str], embeddings: np.ndarray, labels: np.ndarray, centres: np.ndarray,
                      top_words: int = 6) -> list[ClusterInfo]:
    """Size, share, top words (class-based TF-IDF) and the three rows nearest the centre of each cluster."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    k = len(centres)
    counts = [Counter() for _ in range(k)]
    for text, label in zip(texts, labels.tolist()):
        counts[label].update(w for w in words(text) if len(w) > 2 and not w.isdigit() and w not in ENGLISH_STOP_WORDS)
    total = Counter()
    for c in counts:
        total.update(c)
    average = sum(total.values()) / k if k else 0.0
    infos = []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        size_words = sum(counts[c].values()) or 1
        score = {w: (n / size_words) * math.log(1 + average / total[w]) for w, n in counts[c].items()}
        best = sorted(score, key=lambda w: (-score[w], w))[:top_words]
        nearest = members[np.argsort(-(embeddings[members] @ centres[c]))[:3]] if len(members) else []
        infos.append(ClusterInfo(c, int(len(members)), round(len(members) / len(texts), 4), best, [int(i) for i in nearest]))
    return infos


def map_coverage(embeddings: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict[str, float]:
    """How evenly the set spreads: effective clusters (exp of the entropy of cluster shares), the largest
    cluster's share, mean cosine distance to the nearest neighbour and between random rows (on a sample)."""
    shares = np.bincount(labels) / len(labels)
    shares = shares[shares > 0]
    effective = float(np.exp(-(shares * np.log(shares)).sum()))
    rng = np.random.default_rng(seed)
    sample = embeddings[rng.choice(len(embeddings), size=min(SAMPLE_FOR_SPREAD, len(embeddings)), replace=False)]
    similarity = sample @ sample.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = 1.0 - similarity.max(axis=1)
    pairs = similarity[np.triu_indices(len(sample), k=1)]
    return {
        "clusters": int(len(shares)),
        "effective_clusters": round(effective, 2),
        "balance": round(effective / len(shares), 4),
        "largest_cluster_share": round(float(shares.max()), 4),
        "mean_nearest_neighbour_distance": round(float(nearest.mean()), 4),
        "mean_pairwise_distance": round(float(1.0 - pairs.mean()), 4),
    }


# ---------------------------------------------------------------- selection


def farthest_point(embeddings: np.ndarray, n: int, start: int | None = None, progress: Progress = None) -> list[int]:
    """Greedy k-center: start at the row nearest the mean (or `start`), then always the farthest row."""
    if n >= len(embeddings):
        return list(range(len(embeddings)))
    if start is None:
        mean = embeddings.mean(axis=0)
        start = int(np.argmax(embeddings @ mean))
    chosen = [start]
    distance = 1.0 - embeddings @ embeddings[start]
    distance[start] = -np.inf
    for step in range(1, n):
        pick = int(np.argmax(distance))
        chosen.append(pick)
        np.minimum(distance, 1.0 - embeddings @ embeddings[pick], out=distance)
        distance[chosen] = -np.inf
        if progress and step % 500 == 0:
            progress(step / n, f"picked {step:,} / {n:,} rows")
    return chosen


def balanced_quotas(sizes: Sequence[int], n: int) -> list[int]:
    """Equal shares of n over the clusters, capped at each cluster's size, leftovers shared out again."""
    quotas = [0] * len(sizes)
    open_clusters = [c for c, size in enumerate(sizes) if size > 0]
    left = min(n, sum(sizes))
    while left > 0 and open_clusters:
        share, extra = divmod(left, len(open_clusters))
        for rank, c in enumerate(sorted(open_clusters, key=lambda c: (-(sizes[c] - quotas[c]), c))):
            give = min(share + (1 if rank < extra else 0), sizes[c] - quotas[c])
            quotas[c] += give
            left -= give
        open_clusters = [c for c in open_clusters if quotas[c] < sizes[c]]
    return quotas


def select_diverse(embeddings: np.ndarray, n: int, method: str = "k_center", labels: Sequence[int] | None = None,
                   progress: Progress = None) -> SelectionResult:
    """N rows chosen for diversity, with the coverage they reach."""
    if method not in SELECTION_METHODS:
        raise ValueError(f"selection method must be one of {', '.join(SELECTION_METHODS)}, got {method!r}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"select at least one row, got {n!r}")
    started = time.perf_counter()
    n = min(n, len(embeddings))
    labels_array = np.asarray(labels if labels is not None else np.zeros(len(embeddings), dtype=np.int64))
    if method == "k_center":
        selected = farthest_point(embeddings, n, progress=progress)
    else:
        if labels is None:
            raise ValueError("cluster-balanced selection needs the cluster of every row (make the diversity map first)")
        k = int(labels_array.max()) + 1
        quotas = balanced_quotas(np.bincount(labels_array, minlength=k).tolist(), n)
        selected = []
        for c, quota in enumerate(quotas):
            members = np.flatnonzero(labels_array == c)
            if quota:
                centre = embeddings[members].mean(axis=0)
                start = int(np.argmax(embeddings[members] @ centre))
                selected.extend(members[farthest_point(embeddings[members], quota, start=start)].tolist())
    selected = sorted(int(i) for i in selected)
    coverage = selection_coverage(embeddings, selected, labels_array if labels is not None else None)
    params = {"method": method, "n": n, "rows": int(len(embeddings))}
    return SelectionResult(method, int(len(embeddings)), selected, coverage, params, round(time.perf_counter() - started, 3))


def selection_coverage(embeddings: np.ndarray, selected: Sequence[int], labels: np.ndarray | None = None,
                       block: int = 4096) -> dict[str, float]:
    """Distance from every row to its nearest selected row (max = covering radius, mean) and clusters covered."""
    chosen = embeddings[list(selected)]
    nearest = np.empty(len(embeddings), dtype=np.float32)
    for start in range(0, len(embeddings), block):
        nearest[start:start + block] = 1.0 - (embeddings[start:start + block] @ chosen.T).max(axis=1)
    out = {"selected": len(selected), "covering_radius": round(float(nearest.max()), 4),
           "mean_distance_to_selected": round(float(nearest.mean()), 4)}
    if labels is not None:
        k = int(labels.max()) + 1
        out["clusters_covered"] = int(len(set(labels[list(selected)].tolist())))
        out["clusters"] = k
    return out


def _say(progress: Progress, fraction: float, message: str) -> None:
    if progress:
        progress(fraction, message)
