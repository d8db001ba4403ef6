"""De-duplication: exact, near (MinHash-LSH) and semantic (embedding cosine), plus the
train <-> eval leakage check.

Every method returns clusters of row indices with the representative that is kept and the
similarity of each member to it, so a page can show them and the user can overrule them.

- exact: rows whose normalised text is equal (NFKC, case-folded, Unicode punctuation removed,
  whitespace collapsed; see ``core.data.text.normalise_for_exact``).
- near: Jaccard similarity of word 5-gram shingles, estimated with MinHash. Signatures are
  bit-identical to ``datasketch.MinHash(num_perm, seed, hashfunc=shingle_hash)`` updated with
  ``shingles(text)`` (datasketch's default "affine32" scheme: MurmurHash3 finalizer, then
  ``a*h + b mod 2^32`` with datasketch's own (a, b)), but
  computed for a whole block of rows at once in numpy, in a process pool for large sets.
  Candidate pairs come from LSH banding with datasketch's own choice of (bands, rows), drawn
  generously (for a lower threshold than the one asked, by default 0.1 lower: a pair at the
  threshold is then a candidate with probability >= 0.997), and every candidate that could join two
  clusters is verified on the real Jaccard of the two shingle sets (64-bit shingle hashes;
  ``verify="estimate"`` keeps the MinHash estimate instead). The banding only decides what gets compared; the exact set overlap
  decides what is called a duplicate, so the estimate's noise at the threshold loses nothing.
- semantic: cosine similarity of all-MiniLM-L6-v2 embeddings, nearest neighbours found by a
  blockwise matrix product with top-k, so memory stays O(block x n).

Clusters are connected components of the verified pairs.
"""
from __future__ import annotations

import itertools
import multiprocessing
import os
import time
import zlib
from dataclasses import asdict, dataclass
from dataclasses import field as dc_field  # "field" is also a config attribute (prompt/answer/both)
from functools import lru_cache
from typing import Any, Callable, Optional, Sequence

import numpy as np

from core.data.text import FIELDS, answer_length, normalise_for_exact, row_texts, words
from core.embeddings import embed_texts

Progress = Optional[Callable[[float, str], None]]

KEEP_RULES = {"first": "first seen", "longest_answer": "longest answer"}
METHODS = ("exact", "near", "semantic")


def _report(progress: Progress, fraction: float, message: str) -> None:
    if progress is not None:
        progress(max(0.0, min(1.0, fraction)), message)


def _check_unit_interval(name: str, value: float, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"{name} must be a number between 0 and 1, got {value!r}")
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value <= 1):
        raise ValueError(f"{name} must be in {'[0, 1]' if allow_zero else '(0, 1]'}, got {value!r}")


def _check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


# ----------------------------------------------------------------------------- results


@dataclass
class DuplicateCluster:
    """A group of rows judged duplicates of each other; all but the representative are dropped."""

    members: list[int]
    representative: int
    method: str
    keep_rule: str
    similarity: dict[int, float] = dc_field(default_factory=dict)
    pairs: list[tuple[int, int, float]] = dc_field(default_factory=list)

    @property
    def dropped(self) -> list[int]:
        return [m for m in self.members if m != self.representative]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["similarity"] = {str(k): v for k, v in self.similarity.items()}
        return data


@dataclass
class DedupResult:
    method: str
    field: str
    n_rows: int
    clusters: list[DuplicateCluster]
    params: dict[str, Any]
    seconds: float

    @property
    def rows_to_drop(self) -> list[int]:
        return sorted(i for cluster in self.clusters for i in cluster.dropped)

    @property
    def n_duplicates(self) -> int:
        return sum(len(cluster.dropped) for cluster in self.clusters)

    def kept_rows(self, rows: Sequence[Any]) -> list[Any]:
        drop = set(self.rows_to_drop)
        return [row for i, row in enumerate(rows) if i not in drop]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "field": self.field, "n_rows": self.n_rows, "params": self.params,
                "seconds": self.seconds, "clusters": [c.to_dict() for c in self.clusters]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DedupResult":
        clusters = [
            DuplicateCluster(members=list(c["members"]), representative=c["representative"], method=c["method"], keep_rule=c["keep_rule"],
                             similarity={int(k): v for k, v in c["similarity"].items()}, pairs=[tuple(p) for p in c.get("pairs", [])])
            for c in data["clusters"]
        ]
        return cls(data["method"], data["field"], data["n_rows"], clusters, data["params"], data["seconds"])


def _choose_representative(members: Sequence[int], rows: Sequence[Any], keep: str) -> int:
    if keep == "longest_answer":
        # Longest answer wins; ties go to the row seen first.
        return min(members, key=lambda i: (-answer_length(rows[i]), i))
    return min(members)


# ----------------------------------------------------------------------------- exact


