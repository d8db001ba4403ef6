"""Run specs of the RAG / RAFT jobs: index + retrieval recall, RAFT dataset builder, RAFT evaluation.

Paths may be relative to the repository (the shipped demo handbook) or absolute; a dataset may be named by
its workspace name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from core.models import ModelSource
from core.rag.chunking import DEFAULT_CHUNK_TOKENS, DEFAULT_OVERLAP
from core.rag.index import MODES
from core.rag.raft import ABSENT_TARGETS, DISTRACTOR_RULES
from core.runs.spec import RunSpec, meta
from core.workspace import REPO_ROOT

DEMO_DOCUMENTS = "assets/handbook/docs"
DEMO_QUESTIONS = "assets/handbook/questions.jsonl"
QUESTION_SOURCES = ("file", "generate")


def resolve_path(text: str) -> Path:
    """A user path, or one relative to the repository (where the demo handbook ships)."""
    path = Path(str(text)).expanduser()
    return path if path.is_absolute() or path.exists() else REPO_ROOT / path


def _chunk_tokens_field() -> Any:
    return field(default=DEFAULT_CHUNK_TOKENS, metadata=meta(
        "Chunk length in the retriever's tokens (all-MiniLM-L6-v2 reads at most 256).", "retrieval", min=8, max=256))


def _overlap_field() -> Any:
    return field(default=DEFAULT_OVERLAP, metadata=meta(
        "Tokens shared by consecutive chunks (a sentence cut at one boundary is whole in the next chunk).", "retrieval", min=0, max=255))


@dataclass
class RagIndexSpec(RunSpec):
    kind: ClassVar[str] = "rag_index"

    name: str = field(default="", metadata=meta("A short name for the run folder."))
    documents: str = field(default=DEMO_DOCUMENTS, metadata=meta(
        "A folder of .txt / .md / .pdf files, one such file, or a JSONL of {id, title, text}.", "data"))
    questions: str = field(default=DEMO_QUESTIONS, metadata=meta(
        "Optional JSONL of {question, answer, gold_chunk_ids | evidence [+ doc_id]}: measures retrieval recall@k. Empty = index only.",
        "data"))
    chunk_tokens: int = _chunk_tokens_field()
    overlap: int = _overlap_field()
    top_k: int = field(default=5, metadata=meta("Recall is measured at 1 and at this k.", "retrieval", min=1, max=100))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.overlap >= self.chunk_tokens:
            raise ValueError(f"overlap ({self.overlap}) must be below chunk_tokens ({self.chunk_tokens})")


@dataclass
class RaftSpec(RunSpec):
    kind: ClassVar[str] = "raft"

    name: str = field(default="handbook-raft", metadata=meta("Name of the dataset written to the workspace (datasets/<name>/)."))
    documents: str = field(default=DEMO_DOCUMENTS, metadata=meta(
        "A folder of .txt / .md / .pdf files, one such file, or a JSONL of {id, title, text}.", "data"))
    question_source: str = field(default="file", metadata=meta(
        "`file`: your own question / answer / gold rows; `generate`: a model writes one question per chunk.", "data",
        choices=QUESTION_SOURCES))
    questions: str = field(default=DEMO_QUESTIONS, metadata=meta(
        "JSONL of {question, answer, gold_chunk_ids | evidence [+ doc_id]} (question_source = file).", "data"))
    model: dict = field(default_factory=lambda: ModelSource().as_dict(), metadata=meta(
        "The model the set is built for, as a model-source dict: its tokenizer measures the rows (the Train page's max_length); "
        "with question_source = generate it also writes one question per chunk.", "data"))
    question_model: dict = field(default_factory=dict, metadata=meta(
        "The model that writes the questions (question_source = generate), as a model-source dict; empty = `model`. "
        "A larger instruction model writes better questions than the small one being trained.", "data", advanced=True))
    max_chunks: int = field(default=0, metadata=meta("Chunks to write questions for (a seeded sample; 0 = every chunk).", "data",
                                                      advanced=True, min=0, max=1_000_000))
    heldout_fraction: float = field(default=0.2, metadata=meta(
        "Share of the questions kept out of the dataset for the RAFT evaluation (heldout.jsonl).", "data", min=0.0, max=0.9))
    chunk_tokens: int = _chunk_tokens_field()
    overlap: int = _overlap_field()
    k: int = field(default=4, metadata=meta("Documents in each example's prompt: the oracle + k-1 distractors (or k distractors).",
                                             "raft", min=2, max=20))
    distractor_only_fraction: float = field(default=0.2, metadata=meta(
        "P: share of the examples whose documents are distractors only (no oracle).", "raft", min=0.0, max=1.0))
    distractors: str = field(default="hard", metadata=meta(
        "`hard`: the best-ranked other chunks of a retrieval for the question; `random`: any other chunks.", "raft",
        choices=DISTRACTOR_RULES))
    retrieval_mode: str = field(default="hybrid", metadata=meta("Retriever for hard negatives.", "raft", advanced=True, choices=MODES))
    absent_target: str = field(default="abstain", metadata=meta(
        "Target without the oracle: `abstain` (\"not in the documents\") or `answer` (answer anyway, as in the RAFT paper).",
        "raft", choices=ABSENT_TARGETS))
    also_sft: bool = field(default=True, metadata=meta(
        "Also write <name>-sft: the same training questions as plain question → answer rows, the SFT baseline of the evaluation.", "raft"))
    overwrite: bool = field(default=False, metadata=meta("Replace datasets of the same name.", "raft", advanced=True))
    max_new_tokens: int = field(default=96, metadata=meta("Longest generated question + answer (question_source = generate).",
                                                           "generation", advanced=True, min=8, max=1024))
    batch_size: int = field(default=8, metadata=meta("Prompts per generation batch.", "generation", advanced=True, min=1, max=256))
    seed: int = field(default=0, metadata=meta("Seed for the split, the distractor-only share, distractors and positions.",
                                                min=0, max=2**31 - 1))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.overlap >= self.chunk_tokens:
            raise ValueError(f"overlap ({self.overlap}) must be below chunk_tokens ({self.chunk_tokens})")
        if self.question_source == "file" and not str(self.questions).strip():
            raise ValueError("questions: give a question file, or set question_source to generate")
        if not str(self.name).strip():
            raise ValueError("name: the dataset needs a name")
        ModelSource.from_dict(self.model)
        if self.question_model:
            ModelSource.from_dict(self.question_model)

    @property
    def question_source_model(self) -> ModelSource:
        return ModelSource.from_dict(self.question_model or self.model)


@dataclass
class RaftEvalSpec(RunSpec):
    kind: ClassVar[str] = "raft_eval"

    name: str = field(default="", metadata=meta("A short name for the run folder."))
    dataset: str = field(default="handbook-raft", metadata=meta(
        "The RAFT dataset (workspace name or folder): its held-out questions, documents and settings are evaluated.", "data"))
    base: dict = field(default_factory=lambda: ModelSource().as_dict(), metadata=meta(
        "The base model, as a model-source dict; SFT / RAFT adapters go on top of it.", "models"))
    sft_model: str = field(default="", metadata=meta(
        "The plain SFT model: an adapter folder (on the base) or a model folder. Empty = not compared.", "models"))
    raft_model: str = field(default="", metadata=meta("The RAFT model: an adapter folder (on the base) or a model folder.", "models"))
    samples: int = field(default=0, metadata=meta("Held-out questions to evaluate (a seeded sample; 0 = all).", "data", min=0, max=100_000))
    max_new_tokens: int = field(default=80, metadata=meta("Longest reply in tokens (greedy).", "generation", min=4, max=4096))
    batch_size: int = field(default=8, metadata=meta("Prompts per generation batch.", "generation", advanced=True, min=1, max=256))
    bootstrap_samples: int = field(default=1000, metadata=meta("Bootstrap resamples for the 95% intervals (0 = none).", "verdict",
                                                                min=0, max=100_000))
    seed: int = field(default=0, metadata=meta("Seed for the sample, the distractors and the bootstrap.", min=0, max=2**31 - 1))

    def __post_init__(self) -> None:
        super().__post_init__()
        ModelSource.from_dict(self.base)
        if not str(self.raft_model).strip():
            raise ValueError("raft_model: name the RAFT adapter (or model folder) to evaluate")

    @property
    def base_source(self) -> ModelSource:
        return ModelSource.from_dict(self.base)
