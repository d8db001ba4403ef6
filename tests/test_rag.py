"""core.rag: documents, token chunking, the dense + BM25 index, recall@k, the prompt format, RAFT examples and scoring."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from core.rag import prompt as rag_prompt
from core.rag.chunking import Chunk, chunk_documents, retriever_tokenizer, token_windows
from core.rag.corpus import CorpusError, Document, load_corpus
from core.rag.evaluation import EvalItem, score_reply, summarize
from core.rag.index import RagIndex, build_index, fuse, open_index
from core.rag.questions import Question, QuestionsError, gold_chunk_ids, load_questions, recall_at_k
from core.rag.raft import RaftSettings, build_raft, extract_quote, parse_generated, split_heldout
from core.scorers import contains_answer

ROOT = Path(__file__).resolve().parents[1]
HANDBOOK = ROOT / "assets" / "handbook"


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF with one line of Helvetica text (enough for pypdf's extract_text)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1) + b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


@pytest.fixture(scope="module")
def demo_corpus():
    return load_corpus(HANDBOOK / "docs")


@pytest.fixture(scope="module")
def demo_questions():
    return load_questions(HANDBOOK / "questions.jsonl")


@pytest.fixture(scope="module")
def demo_index(demo_corpus, tmp_path_factory) -> RagIndex:
    home = tmp_path_factory.mktemp("rag-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WORKBENCH_HOME", str(home))
        index, built = open_index(demo_corpus)
    assert built.rebuilt and built.folder.parent == home / "rag" / "indexes"
    return index


# --------------------------------------------------------------------------- documents


def test_the_demo_handbook_is_30_documents_and_150_grounded_questions(demo_corpus, demo_questions):
    assert len(demo_corpus.documents) == 30 and len(demo_questions) == 150
    texts = demo_corpus.by_id()
    assert all(q.evidence in texts[q.doc_id].text and q.answer.lower() in q.evidence.lower() for q in demo_questions)
    assert Counter(q.doc_id for q in demo_questions) == Counter({doc_id: 5 for doc_id in texts})
    assert texts["office-brightwater"].title == "Office guide: Brightwater" and not texts["office-brightwater"].text.startswith("#")
    assert (HANDBOOK / "LICENSE").read_text().count("CC0") >= 1


def test_the_demo_handbook_script_rebuilds_the_shipped_files(tmp_path):
    import subprocess
    import sys

    subprocess.run([sys.executable, str(ROOT / "assets" / "make_demo_handbook.py"), str(tmp_path)], check=True, capture_output=True)
    assert (tmp_path / "questions.jsonl").read_bytes() == (HANDBOOK / "questions.jsonl").read_bytes()
    shipped = sorted((HANDBOOK / "docs").glob("*.md"))
    assert [p.name for p in sorted((tmp_path / "docs").glob("*.md"))] == [p.name for p in shipped]
    assert all((tmp_path / "docs" / p.name).read_bytes() == p.read_bytes() for p in shipped)


def test_corpus_from_a_folder_of_txt_md_and_pdf(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "refunds.md").write_text("# Refund policy\n\nRefunds take 14 days.\n")
    (tmp_path / "sub" / "notes_on-travel.txt").write_text("Trains over 3 hours may be first class.")
    (tmp_path / "scan.pdf").write_bytes(minimal_pdf("Badges are blue on Mondays."))
    (tmp_path / "empty.txt").write_text("   \n")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    corpus = load_corpus(tmp_path)
    docs = corpus.by_id()
    assert sorted(docs) == ["refunds", "scan", "sub/notes_on-travel"]
    assert docs["refunds"].title == "Refund policy" and docs["refunds"].text == "Refunds take 14 days."
    assert docs["sub/notes_on-travel"].title == "notes on travel"
    assert docs["scan"].text == "Badges are blue on Mondays."
    assert any("empty.txt" in n for n in corpus.notes) and any(".png" in n for n in corpus.notes)
    same = load_corpus(tmp_path)
    assert same.sha256 == corpus.sha256
    (tmp_path / "refunds.md").write_text("# Refund policy\n\nRefunds take 10 days.\n")
    assert load_corpus(tmp_path).sha256 != corpus.sha256


def test_corpus_from_jsonl_and_its_errors_name_the_line(tmp_path):
    good = tmp_path / "docs.jsonl"
    good.write_text(json.dumps({"id": "a", "title": "A", "text": "alpha"}) + "\n\n" + json.dumps({"text": "beta"}) + "\n")
    corpus = load_corpus(good)
    assert [(d.id, d.title, d.text) for d in corpus.documents] == [("a", "A", "alpha"), ("doc-3", "doc-3", "beta")]
    cases = {'{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n': "line 2: the id 'a' is used twice",
             '{"id": "a", "text": "x"}\n{"id": "b"}\n': "line 2: the `text` field is missing",
             '{"id": "a", "text": "x"}\nnot json\n': "line 2: not valid JSON", '["a"]\n': "line 1: expected an object"}
    for content, message in cases.items():
        bad = tmp_path / "bad.jsonl"
        bad.write_text(content)
        with pytest.raises(CorpusError, match=message):
            load_corpus(bad)
    with pytest.raises(CorpusError, match="not found"):
        load_corpus(tmp_path / "missing")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(CorpusError, match="no document"):
        load_corpus(tmp_path / "nothing")


# --------------------------------------------------------------------------- chunking


def test_token_windows_cut_between_words_with_the_overlap():
    # 12 words of 1-3 tokens each: token i continues a word when its start touches the previous end
    lengths = [1, 2, 1, 3, 1, 1, 2, 1, 1, 3, 1, 2, 2, 1, 3, 1]
    offsets, position = [], 0
    for length in lengths:
        for _ in range(length):
            offsets.append((position, position + 1))
            position += 1
        position += 1  # a space
    word_start = {0} | {i for i in range(1, len(offsets)) if offsets[i][0] > offsets[i - 1][1]}
    windows = token_windows(offsets, chunk_tokens=8, overlap=3)
    assert windows[0][0] == 0 and windows[-1][1] == len(offsets)
    for (s1, e1), (s2, _e2) in zip(windows, windows[1:]):
        assert e1 - s1 <= 8 and s2 > s1 and e1 - s2 >= 3  # bounded, progressing, overlapping by >= 3 tokens
    assert all(s in word_start for s, _ in windows) and all(e in word_start or e == len(offsets) for _, e in windows)
    assert token_windows(offsets[:4], 8, 3) == [(0, 4)]
    with pytest.raises(ValueError, match="overlap"):
        token_windows(offsets, 8, 8)
    with pytest.raises(ValueError, match="chunk_tokens"):
        token_windows(offsets, 4, 0)


def test_chunks_are_exact_slices_bounded_and_overlapping(demo_corpus):
    tokenizer = retriever_tokenizer()
    chunks = chunk_documents(demo_corpus.documents, chunk_tokens=64, overlap=16)
    by_doc: dict[str, list[Chunk]] = {}
    for chunk in chunks:
        by_doc.setdefault(chunk.doc_id, []).append(chunk)
    assert set(by_doc) == {d.id for d in demo_corpus.documents} and len(chunks) > len(by_doc)
    for doc in demo_corpus.documents:
        own = by_doc[doc.id]
        n_tokens = len(tokenizer(doc.text, add_special_tokens=False)["input_ids"])
        assert own[0].token_start == 0 and own[-1].token_end == n_tokens
        assert [c.id for c in own] == [f"{doc.id}#{n}" for n in range(len(own))]
        for chunk in own:
            assert chunk.n_tokens <= 64 and doc.text[chunk.char_start:chunk.char_end] == chunk.text
            assert chunk.char_start == 0 or doc.text[chunk.char_start - 1].isspace()  # starts at a word
            assert chunk.text == chunk.text.strip() and chunk.title == doc.title
        for first, second in zip(own, own[1:]):
            assert first.token_end - second.token_start >= 16
    single = chunk_documents([Document("d", "D", "One short sentence.")], 64, 16)
    assert len(single) == 1 and single[0].text == "One short sentence."


# --------------------------------------------------------------------------- index and retrieval


def test_the_index_is_reused_until_the_documents_change(workspace, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Refunds are issued within 14 days of the request.")
    (docs / "b.txt").write_text("The office opens at eight in the morning.")
    (docs / "c.txt").write_text("Badges must be worn at all times.")
    first = build_index(load_corpus(docs))
    assert first.rebuilt and (first.folder / "index.json").is_file()
    again = build_index(load_corpus(docs))
    assert not again.rebuilt and again.folder == first.folder
    (docs / "a.txt").touch()
    assert not build_index(load_corpus(docs)).rebuilt  # a touched file is the same documents
    (docs / "a.txt").write_text("Refunds are issued within 30 days of the request.")
    changed = build_index(load_corpus(docs))
    assert changed.rebuilt and changed.folder != first.folder
    other_chunks = build_index(load_corpus(docs), chunk_tokens=32, overlap=8)
    assert other_chunks.rebuilt and other_chunks.folder not in (first.folder, changed.folder)
    index = RagIndex(changed.folder)
    assert "30 days" in index.search("how long do refunds take?", k=1, mode="bm25")[0].chunk.text


def test_search_modes_give_k_ranked_hits_with_scores(demo_index):
    for mode in ("dense", "bm25", "hybrid"):
        hits = demo_index.search("What is the hotel cap per night on business trips?", k=5, mode=mode)
        assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert hits[0].chunk.doc_id == "policy-travel", (mode, [h.chunk.id for h in hits])
        assert len({h.chunk.id for h in hits}) == 5
    assert len(demo_index.search("anything", k=10_000)) == len(demo_index)
    with pytest.raises(ValueError, match="retrieval mode"):
        demo_index.search("x", mode="magic")


def test_reciprocal_rank_fusion_rewards_agreement():
    import numpy as np

    dense = (np.array([0, 1, 2]), np.array([0.9, 0.8, 0.7]))
    lexical = (np.array([2, 1, 3]), np.array([5.0, 4.0, 3.0]))
    order, scores = fuse([dense, lexical], k=4)
    assert list(order[:2]) == [1, 2] or list(order[:2]) == [2, 1]  # in both lists near the top
    assert set(order) == {0, 1, 2, 3} and list(scores) == sorted(scores, reverse=True)
    assert scores[0] == pytest.approx(1 / 62 + 1 / 61) or scores[0] == pytest.approx(1 / 63 + 1 / 61)


def test_retrieval_recall_on_the_demo_handbook(demo_index, demo_questions):
    golds = [gold_chunk_ids(q, demo_index.chunks) for q in demo_questions]
    assert all(golds) and all(all(demo_index.chunk(g).doc_id == q.doc_id for g in gold) for q, gold in zip(demo_questions, golds))
    recall = {}
    for mode in ("dense", "bm25", "hybrid"):
        hits = demo_index.search_many([q.question for q in demo_questions], 5, mode)
        recall[mode] = recall_at_k([[h.chunk.id for h in row] for row in hits], golds, (1, 5))
        assert recall[mode]["n"] == 150
    # measured: dense 0.83 / 0.99, bm25 0.95 / 1.00, hybrid 0.93 / 1.00
    assert recall["dense"]["recall@1"] >= 0.75 and recall["bm25"]["recall@1"] >= 0.9 and recall["hybrid"]["recall@1"] >= 0.85, recall
    assert all(r["recall@5"] >= 0.97 for r in recall.values()), recall
    assert recall["hybrid"]["recall@1"] > recall["dense"]["recall@1"]


def test_recall_at_k_arithmetic():
    ranked = [["a", "b", "c"], ["x", "y", "z"], ["q", "r", "s"], ["m"]]
    golds = [["a"], ["z"], ["nothing"], []]  # the last has no gold: not counted
    out = recall_at_k(ranked, golds, (1, 3))
    assert out == {"n": 3, "recall@1": pytest.approx(1 / 3), "recall@3": pytest.approx(2 / 3), "mrr": pytest.approx((1 + 1 / 3) / 3)}


def test_gold_chunks_from_ids_evidence_or_document(demo_index):
    travel = demo_index.doc_chunks("policy-travel")
    assert gold_chunk_ids(Question("1", "q", "a", gold_chunk_ids=(travel[0].id,)), demo_index.chunks) == [travel[0].id]
    with pytest.raises(QuestionsError, match="not in the index"):
        gold_chunk_ids(Question("2", "q", "a", gold_chunk_ids=("policy-travel#99",)), demo_index.chunks)
    assert gold_chunk_ids(Question("3", "q", "a", doc_id="policy-travel"), demo_index.chunks) == [c.id for c in travel]
    sentence = next(s for s in travel[-1].text.split(". ") if "€" in s)
    assert travel[-1].id in gold_chunk_ids(Question("4", "q", "a", evidence=sentence.upper()), demo_index.chunks)
    with pytest.raises(QuestionsError, match="not in the corpus"):
        gold_chunk_ids(Question("5", "q", "a", doc_id="nope"), demo_index.chunks)
    assert gold_chunk_ids(Question("6", "q", "a"), demo_index.chunks) == []


def test_question_files_name_the_bad_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question": "Q?", "answer": "A", "gold_chunk_ids": "d#0"}) + "\n" + json.dumps({"question": "Q2?"}) + "\n")
    with pytest.raises(QuestionsError, match=r"q.jsonl, line 2: the `answer` field"):
        load_questions(path)
    path.write_text(json.dumps([{"question": "Q?", "answer": "A", "gold_chunk_ids": "d#0"}]))
    assert load_questions(path)[0].gold_chunk_ids == ("d#0",) and load_questions(path)[0].id == "q1"


# --------------------------------------------------------------------------- prompt format


def test_one_prompt_format_and_the_answer_format():
    chunks = [Document("a", "Travel", "Hotels are capped at €200."), Document("b", "Leave", "You get 25 days.")]
    messages = rag_prompt.rag_messages("How many days?", chunks)
    assert messages[0] == {"role": "system", "content": rag_prompt.RAG_INSTRUCTIONS}
    assert messages[1]["content"] == ("Documents:\n\n[1] Travel\nHotels are capped at €200.\n\n[2] Leave\nYou get 25 days.\n\n"
                                      "Question: How many days?")
    own = rag_prompt.rag_messages([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q?"}], chunks)
    assert own[0]["content"].startswith("Be brief.\n\n") and own[0]["content"].endswith(rag_prompt.RAG_INSTRUCTIONS) and len(own) == 2
    target = rag_prompt.cite_then_answer("25 days", "You get 25 days.", 2, "Leave")
    assert target == ("##Reason: Document [2] (Leave) says ##begin_quote##You get 25 days.##end_quote## so the answer is 25 days.\n"
                      "##Answer: 25 days")
    assert rag_prompt.answer_part(target) == "25 days" and rag_prompt.quotes(target) == ["You get 25 days."]
    assert rag_prompt.answer_correct(target, "25 days") == 1.0 and rag_prompt.answer_correct(target, "5 days") == 0.0
    absent = rag_prompt.cite_then_answer("25 days", None)
    assert rag_prompt.abstained(absent) and not rag_prompt.abstained(target) and rag_prompt.quotes(absent) == []
    assert rag_prompt.answer_part("plain reply without markers") == "plain reply without markers"
    assert rag_prompt.abstained("The documents do not contain this.") and not rag_prompt.abstained("It is 25 days.")


# --------------------------------------------------------------------------- RAFT


def test_quote_extraction_is_verbatim_and_finds_the_answer_sentence():
    text = "Hotels are capped at €200 per night. Trains over 3 hours may be first class.\n\nMeals are paid up to €40 a day."
    assert extract_quote(text, "What is the meal limit?", "€40") == "Meals are paid up to €40 a day."
    assert extract_quote(text, "How long must a train ride be for first class?", "3 hours") == "Trains over 3 hours may be first class."
    assert extract_quote(text, "q", "a", evidence="hotels are  capped at €200 per night.") == "Hotels are capped at €200 per night."
    assert extract_quote(text, "Which class for long trains?", "first class") == "Trains over 3 hours may be first class."


def test_sentences_keep_decimals_abbreviations_versions_and_addresses_whole():
    from core.rag.raft import sentences

    def split(text: str) -> list[str]:
        return [text[a:b] for a, b in sentences(text)]

    whole = ["Colour printing costs 0.50 euros per page.", "Pi is about 3.14 and e about 2.72.",
             "Bring a pen, e.g. a blue one, i.e. not red.", "Dr. Smith met the U.S. team at 3 p.m. on Monday.",
             "Pens, paper, etc. are provided.", "Install v1.2.3 with Python 3.11 first.",
             "Write to help.desk@example.org or see https://example.com/docs/v2.1/index.html for more.",
             "The report by J. R. Tolkien is on page 4.", 'She said "It costs 2.50." and left.']
    for sentence in whole:
        assert split(sentence) == [sentence]
    assert split(" ".join(whole)) == whole, "real sentence ends still cut, and only there"
    assert split("Is it free? Yes! It costs 0.50 euros.\nNext line") == ["Is it free?", "Yes!", "It costs 0.50 euros.", "Next line"]
    assert split("We sell pens, paper, etc. The shop opens at 9.") == ["We sell pens, paper, etc.", "The shop opens at 9."]


def test_a_raft_quote_is_the_whole_sentence_across_a_decimal_point():
    text = "Colour printing costs 0.50 euros per page. Black and white printing is free for staff."
    chunk = lambda doc, body: Chunk(f"{doc}#0", doc, doc.title(), body, 0, 20, 0, len(body))
    chunks = ([chunk("printing", text)] + [chunk(f"other{i}", f"Rule {i}: the office opens at {8 + i} o'clock on weekdays.")
                                           for i in range(4)])
    question = Question("q1", "How much does colour printing cost per page?", "0.50 euros", doc_id="printing")
    build = build_raft([question], chunks, RaftSettings(k=3, distractor_only_fraction=0.0, distractors="random", seed=1))
    assert build.records[0]["quote"] == "Colour printing costs 0.50 euros per page."
    target = build.rows[0]["messages"][-1]["content"]
    assert f"{rag_prompt.BEGIN_QUOTE}Colour printing costs 0.50 euros per page.{rag_prompt.END_QUOTE}" in target


@pytest.fixture(scope="module")
def raft_build(demo_index, demo_questions):
    def retrieve(questions, depth):
        return [[h.chunk.id for h in row] for row in demo_index.search_many(list(questions), depth, "hybrid")]

    return build_raft(demo_questions, demo_index.chunks, RaftSettings(k=4, distractor_only_fraction=0.25, seed=3), retrieve)


def test_raft_examples_have_k_documents_an_exact_oracle_free_share_and_shuffled_positions(raft_build, demo_index, demo_questions):
    build = raft_build
    assert len(build.rows) == len(build.records) == 150 and not build.skipped
    absent = [r for r in build.records if r["oracle_position"] is None]
    assert len(absent) == round(0.25 * 150)
    positions = Counter(r["oracle_position"] for r in build.records if r["oracle_position"] is not None)
    assert set(positions) == {0, 1, 2, 3} and min(positions.values()) >= 15  # shuffled over all four slots
    by_question = {q.id: q for q in demo_questions}
    for row, record in zip(build.rows, build.records):
        q = by_question[record["question_id"]]
        assert len(record["chunk_ids"]) == 4 and len(set(record["chunk_ids"])) == 4
        distractors = [demo_index.chunk(i) for i in record["chunk_ids"] if i not in record["gold_chunk_ids"]]
        assert not any(contains_answer(c.text, q.answer) for c in distractors)  # whole words: "5" may be in "2025"
        user, target = row["messages"][1]["content"], row["messages"][2]["content"]
        assert (user.endswith(f"Question: {q.question}")
                and [line[:4] for line in user.splitlines() if line[:1] == "["] == ["[1] ", "[2] ", "[3] ", "[4] "])
        if record["oracle_position"] is None:
            assert not set(record["chunk_ids"]) & set(record["gold_chunk_ids"]) and rag_prompt.abstained(target)
            assert rag_prompt.quotes(target) == []
        else:
            oracle = demo_index.chunk(record["chunk_ids"][record["oracle_position"]])
            assert oracle.id == record["oracle_chunk_id"] and f"[{record['oracle_position'] + 1}] {oracle.title}" in user
            assert rag_prompt.quotes(target) == [q.evidence] and q.evidence in oracle.text
            assert rag_prompt.answer_part(target) == q.answer
    hard_same_family = sum(demo_index.chunk(i).doc_id.split("-")[0] == r["oracle_chunk_id"].split("-")[0]
                           for r in build.records for i in r["chunk_ids"] if i != r["oracle_chunk_id"])
    assert hard_same_family > 0.5 * sum(len(r["chunk_ids"]) - 1 for r in build.records)  # hard negatives share the family


def test_raft_random_distractors_answer_target_and_seeded(demo_index, demo_questions):
    settings = RaftSettings(k=3, distractor_only_fraction=0.5, distractors="random", absent_target="answer", seed=1)
    first = build_raft(demo_questions[:40], demo_index.chunks, settings)
    again = build_raft(demo_questions[:40], demo_index.chunks, settings)
    assert first.rows == again.rows and sum(r["oracle_position"] is None for r in first.records) == 20
    absent = [row for row, rec in zip(first.rows, first.records) if rec["oracle_position"] is None]
    assert all(not rag_prompt.abstained(r["messages"][-1]["content"]) for r in absent)  # the paper's variant answers anyway
    with pytest.raises(ValueError, match="retriever"):
        build_raft(demo_questions[:5], demo_index.chunks, RaftSettings(distractors="hard"))
    with pytest.raises(ValueError, match="k"):
        RaftSettings(k=1)
    train, held = split_heldout(demo_questions, 0.2, 0)
    assert len(held) == 30 and len(train) == 120 and not {q.id for q in held} & {q.id for q in train}


def test_a_raft_row_trains_only_the_cite_then_answer_turn(raft_build, embedded_tokenizer):
    from core.data.masking import IGNORE_INDEX, encode_row

    row = raft_build.rows[0]
    encoded = encode_row(row, embedded_tokenizer)
    trained = embedded_tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX])
    assert trained.strip().startswith("##Reason:") and trained.rstrip().endswith("<|im_end|>")
    assert row["messages"][-1]["content"] in trained and "Documents:" not in trained and "Question:" not in trained
    first_trained = encoded.labels.index(next(label for label in encoded.labels if label != IGNORE_INDEX))
    assert "Question:" in embedded_tokenizer.decode(encoded.input_ids[:first_trained])


def test_generated_questions_are_kept_only_when_their_chunk_holds_the_answer(demo_index):
    chunks = demo_index.doc_chunks("policy-travel")[:1] * 4
    answer = next(w for w in chunks[0].text.split() if w.startswith("€")).rstrip(".")
    replies = [json.dumps({"question": "What is the cap?", "answer": answer}), "no json at all",
               json.dumps({"question": "What colour is the sky?", "answer": "blue"}), json.dumps({"question": answer, "answer": answer})]
    kept, rejected = parse_generated(chunks, replies)
    assert [(q.question, q.answer, q.gold_chunk_ids) for q in kept] == [("What is the cap?", answer, (chunks[0].id,))]
    assert {k: len(v) for k, v in rejected.items()} == {"no JSON object with a question and an answer": 1,
                                                        "answer not found in its chunk": 1, "answer repeats the question": 1}


# --------------------------------------------------------------------------- RAFT evaluation scoring


def _item(n: int) -> EvalItem:
    oracle = Chunk(f"d#{n}", "d", "Doc", f"The cap is {n} euros per night.", 0, 8, 0, 30)
    other = Chunk(f"e#{n}", "e", "Other", "Nothing here.", 0, 3, 0, 13)
    return EvalItem(Question(f"q{n}", "What is the cap?", f"{n} euros"), oracle, [other, oracle], [other, other])


def test_reply_scores_accuracy_quote_from_oracle_and_abstention():
    item = _item(7)
    good = rag_prompt.cite_then_answer("7 euros", "The cap is 7 euros per night.", 2)
    assert score_reply(good, item) == {"accuracy": 1.0, "quote_from_oracle": 1.0, "abstention": 0.0}
    wrong_quote = "##Reason: ##begin_quote##Nothing here.##end_quote##\n##Answer: 7 euros"
    assert score_reply(wrong_quote, item) == {"accuracy": 1.0, "quote_from_oracle": 0.0, "abstention": 0.0}
    assert score_reply("##Answer: not in the documents", item) == {"accuracy": 0.0, "quote_from_oracle": 0.0, "abstention": 1.0}
    assert score_reply("The cap is 7 euros.", item)["accuracy"] == 1.0  # no marker: the whole reply is the answer
    loose = "##begin_quote##the cap is 7 euros a night##end_quote## ##Answer: 7 euros"
    assert score_reply(loose, item)["quote_from_oracle"] == 1.0  # 80% of the words in order


def test_report_has_paired_intervals_and_a_verdict():
    items = [_item(n) for n in range(20)]
    base = {"oracle": ["I am not sure."] * 20, "distractors": ["It is 9 euros."] * 20}
    raft = {"oracle": [rag_prompt.cite_then_answer(f"{n} euros", f"The cap is {n} euros per night.", 2) for n in range(20)],
            "distractors": ["##Answer: not in the documents"] * 20}
    report = summarize(items, {"base": base, "raft": raft}, resamples=200, seed=0)
    assert report["n"] == 20 and [m["role"] for m in report["models"]] == ["base", "raft"]
    delta = report["comparisons"]["raft-vs-base"]["oracle"]["accuracy"]
    assert delta["value"] == pytest.approx(100.0) and delta["low"] > 0
    assert report["comparisons"]["raft-vs-base"]["distractors"]["abstention"]["value"] == pytest.approx(100.0)
    assert report["verdict"]["verdict"] == "better" and "base + RAG" in report["verdict"]["headline"]
    flipped = summarize(items, {"base": raft, "raft": base}, resamples=200, seed=0)
    assert flipped["verdict"]["verdict"] == "worse"
    one_better = {"oracle": raft["oracle"][:1] + base["oracle"][1:], "distractors": base["distractors"]}
    mixed = summarize(items, {"base": base, "raft": one_better}, resamples=200, seed=0)
    assert mixed["verdict"]["verdict"] == "no clear difference"  # one question in twenty: the interval holds zero
    assert set(report["definitions"]) >= {"accuracy", "quote from oracle", "abstention", "interval"}