@dataclass
class ExactDedupConfig:
    field: str = dc_field(default="both", metadata={"help": "compare the prompt, the answer or both"})
    keep: str = dc_field(default="first", metadata={"help": "which member to keep: first seen or longest answer"})

    def __post_init__(self):
        _check_choice("field", self.field, FIELDS)
        _check_choice("keep", self.keep, KEEP_RULES)


def find_exact_duplicates(
    rows: Sequence[Any], config: ExactDedupConfig | None = None, progress: Progress = None
) -> DedupResult:
    """Rows with equal normalised text (case, punctuation and whitespace ignored)."""
    config = config or ExactDedupConfig()
    started = time.perf_counter()
    texts = row_texts(rows, config.field)
    groups: dict[str, list[int]] = {}
    for index, text in enumerate(texts):
        key = normalise_for_exact(text) or text.strip()
        groups.setdefault(key, []).append(index)
        if progress and index % 5000 == 0:
            _report(progress, index / len(texts), f"normalised {index:,} / {len(texts):,} rows")
    clusters = []
    for members in groups.values():
        if len(members) > 1:
            rep = _choose_representative(members, rows, config.keep)
            clusters.append(
                DuplicateCluster(
                    members=members,
                    representative=rep,
                    method="exact",
                    keep_rule=KEEP_RULES[config.keep],
                    similarity={m: 1.0 for m in members},
                )
            )
    clusters.sort(key=lambda c: c.members[0])
    _report(progress, 1.0, f"{len(clusters):,} exact-duplicate clusters")
    return DedupResult("exact", config.field, len(rows), clusters, asdict(config), time.perf_counter() - started)


# ----------------------------------------------------------------------------- MinHash


def shingles(text: str, ngram: int = 5) -> list[bytes]:
    """Word n-gram shingles (lower-cased words, punctuation dropped), words joined by one space.

    A text shorter than n words is one shingle of all its words; a text with no words at all is
    one shingle of its stripped characters, so it still has a signature.
    """
    tokens = words(text)
    if len(tokens) <= ngram:
        return [(" ".join(tokens) if tokens else text.strip()).encode("utf-8")]
    return [" ".join(tokens[i : i + ngram]).encode("utf-8") for i in range(len(tokens) - ngram + 1)]


# The shingle hash: CRC-32 of each word, combined by position with fixed odd 64-bit multipliers,
# top 32 bits kept. Any 32-bit hash works for MinHash (datasketch suggests farmhash for speed);
# this one can be computed for all shingles of a block at once in numpy, because a shingle's
# hash is a sum over its words. `shingle_hash` is the same function on one shingle, usable as
# datasketch's `hashfunc`, which is how the tests prove the fast path equals datasketch.
_POSITION_MULTIPLIERS = tuple(
    int(m) | 1 for m in np.random.default_rng(20240611).integers(0, 2**63, size=64, dtype=np.uint64) * 2
)
_MASK64 = (1 << 64) - 1


def shingle_hash(shingle: bytes) -> int:
    """32-bit hash of one shingle (``b"w1 w2 w3 w4 w5"``); the reference for the numpy path."""
    total = 0
    for position, word in enumerate(shingle.split(b" ")):
        total += (zlib.crc32(word) + 1) * _POSITION_MULTIPLIERS[position % 64]
    return (total & _MASK64) >> 32


@lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of datasketch's affine32 permutations for this (num_perm, seed), as (P, 1) columns."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    return a.astype(np.uint32).reshape(-1, 1), b.astype(np.uint32).reshape(-1, 1)


def _fmix32(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, the pre-mix datasketch's affine32 scheme applies."""
    values = values ^ (values >> np.uint32(16))
    values = values * np.uint32(0x85EBCA6B)
    values = values ^ (values >> np.uint32(13))
    values = values * np.uint32(0xC2B2AE35)
    return values ^ (values >> np.uint32(16))


_word_hashes: dict[str, int] = {}  # per process: CRC-32 + 1 of each word seen


def _shingle_hashes(texts: Sequence[str], ngram: int, *, full: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """All shingle hashes of the texts, concatenated (uint32; the whole 64-bit sums with `full`), and the
    number per text."""
    token_lists = [words(text) for text in texts]
    if len(_word_hashes) > 2_000_000:
        _word_hashes.clear()
    for word in set().union(*token_lists).difference(_word_hashes):
        _word_hashes[word] = zlib.crc32(word.encode("utf-8")) + 1
    lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(texts))
    flat = np.fromiter(
        map(_word_hashes.__getitem__, itertools.chain.from_iterable(token_lists)), dtype=np.uint64, count=int(lengths.sum())
    )
    multipliers = np.array(_POSITION_MULTIPLIERS[:ngram], dtype=np.uint64)
    padded = np.concatenate((flat, np.zeros(ngram, dtype=np.uint64)))
    window = np.zeros(len(flat), dtype=np.uint64)
    for k in range(ngram):  # hash of the n words starting at every position (wraps mod 2^64)
        window += padded[k : k + len(flat)] * multipliers[k]
    counts = np.where(lengths > ngram, lengths - ngram + 1, 1)
    starts = np.cumsum(lengths) - lengths
    dest_starts = np.cumsum(counts) - counts
    out = np.empty(int(counts.sum()), dtype=np.uint64)
    long_rows = lengths > ngram
    c = counts[long_rows]
    within = np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c)
    out[np.repeat(dest_starts[long_rows], c) + within] = window[np.repeat(starts[long_rows], c) + within]
    for row in np.flatnonzero(~long_rows).tolist():  # one shingle of the whole (short) text
        out[dest_starts[row]] = _whole_text_sum(texts[row], [_word_hashes[w] for w in token_lists[row]])
    if full:
        return out, counts
    return (out >> np.uint64(32)).astype(np.uint32), counts


