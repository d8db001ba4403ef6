"""De-duplication: exact, near (MinHash-LSH), semantic, and the train <-> eval leakage check."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from datasketch import LeanMinHash, MinHash, MinHashLSH

from core.data.dedup import (
    DedupResult,
    ExactDedupConfig,
    LeakageConfig,
    NearDedupConfig,
    SemanticDedupConfig,
    find_exact_duplicates,
    find_leakage,
    find_near_duplicates,
    find_semantic_duplicates,
    minhash_signatures,
    near_candidate_pairs,
    shingle_hash,
    shingles,
)
from core.data.text import normalise_for_exact, row_text


def chat(prompt: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


@pytest.fixture(scope="module")
def alpaca(shared_data) -> list[dict]:
    records = json.loads((shared_data / "alpaca_5000.json").read_text(encoding="utf-8"))
    return [chat((r["instruction"] + "\n\n" + r["input"]).strip(), r["output"]) for r in records]


def edit_one_word(row: dict, rng: random.Random) -> dict:
    """A near-duplicate: one word of the answer replaced (5-gram Jaccard stays well above 0.8 on long rows)."""
    words = row["messages"][1]["content"].split(" ")
    words[rng.randrange(len(words))] = "remarkably"
    return chat(row["messages"][0]["content"], " ".join(words))


def jaccard(a: str, b: str) -> float:
    x, y = set(shingles(a)), set(shingles(b))
    return len(x & y) / len(x | y)


# ----------------------------------------------------------------------------- exact


def test_exact_duplicates_ignore_case_punctuation_and_whitespace():
    rows = [
        chat("What is the capital of France?", "Paris."),
        chat("Name a prime number.", "7"),
        chat("what is the capital of   france", "PARIS!"),
        chat("What is the capital of France?!", "Paris — the city of light."),
        chat("Name a prime  number", "7."),
        chat("What is the capital of Spain?", "Madrid."),
    ]
    result = find_exact_duplicates(rows)
    assert [c.members for c in result.clusters] == [[0, 2], [1, 4]]
    assert result.rows_to_drop == [2, 4]
    assert all(c.method == "exact" and c.keep_rule == "first seen" for c in result.clusters)
    assert result.kept_rows(rows) == [rows[0], rows[1], rows[3], rows[5]]

    by_prompt = find_exact_duplicates(rows, ExactDedupConfig(field="prompt", keep="longest_answer"))
    assert [c.members for c in by_prompt.clusters] == [[0, 2, 3], [1, 4]]
    assert by_prompt.clusters[0].representative == 3  # the longest answer
    assert by_prompt.clusters[1].representative == 4  # "7." beats "7"
    assert by_prompt.clusters[0].keep_rule == "longest answer"


def test_normalisation_rule():
    assert normalise_for_exact("  Hello,\tWORLD!!  It's “fine”… ") == "hello world its fine"
    assert normalise_for_exact("ﬁne") == "fine"  # NFKC folds the ligature


def test_system_prompt_is_not_compared():
    system = {"role": "system", "content": "You are a helpful assistant who always answers in JSON. " * 5}
    rows = [{"messages": [system, {"role": "user", "content": f"Question number {i} about topic {i * 7}"},
                          {"role": "assistant", "content": f"Answer {i}"}]} for i in range(20)]
    assert find_exact_duplicates(rows).clusters == []
    assert find_near_duplicates(rows, NearDedupConfig(workers=1)).clusters == []
    assert "helpful" not in row_text(rows[0], "both")


def test_text_rows_are_compared_on_their_text():
    rows = [{"text": "The quick brown fox jumps over the lazy dog."}, {"text": "the quick brown fox jumps over the lazy dog"},
            {"text": "Other."}]
    assert [c.members for c in find_exact_duplicates(rows).clusters] == [[0, 1]]


# ----------------------------------------------------------------------------- MinHash


def test_signatures_equal_datasketch_minhash():
    texts = [
        "The quick brown fox jumps over the lazy dog near the river bank today.",
        "short text",
        "?!",
        "one two three four five",
        "one two three four five six",
        "Ünïcödé wörds and ÇAPITALS mixed with numbers 123 456 789 and more words here",
    ]
    for num_perm in (128, 256):
        signatures = minhash_signatures(texts, num_perm=num_perm, workers=1)
        for text, signature in zip(texts, signatures):
            reference = MinHash(num_perm=num_perm, seed=1, hashfunc=shingle_hash)
            reference.update_batch(shingles(text))
            assert np.array_equal(reference.hashvalues, signature), text


def test_signature_estimate_tracks_true_jaccard(alpaca):
    rng = random.Random(3)
    long_rows = [r for r in alpaca if len(row_text(r).split()) > 80][:40]
    copies = [edit_one_word(r, rng) for r in long_rows]
    texts = [row_text(r) for r in long_rows + copies]
    signatures = minhash_signatures(texts, num_perm=256, workers=1)
    n = len(long_rows)
    for k in range(n):
        estimate = LeanMinHash(seed=1, hashvalues=signatures[k], scheme="affine32").jaccard(
            LeanMinHash(seed=1, hashvalues=signatures[n + k], scheme="affine32"))
        assert abs(estimate - jaccard(texts[k], texts[n + k])) < 0.12


def test_parallel_signatures_equal_serial(alpaca):
    texts = [row_text(r) for r in alpaca[:1200]]
    serial = minhash_signatures(texts, workers=1)
    parallel = minhash_signatures(texts, workers=2, chunk_rows=300, parallel_min_rows=1000)
    assert np.array_equal(serial, parallel)


def test_lsh_candidates_equal_datasketch_minhashlsh(alpaca):
    rng = random.Random(5)
    rows = alpaca[:400] + [edit_one_word(r, rng) for r in alpaca[:60]]
    signatures = minhash_signatures([row_text(r) for r in rows], workers=1)
    config = NearDedupConfig()
    i, j = near_candidate_pairs(signatures, config)
    lsh = MinHashLSH(threshold=config.lsh_threshold, num_perm=config.num_perm, weights=config.lsh_weights)
    sketches = [LeanMinHash(seed=1, hashvalues=s, scheme="affine32") for s in signatures]
    for k, sketch in enumerate(sketches):
        lsh.insert(k, sketch)
    expected = {(k, q) for k, sketch in enumerate(sketches) for q in lsh.query(sketch) if q > k}
    assert set(zip(i.tolist(), j.tolist())) == expected
    assert len(expected) >= 30  # short rows lose too many shingles to one edit to be candidates


def test_injected_near_duplicates_found_without_false_clusters(alpaca):
    rng = random.Random(11)
    originals = alpaca[:1500]
    sources = [k for k, r in enumerate(originals) if len(row_text(r).split()) >= 60][:120]
    rows = originals + [edit_one_word(originals[k], rng) for k in sources]
    copy_of = {len(originals) + n: k for n, k in enumerate(sources)}
    assert min(jaccard(row_text(rows[c]), row_text(rows[o])) for c, o in copy_of.items()) >= 0.8

    result = find_near_duplicates(rows, NearDedupConfig(workers=1))
    cluster_of = {m: k for k, c in enumerate(result.clusters) for m in c.members}
    found = sum(c in cluster_of and cluster_of.get(o) == cluster_of[c] for c, o in copy_of.items())
    assert found / len(copy_of) >= 0.98
    for cluster in result.clusters:  # every cluster is exactly one original with its copy
        assert len(cluster.members) == 2
        assert copy_of[cluster.members[1]] == cluster.members[0]
        assert cluster.representative == cluster.members[0]
        assert 0.8 <= cluster.similarity[cluster.members[1]] <= 1.0
        assert cluster.pairs and cluster.pairs[0][:2] == tuple(cluster.members)
    assert result.rows_to_drop == sorted(c for c, o in copy_of.items() if c in cluster_of)


def score_planted(rows, origin, similarity, result, threshold):
    """(recall among copies whose real Jaccard >= threshold, precision of the dropped rows, copies found below it)."""
    labels = np.arange(len(rows))
    for k, cluster in enumerate(result.clusters):
        labels[cluster.members] = len(rows) + k
    origin, similarity = np.asarray(origin), np.asarray(similarity)
    copies = np.flatnonzero(origin != np.arange(len(rows)))
    together = labels[copies] == labels[origin[copies]]
    near = similarity[copies] >= threshold
    dropped = [(m, c.representative) for c in result.clusters for m in c.dropped]
    precision = float(np.mean([origin[m] == origin[r] for m, r in dropped]))
    return float(together[near].mean()), precision, int(together[~near].sum()), int(near.sum())


def test_planted_edits_of_real_rows_recall_and_precision_with_exact_verification(alpaca):
    """1-4-word edits of every real Alpaca row: the copies' real Jaccard spreads across 0.8. Verified on the
    exact shingle sets, with candidates drawn for a lower threshold, every copy at or above 0.8 is found and
    nothing else; verified on the MinHash estimate, the copies near the threshold are lost."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from grow_alpaca import plant_edits

    rows, origin, similarity = plant_edits(alpaca, seed=0)
    exact = find_near_duplicates(rows, NearDedupConfig(workers=1))
    recall, precision, below, n_near = score_planted(rows, origin, similarity, exact, 0.8)
    assert n_near > 1000 and recall >= 0.98 and precision == 1.0 and below == 0
    assert exact.params["exactly_verified_pairs"] >= exact.params["verified_pairs"] > 0
    for cluster in exact.clusters[:50]:
        for member in cluster.dropped:
            assert abs(cluster.similarity[member] - jaccard(row_text(rows[member]), row_text(rows[cluster.representative]))) < 1e-4
    estimate = find_near_duplicates(rows, NearDedupConfig(workers=1, verify="estimate", candidate_margin=0.0))
    assert score_planted(rows, origin, similarity, estimate, 0.8)[0] < recall


