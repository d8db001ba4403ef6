"""Benchmark decontamination: which training rows overlap a benchmark's test items.

Three published rules, each on normalised text:

- ``ngram13`` — "13-gram any overlap (GPT-3)": a row is contaminated by a test item when they
  share any 13-gram of words (Brown et al. 2020, appendix C). Test items shorter than 13 words
  are matched on their whole word sequence (items under ``MIN_ITEM_WORDS`` words are skipped).
- ``ngram8_half`` — "8-gram, more than half of the test tokens covered (Tülu 3)": a row is
  contaminated by a test item when the 8-grams they share cover more than half of the item's
  words (Lambert et al. 2024, section 3.4.2).
- ``substring50`` — "50-character substring (GPT-4)": both texts keep only letters and digits
  (spaces and symbols removed, case kept); three 50-character substrings are sampled from each
  test item (the whole item if it is shorter) and a row is contaminated when it contains any of
  them (OpenAI 2023, appendix C). The three start offsets come from a generator seeded with the
  item's own CRC-32, so the sample is the same on every run and machine; ``substring_samples=0``
  indexes every 50-character window of the item instead.

Words are the lower-cased ``\\w+`` runs of the text (``core.data.text.words``): punctuation and
whitespace never decide a match.

Speed: the benchmark's n-grams (or sampled substrings) are hashed to 64-bit integers once; the
training rows are turned into one integer array, every window is hashed in numpy, a bitmap
sized to the benchmark rejects almost all windows, the few survivors are looked up exactly and every hit is
verified on the real words / characters before it is reported. So a hash collision can cost
time, never a false match.
"""
from __future__ import annotations

import gzip
import itertools
import json
import re
import time
import zlib
from dataclasses import asdict, dataclass
from dataclasses import field as dc_field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from core.data.formats import load_dataset_file
from core.data.text import FIELDS, WORD, row_texts

Progress = Optional[Callable[[float, str], None]]

MIN_ITEM_WORDS = 5
MIN_ITEM_CHARS = 10
_NON_ALNUM = re.compile(r"[\W_]+")
_BITMAP_BITS = 24
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class DecontamMode:
    key: str
    label: str
    reference: str
    rule: str


MODES: dict[str, DecontamMode] = {
    m.key: m
    for m in (
        DecontamMode(
            "ngram13",
            "13-gram any overlap (GPT-3)",
            "Brown et al. 2020, Language Models are Few-Shot Learners, appendix C",
            "a training row that shares any 13-word sequence with a test item is contaminated",
        ),
        DecontamMode(
            "ngram8_half",
            "8-gram, more than half of the test tokens covered (Tülu 3)",
            "Lambert et al. 2024, Tülu 3, section 3.4.2",
            "a training row is contaminated when the 8-grams it shares with a test item cover more than half of that item's words",
        ),
        DecontamMode(
            "substring50",
            "50-character substring (GPT-4)",
            "OpenAI 2023, GPT-4 Technical Report, appendix C",
            "letters and digits only; a training row containing any of three sampled 50-character substrings of a test item is "
            "contaminated",
        ),
    )
}


def _report(progress: Progress, fraction: float, message: str) -> None:
    if progress is not None:
        progress(max(0.0, min(1.0, fraction)), message)


# ----------------------------------------------------------------------------- benchmarks


@dataclass
class Benchmark:
    """A benchmark's test items: the texts a training set must not contain."""

    name: str
    items: list[str]
    item_ids: list[str]
    source: str = ""

    def __post_init__(self):
        if len(self.items) != len(self.item_ids):
            raise ValueError(f"benchmark {self.name!r}: {len(self.items)} items but {len(self.item_ids)} ids")
        if not self.items:
            raise ValueError(f"benchmark {self.name!r} has no items")


# name -> (file, text field, id field or None, licence file)
BUILTIN_BENCHMARKS: dict[str, tuple[str, str, Optional[str], str]] = {
    "GSM8K": ("gsm8k_test.jsonl", "question", None, "LICENSE.gsm8k"),
    "HumanEval": ("humaneval.jsonl.gz", "prompt", "task_id", "LICENSE.humaneval"),
}


