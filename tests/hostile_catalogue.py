"""The hostile-input catalogue (issue 25 item 3): every upload and field the app takes, fed something broken or
malicious, with the outcome expected. Run by tests/test_hostile_inputs.py through the same core functions the pages call.

Each case is data:
  id        unique name
  surface   which entry point it goes through (see SURFACES in the test)
  build     name of a builder below: build(folder) -> the input (a path, bytes, a name or a dict)
  expect    regex the outcome must match: the message of a refusal (DatasetLoadError, CorpusError, InvalidSpec,
            ValueError, ModelLoadError, HubError), or for inputs that are accepted safely, the test's rendering of
            what was kept ("loaded N rows; row R field: message" / "saved as <path inside the workspace>")
  refused   True when the input must be refused (an exception of one of the types above), False when it is
            accepted with the problem reported row by row or made safe (names)
Builders write only inside `folder` (the test's inputs folder) and may point links at `folder.parent / "outside"`,
the folder the test watches to prove that nothing outside the workspace is touched.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

ROW = {"prompt": "What is 2 + 2?", "completion": "4"}


def _jsonl(rows) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def _write(folder: Path, name: str, data: bytes | str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data.jsonl", _jsonl([ROW] * 3).decode())
    return buffer.getvalue()


def _blank_pdf() -> bytes:
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(width=200, height=200)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def _outside(folder: Path) -> Path:
    """A file in the watched folder outside the workspace (the sentinel the test checks)."""
    return folder.parent / "outside" / "sentinel.txt"


# ------------------------------------------------------------------ dataset files (Data page: path or upload)

def jsonl_invalid_utf8(f):
    return _write(f, "bad_utf8.jsonl", _jsonl([ROW] * 2) + b'{"prompt": "caf\xe9", "completion": "x"}\n')


def jsonl_utf16(f):
    return _write(f, "utf16.jsonl", _jsonl([ROW] * 3).decode().encode("utf-16"))


def jsonl_utf16_no_bom(f):
    return _write(f, "utf16le.jsonl", _jsonl([ROW] * 3).decode().encode("utf-16-le"))


def jsonl_bom(f):
    return _write(f, "bom.jsonl", b"\xef\xbb\xbf" + _jsonl([ROW] * 3))


def jsonl_empty(f):
    return _write(f, "empty.jsonl", b"")


def jsonl_blank_lines(f):
    return _write(f, "blank.jsonl", b"\n\n   \n\t\n")


def jsonl_broken_row7(f):
    lines = _jsonl([ROW] * 6) + b'{"prompt": "seven", "completion": \n' + _jsonl([ROW] * 3)
    return _write(f, "broken7.jsonl", lines)


def jsonl_all_broken(f):
    return _write(f, "garbage.jsonl", b"this is not json\nneither is this\n")


def jsonl_10mb_line(f):
    return _write(f, "huge_line.jsonl", b"x" * (10 * 1024 * 1024) + b"\n")


def jsonl_10mb_text(f):
    return _write(f, "huge_text.jsonl", _jsonl([{"prompt": "long", "completion": "y" * (10 * 1024 * 1024)}]))


def jsonl_deep_nesting(f):
    return _write(f, "deep.jsonl", _jsonl([ROW]) + b"[" * 200_000 + b"]" * 200_000 + b"\n")


def jsonl_deep_extra_column(f):
    deep = "[" * 950 + "1" + "]" * 950
    return _write(f, "deep_column.jsonl", _jsonl([ROW]) + ('{"prompt": "a", "completion": "b", "meta": ' + deep + "}\n").encode())


def jsonl_nan(f):
    return _write(f, "nan.jsonl", _jsonl([ROW] * 2) + b'{"prompt": "a", "completion": NaN}\n')


def jsonl_infinity_column(f):
    return _write(f, "inf.jsonl", _jsonl([ROW] * 2) + b'{"prompt": "a", "completion": "b", "score": Infinity}\n')


def jsonl_duplicate_keys(f):
    return _write(f, "dupkeys.jsonl", _jsonl([ROW] * 3) + b'{"prompt": "a", "completion": "b", "completion": "c"}\n')


def jsonl_wrong_types(f):
    rows = [ROW, ROW, {"prompt": "a", "completion": 42}]
    return _write(f, "types.jsonl", _jsonl(rows))


def jsonl_row_is_list(f):
    return _write(f, "list_row.jsonl", _jsonl([ROW, ROW, ["prompt", "completion"]]))


def jsonl_messages_not_list(f):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}] * 2
    return _write(f, "messages_str.jsonl", _jsonl(rows + [{"messages": {"role": "user"}}]))


def jsonl_unknown_role(f):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    bad = {"messages": [{"role": "root", "content": "rm -rf /"}, {"role": "assistant", "content": "ok"}]}
    return _write(f, "roles.jsonl", _jsonl([good, good, bad]))


def jsonl_content_not_string(f):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    bad = {"messages": [{"role": "user", "content": {"$gt": ""}}, {"role": "assistant", "content": "ok"}]}
    return _write(f, "content_obj.jsonl", _jsonl([good, good, bad]))


def jsonl_nul_in_text(f):
    return _write(f, "nul_text.jsonl", _jsonl([ROW, {"prompt": "a\u0000b", "completion": "c"}]))


def jsonl_unknown_columns(f):
    return _write(f, "columns.jsonl", _jsonl([{"foo": 1, "bar": 2}] * 3))


def jsonl_holding_zip(f):
    return _write(f, "archive.jsonl", _zip_bytes())


def jsonl_gz_name(f):
    return _write(f, "data.jsonl.gz", b"\x1f\x8b\x08\x00" + b"\x00" * 20)


def unknown_suffix(f):
    return _write(f, "data.exe", b"MZ\x90\x00")


def json_number(f):
    return _write(f, "number.json", b"42")


def json_string(f):
    return _write(f, "string.json", b'"rows"')


def json_null(f):
    return _write(f, "null.json", b"null")


def json_empty(f):
    return _write(f, "empty.json", b"")


def json_bom(f):
    return _write(f, "bom.json", b"\xef\xbb\xbf" + json.dumps([ROW] * 3).encode())


def json_deep(f):
    return _write(f, "deep.json", b"[" * 200_000 + b"]" * 200_000)


def json_ragged_columns(f):
    return _write(f, "ragged.json", json.dumps({"prompt": ["a", "b"], "completion": ["c"], "x": 1}).encode())


def json_truncated(f):
    return _write(f, "truncated.json", json.dumps([ROW] * 3).encode()[:-5])


def json_duplicate_keys(f):
    return _write(f, "dupkeys.json", b'[{"prompt": "a", "prompt": "b", "completion": "c"}]')


def json_nan_row(f):
    return _write(f, "nan.json", b'[{"prompt": "a", "completion": "b"}, {"prompt": NaN, "completion": "c"}]')


def json_invalid_utf8(f):
    return _write(f, "bad_utf8.json", b'[{"prompt": "caf\xe9", "completion": "b"}]')


def json_utf16(f):
    return _write(f, "utf16.json", json.dumps([ROW]).encode("utf-16"))


def csv_nul(f):
    return _write(f, "nul.csv", b"prompt,completion\na,b\nc\x00d,e\n")


def csv_invalid_utf8(f):
    return _write(f, "bad_utf8.csv", b"prompt,completion\na,b\ncaf\xe9,e\n")


def csv_utf16(f):
    return _write(f, "utf16.csv", "prompt,completion\na,b\n".encode("utf-16"))


def csv_empty(f):
    return _write(f, "empty.csv", b"")


def csv_header_only(f):
    return _write(f, "header.csv", b"prompt,completion\n")


def csv_empty_cell(f):
    return _write(f, "cells.csv", b"prompt,completion\na,b\nc,\n")


def csv_unclosed_quote(f):
    return _write(f, "quote.csv", b'prompt,completion\na,b\n"c,d\ne,f\n')


def csv_huge_field(f):
    return _write(f, "huge.csv", b"prompt,completion\n" + b"a," + b"z" * (10 * 1024 * 1024) + b"\n")


def parquet_not_parquet(f):
    return _write(f, "fake.parquet", b"PAR1 this is not a parquet file at all")


def parquet_empty(f):
    return _write(f, "empty.parquet", b"")


def parquet_is_zip(f):
    return _write(f, "zip.parquet", _zip_bytes())


def parquet_wrong_types(f):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = f / "types.parquet"
    pq.write_table(pa.table({"prompt": [1, 2, 3], "completion": ["a", "b", "c"]}), path)
    return path


def parquet_infinite_column(f):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = f / "scores.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "completion": ["c", "d"], "score": [float("inf"), float("nan")]}), path)
    return path


def folder_empty(f):
    path = f / "empty_folder"
    path.mkdir()
    return path


def folder_fake_datasets(f):
    path = f / "fake_saved"
    _write(path, "dataset_info.json", b"{not json")
    _write(path, "state.json", b"[]")
    return path


def folder_symlink_outside(f):
    """A saved `datasets` folder whose data file is a link to a file outside it."""
    from datasets import Dataset

    path = f / "linked_saved"
    Dataset.from_list([ROW] * 3).save_to_disk(str(path))
    arrow = next(path.glob("*.arrow"))
    arrow.unlink()
    arrow.symlink_to(_outside(f))
    return path


def folder_workspace_link_outside(f):
    """A dataset folder whose data.jsonl is a link to a file outside it."""
    path = f / "linked_dataset"
    path.mkdir()
    (path / "data.jsonl").symlink_to(_outside(f))
    return path


def path_traversal_missing(f):
    return "../../../../nonexistent/secret.jsonl"


def path_with_nul(f):
    return str(f / "data\x00.jsonl")


def hub_id_url(f):
    return "https://evil.example.com/data.jsonl"


def hub_id_dotdot(f):
    return "org/../../etc"


# uploads: (file name the browser sent, bytes)

def upload_broken_row7(f):
    return "tickets.jsonl", _jsonl([ROW] * 6) + b"{broken\n"


def upload_traversal_name(f):
    return "../../../etc/passwd.jsonl", b"not json\n"


def upload_parquet_lie(f):
    return "report.parquet", b"%PDF-1.4 not a parquet"


def upload_no_suffix(f):
    return "README", b"hello"


def upload_utf16_csv(f):
    return "sheet.csv", "prompt,completion\na,b\n".encode("utf-16")


def upload_backslash_name(f):
    return "..\\..\\evil.jsonl", _jsonl([ROW])


def upload_nul_suffix(f):
    return "a.js\x00onl", _jsonl([ROW])


# ------------------------------------------------------------------ RAG documents

def docs_empty_folder(f):
    path = f / "no_docs"
    path.mkdir()
    return path


def docs_only_other_files(f):
    path = f / "other_docs"
    _write(path, "image.png", b"\x89PNG")
    return path


def docs_invalid_utf8_txt(f):
    return _write(f / "docs1", "notes.txt", b"caf\xe9 au lait")


def docs_utf16_md(f):
    return _write(f / "docs2", "guide.md", "# Guide\nhello".encode("utf-16"))


def docs_empty_txt(f):
    return _write(f / "docs3", "empty.txt", b"")


def docs_pdf_not_pdf(f):
    return _write(f / "docs4", "manual.pdf", b"this is a text file pretending to be a PDF")


def docs_zip_as_pdf(f):
    return _write(f / "docs5", "manual.pdf", _zip_bytes())


def docs_pdf_no_text(f):
    return _write(f / "docs6", "scan.pdf", _blank_pdf())


def docs_folder_pdf_no_text(f):
    path = f / "docs7"
    _write(path, "scan.pdf", _blank_pdf())
    return path


def docs_jsonl_broken_line7(f):
    rows = _jsonl([{"id": f"d{i}", "text": "words"} for i in range(6)]) + b'{"id": "d7", "text": \n'
    return _write(f / "docs8", "docs.jsonl", rows)


def docs_jsonl_deep(f):
    return _write(f / "docs9", "docs.jsonl", b"[" * 200_000 + b"]" * 200_000 + b"\n")


def docs_jsonl_text_number(f):
    return _write(f / "docs10", "docs.jsonl", _jsonl([{"id": "a", "text": "ok"}, {"id": "b", "text": 5}]))


def docs_jsonl_duplicate_id(f):
    return _write(f / "docs11", "docs.jsonl", _jsonl([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]))


def docs_json_number(f):
    return _write(f / "docs12", "docs.json", b"42")


def docs_jsonl_invalid_utf8(f):
    return _write(f / "docs13", "docs.jsonl", _jsonl([{"id": "a", "text": "x"}]) + b'{"id": "b", "text": "caf\xe9"}\n')


def docs_jsonl_nan(f):
    return _write(f / "docs16", "docs.jsonl", b'{"id": "a", "text": NaN}\n')


def docs_symlink_outside(f):
    path = f / "docs14"
    path.mkdir()
    _write(path, "real.txt", b"a real document")
    (path / "secret.txt").symlink_to(_outside(f))
    return path


def docs_wrong_suffix(f):
    return _write(f / "docs15", "slides.pptx", b"PK\x03\x04")


def docs_missing(f):
    return f / "no-such-folder"


# RAG question files (the RAG page's second field)

def questions_deep(f):
    return _write(f / "q1", "questions.jsonl", b"[" * 200_000 + b"]" * 200_000 + b"\n")


def questions_utf16(f):
    return _write(f / "q2", "questions.jsonl", _jsonl([{"question": "q", "answer": "a"}]).decode().encode("utf-16"))


def questions_invalid_utf8(f):
    return _write(f / "q3", "questions.jsonl", _jsonl([{"question": "q", "answer": "a"}]) + b'{"question": "caf\xe9", "answer": "a"}\n')


def questions_duplicate_key(f):
    return _write(f / "q4", "questions.jsonl",
                  _jsonl([{"question": "q", "answer": "a"}]) + b'{"question": "q", "answer": "a", "answer": "b"}\n')


def questions_answer_object(f):
    return _write(f / "q5", "questions.jsonl", _jsonl([{"question": "q", "answer": "a"}, {"question": "q2", "answer": {"$ne": None}}]))


# ------------------------------------------------------------------ run specs (spec.yaml) and merge specs

def yaml_python_object(f):
    return "kind: train\nname: !!python/object/apply:os.system ['touch /tmp/pwned']\n"


def yaml_python_name(f):
    return "kind: train\nmodel: !!python/name:os.system\n"


def yaml_billion_laughs(f):
    lines = ["kind: train", 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for name, prev in zip("bcdefghi", "abcdefgh"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    lines.append("target_modules: *i")
    return "\n".join(lines) + "\n"


def yaml_not_yaml(f):
    return "kind: train\nname: [unclosed\n"


def yaml_a_list(f):
    return "- kind: train\n- name: x\n"


def yaml_empty(f):
    return ""


def yaml_unknown_kind(f):
    return "kind: ../../bin/sh\n"


def yaml_unknown_field(f):
    return "kind: train\nrm_rf: true\n"


def yaml_wrong_type(f):
    return "kind: train\nlearning_rate: fast\n"


def yaml_out_of_range(f):
    return "kind: train\nlora_r: -4\n"


def yaml_nan(f):
    return "kind: train\nlearning_rate: .nan\n"


def yaml_infinity(f):
    return "kind: train\nnum_epochs: .inf\n"


def yaml_bad_choice(f):
    return "kind: train\nmethod: rootkit\n"


def yaml_model_url(f):
    return "kind: train\nmodel: {kind: hub, ref: 'https://evil.example.com/model'}\n"


def yaml_deep(f):
    return "kind: train\ntarget_modules: " + "[" * 5000 + "]" * 5000 + "\n"


def yaml_invalid_utf8(f):
    return b"kind: train\nname: caf\xe9\n"


def yaml_duplicate_keys(f):
    return "kind: train\nlearning_rate: 0.1\nlearning_rate: 0.2\n"


def merge_model_outside(f):
    return {"kind": "merge", "method": "linear", "base": {"kind": "local", "ref": "/etc"},
            "models": [{"source": {"kind": "local", "ref": "/etc"}, "weight": 0.5},
                       {"source": {"kind": "local", "ref": "/usr"}, "weight": 0.5}]}


def merge_model_traversal(f):
    return {"kind": "merge", "method": "linear", "base": None,
            "models": [{"source": {"kind": "local", "ref": "../../../../../nope-model"}, "weight": 0.5},
                       {"source": {"kind": "local", "ref": "~/../../nope-either"}, "weight": 0.5}]}


def merge_model_url(f):
    return {"kind": "merge", "method": "linear", "base": None,
            "models": [{"source": {"kind": "hub", "ref": "https://evil.example.com/x.safetensors"}, "weight": 0.5},
                       {"source": {"kind": "hub", "ref": "org/model"}, "weight": 0.5}]}


def merge_weight_nan(f):
    return {"kind": "merge", "method": "linear", "base": None,
            "models": [{"source": {"kind": "hub", "ref": "org/a"}, "weight": float("nan")},
                       {"source": {"kind": "hub", "ref": "org/b"}, "weight": 0.5}]}


def merge_source_not_mapping(f):
    return {"kind": "merge", "method": "linear", "base": None, "models": [{"source": "rm -rf /"},
                                                                          {"source": {"kind": "hub", "ref": "org/b"}}]}


# ------------------------------------------------------------------ model ids / local paths (sidebar, CLI)

def model_dotdot(f):
    return "org/../../../etc"


def model_url(f):
    return "https://evil.example.com/org/model"


def model_nul(f):
    return "org/mo\x00del"


def model_three_parts(f):
    return "org/name/extra"


def model_spaces(f):
    return "org/my model; rm -rf ~"


def model_local_missing(f):
    return "./no/such/model"


def model_local_not_model(f):
    return str(f)


def model_file_not_folder(f):
    return str(_write(f, "weights.bin", b"\x00" * 16))


# ------------------------------------------------------------------ names (run / dataset / export)

def name_traversal(f):
    return "../../x"


def name_absolute(f):
    return "/etc/passwd"


def name_home(f):
    return "~/evil"


def name_nul(f):
    return "data\x00set"


def name_dots(f):
    return ".."


def name_reserved(f):
    return "CON"


def name_long(f):
    return "a" * 5000


def name_slashes_spaces(f):
    return "my data/set name\\with back"


def name_homoglyph(f):
    return "dаtаsеt"  # Cyrillic а and е


def name_empty(f):
    return ""


def name_existing(f):
    return " keep/ "  # made safe, it is the name of the dataset the test saved first


def name_only_symbols(f):
    return "!!!///\\\\..."


# ------------------------------------------------------------------ Hub listings (tests/hub_server.py)

def hub_listing_traversal(f):
    return {"repo_id": "org/evil", "files": {"config.json": b"{}", "../../../../../../../outside/pwned.txt": b"owned"}}


def hub_listing_absolute(f):
    return {"repo_id": "org/abs", "files": {"config.json": b"{}", "/tmp/pwned-absolute.txt": b"owned"}}


def hub_listing_unknown_repo(f):
    return {"repo_id": "org/missing", "files": None}


CASES: list[dict] = [
    # dataset files
    {"id": "jsonl-invalid-utf8", "surface": "dataset", "build": "jsonl_invalid_utf8", "refused": False,
     "expect": r"loaded 2 rows; row 2 : bad JSON on line 3: .*utf-8"},
    {"id": "jsonl-utf16-bom", "surface": "dataset", "build": "jsonl_utf16", "refused": True, "expect": r"utf16\.jsonl: .*UTF-16.*UTF-8"},
    {"id": "jsonl-utf16-no-bom", "surface": "dataset", "build": "jsonl_utf16_no_bom", "refused": True,
     "expect": r"utf16le\.jsonl: .*UTF-16.*UTF-8"},
    {"id": "jsonl-utf8-bom", "surface": "dataset", "build": "jsonl_bom", "refused": False, "expect": r"^loaded 3 rows$"},
    {"id": "jsonl-0-bytes", "surface": "dataset", "build": "jsonl_empty", "refused": True, "expect": r"empty\.jsonl has no rows"},
    {"id": "jsonl-blank-lines", "surface": "dataset", "build": "jsonl_blank_lines", "refused": True, "expect": r"blank\.jsonl has no rows"},
    {"id": "jsonl-broken-row-7", "surface": "dataset", "build": "jsonl_broken_row7", "refused": False,
     "expect": r"loaded 9 rows; row 6 : bad JSON on line 7"},
    {"id": "jsonl-all-broken", "surface": "dataset", "build": "jsonl_all_broken", "refused": True,
     "expect": r"garbage\.jsonl: none of the first 2 rows is valid JSON \(bad JSON on line 1"},
    {"id": "jsonl-10mb-line", "surface": "dataset", "build": "jsonl_10mb_line", "refused": True,
     "expect": r"huge_line\.jsonl: none of the first 1 rows is valid JSON \(bad JSON on line 1"},
    {"id": "jsonl-10mb-text", "surface": "dataset", "build": "jsonl_10mb_text", "refused": False, "expect": r"^loaded 1 rows$"},
    {"id": "jsonl-deep-nesting", "surface": "dataset", "build": "jsonl_deep_nesting", "refused": False,
     "expect": r"loaded 1 rows; row 1 : bad JSON on line 2: .*nested too deeply"},
    # the JSON reader or the column check: which one meets the depth first depends on the caller's stack
    {"id": "jsonl-deep-extra-column", "surface": "dataset", "build": "jsonl_deep_extra_column", "refused": False,
     "expect": r"loaded 1 rows; row 1 .*nested too deeply"},
    {"id": "jsonl-nan", "surface": "dataset", "build": "jsonl_nan", "refused": False,
     "expect": r"loaded 2 rows; row 2 : bad JSON on line 3: NaN is not valid JSON"},
    {"id": "jsonl-infinity", "surface": "dataset", "build": "jsonl_infinity_column", "refused": False,
     "expect": r"loaded 2 rows; row 2 : bad JSON on line 3: Infinity is not valid JSON"},
    {"id": "jsonl-duplicate-keys", "surface": "dataset", "build": "jsonl_duplicate_keys", "refused": False,
     "expect": r"loaded 3 rows; row 3 : bad JSON on line 4: duplicate key 'completion'"},
    {"id": "jsonl-wrong-type", "surface": "dataset", "build": "jsonl_wrong_types", "refused": False,
     "expect": r"loaded 2 rows; row 2 completion: field 'completion' is a int"},
    {"id": "jsonl-row-is-list", "surface": "dataset", "build": "jsonl_row_is_list", "refused": False,
     "expect": r"loaded 2 rows; row 2 : row is a list, expected a JSON object"},
    {"id": "jsonl-messages-not-list", "surface": "dataset", "build": "jsonl_messages_not_list", "refused": False,
     "expect": r"loaded 2 rows; row 2 messages: "},
    {"id": "jsonl-unknown-role", "surface": "dataset", "build": "jsonl_unknown_role", "refused": False,
     "expect": r"loaded 2 rows; row 2 messages\[0\]\.role: unknown role 'root'"},
    {"id": "jsonl-content-object", "surface": "dataset", "build": "jsonl_content_not_string", "refused": False,
     "expect": r"loaded 2 rows; row 2 messages\[0\]\.content: "},
    {"id": "jsonl-nul-in-text", "surface": "dataset", "build": "jsonl_nul_in_text", "refused": False,
     "expect": r"loaded 1 rows; row 1 prompt: .*NUL"},
    {"id": "jsonl-unknown-columns", "surface": "dataset", "build": "jsonl_unknown_columns", "refused": True,
     "expect": r"columns \[bar, foo\]"},
    {"id": "jsonl-is-a-zip", "surface": "dataset", "build": "jsonl_holding_zip", "refused": True,
     "expect": r"archive\.jsonl: .*(zip|not a text)"},
    {"id": "jsonl-gz", "surface": "dataset", "build": "jsonl_gz_name", "refused": True,
     "expect": r"data\.jsonl\.gz: compressed files are not supported"},
    {"id": "unknown-suffix", "surface": "dataset", "build": "unknown_suffix", "refused": True, "expect": r"data\.exe: unknown file type"},
    {"id": "json-number", "surface": "dataset", "build": "json_number", "refused": True,
     "expect": r"number\.json: expected a JSON array of rows, got a int"},
    {"id": "json-string", "surface": "dataset", "build": "json_string", "refused": True,
     "expect": r"string\.json: expected a JSON array of rows, got a str"},
    {"id": "json-null", "surface": "dataset", "build": "json_null", "refused": True,
     "expect": r"null\.json: expected a JSON array of rows, got a NoneType"},
    {"id": "json-0-bytes", "surface": "dataset", "build": "json_empty", "refused": True, "expect": r"empty\.json: not valid JSON"},
    {"id": "json-utf8-bom", "surface": "dataset", "build": "json_bom", "refused": False, "expect": r"^loaded 3 rows$"},
    {"id": "json-deep-nesting", "surface": "dataset", "build": "json_deep", "refused": True,
     "expect": r"deep\.json: not valid JSON \(.*nested too deeply"},
    {"id": "json-ragged-columns", "surface": "dataset", "build": "json_ragged_columns", "refused": True,
     "expect": r"ragged\.json: a JSON object must be columns"},
    {"id": "json-truncated", "surface": "dataset", "build": "json_truncated", "refused": True,
     "expect": r"truncated\.json: not valid JSON \(.*line 1"},
    {"id": "json-duplicate-keys", "surface": "dataset", "build": "json_duplicate_keys", "refused": True,
     "expect": r"dupkeys\.json: not valid JSON \(duplicate key 'prompt'"},
    {"id": "json-nan", "surface": "dataset", "build": "json_nan_row", "refused": True,
     "expect": r"nan\.json: not valid JSON \(NaN is not valid JSON"},
    {"id": "json-invalid-utf8", "surface": "dataset", "build": "json_invalid_utf8", "refused": True,
     "expect": r"bad_utf8\.json: not valid JSON \(.*utf-8"},
    {"id": "json-utf16", "surface": "dataset", "build": "json_utf16", "refused": True, "expect": r"utf16\.json: .*UTF-16.*UTF-8"},
    {"id": "csv-nul", "surface": "dataset", "build": "csv_nul", "refused": False, "expect": r"loaded 1 rows; row 1 prompt: .*NUL"},
    {"id": "csv-invalid-utf8", "surface": "dataset", "build": "csv_invalid_utf8", "refused": True,
     "expect": r"bad_utf8\.csv: not UTF-8 text .*line 3"},
    {"id": "csv-utf16", "surface": "dataset", "build": "csv_utf16", "refused": True, "expect": r"utf16\.csv: .*UTF-16.*UTF-8"},
    {"id": "csv-0-bytes", "surface": "dataset", "build": "csv_empty", "refused": True, "expect": r"empty\.csv: CSV file has no header row"},
    {"id": "csv-header-only", "surface": "dataset", "build": "csv_header_only", "refused": True, "expect": r"header\.csv has no rows"},
    {"id": "csv-empty-cell", "surface": "dataset", "build": "csv_empty_cell", "refused": False,
     "expect": r"loaded 1 rows; row 1 completion: field 'completion' is empty"},
    {"id": "csv-unclosed-quote", "surface": "dataset", "build": "csv_unclosed_quote", "refused": False,
     "expect": r"loaded 1 rows; row 1 completion: missing field 'completion'"},
    {"id": "csv-10mb-field", "surface": "dataset", "build": "csv_huge_field", "refused": False, "expect": r"^loaded 1 rows$"},
    {"id": "parquet-not-parquet", "surface": "dataset", "build": "parquet_not_parquet", "refused": True,
     "expect": r"fake\.parquet: not a readable Parquet file"},
    {"id": "parquet-0-bytes", "surface": "dataset", "build": "parquet_empty", "refused": True,
     "expect": r"empty\.parquet: not a readable Parquet file"},
    {"id": "parquet-is-zip", "surface": "dataset", "build": "parquet_is_zip", "refused": True,
     "expect": r"zip\.parquet: not a readable Parquet file"},
    {"id": "parquet-wrong-types", "surface": "dataset", "build": "parquet_wrong_types", "refused": False,
     "expect": r"loaded 0 rows; row 0 prompt: field 'prompt' is a int"},
    {"id": "parquet-infinite-column-reloads", "surface": "dataset_roundtrip", "build": "parquet_infinite_column", "refused": False,
     "expect": r"^loaded 2 rows, kept score \[None, None\], reloaded 2 rows$"},
    {"id": "folder-empty", "surface": "dataset", "build": "folder_empty", "refused": True,
     "expect": r"empty_folder is a folder but neither a saved `datasets` folder"},
    {"id": "folder-fake-datasets", "surface": "dataset", "build": "folder_fake_datasets", "refused": True,
     "expect": r"fake_saved: could not load the saved dataset"},
    {"id": "folder-symlink-outside", "surface": "dataset", "build": "folder_symlink_outside", "refused": True,
     "expect": r"linked_saved: .*data-00000-of-00001\.arrow is a link to .*outside the folder"},
    {"id": "dataset-folder-link-outside", "surface": "dataset", "build": "folder_workspace_link_outside", "refused": True,
     "expect": r"linked_dataset: data\.jsonl is a link to .*outside the folder"},
    {"id": "path-traversal-missing", "surface": "dataset", "build": "path_traversal_missing", "refused": True,
     "expect": r"no such file or folder: .*nonexistent/secret\.jsonl"},
    {"id": "path-nul", "surface": "dataset", "build": "path_with_nul", "refused": True, "expect": r"NUL"},
    {"id": "dataset-id-url", "surface": "dataset", "build": "hub_id_url", "refused": True,
     "expect": r"https://evil\.example\.com/data\.jsonl"},
    {"id": "dataset-id-dotdot", "surface": "dataset", "build": "hub_id_dotdot", "refused": True,
     "expect": r"no such file or folder: .*org/\.\./\.\./etc|'org/\.\./\.\./etc'"},
    # uploads through the browser
    {"id": "upload-broken-row", "surface": "upload", "build": "upload_broken_row7", "refused": False,
     "expect": r"loaded 6 rows; row 6 : bad JSON on line 7"},
    {"id": "upload-traversal-name", "surface": "upload", "build": "upload_traversal_name", "refused": True,
     "expect": r"^passwd\.jsonl: none of the first 1 rows is valid JSON"},
    {"id": "upload-parquet-lie", "surface": "upload", "build": "upload_parquet_lie", "refused": True,
     "expect": r"^report\.parquet: not a readable Parquet file"},
    {"id": "upload-no-suffix", "surface": "upload", "build": "upload_no_suffix", "refused": True, "expect": r"^README: unknown file type"},
    {"id": "upload-utf16-csv", "surface": "upload", "build": "upload_utf16_csv", "refused": True,
     "expect": r"^sheet\.csv: .*UTF-16.*UTF-8"},
    # uploads kept in the workspace for a job to read (core.data.formats.save_upload)
    {"id": "saved-upload-traversal", "surface": "upload_saved", "build": "upload_traversal_name", "refused": False,
     "expect": r"^saved as uploads/[0-9a-f]{16}-passwd\.jsonl$"},
    {"id": "saved-upload-backslashes", "surface": "upload_saved", "build": "upload_backslash_name", "refused": False,
     "expect": r"^saved as uploads/[0-9a-f]{16}-evil\.jsonl$"},
    {"id": "saved-upload-nul-suffix", "surface": "upload_saved", "build": "upload_nul_suffix", "refused": False,
     "expect": r"^saved as uploads/[0-9a-f]{16}-a\.js-onl$"},
    # RAG documents
    {"id": "docs-empty-folder", "surface": "corpus", "build": "docs_empty_folder", "refused": True,
     "expect": r"no_docs holds no document with text"},
    {"id": "docs-only-other-files", "surface": "corpus", "build": "docs_only_other_files", "refused": True,
     "expect": r"other_docs holds no document with text"},
    {"id": "docs-invalid-utf8", "surface": "corpus", "build": "docs_invalid_utf8_txt", "refused": True,
     "expect": r"notes\.txt: not UTF-8 text"},
    {"id": "docs-utf16", "surface": "corpus", "build": "docs_utf16_md", "refused": True, "expect": r"guide\.md: .*UTF-16.*UTF-8"},
    {"id": "docs-0-bytes", "surface": "corpus", "build": "docs_empty_txt", "refused": True,
     "expect": r"empty\.txt holds no document with text"},
    {"id": "docs-pdf-not-pdf", "surface": "corpus", "build": "docs_pdf_not_pdf", "refused": True,
     "expect": r"manual\.pdf: cannot read this PDF"},
    {"id": "docs-zip-as-pdf", "surface": "corpus", "build": "docs_zip_as_pdf", "refused": True,
     "expect": r"manual\.pdf: cannot read this PDF"},
    {"id": "docs-pdf-no-text", "surface": "corpus", "build": "docs_pdf_no_text", "refused": True,
     "expect": r"scan\.pdf holds no document with text"},
    {"id": "docs-folder-pdf-no-text", "surface": "corpus", "build": "docs_folder_pdf_no_text", "refused": True,
     "expect": r"docs7 holds no document with text"},
    {"id": "docs-jsonl-broken-line-7", "surface": "corpus", "build": "docs_jsonl_broken_line7", "refused": True,
     "expect": r"docs\.jsonl, line 7: not valid JSON"},
    {"id": "docs-jsonl-deep", "surface": "corpus", "build": "docs_jsonl_deep", "refused": True,
     "expect": r"docs\.jsonl, line 1: not valid JSON \(.*nested too deeply"},
    {"id": "docs-jsonl-text-number", "surface": "corpus", "build": "docs_jsonl_text_number", "refused": True,
     "expect": r"docs\.jsonl, line 2: the `text` field is missing or empty"},
    {"id": "docs-jsonl-duplicate-id", "surface": "corpus", "build": "docs_jsonl_duplicate_id", "refused": True,
     "expect": r"docs\.jsonl, line 2: the id 'a' is used twice"},
    {"id": "docs-json-number", "surface": "corpus", "build": "docs_json_number", "refused": True,
     "expect": r"docs\.json, item 1: expected an object"},
    {"id": "docs-jsonl-invalid-utf8", "surface": "corpus", "build": "docs_jsonl_invalid_utf8", "refused": True,
     "expect": r"docs\.jsonl: not UTF-8 text"},
    {"id": "docs-jsonl-nan", "surface": "corpus", "build": "docs_jsonl_nan", "refused": True,
     "expect": r"docs\.jsonl, line 1: not valid JSON \(NaN is not valid JSON"},
    {"id": "docs-symlink-outside", "surface": "corpus", "build": "docs_symlink_outside", "refused": True,
     "expect": r"docs14: secret\.txt is a link to .*outside the folder"},
    {"id": "docs-wrong-suffix", "surface": "corpus", "build": "docs_wrong_suffix", "refused": True,
     "expect": r"slides\.pptx: documents come from"},
    {"id": "docs-missing", "surface": "corpus", "build": "docs_missing", "refused": True,
     "expect": r"documents not found: .*no-such-folder"},
    # RAG question files
    {"id": "questions-deep", "surface": "questions", "build": "questions_deep", "refused": True,
     "expect": r"questions\.jsonl: not valid JSON \(nested too deeply"},
    {"id": "questions-utf16", "surface": "questions", "build": "questions_utf16", "refused": True,
     "expect": r"questions\.jsonl: the file is UTF-16 encoded; save it as UTF-8"},
    {"id": "questions-invalid-utf8", "surface": "questions", "build": "questions_invalid_utf8", "refused": True,
     "expect": r"questions\.jsonl: not UTF-8 text \(invalid continuation byte at byte \d+, line 2\)"},
    {"id": "questions-duplicate-key", "surface": "questions", "build": "questions_duplicate_key", "refused": True,
     "expect": r"questions\.jsonl, line 2: not valid JSON \(duplicate key 'answer'"},
    {"id": "questions-answer-object", "surface": "questions", "build": "questions_answer_object", "refused": True,
     "expect": r"questions\.jsonl, line 2: `answer` must be text, got dict"},
    # spec.yaml
    {"id": "yaml-python-object", "surface": "spec_yaml", "build": "yaml_python_object", "refused": True,
     "expect": r"spec\.yaml is not valid YAML: .*python/object"},
    {"id": "yaml-python-name", "surface": "spec_yaml", "build": "yaml_python_name", "refused": True,
     "expect": r"spec\.yaml is not valid YAML: .*python/name"},
    {"id": "yaml-billion-laughs", "surface": "spec_yaml", "build": "yaml_billion_laughs", "refused": True,
     "expect": r"spec\.yaml: .*aliases? .*expand"},
    {"id": "yaml-syntax", "surface": "spec_yaml", "build": "yaml_not_yaml", "refused": True,
     "expect": r"spec\.yaml is not valid YAML: while parsing a flow sequence\n.*line 2, column 7"},
    {"id": "yaml-a-list", "surface": "spec_yaml", "build": "yaml_a_list", "refused": True,
     "expect": r"spec\.yaml must be a mapping with a 'kind' field"},
    {"id": "yaml-empty", "surface": "spec_yaml", "build": "yaml_empty", "refused": True,
     "expect": r"spec\.yaml must be a mapping with a 'kind' field"},
    {"id": "yaml-unknown-kind", "surface": "spec_yaml", "build": "yaml_unknown_kind", "refused": True, "expect": r"\.\./\.\./bin/sh"},
    {"id": "yaml-unknown-field", "surface": "spec_yaml", "build": "yaml_unknown_field", "refused": True,
     "expect": r"spec\.yaml \(train\): unknown field\(s\) in TrainSpec: rm_rf"},
    {"id": "yaml-wrong-type", "surface": "spec_yaml", "build": "yaml_wrong_type", "refused": True,
     "expect": r"spec\.yaml \(train\): learning_rate: expected float, got 'fast'"},
    {"id": "yaml-out-of-range", "surface": "spec_yaml", "build": "yaml_out_of_range", "refused": True,
     "expect": r"spec\.yaml \(train\): lora_r: -4 is below the minimum"},
    {"id": "yaml-nan", "surface": "spec_yaml", "build": "yaml_nan", "refused": True,
     "expect": r"spec\.yaml \(train\): learning_rate: nan is not a finite number"},
    {"id": "yaml-infinity", "surface": "spec_yaml", "build": "yaml_infinity", "refused": True,
     "expect": r"spec\.yaml \(train\): num_epochs: inf is not a finite number"},
    {"id": "yaml-bad-choice", "surface": "spec_yaml", "build": "yaml_bad_choice", "refused": True,
     "expect": r"spec\.yaml \(train\): method: 'rootkit' is not one of"},
    {"id": "yaml-model-url", "surface": "spec_yaml", "build": "yaml_model_url", "refused": True,
     "expect": r"spec\.yaml \(train\): .*'https://evil\.example\.com/model' is not a Hugging Face model id"},
    {"id": "yaml-deep-nesting", "surface": "spec_yaml", "build": "yaml_deep", "refused": True,
     "expect": r"spec\.yaml: nested too deeply to read"},
    {"id": "yaml-invalid-utf8", "surface": "spec_yaml", "build": "yaml_invalid_utf8", "refused": True,
     "expect": r"spec\.yaml is not UTF-8 text \(invalid continuation byte at byte 21\)"},
    {"id": "yaml-duplicate-keys", "surface": "spec_yaml", "build": "yaml_duplicate_keys", "refused": True,
     "expect": r"spec\.yaml is not valid YAML: .*duplicate key 'learning_rate'"},
    # merge specs and the mergekit YAML made from them
    {"id": "merge-model-outside", "surface": "merge", "build": "merge_model_outside", "refused": True,
     "expect": r"/etc is not a Hugging Face model folder: it has no config\.json"},
    {"id": "merge-model-traversal", "surface": "merge", "build": "merge_model_traversal", "refused": True,
     "expect": r"Model folder not found: .*nope-model"},
    {"id": "merge-model-url", "surface": "merge", "build": "merge_model_url", "refused": True,
     "expect": r"models\[0\]\.source: 'https://evil\.example\.com/x\.safetensors' is not a Hugging Face model id"},
    {"id": "merge-weight-nan", "surface": "merge", "build": "merge_weight_nan", "refused": True,
     "expect": r"models\[0\]\.weight: nan is (outside|not a finite)"},
    {"id": "merge-source-not-mapping", "surface": "merge", "build": "merge_source_not_mapping", "refused": True,
     "expect": r"models\[0\]\.source: expected a model source \{kind, ref, adapter\}, got 'rm -rf /'"},
    # model ids and local paths
    {"id": "model-dotdot", "surface": "model", "build": "model_dotdot", "refused": True,
     "expect": r"'org/\.\./\.\./\.\./etc' is not a Hugging Face model id"},
    {"id": "model-url", "surface": "model", "build": "model_url", "refused": True,
     "expect": r"'https://evil\.example\.com/org/model' is not a Hugging Face model id"},
    {"id": "model-nul", "surface": "model", "build": "model_nul", "refused": True,
     "expect": r"'org/mo\\x00del': a model path or id cannot contain a NUL character"},
    {"id": "model-three-parts", "surface": "model", "build": "model_three_parts", "refused": True,
     "expect": r"'org/name/extra' is not a Hugging Face model id"},
    {"id": "model-shell", "surface": "model", "build": "model_spaces", "refused": True, "expect": r"is not a Hugging Face model id"},
    {"id": "model-local-missing", "surface": "model", "build": "model_local_missing", "refused": True,
     "expect": r"Model folder not found: .*no/such/model"},
    {"id": "model-local-not-model", "surface": "model", "build": "model_local_not_model", "refused": True,
     "expect": r"inputs is not a Hugging Face model folder: it has no config\.json"},
    {"id": "model-file-not-folder", "surface": "model", "build": "model_file_not_folder", "refused": True,
     "expect": r"weights\.bin is a file, not a model folder"},
    # names: made safe (one path component inside its workspace folder), never refused
    {"id": "run-name-traversal", "surface": "run_name", "build": "name_traversal", "refused": False,
     "expect": r"^saved as runs/\d{8}-\d{6}-train-x$"},
    {"id": "run-name-absolute", "surface": "run_name", "build": "name_absolute", "refused": False,
     "expect": r"^saved as runs/\d{8}-\d{6}-train-etc-passwd$"},
    {"id": "run-name-nul", "surface": "run_name", "build": "name_nul", "refused": False,
     "expect": r"^saved as runs/\d{8}-\d{6}-train-data-set$"},
    {"id": "run-name-long", "surface": "run_name", "build": "name_long", "refused": False,
     "expect": r"^saved as runs/\d{8}-\d{6}-train-a{40}$"},
    {"id": "run-name-dots", "surface": "run_name", "build": "name_dots", "refused": False,
     "expect": r"^saved as runs/\d{8}-\d{6}-train-unnamed$"},
    {"id": "dataset-name-traversal", "surface": "dataset_name", "build": "name_traversal", "refused": False,
     "expect": r"^saved as datasets/x$"},
    {"id": "dataset-name-absolute", "surface": "dataset_name", "build": "name_absolute", "refused": False,
     "expect": r"^saved as datasets/etc-passwd$"},
    {"id": "dataset-name-home", "surface": "dataset_name", "build": "name_home", "refused": False, "expect": r"^saved as datasets/evil$"},
    {"id": "dataset-name-nul", "surface": "dataset_name", "build": "name_nul", "refused": False, "expect": r"^saved as datasets/data-set$"},
    {"id": "dataset-name-dots", "surface": "dataset_name", "build": "name_dots", "refused": False,
     "expect": r"^saved as datasets/curated$"},
    {"id": "dataset-name-reserved", "surface": "dataset_name", "build": "name_reserved", "refused": False,
     "expect": r"^saved as datasets/CON_$"},
    {"id": "dataset-name-long", "surface": "dataset_name", "build": "name_long", "refused": False, "expect": r"^saved as datasets/a{80}$"},
    {"id": "dataset-name-slashes", "surface": "dataset_name", "build": "name_slashes_spaces", "refused": False,
     "expect": r"^saved as datasets/my-data-set-name-with-back$"},
    {"id": "dataset-name-homoglyph", "surface": "dataset_name", "build": "name_homoglyph", "refused": False,
     "expect": r"^saved as datasets/d-t-s-t$"},
    {"id": "dataset-name-empty", "surface": "dataset_name", "build": "name_empty", "refused": True,
     "expect": r"^give the curated dataset a name"},
    {"id": "dataset-name-collides", "surface": "dataset_name", "build": "name_only_symbols", "refused": False,
     "expect": r"^saved as datasets/curated$"},
    {"id": "dataset-name-existing", "surface": "dataset_name", "build": "name_existing", "refused": True,
     "expect": r"a dataset named 'keep' already exists"},
    {"id": "export-name-traversal", "surface": "export_name", "build": "name_traversal", "refused": False, "expect": r"^x$"},
    {"id": "export-name-reserved", "surface": "export_name", "build": "name_reserved", "refused": False, "expect": r"^CON_$"},
    {"id": "export-name-homoglyph", "surface": "export_name", "build": "name_homoglyph", "refused": False, "expect": r"^d-t-s-t$"},
    # Hub listings from a test server
    {"id": "hub-listing-traversal", "surface": "hub", "build": "hub_listing_traversal", "refused": True,
     "expect": r"org/evil: .*'(\.\./){7}outside/pwned\.txt', which is not .*; refused"},
    {"id": "hub-listing-absolute", "surface": "hub", "build": "hub_listing_absolute", "refused": True,
     "expect": r"org/abs: .*'/tmp/pwned-absolute\.txt', which is not .*; refused"},
    {"id": "hub-unknown-repo", "surface": "hub", "build": "hub_listing_unknown_repo", "refused": True, "expect": r"org/missing"},
]