def test_a_big_cluster_costs_about_one_check_per_member_and_equals_every_pair_checked(alpaca):
    """40 real rows with 8 one-word edits each: clusters are the connected components of every pair whose real
    Jaccard >= 0.8 (brute force over all 64,620 pairs), yet a pair whose rows verified pairs already join is not
    checked, so the exact checks stay near one per member, not one per candidate pair."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rng = random.Random(3)
    rows = [copy for row in alpaca[:40] for copy in [row] + [edit_one_word(row, rng) for _ in range(8)]]
    texts = [row_text(r) for r in rows]
    pairs = [(a, b) for a in range(len(rows)) for b in range(a + 1, len(rows)) if jaccard(texts[a], texts[b]) >= 0.8]
    a, b = np.array(pairs).T
    _, labels = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(len(rows),) * 2), directed=False)
    expected = sorted(sorted(np.flatnonzero(labels == label).tolist()) for label in set(labels.tolist()) if (labels == label).sum() > 1)
    result = find_near_duplicates(rows, NearDedupConfig(workers=1))
    assert sorted(sorted(c.members) for c in result.clusters) == expected
    members = sum(len(c.members) for c in result.clusters)
    checks = result.params["exactly_verified_pairs"]
    assert result.params["candidate_pairs"] >= len(pairs)
    assert members - len(result.clusters) <= checks <= 1.5 * members


def test_real_alpaca_rows_form_no_near_clusters(alpaca):
    # The 5,000 real rows have no pair with 5-gram Jaccard above 0.45 (checked by brute force).
    result = find_near_duplicates(alpaca, NearDedupConfig(workers=1))
    assert result.clusters == []
    assert result.params["verified_pairs"] == 0


def test_near_duplicate_keep_longest_answer():
    base = "Explain why the sky is blue in a few sentences for a curious child who likes science"
    rows = [chat(base, "Because of scattering."),
            chat(base + " please", "Because sunlight scatters off air molecules, and blue scatters most.")]
    result = find_near_duplicates(rows, NearDedupConfig(keep="longest_answer", field="prompt", workers=1))
    assert [c.members for c in result.clusters] == [[0, 1]]
    assert result.clusters[0].representative == 1
    assert result.rows_to_drop == [0]


# ----------------------------------------------------------------------------- semantic

PARAPHRASES = [
    ("How can I reset my password?", "What are the steps to reset my password?"),
    ("What is the capital city of Australia?", "Which city is the capital of Australia?"),
    ("Give me some tips for sleeping better at night.", "What are some tips to sleep better at night?"),
    ("How do I convert Celsius to Fahrenheit?", "How do you convert a temperature from Celsius to Fahrenheit?"),
]
UNRELATED = [
    "Write a haiku about autumn leaves.",
    "List three uses of a paperclip.",
    "Summarise the plot of Hamlet in two sentences.",
    "What is the boiling point of water at sea level?",
]


def test_semantic_duplicates_find_paraphrases():
    prompts = [p for pair in PARAPHRASES for p in pair] + UNRELATED
    rows = [chat(p, "ok") for p in prompts]
    result = find_semantic_duplicates(rows, SemanticDedupConfig(field="prompt"))  # cosine >= 0.9; these pairs score 0.94-0.97
    assert sorted(c.members for c in result.clusters) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    for cluster in result.clusters:
        assert cluster.method == "semantic"
        assert cluster.similarity[cluster.dropped[0]] >= 0.9
    # exact and near de-duplication see none of these as duplicates
    assert find_exact_duplicates(rows, ExactDedupConfig(field="prompt")).clusters == []
    assert find_near_duplicates(rows, NearDedupConfig(field="prompt", workers=1)).clusters == []


def test_semantic_neighbour_search_matches_brute_force():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(700, 16)).astype(np.float32)
    embeddings[350:400] = embeddings[:50] + 0.05 * rng.normal(size=(50, 16))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    rows = [chat(f"row {i}", "x") for i in range(len(embeddings))]
    result = find_semantic_duplicates(rows, SemanticDedupConfig(threshold=0.97, block_rows=64), embeddings=embeddings)
    sims = embeddings @ embeddings.T
    expected = {(a, b) for a, b in zip(*np.nonzero(np.triu(sims, 1) >= 0.97))}
    found = {(a, b) for c in result.clusters for a in c.members for b in c.members if a < b}
    assert expected and expected <= found
    assert {tuple(c.members) for c in result.clusters} == {(k, 350 + k) for k in range(50)}


# ----------------------------------------------------------------------------- leakage


def test_leakage_between_train_and_eval(alpaca):
    eval_rows = alpaca[4000:4040]
    long_eval = [k for k, r in enumerate(eval_rows) if len(row_text(r, "prompt").split()) >= 30]
    train = list(alpaca[:300])
    exact_copy = chat(eval_rows[0]["messages"][0]["content"].upper() + "!!", "different answer")
    train.append(exact_copy)
    near_source = long_eval[0]
    words = eval_rows[near_source]["messages"][0]["content"].split(" ")
    words[len(words) // 2] = "banana"
    train.append(chat(" ".join(words), "another answer"))
    report = find_leakage(train, eval_rows)
    assert report.leaked_train_rows == [300, 301]
    assert report.matched_eval_rows == sorted({0, near_source})
    methods = {m.train_row: m.method for m in report.matches}
    assert methods == {300: "exact", 301: "near"}
    assert report.rows_to_drop == [300, 301]

    paraphrase_eval = [chat(a, "x") for a, _ in PARAPHRASES]
    paraphrase_train = [chat(b, "y") for _, b in PARAPHRASES] + [chat(u, "z") for u in UNRELATED]
    without = find_leakage(paraphrase_train, paraphrase_eval)
    assert without.matches == []
    with_semantic = find_leakage(paraphrase_train, paraphrase_eval, LeakageConfig(semantic=True))
    assert with_semantic.leaked_train_rows == [0, 1, 2, 3]
    assert {(m.train_row, m.eval_row) for m in with_semantic.matches} == {(k, k) for k in range(4)}


# ----------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize("finder", [find_exact_duplicates, find_near_duplicates, find_semantic_duplicates])
def test_empty_dataset_is_a_clear_error(finder):
    with pytest.raises(ValueError, match="empty"):
        finder([])


def test_rows_without_text_are_named():
    rows = [chat("hello there", "hi"), {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "x"}]}]
    with pytest.raises(ValueError, match=r"1 row\(s\) have no text in the 'prompt' field \(rows 1\)"):
        find_exact_duplicates(rows, ExactDedupConfig(field="prompt"))
    with pytest.raises(ValueError, match="row 0: row is not in the normalised form"):
        find_near_duplicates([{"instruction": "raw alpaca row"}])
    with pytest.raises(ValueError, match="training set"):
        find_leakage([], [chat("a", "b")])


@pytest.mark.parametrize("threshold", [0, -0.1, 1.5, math.nan, "0.8", None, True])
def test_bad_thresholds_are_rejected(threshold):
    with pytest.raises(ValueError, match="threshold"):
        NearDedupConfig(threshold=threshold)
    with pytest.raises(ValueError, match="threshold"):
        SemanticDedupConfig(threshold=threshold)
    with pytest.raises(ValueError, match="threshold"):
        LeakageConfig(near_threshold=threshold)


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="field must be one of prompt, answer, both"):
        ExactDedupConfig(field="question")
    with pytest.raises(ValueError, match="keep must be one of"):
        NearDedupConfig(keep="random")
    with pytest.raises(ValueError, match="num_perm"):
        NearDedupConfig(num_perm=4)
    with pytest.raises(ValueError, match="lsh_weights"):
        NearDedupConfig(lsh_weights=(0.7, 0.7))
    with pytest.raises(ValueError, match="top_k"):
        SemanticDedupConfig(top_k=0)


def test_result_is_plain_data():
    result = find_exact_duplicates([chat("a b", "c"), chat("A, b!", "c")])
    assert isinstance(result, DedupResult)
    assert json.loads(json.dumps(result.clusters[0].to_dict()))["members"] == [0, 1]