def _whole_text_sum(text: str, ids: list[int]) -> int:
    """The 64-bit sum behind the hash of a text's only shingle (its <= n words, or its characters)."""
    if not ids:
        ids = [zlib.crc32(part) + 1 for part in text.strip().encode("utf-8").split(b" ")]
    return sum(w * _POSITION_MULTIPLIERS[k % 64] for k, w in enumerate(ids)) & _MASK64


def _signature_chunk(args: tuple[Sequence[str], int, int, int]) -> np.ndarray:
    """Signatures of a list of texts, (len(texts), num_perm) uint32. Runs in pool workers."""
    texts, num_perm, ngram, seed = args
    a, b = _permutations(num_perm, seed)
    hashes, counts = _shingle_hashes(texts, ngram)
    out = np.empty((len(texts), num_perm), dtype=np.uint32)
    budget = max(1, (1 << 23) // num_perm)  # shingles per block: keeps the (P, block) array near 32 MB
    ends = np.cumsum(counts)
    row = 0
    while row < len(texts):
        first_shingle = ends[row] - counts[row]
        stop = max(row + 1, int(np.searchsorted(ends, first_shingle + budget, side="right")))
        block = _fmix32(hashes[first_shingle : ends[stop - 1]]).reshape(1, -1)
        permuted = a * block + b  # (P, shingles); uint32 arithmetic wraps: that is the mod 2^32
        offsets = (ends[row:stop] - counts[row:stop]) - first_shingle
        out[row:stop] = np.minimum.reduceat(permuted, offsets, axis=1).T
        row = stop
    return out


def _pool_context():
    """forkserver where available: workers fork from a clean server process that has already
    imported this module, not from a threaded app process (fork there can deadlock)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def minhash_signatures(
    texts: Sequence[str],
    *,
    num_perm: int = 256,
    ngram: int = 5,
    seed: int = 1,
    workers: int = 0,
    chunk_rows: int = 1000,
    parallel_min_rows: int = 20_000,
    progress: Progress = None,
) -> np.ndarray:
    """MinHash signatures, (len(texts), num_perm) uint32, equal to datasketch's affine32 MinHash
    of ``shingles(text, ngram)``. ``workers=0`` uses every core; a process pool is used only for
    sets of at least ``parallel_min_rows`` texts (below that, starting it costs more than it saves).
    """
    n = len(texts)
    if n == 0:
        return np.zeros((0, num_perm), dtype=np.uint32)
    workers = workers or os.cpu_count() or 1
    chunks = [(texts[i : i + chunk_rows], num_perm, ngram, seed) for i in range(0, n, chunk_rows)]
    parts = []
    done = 0
    if workers > 1 and n >= parallel_min_rows and len(chunks) > 1:
        context = _pool_context()
        with context.Pool(min(workers, len(chunks))) as pool:
            for part in pool.imap(_signature_chunk, chunks):
                parts.append(part)
                done += len(part)
                _report(progress, done / n, f"MinHash signatures {done:,} / {n:,} rows")
    else:
        for chunk in chunks:
            parts.append(_signature_chunk(chunk))
            done += len(parts[-1])
            _report(progress, done / n, f"MinHash signatures {done:,} / {n:,} rows")
    return np.concatenate(parts, axis=0)


def lsh_bands(threshold: float, num_perm: int, weights: tuple[float, float]) -> tuple[int, int]:
    """(bands, rows per band) that datasketch's MinHashLSH picks for this threshold and weights."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=tuple(weights))
    return lsh.b, lsh.r


def _band_keys(signatures: np.ndarray, bands: int, rows_per_band: int) -> list[np.ndarray]:
    """One uint64 key per row and band (a random linear hash of the band's values)."""
    rng = np.random.default_rng(0x5EED)
    multipliers = rng.integers(0, 2**63, size=rows_per_band, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    keys = []
    for band in range(bands):
        block = signatures[:, band * rows_per_band : (band + 1) * rows_per_band].astype(np.uint64)
        keys.append(((block + np.uint64(1)) * multipliers).sum(axis=1, dtype=np.uint64))
    return keys


def _pairs_sharing_key(keys: np.ndarray, max_group: int) -> tuple[np.ndarray, np.ndarray]:
    """All (i, j), i < j, with keys[i] == keys[j]. A group larger than max_group is linked as a
    star to its first member instead of all pairs, so a mass of identical rows stays linear."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.concatenate(([0], np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1))
    lengths = np.diff(np.concatenate((starts, [len(keys)])))
    grouped = lengths >= 2
    starts, lengths = starts[grouped], lengths[grouped]
    small = lengths <= max_group
    s, l = starts[small], lengths[small]
    total = int(l.sum())
    offset_in_group = np.arange(total) - np.repeat(np.cumsum(l) - l, l)
    position = np.repeat(s, l) + offset_in_group
    partners = np.repeat(l, l) - offset_in_group - 1
    left = np.repeat(position, partners)
    step = np.arange(int(partners.sum())) - np.repeat(np.cumsum(partners) - partners, partners) + 1
    right = left + step
    lefts, rights = [order[left]], [order[right]]
    for start, length in zip(starts[~small], lengths[~small]):
        lefts.append(np.full(length - 1, order[start]))
        rights.append(order[start + 1 : start + length])
    i, j = np.concatenate(lefts), np.concatenate(rights)
    return np.minimum(i, j), np.maximum(i, j)


def _pairs_across(keys_a: np.ndarray, keys_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (i, j) with keys_a[i] == keys_b[j]."""
    order_b = np.argsort(keys_b, kind="stable")
    sorted_b = keys_b[order_b]
    low = np.searchsorted(sorted_b, keys_a, side="left")
    count = np.searchsorted(sorted_b, keys_a, side="right") - low
    i = np.repeat(np.arange(len(keys_a)), count)
    step = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    return i, order_b[np.repeat(low, count) + step]


def _unique_pairs(i: np.ndarray, j: np.ndarray, n_right: int) -> tuple[np.ndarray, np.ndarray]:
    code = np.unique(i.astype(np.int64) * n_right + j.astype(np.int64))
    return code // n_right, code % n_right


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray, block: int = 100_000) -> np.ndarray:
    """Fraction of equal MinHash values, row by row (the MinHash estimate of Jaccard)."""
    out = np.empty(len(sig_a), dtype=np.float32)
    for start in range(0, len(sig_a), block):
        stop = start + block
        out[start:stop] = (sig_a[start:stop] == sig_b[start:stop]).mean(axis=1)
    return out


def shingle_sets(texts: Sequence[str], ngram: int = 5) -> list[frozenset]:
    """Each text's set of 64-bit shingle hashes (word n-grams as in `shingles`; two different shingles
    share a hash with probability 2^-64, so set overlaps are exact for any real dataset)."""
    if not texts:
        return []
    hashes, counts = _shingle_hashes(texts, ngram, full=True)
    flat, ends = hashes.tolist(), np.cumsum(counts).tolist()
    return [frozenset(flat[start:end]) for start, end in zip([0] + ends[:-1], ends)]


def exact_jaccard(sets_a: Sequence[frozenset], sets_b: Sequence[frozenset]) -> np.ndarray:
    """|A ∩ B| / |A ∪ B| for each pair of sets."""
    return np.fromiter((set_jaccard(a, b) for a, b in zip(sets_a, sets_b)), dtype=np.float32, count=len(sets_a))


def set_jaccard(a: frozenset, b: frozenset) -> float:
    common = len(a & b) if len(a) <= len(b) else len(b & a)
    return common / (len(a) + len(b) - common) if (a or b) else 1.0


class PairVerifier:
    """Exact Jaccard of row pairs, building each row's shingle set once, only for rows that are asked about."""

    def __init__(self, texts: Sequence[str], ngram: int):
        self.texts, self.ngram = texts, ngram
        self._sets: dict[int, frozenset] = {}

    def sets(self, rows: np.ndarray) -> list[frozenset]:
        missing = sorted({r for r in np.asarray(rows).tolist() if r not in self._sets})  # not `- keys()`: O(asked), once per cluster
        for start in range(0, len(missing), 20_000):
            chunk = missing[start : start + 20_000]
            for row, shingle_set in zip(chunk, shingle_sets([self.texts[r] for r in chunk], self.ngram)):
                self._sets[row] = shingle_set
        return [self._sets[r] for r in np.asarray(rows).tolist()]

    def __call__(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        self.sets(np.concatenate([i, j]))
        return exact_jaccard([self._sets[a] for a in i.tolist()], [self._sets[b] for b in j.tolist()])


VERIFY_MODES = ("exact", "estimate")
# A MinHash estimate with P permutations has standard deviation sqrt(J(1-J)/P) <= 0.5/sqrt(P) (0.031 at 256):
# a pair estimated this many deviations below the threshold is rejected without the exact check.
PREFILTER_SIGMAS = 6.0


@dataclass
class NearDedupConfig:
    threshold: float = dc_field(default=0.8, metadata={"help": "Jaccard similarity of shingle sets at or above which two rows are "
                                                               "near-duplicates"})
    num_perm: int = dc_field(default=256, metadata={"help": "MinHash permutations (more: better estimate, slower); 128-256 is usual"})
    ngram: int = dc_field(default=5, metadata={"help": "words per shingle"})
    field: str = dc_field(default="both", metadata={"help": "compare the prompt, the answer or both"})
    keep: str = dc_field(default="first", metadata={"help": "which member to keep: first seen or longest answer"})
    seed: int = dc_field(default=1, metadata={"help": "seed of the MinHash permutations (datasketch's default is 1)"})
    lsh_weights: tuple[float, float] = dc_field(
        default=(0.1, 0.9),
        metadata={"help": "LSH (false-positive, false-negative) weights for choosing bands; recall-heavy because every candidate is "
                          "verified"},
    )
    workers: int = dc_field(default=0, metadata={"help": "processes for signatures; 0 = every core"})
    max_bucket: int = dc_field(default=200, metadata={"help": "an LSH bucket larger than this is linked as a star, not all pairs"})
    verify: str = dc_field(default="exact", metadata={"help": "verify candidates on the exact Jaccard of the shingle sets, or on the "
                                                              "MinHash estimate"})
    candidate_margin: float = dc_field(
        default=0.1, metadata={"help": "LSH bands are chosen for threshold minus this, so pairs at the threshold are candidates almost "
                                       "surely"}
    )

    @property
    def lsh_threshold(self) -> float:
        return max(0.05, self.threshold - self.candidate_margin)

    def __post_init__(self):
        _check_unit_interval("threshold", self.threshold)
        _check_choice("verify", self.verify, VERIFY_MODES)
        _check_unit_interval("candidate_margin", self.candidate_margin, allow_zero=True)
        if not isinstance(self.num_perm, int) or not 16 <= self.num_perm <= 1024:
            raise ValueError(f"num_perm must be an integer in [16, 1024], got {self.num_perm!r}")
        if not isinstance(self.ngram, int) or not 1 <= self.ngram <= 50:
            raise ValueError(f"ngram must be an integer in [1, 50], got {self.ngram!r}")
        _check_choice("field", self.field, FIELDS)
        _check_choice("keep", self.keep, KEEP_RULES)
        self.lsh_weights = tuple(float(w) for w in self.lsh_weights)
        if len(self.lsh_weights) != 2 or abs(sum(self.lsh_weights) - 1) > 1e-9 or min(self.lsh_weights) < 0:
            raise ValueError(f"lsh_weights must be two non-negative numbers summing to 1, got {self.lsh_weights!r}")
        if self.workers < 0 or self.max_bucket < 2:
            raise ValueError("workers must be >= 0 and max_bucket >= 2")


def near_candidate_pairs(signatures: np.ndarray, config: NearDedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) that share at least one LSH band (bands chosen for `config.lsh_threshold`)."""
    bands, rows_per_band = lsh_bands(config.lsh_threshold, config.num_perm, config.lsh_weights)
    lefts, rights = [], []
    for keys in _band_keys(signatures, bands, rows_per_band):
        i, j = _pairs_sharing_key(keys, config.max_bucket)
        lefts.append(i)
        rights.append(j)
    return _unique_pairs(np.concatenate(lefts), np.concatenate(rights), len(signatures))


def _clusters_from_pairs(
    n: int,
    i: np.ndarray,
    j: np.ndarray,
    similarity: np.ndarray,
    *,
    rows: Sequence[Any],
    method: str,
    keep: str,
    similarity_to: Callable[[int, np.ndarray], np.ndarray],
    max_pairs_kept: int = 50,
) -> list[DuplicateCluster]:
    """Connected components of the verified pairs, each with its representative."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(i) == 0:
        return []
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    in_cluster = np.flatnonzero(sizes[labels] >= 2)
    members_by_label: dict[int, list[int]] = {}
    for index in in_cluster.tolist():
        members_by_label.setdefault(int(labels[index]), []).append(index)
    pair_order = np.argsort(labels[i], kind="stable")
    pair_labels = labels[i][pair_order]
    clusters = []
    for label, members in members_by_label.items():
        rep = _choose_representative(members, rows, keep)
        sims = similarity_to(rep, np.asarray(members))
        lo, hi = np.searchsorted(pair_labels, [label, label + 1])
        chosen = pair_order[lo : min(hi, lo + max_pairs_kept)]
        clusters.append(
            DuplicateCluster(
                members=members,
                representative=rep,
                method=method,
                keep_rule=KEEP_RULES[keep],
                similarity={m: round(float(s), 4) for m, s in zip(members, sims)},
                pairs=[(int(i[k]), int(j[k]), round(float(similarity[k]), 4)) for k in chosen],
            )
        )
    clusters.sort(key=lambda c: c.members[0])
    return clusters


def find_near_duplicates(
    rows: Sequence[Any],
    config: NearDedupConfig | None = None,
    progress: Progress = None,
    *,
    signatures: np.ndarray | None = None,
) -> DedupResult:
    """Rows whose shingle sets have Jaccard >= threshold (exact by default), clustered transitively."""
    config = config or NearDedupConfig()
    started = time.perf_counter()
    texts = row_texts(rows, config.field)
    if signatures is None:
        signatures = minhash_signatures(
            texts,
            num_perm=config.num_perm,
            ngram=config.ngram,
            seed=config.seed,
            workers=config.workers,
            progress=(lambda f, m: _report(progress, 0.8 * f, m)) if progress else None,
        )
    _report(progress, 0.85, "finding LSH candidate pairs")
    i, j = near_candidate_pairs(signatures, config)
    _report(progress, 0.9, f"verifying {len(i):,} candidate pairs")
    i, j, similarity, checked, similarity_to = verify_pairs(texts, signatures, i, j, config)
    clusters = _clusters_from_pairs(
        len(texts), i, j, similarity, rows=rows, method="near", keep=config.keep, similarity_to=similarity_to,
    )
    params = asdict(config) | {"candidate_pairs": int(len(checked)), "exactly_verified_pairs": int(checked.sum()),
                               "verified_pairs": int(len(i))}
    params["lsh_threshold"] = config.lsh_threshold
    params["lsh_bands"], params["lsh_rows_per_band"] = lsh_bands(config.lsh_threshold, config.num_perm, config.lsh_weights)
    _report(progress, 1.0, f"{len(clusters):,} near-duplicate clusters")
    return DedupResult("near", config.field, len(rows), clusters, params, time.perf_counter() - started)


def verify_pairs(texts: Sequence[str], signatures: np.ndarray, i: np.ndarray, j: np.ndarray, config: NearDedupConfig):
    """The candidate pairs that really are near-duplicates: (i, j, similarity, which candidates were checked
    exactly, similarity of members to a representative). Exact mode checks every candidate whose estimate is
    within PREFILTER_SIGMAS deviations of the threshold on the real shingle sets."""
    estimate = estimated_jaccard(signatures[i], signatures[j])
    if config.verify == "estimate":
        keep = estimate >= config.threshold
        return i[keep], j[keep], estimate[keep], np.zeros(len(i), dtype=bool), lambda rep, members: estimated_jaccard(
            np.broadcast_to(signatures[rep], (len(members), signatures.shape[1])), signatures[members])
    plausible = estimate >= config.threshold - PREFILTER_SIGMAS * 0.5 / np.sqrt(config.num_perm)
    verifier = PairVerifier(texts, config.ngram)
    checked, similarity = _verify_joining_pairs(verifier, i, j, estimate, plausible, config.threshold)
    keep = checked & (similarity >= config.threshold)
    return i[keep], j[keep], similarity[keep], checked, lambda rep, members: verifier(np.full(len(members), rep), np.asarray(members))


def _verify_joining_pairs(verifier: PairVerifier, i: np.ndarray, j: np.ndarray, estimate: np.ndarray, plausible: np.ndarray,
                          threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact Jaccard of the plausible candidates, most similar first, skipping a pair whose two rows verified pairs
    already join: clusters are connected components, so its check could not change one, and a cluster of m
    near-copies costs about m checks instead of m(m-1)/2. The order is fixed by (estimate, i, j), so every engine
    that finds the same candidates checks the same pairs. Returns (which pairs were checked, their similarity)."""
    checked = np.zeros(len(i), dtype=bool)
    similarity = np.zeros(len(i), dtype=np.float32)
    candidates = np.flatnonzero(plausible)
    if len(candidates) == 0:
        return checked, similarity
    candidates = candidates[np.lexsort((j[candidates], i[candidates], -estimate[candidates]))]
    sets = verifier.sets(np.concatenate([i[candidates], j[candidates]]))
    set_of = dict(zip(np.concatenate([i[candidates], j[candidates]]).tolist(), sets))
    parent: dict[int, int] = {}

    def root(row: int) -> int:
        while parent.get(row, row) != row:
            grandparent = parent.get(parent[row], parent[row])
            parent[row] = grandparent  # path halving
            row = grandparent
        return row

    for k, a, b in zip(candidates.tolist(), i[candidates].tolist(), j[candidates].tolist()):
        root_a, root_b = root(a), root(b)
        if root_a == root_b:
            continue
        checked[k] = True
        similarity[k] = set_jaccard(set_of[a], set_of[b])
        if similarity[k] >= threshold:
            parent[root_b] = root_a
    return checked, similarity


# ----------------------------------------------------------------------------- semantic


def neighbour_pairs(
    query: np.ndarray,
    index: np.ndarray | None = None,
    *,
    threshold: float,
    top_k: int = 10,
    block_rows: int = 1024,
    progress: Progress = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j, cosine) with cosine >= threshold among each query row's top-k neighbours.

    Embeddings must be unit length. Without ``index`` the query set is searched against itself
    and only pairs i < j are returned. Works block by block so memory is block_rows x n.
    """
    import torch

    self_search = index is None
    queries = torch.from_numpy(np.ascontiguousarray(query, dtype=np.float32))
    keys = queries if self_search else torch.from_numpy(np.ascontiguousarray(index, dtype=np.float32))
    n_keys = keys.shape[0]
    k = min(top_k + (1 if self_search else 0), n_keys)
    lefts, rights, sims = [], [], []
    if k == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32)
    with torch.no_grad():
        for start in range(0, queries.shape[0], block_rows):
            block = queries[start : start + block_rows]
            scores = block @ keys.T
            if self_search:
                rows_global = torch.arange(start, start + block.shape[0]).unsqueeze(1)
                scores.masked_fill_(torch.arange(n_keys).unsqueeze(0) <= rows_global, -2.0)
            values, positions = torch.topk(scores, k, dim=1)
            keep = values >= threshold
            row_ids = torch.arange(start, start + block.shape[0]).unsqueeze(1).expand_as(positions)
            lefts.append(row_ids[keep].numpy())
            rights.append(positions[keep].numpy())
            sims.append(values[keep].numpy())
            _report(progress, min(1.0, (start + block.shape[0]) / queries.shape[0]), "nearest-neighbour search")
    return np.concatenate(lefts), np.concatenate(rights), np.concatenate(sims)


@dataclass
class SemanticDedupConfig:
    threshold: float = dc_field(default=0.9, metadata={"help": "cosine similarity of embeddings at or above which two rows are duplicates"})
    field: str = dc_field(default="both", metadata={"help": "compare the prompt, the answer or both"})
    keep: str = dc_field(default="first", metadata={"help": "which member to keep: first seen or longest answer"})
    top_k: int = dc_field(default=10, metadata={"help": "neighbours looked at per row"})
    batch_size: int = dc_field(default=64, metadata={"help": "texts per embedding batch"})
    block_rows: int = dc_field(default=1024, metadata={"help": "rows per block of the similarity matrix"})

    def __post_init__(self):
        _check_unit_interval("threshold", self.threshold)
        _check_choice("field", self.field, FIELDS)
        _check_choice("keep", self.keep, KEEP_RULES)
        for name in ("top_k", "batch_size", "block_rows"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")


def find_semantic_duplicates(
    rows: Sequence[Any],
    config: SemanticDedupConfig | None = None,
    progress: Progress = None,
    *,
    embeddings: np.ndarray | None = None,
) -> DedupResult:
    """Rows whose all-MiniLM-L6-v2 embeddings have cosine >= threshold, clustered transitively."""
    config = config or SemanticDedupConfig()
    started = time.perf_counter()
    texts = row_texts(rows, config.field)
    if embeddings is None:
        embeddings = embed_texts(
            texts,
            batch_size=config.batch_size,
            progress=(lambda f, m: _report(progress, 0.9 * f, m)) if progress else None,
        )
    i, j, sims = neighbour_pairs(embeddings, threshold=config.threshold, top_k=config.top_k, block_rows=config.block_rows)
    clusters = _clusters_from_pairs(
        len(texts),
        i,
        j,
        sims,
        rows=rows,
        method="semantic",
        keep=config.keep,
        similarity_to=lambda rep, members: embeddings[members] @ embeddings[rep],
    )
    _report(progress, 1.0, f"{len(clusters):,} semantic-duplicate clusters")
    params = asdict(config) | {"model": "all-MiniLM-L6-v2", "similar_pairs": int(len(i))}
    return DedupResult("semantic", config.field, len(rows), clusters, params, time.perf_counter() - started)


# ----------------------------------------------------------------------------- leakage


@dataclass
class LeakageConfig:
    field: str = dc_field(default="prompt", metadata={"help": "compare the prompt, the answer or both"})
    near: bool = dc_field(default=True, metadata={"help": "also look for near-duplicates (MinHash)"})
    semantic: bool = dc_field(default=False, metadata={"help": "also look for paraphrases (embeddings); slower"})
    near_threshold: float = dc_field(default=0.8, metadata={"help": "Jaccard threshold for near-duplicates"})
    semantic_threshold: float = dc_field(default=0.9, metadata={"help": "cosine threshold for paraphrases"})
    num_perm: int = dc_field(default=256, metadata={"help": "MinHash permutations"})
    ngram: int = dc_field(default=5, metadata={"help": "words per shingle"})
    seed: int = dc_field(default=1, metadata={"help": "MinHash seed"})
    lsh_weights: tuple[float, float] = dc_field(default=(0.1, 0.9), metadata={"help": "LSH (false-positive, false-negative) weights"})

    def __post_init__(self):
        _check_choice("field", self.field, FIELDS)
        _check_unit_interval("near_threshold", self.near_threshold)
        _check_unit_interval("semantic_threshold", self.semantic_threshold)
        NearDedupConfig(threshold=self.near_threshold, num_perm=self.num_perm, ngram=self.ngram, lsh_weights=self.lsh_weights)


@dataclass
class LeakMatch:
    train_row: int
    eval_row: int
    method: str
    similarity: float


@dataclass
class LeakageReport:
    n_train: int
    n_eval: int
    matches: list[LeakMatch]
    params: dict[str, Any]
    seconds: float

    @property
    def leaked_train_rows(self) -> list[int]:
        return sorted({m.train_row for m in self.matches})

    @property
    def matched_eval_rows(self) -> list[int]:
        return sorted({m.eval_row for m in self.matches})

    @property
    def rows_to_drop(self) -> list[int]:
        return self.leaked_train_rows

    def best_match_by_train_row(self) -> dict[int, LeakMatch]:
        """The strongest match of each leaking train row (exact beats near beats semantic)."""
        rank = {"exact": 0, "near": 1, "semantic": 2}
        best: dict[int, LeakMatch] = {}
        for m in sorted(self.matches, key=lambda m: (rank[m.method], -m.similarity)):
            best.setdefault(m.train_row, m)
        return best


def find_leakage(
    train_rows: Sequence[Any],
    eval_rows: Sequence[Any],
    config: LeakageConfig | None = None,
    progress: Progress = None,
) -> LeakageReport:
    """Train rows that duplicate an eval row exactly, nearly or (optionally) semantically."""
    config = config or LeakageConfig()
    started = time.perf_counter()
    try:
        train_texts = row_texts(train_rows, config.field)
    except ValueError as error:
        raise ValueError(f"training set: {error}") from None
    try:
        eval_texts = row_texts(eval_rows, config.field)
    except ValueError as error:
        raise ValueError(f"eval set: {error}") from None
    matches: list[LeakMatch] = []

    eval_keys: dict[str, list[int]] = {}
    for index, text in enumerate(eval_texts):
        eval_keys.setdefault(normalise_for_exact(text) or text.strip(), []).append(index)
    for index, text in enumerate(train_texts):
        for eval_index in eval_keys.get(normalise_for_exact(text) or text.strip(), []):
            matches.append(LeakMatch(index, eval_index, "exact", 1.0))
    exact_pairs = {(m.train_row, m.eval_row) for m in matches}
    _report(progress, 0.2, f"exact: {len(matches):,} matches")

    if config.near:
        signature_args = dict(num_perm=config.num_perm, ngram=config.ngram, seed=config.seed)
        train_sigs = minhash_signatures(train_texts, **signature_args)
        eval_sigs = minhash_signatures(eval_texts, **signature_args)
        _report(progress, 0.5, "near: LSH candidate pairs")
        near = NearDedupConfig(threshold=config.near_threshold, num_perm=config.num_perm, ngram=config.ngram,
                               lsh_weights=config.lsh_weights)
        bands, rows_per_band = lsh_bands(near.lsh_threshold, config.num_perm, config.lsh_weights)
        lefts, rights = [], []
        for keys_t, keys_e in zip(_band_keys(train_sigs, bands, rows_per_band), _band_keys(eval_sigs, bands, rows_per_band)):
            i, j = _pairs_across(keys_t, keys_e)
            lefts.append(i)
            rights.append(j)
        i, j = _unique_pairs(np.concatenate(lefts), np.concatenate(rights), len(eval_texts))
        checked = (estimated_jaccard(train_sigs[i], eval_sigs[j])
                   >= config.near_threshold - PREFILTER_SIGMAS * 0.5 / np.sqrt(config.num_perm))
        i, j = i[checked], j[checked]
        similarity = exact_jaccard(PairVerifier(train_texts, config.ngram).sets(i), PairVerifier(eval_texts, config.ngram).sets(j))
        for a, b, s in zip(i.tolist(), j.tolist(), similarity.tolist()):
            if s >= config.near_threshold and (a, b) not in exact_pairs:
                matches.append(LeakMatch(a, b, "near", round(s, 4)))
    _report(progress, 0.7, f"near: {len(matches):,} matches so far")

    if config.semantic:
        train_emb = embed_texts(train_texts, progress=lambda f, m: _report(progress, 0.7 + 0.2 * f, m) if progress else None)
        eval_emb = embed_texts(eval_texts)
        i, j, sims = neighbour_pairs(train_emb, eval_emb, threshold=config.semantic_threshold, top_k=5)
        seen = {(m.train_row, m.eval_row) for m in matches}
        for a, b, s in zip(i.tolist(), j.tolist(), sims.tolist()):
            if (a, b) not in seen:
                matches.append(LeakMatch(a, b, "semantic", round(s, 4)))
    _report(progress, 1.0, f"{len({m.train_row for m in matches}):,} leaking train rows")
    matches.sort(key=lambda m: (m.train_row, m.eval_row))
    return LeakageReport(len(train_texts), len(eval_texts), matches, asdict(config), time.perf_counter() - started)
