"""RAG and RAFT: documents → chunks → a dense + BM25 index in the workspace → retrieved context in one prompt
format; RAFT training sets (oracle + distractors, cite-then-answer) and their evaluation.

- `corpus`: documents from a folder (.txt / .md / .pdf), one file, or a JSONL of {id, title, text}; content hash.
- `chunking`: token windows with overlap, in the retriever's tokens, cut between words, exact text slices.
- `index`: all-MiniLM-L6-v2 embeddings + bm25s, rebuilt only when the documents' hash or settings change;
  dense / bm25 / hybrid (reciprocal rank fusion) top-k with scores.
- `questions`: question / answer / gold rows, gold chunks from evidence, recall@k.
- `prompt`: the one RAG prompt and the cite-then-answer format (##begin_quote## ... ##end_quote##, ##Answer:).
- `raft`: the RAFT example builder and its dataset writer; `evaluation`: base vs SFT vs RAFT with the documents.
- `spec` / `job`: the rag_index, raft and raft_eval jobs.
"""
