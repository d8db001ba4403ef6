"""Documents for retrieval: a folder of .txt / .md / .pdf files, one such file, or a JSONL of {id, title, text}.

`load_corpus(path)` returns a `Corpus` whose `sha256` is the hash of its documents' ids, titles and texts
(sorted by id): the index is keyed on it, so it is rebuilt only when the documents change, not when a file
is merely touched or moved.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from core.data.formats import loads_strict, text_encoding_problem
from core.workspace import refuse_links_outside

TEXT_SUFFIXES = (".txt", ".md", ".markdown")
PDF_SUFFIX = ".pdf"
JSON_SUFFIXES = (".jsonl", ".json")


class CorpusError(ValueError):
    """The documents cannot be read; the message names the file / line / field."""


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    text: str
    source: str = ""  # the file it came from

    def as_dict(self) -> dict:
        return {"id": self.id, "title": self.title, "text": self.text}


@dataclass
class Corpus:
    documents: list[Document]
    source: str
    sha256: str
    notes: list[str] = field(default_factory=list)

    def by_id(self) -> dict[str, Document]:
        return {d.id: d for d in self.documents}

    def summary(self) -> dict:
        return {"source": self.source, "sha256": self.sha256, "documents": len(self.documents),
                "characters": sum(len(d.text) for d in self.documents)}


def corpus_sha256(documents: list[Document]) -> str:
    payload = json.dumps([[d.id, d.title, d.text] for d in sorted(documents, key=lambda d: d.id)], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def load_corpus(path: str | Path) -> Corpus:
    path = Path(path).expanduser()
    if not path.exists():
        raise CorpusError(f"documents not found: {path}")
    notes: list[str] = []
    if path.is_dir():
        documents = _read_folder(path, notes)
    elif path.suffix.lower() in JSON_SUFFIXES:
        documents = _read_jsonl(path)
    elif path.suffix.lower() in TEXT_SUFFIXES + (PDF_SUFFIX,):
        documents = [doc for doc in [_read_file(path, path.stem, notes)] if doc]
    else:
        raise CorpusError(f"{path}: documents come from a folder, a .txt / .md / .pdf file, or a JSONL of {{id, title, text}}")
    if not documents:
        raise CorpusError(f"{path} holds no document with text (.txt, .md, .pdf, or JSONL rows with a `text` field)")
    return Corpus(documents, str(path), corpus_sha256(documents), notes)


def _read_folder(folder: Path, notes: list[str]) -> list[Document]:
    refuse_links_outside(folder, CorpusError)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES + (PDF_SUFFIX,)
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    skipped = sorted({p.suffix.lower() or p.name for p in folder.rglob("*")
                      if p.is_file() and p not in files and not p.name.startswith(".")})
    if skipped:
        notes.append(f"skipped files that are not .txt / .md / .pdf: {', '.join(skipped[:8])}")
    documents = []
    for file in files:
        doc = _read_file(file, file.relative_to(folder).with_suffix("").as_posix(), notes)
        if doc:
            documents.append(doc)
    return documents


def _read_file(path: Path, doc_id: str, notes: list[str]) -> Document | None:
    if path.suffix.lower() == PDF_SUFFIX:
        title, text = _read_pdf(path)
    else:
        raw = read_utf8(path)
        title, text = _split_title(raw, path)
    if not text.strip():
        notes.append(f"{path.name}: no text, skipped")
        return None
    return Document(doc_id, title, text.strip(), str(path))


def read_utf8(path: Path, error: type[Exception] = CorpusError) -> str:
    """A text file the user named, as UTF-8; `error` names the file (and line) when it is UTF-16, binary or not UTF-8."""
    data = path.read_bytes()
    problem = text_encoding_problem(data[:64])
    if problem:
        raise error(f"{path}: {problem}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise error(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}, line {line}); save it as UTF-8") from None


def _split_title(raw: str, path: Path) -> tuple[str, str]:
    """A Markdown file's first `# heading` is its title (and leaves the text); otherwise the file name is."""
    lines = raw.lstrip("\ufeff").splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is not None and lines[first].startswith("# ") and path.suffix.lower() != ".txt":
        return lines[first][2:].strip(), "\n".join(lines[first + 1:])
    return path.stem.replace("_", " ").replace("-", " ").strip() or path.stem, raw


def _read_pdf(path: Path) -> tuple[str, str]:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError:  # pragma: no cover - pypdf is in requirements.txt
        raise CorpusError(f"{path}: reading PDF needs the `pypdf` package (pip install pypdf)") from None
    try:
        reader = PdfReader(str(path))
        pages = [page.extract_text() or "" for page in reader.pages]
        title = str((reader.metadata or {}).get("/Title") or "").strip()
    except (PdfReadError, OSError, ValueError, KeyError) as exc:
        raise CorpusError(f"{path}: cannot read this PDF ({exc})") from None
    return title or path.stem.replace("_", " ").replace("-", " "), "\n\n".join(p.strip() for p in pages if p.strip())


def _read_jsonl(path: Path) -> list[Document]:
    text = read_utf8(path)
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            rows = list(enumerate(loads_strict(text), 1))
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        except ValueError as exc:
            raise CorpusError(f"{path}: not valid JSON ({exc})") from None
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((number, loads_strict(line)))
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
            except ValueError as exc:  # NaN / Infinity, a key twice, nesting too deep
                raise CorpusError(f"{path}, line {number}: not valid JSON ({exc})") from None
    documents, seen = [], set()
    for number, row in rows:
        where = f"{path}, {'line' if path.suffix.lower() == '.jsonl' else 'item'} {number}"
        if not isinstance(row, dict):
            raise CorpusError(f"{where}: expected an object {{id, title, text}}, got {type(row).__name__}")
        if not isinstance(row.get("text"), str) or not row["text"].strip():
            raise CorpusError(f"{where}: the `text` field is missing or empty")
        doc_id = str(row.get("id") if row.get("id") is not None else f"doc-{number}")
        if doc_id in seen:
            raise CorpusError(f"{where}: the id {doc_id!r} is used twice")
        seen.add(doc_id)
        documents.append(Document(doc_id, str(row.get("title") or doc_id), row["text"].strip(), str(path)))
    return documents