def benchmarks_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "assets" / "benchmarks"


def builtin_benchmark_names() -> list[str]:
    return list(BUILTIN_BENCHMARKS)


def load_builtin_benchmark(name: str) -> Benchmark:
    """GSM8K (test questions) or HumanEval (prompts), from the copies shipped in assets/benchmarks."""
    if name not in BUILTIN_BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; shipped: {', '.join(BUILTIN_BENCHMARKS)}")
    filename, text_field, id_field, _ = BUILTIN_BENCHMARKS[name]
    path = benchmarks_dir() / filename
    opener = gzip.open if filename.endswith(".gz") else open
    items, ids = [], []
    with opener(path, "rt", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if line.strip():
                record = json.loads(line)
                items.append(record[text_field])
                ids.append(str(record[id_field]) if id_field else f"{name}/{line_number - 1}")
    return Benchmark(name, items, ids, str(path))


def benchmark_from_rows(name: str, rows: Sequence[Any], field: str = "prompt") -> Benchmark:
    """A user's own eval set (rows normalised by core.data.formats) as a benchmark."""
    texts = row_texts(rows, field, require_text=False)
    kept = [(i, t) for i, t in enumerate(texts) if t.strip()]
    return Benchmark(name, [t for _, t in kept], [f"{name}/{i}" for i, _ in kept])


def load_benchmark_file(path: str | Path, *, name: str | None = None, field: str = "prompt") -> Benchmark:
    """A user's eval file in any format core.data.formats reads."""
    loaded = load_dataset_file(path)
    benchmark = benchmark_from_rows(name or Path(path).stem, loaded.rows, field)
    benchmark.source = loaded.source
    return benchmark


# ----------------------------------------------------------------------------- results


@dataclass
class RowMatch:
    row: int
    benchmark: str
    item: int
    item_id: str
    spans: list[tuple[int, int]]  # character offsets in row_text(row, field), merged, sorted
    score: float  # ngram13: matched n-grams; ngram8_half: share of the item's words covered; substring50: substrings found


@dataclass
class BenchmarkContamination:
    benchmark: str
    mode: str
    n_rows: int
    n_items: int
    n_items_skipped: int
    matches: list[RowMatch]

    @property
    def contaminated_rows(self) -> list[int]:
        return sorted({m.row for m in self.matches})

    @property
    def rate(self) -> float:
        return len(self.contaminated_rows) / self.n_rows if self.n_rows else 0.0

    @property
    def items_hit(self) -> list[int]:
        return sorted({m.item for m in self.matches})

    def summary(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "mode": self.mode,
            "rows": self.n_rows,
            "contaminated_rows": len(self.contaminated_rows),
            "rate": round(self.rate, 6),
            "items": self.n_items,
            "items_hit": len(self.items_hit),
            "items_skipped_too_short": self.n_items_skipped,
        }

    def table_row(self) -> dict[str, Any]:
        """summary() as the Data page shows it: words for column names, the rate as a percentage."""
        return {"benchmark": self.benchmark, "rule": MODES[self.mode].label, "training rows": self.n_rows,
                "contaminated rows": len(self.contaminated_rows), "share": f"{100 * self.rate:.2f} %", "test items": self.n_items,
                "test items found": len(self.items_hit), "test items too short to check": self.n_items_skipped}


@dataclass
class DecontamResult:
    mode: str
    field: str
    n_rows: int
    reports: list[BenchmarkContamination]
    params: dict[str, Any]
    seconds: float

    @property
    def rows_to_drop(self) -> list[int]:
        return sorted({r for report in self.reports for r in report.contaminated_rows})

    def matches_by_row(self) -> dict[int, list[RowMatch]]:
        out: dict[int, list[RowMatch]] = {}
        for report in self.reports:
            for match in report.matches:
                out.setdefault(match.row, []).append(match)
        return out

    def spans_for_row(self, row: int) -> list[tuple[int, int]]:
        return merge_spans([s for m in self.matches_by_row().get(row, []) for s in m.spans])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DecontamResult":
        reports = [
            BenchmarkContamination(**(r | {"matches": [RowMatch(**(m | {"spans": [tuple(s) for s in m["spans"]]})) for m in r["matches"]]}))
            for r in data["reports"]
        ]
        return cls(data["mode"], data["field"], data["n_rows"], reports, data["params"], data["seconds"])


def merge_spans(spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


# ----------------------------------------------------------------------------- hashing


def _random_uint64(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**64 - 1, size=count, dtype=np.uint64, endpoint=True)


class _Bitmap:
    """A presence filter on the top bits of 64-bit hashes, then an exact sorted lookup.

    Sized to about 64 slots per hash (at most 2^24), so it stays in cache and passes ~1.5 %
    of the windows that are not in the set on to the exact lookup."""

    def __init__(self, hashes: np.ndarray):
        self.sorted = np.unique(hashes)
        self.bits_used = int(min(_BITMAP_BITS, max(16, int(np.ceil(np.log2(max(len(self.sorted), 1) * 64))))))
        self.shift = np.uint64(64 - self.bits_used)
        self.bits = np.zeros(1 << self.bits_used, dtype=bool)
        self.bits[self.sorted >> self.shift] = True

    def hits(self, hashes: np.ndarray) -> np.ndarray:
        """Positions of `hashes` that are in the set."""
        maybe = np.flatnonzero(self.bits[hashes >> self.shift])
        if len(maybe) == 0 or len(self.sorted) == 0:
            return maybe
        found = np.minimum(np.searchsorted(self.sorted, hashes[maybe]), len(self.sorted) - 1)
        return maybe[self.sorted[found] == hashes[maybe]]


def _window_hashes(ids: np.ndarray, length: int, table: np.ndarray, multipliers: np.ndarray) -> np.ndarray:
    """Hash of the `length` ids starting at every position (positions near the end are garbage)."""
    padded = np.concatenate((ids, np.zeros(length, dtype=ids.dtype)))
    mixed = table[padded]
    out = np.zeros(len(ids), dtype=np.uint64)
    for k in range(length):
        out += mixed[k : k + len(ids)] * multipliers[k]
    return out


def _valid_windows(ids: np.ndarray, length: int) -> np.ndarray:
    """Positions whose `length` ids are all known words within one row (0 marks unknown/boundary)."""
    zeros = np.concatenate(([0], np.cumsum(ids == 0)))
    starts = np.arange(max(0, len(ids) - length + 1))
    return starts[zeros[starts + length] - zeros[starts] == 0]


# ----------------------------------------------------------------------------- n-gram modes


@dataclass
class _NgramIndex:
    vocabulary: dict[str, int]  # word -> id from 1; any other word is 0, in no benchmark n-gram
    table: np.ndarray
    multipliers: np.ndarray
    item_ids: list[list[np.ndarray]]  # per benchmark, per item: word ids
    occurrences: dict[int, dict[int, list[tuple[int, int, int]]]]  # length -> hash -> [(bench, item, pos)]
    bitmaps: dict[int, _Bitmap]
    skipped: list[int]


def _build_ngram_index(benchmarks: Sequence[Benchmark], n: int) -> _NgramIndex:
    vocabulary: dict[str, int] = {}
    tokenised = [[WORD.findall(item.lower()) for item in b.items] for b in benchmarks]
    for items in tokenised:
        for tokens in items:
            for word in tokens:
                if word not in vocabulary:
                    vocabulary[word] = len(vocabulary) + 1
    table = _random_uint64(len(vocabulary) + 1, 1301)
    multipliers = _random_uint64(max(n, 1), 1302) | np.uint64(1)
    item_ids = [[np.array([vocabulary[w] for w in tokens], dtype=np.int64) for tokens in items] for items in tokenised]
    occurrences: dict[int, dict[int, list[tuple[int, int, int]]]] = {}
    skipped = [0] * len(benchmarks)
    for b, items in enumerate(item_ids):
        for i, ids in enumerate(items):
            if len(ids) < MIN_ITEM_WORDS:
                skipped[b] += 1
                continue
            length = min(n, len(ids))  # an item shorter than n words is matched whole
            hashes = _window_hashes(ids, length, table, multipliers)[: len(ids) - length + 1]
            bucket = occurrences.setdefault(length, {})
            for position, h in enumerate(hashes.tolist()):
                bucket.setdefault(h, []).append((b, i, position))
    bitmaps = {length: _Bitmap(np.fromiter(bucket, dtype=np.uint64, count=len(bucket))) for length, bucket in occurrences.items()}
    return _NgramIndex(vocabulary, table, multipliers, item_ids, occurrences, bitmaps, skipped)


def _train_ids(texts: Sequence[str], vocabulary: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """All rows' word ids in one array with a 0 after each row, and each row's start offset."""
    token_lists = [WORD.findall(text.lower()) for text in texts]
    lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(texts))
    starts = np.cumsum(lengths + 1) - (lengths + 1)
    n_words = int(lengths.sum())
    flat = np.zeros(n_words + len(texts), dtype=np.int64)
    is_word = np.ones(len(flat), dtype=bool)
    is_word[starts + lengths] = False
    all_words = itertools.chain.from_iterable(token_lists)
    flat[is_word] = np.fromiter(map(vocabulary.get, all_words, itertools.repeat(0)), dtype=np.int64, count=n_words)
    return flat, starts


def word_spans(text: str) -> list[tuple[int, int]]:
    """Character span of each word of ``words(text)``, in order."""
    lowered = text.lower()
    source = lowered if len(lowered) == len(text) else text
    return [m.span() for m in WORD.finditer(source)]


def _ngram_matches(
    texts: Sequence[str], benchmarks: Sequence[Benchmark], n: int, mode: str, progress: Progress
) -> tuple[list[list[RowMatch]], list[int]]:
    index = _build_ngram_index(benchmarks, n)
    _report(progress, 0.1, "tokenising the training rows")
    flat, starts = _train_ids(texts, index.vocabulary)
    _report(progress, 0.5, "hashing every window")
    # (row, bench, item) -> train positions and the item positions they cover
    found: dict[tuple[int, int, int], tuple[set[int], set[int]]] = {}
    for length, bitmap in index.bitmaps.items():
        valid = _valid_windows(flat, length)
        hashes = _window_hashes(flat, length, index.table, index.multipliers)[valid]
        for hit in bitmap.hits(hashes).tolist():
            position = int(valid[hit])
            window = flat[position : position + length]
            row = int(np.searchsorted(starts, position, side="right") - 1)
            for b, i, q in index.occurrences[length][int(hashes[hit])]:
                if np.array_equal(index.item_ids[b][i][q : q + length], window):
                    train_positions, item_positions = found.setdefault((row, b, i), (set(), set()))
                    train_positions.add(position - int(starts[row]))
                    item_positions.update(range(q, q + length))
    _report(progress, 0.9, "checking matches")
    per_benchmark: list[list[RowMatch]] = [[] for _ in benchmarks]
    spans_cache: dict[int, list[tuple[int, int]]] = {}
    for (row, b, i), (train_positions, item_positions) in sorted(found.items()):
        item_length = len(index.item_ids[b][i])
        length = min(n, item_length)
        if mode == "ngram8_half":
            score = len(item_positions) / item_length
            if score <= 0.5:
                continue
        else:
            score = float(len(train_positions))
        if row not in spans_cache:
            spans_cache[row] = word_spans(texts[row])
        tokens = spans_cache[row]
        spans = merge_spans(
            [(tokens[p][0], tokens[min(p + length, len(tokens)) - 1][1]) for p in train_positions if p < len(tokens)]
        )
        bench = benchmarks[b]
        per_benchmark[b].append(RowMatch(row, bench.name, i, bench.item_ids[i], spans, round(score, 4)))
    return per_benchmark, index.skipped


# ----------------------------------------------------------------------------- substring mode


def alnum_only(text: str) -> str:
    """GPT-4's processing: spaces and symbols removed, letters and digits kept (case kept)."""
    return _NON_ALNUM.sub("", text)


def sampled_substrings(item: str, length: int = 50, samples: int = 3) -> list[str]:
    """The substrings of a processed item that are looked for: `samples` deterministic windows
    (seeded by the item's CRC-32), every window when samples == 0, the item when it is short."""
    if len(item) <= length:
        return [item]
    n_windows = len(item) - length + 1
    if samples == 0 or samples >= n_windows:
        starts = range(n_windows)
    else:
        rng = np.random.default_rng(zlib.crc32(item.encode("utf-8")))
        starts = sorted(rng.choice(n_windows, size=samples, replace=False).tolist())
    return [item[s : s + length] for s in starts]


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


@lru_cache(maxsize=1)
def _alnum_table() -> np.ndarray:
    """is-letter-or-digit for every code point: the same set as the regex [^\\W_] (str.isalnum)."""
    return np.array([chr(c).isalnum() for c in range(0x110000)], dtype=bool)


class _RollingHash:
    """sum_k c[i+k] * B^k mod 2^64 for every window, from one prefix sum (B odd, so invertible)."""

    def __init__(self, seed: int = 4242):
        self.base = int(_random_uint64(1, seed)[0]) | 1
        self.inverse = pow(self.base, -1, 1 << 64)
        self._powers: dict[int, np.ndarray] = {}

    def powers(self, base: int, count: int) -> np.ndarray:
        cached = self._powers.get(base)
        if cached is None or len(cached) < count:
            steps = np.full(max(count, 1024), base, dtype=np.uint64)
            steps[0] = 1
            cached = self._powers[base] = np.cumprod(steps, dtype=np.uint64)
        return cached[:count]

    def of(self, codes: np.ndarray) -> int:
        return int((codes.astype(np.uint64) * self.powers(self.base, len(codes))).sum(dtype=np.uint64))

    def windows(self, codes: np.ndarray, length: int) -> np.ndarray:
        """Hash of the `length` code points starting at every position 0 .. len - length."""
        count = len(codes) - length + 1
        if count <= 0:
            return np.zeros(0, dtype=np.uint64)
        prefix = np.zeros(len(codes) + 1, dtype=np.uint64)
        np.cumsum(codes.astype(np.uint64) * self.powers(self.base, len(codes)), dtype=np.uint64, out=prefix[1:])
        return (prefix[length:] - prefix[:count]) * self.powers(self.inverse, count)


def _substring_patterns(benchmarks: Sequence[Benchmark], length: int, samples: int, rolling: _RollingHash):
    patterns: dict[int, dict[int, list[tuple[int, int, np.ndarray]]]] = {}  # length -> hash -> [(bench, item, codes)]
    skipped = [0] * len(benchmarks)
    for b, bench in enumerate(benchmarks):
        for i, item in enumerate(bench.items):
            processed = alnum_only(item)
            if len(processed) < MIN_ITEM_CHARS:
                skipped[b] += 1
                continue
            for pattern in set(sampled_substrings(processed, length, samples)):
                codes = _codepoints(pattern)
                patterns.setdefault(len(codes), {}).setdefault(rolling.of(codes), []).append((b, i, codes))
    return patterns, skipped


def _substring_matches(
    texts: Sequence[str], benchmarks: Sequence[Benchmark], length: int, samples: int, progress: Progress, chunk_chars: int = 1 << 22
) -> tuple[list[list[RowMatch]], list[int]]:
    """Rows are processed a block at a time as one array of code points: keep the letters and
    digits (a table lookup), hash every window, look the hashes up, verify each hit."""
    rolling = _RollingHash()
    patterns, skipped = _substring_patterns(benchmarks, length, samples, rolling)
    bitmaps = {n: _Bitmap(np.fromiter(bucket, dtype=np.uint64, count=len(bucket))) for n, bucket in patterns.items()}
    is_alnum = _alnum_table()
    found: dict[tuple[int, int, int], list[tuple[int, int]]] = {}  # (row, bench, item) -> spans
    row = 0
    while row < len(texts):
        first, size = row, 0
        while row < len(texts) and (size < chunk_chars or row == first):
            size += len(texts[row])
            row += 1
        raw = _codepoints("".join(texts[first:row]))
        row_starts = np.cumsum([0] + [len(t) for t in texts[first:row]])  # in raw code points
        kept_at = np.flatnonzero(is_alnum[raw])  # raw position of every kept character
        codes = raw[kept_at]
        kept_row_starts = np.searchsorted(kept_at, row_starts)  # where each row begins among the kept
        for n, bitmap in bitmaps.items():
            hashes = rolling.windows(codes, n)
            for position in bitmap.hits(hashes).tolist():
                r = int(np.searchsorted(kept_row_starts, position, side="right") - 1)
                if position + n > kept_row_starts[r + 1]:
                    continue  # the window runs into the next row
                window = codes[position : position + n]
                for b, i, pattern in patterns[n][int(hashes[position])]:
                    if np.array_equal(pattern, window):
                        span = (int(kept_at[position] - row_starts[r]), int(kept_at[position + n - 1] - row_starts[r] + 1))
                        found.setdefault((first + r, b, i), []).append(span)
        _report(progress, 0.1 + 0.8 * row / len(texts), f"scanned {row:,} / {len(texts):,} rows")
    per_benchmark: list[list[RowMatch]] = [[] for _ in benchmarks]
    for (r, b, i), spans in sorted(found.items()):
        bench = benchmarks[b]
        n_substrings = len({alnum_only(texts[r][a:e]) for a, e in spans})
        per_benchmark[b].append(RowMatch(r, bench.name, i, bench.item_ids[i], merge_spans(spans), float(n_substrings)))
    return per_benchmark, skipped


# ----------------------------------------------------------------------------- entry point


@dataclass
class DecontamConfig:
    mode: str = dc_field(default="ngram13", metadata={"help": "ngram13 (GPT-3), ngram8_half (Tülu 3) or substring50 (GPT-4)"})
    field: str = dc_field(default="both", metadata={"help": "which text of a training row to check: prompt, answer or both"})
    substring_samples: int = dc_field(default=3, metadata={"help": "substring50: substrings sampled per test item (GPT-4 used 3); "
                                                                   "0 = every window"})

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.field not in FIELDS:
            raise ValueError(f"field must be one of {', '.join(FIELDS)}, got {self.field!r}")
        if not isinstance(self.substring_samples, int) or self.substring_samples < 0:
            raise ValueError(f"substring_samples must be an integer >= 0, got {self.substring_samples!r}")


def decontaminate(
    rows: Sequence[Any],
    benchmarks: Sequence[Benchmark],
    config: DecontamConfig | None = None,
    progress: Progress = None,
) -> DecontamResult:
    """Per benchmark: the contaminated training rows, the spans to highlight, the rate."""
    config = config or DecontamConfig()
    if not benchmarks:
        raise ValueError("no benchmark to check against: pick at least one")
    started = time.perf_counter()
    texts = row_texts(rows, config.field, require_text=False)
    if config.mode == "substring50":
        per_benchmark, skipped = _substring_matches(texts, benchmarks, 50, config.substring_samples, progress)
    else:
        n = 13 if config.mode == "ngram13" else 8
        per_benchmark, skipped = _ngram_matches(texts, benchmarks, n, config.mode, progress)
    reports = [
        BenchmarkContamination(bench.name, config.mode, len(texts), len(bench.items), skipped[b], per_benchmark[b])
        for b, bench in enumerate(benchmarks)
    ]
    _report(progress, 1.0, "done")
    params = asdict(config) | {"benchmarks": [b.name for b in benchmarks], "rule": MODES[config.mode].rule}
    return DecontamResult(config.mode, config.field, len(texts), reports, params, time.perf_counter() - started)
