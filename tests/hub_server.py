"""A real HTTP server speaking the part of the Hugging Face Hub protocol that huggingface_hub and core.hub use,
on 127.0.0.1 (point HF_ENDPOINT at `server.url`), and a writer for the Hub cache layout.

Protocol, as huggingface_hub's client reads it (hf_api.model_info, file_download.get_hf_file_metadata,
utils._http.hf_raise_for_status):
  GET  /api/models/<org>/<name>[/revision/<rev>][?blobs=True] -> {"id", "sha", "gated", "siblings": [{"rfilename",
       "size", "blobId", "lfs": {"sha256", "size", "pointerSize"}}]}; unknown repo -> 401 + X-Error-Code: RepoNotFound
  HEAD/GET /<org>/<name>/resolve/<rev>/<file> -> X-Repo-Commit, ETag (git blob id) or X-Linked-Etag (LFS sha256),
       Content-Length, Accept-Ranges; `Range: bytes=N-` -> 206 + Content-Range; gated without a token -> 403 +
       X-Error-Code: GatedRepo
Every request is logged (method, path, Range header) so tests can assert what was — and was not — fetched.
Test options: `bytes_per_s` throttles file bodies; `hold_after` stops every file body after that many bytes until
`release` is set (two downloads made to overlap without sleeps); HubRepo.listing puts what a hostile mirror would
into a file's listing entry (a blobId or lfs.sha256 that is a path), and a file or commit may be named like a path.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(name: str, data: bytes) -> bool:
    return name.endswith((".safetensors", ".bin", ".model")) or len(data) > 10_000


@dataclass
class HubRepo:
    repo_id: str
    files: dict[str, bytes]
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    gated: bool = False
    claimed_sizes: dict[str, int] = field(default_factory=dict)  # what the API says a file weighs (disk-space tests)
    listing: dict[str, dict] = field(default_factory=dict)  # per file: fields that replace its listing entry's (hostile mirror)

    def sibling(self, name: str) -> dict:
        data = self.files[name]
        size = self.claimed_sizes.get(name, len(data))
        entry = {"rfilename": name, "size": size, "blobId": git_blob_id(data)}
        if is_lfs(name, data):
            entry["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": size, "pointerSize": 134}
        for key, value in self.listing.get(name, {}).items():
            entry[key] = {**entry.get(key, {}), **value} if isinstance(value, dict) else value
        return entry


class HubServer:
    def __init__(self, repos: list[HubRepo], bytes_per_s: float | None = None, hold_after: int | None = None):
        self.repos = {r.repo_id: r for r in repos}
        self.bytes_per_s = bytes_per_s  # throttle file bodies (interruption tests)
        self.hold_after = hold_after  # every file body pauses after this many bytes until `release` is set
        self.release = threading.Event()
        self.requests: list[tuple[str, str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "HubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    def fetched(self, suffix: str, method: str = "GET") -> list[tuple[str, str, str]]:
        return [r for r in self.requests if r[0] == method and r[1].split("?")[0].endswith(suffix)]

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _error(self, status: int, code: str, message: str) -> None:
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", message)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _serve(self, body: bool) -> None:
                server.requests.append((self.command, self.path, self.headers.get("Range", "")))
                path = self.path.split("?")[0]
                api = re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?$", path)
                if api:
                    return self._model_info(api.group(1))
                resolve = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
                if resolve:
                    return self._file(resolve.group(1), resolve.group(3), body)
                self._error(404, "EntryNotFound", "no such route")

            def _model_info(self, repo_id: str) -> None:
                repo = server.repos.get(repo_id)
                if repo is None:
                    return self._error(401, "RepoNotFound", "Repository not found")
                data = json.dumps({"id": repo.repo_id, "modelId": repo.repo_id, "sha": repo.commit, "private": False,
                                   "gated": "auto" if repo.gated else False, "disabled": False,
                                   "siblings": [repo.sibling(n) for n in repo.files]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _file(self, repo_id: str, name: str, body: bool) -> None:
                repo = server.repos.get(repo_id)
                if repo is None:
                    return self._error(401, "RepoNotFound", "Repository not found")
                if repo.gated and not self.headers.get("Authorization"):
                    return self._error(403, "GatedRepo", "Access to model is restricted: you must be authenticated and accept "
                                                         "its conditions")
                if name not in repo.files:
                    return self._error(404, "EntryNotFound", "Entry not found")
                data = repo.files[name]
                start = 0
                wanted = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                end = len(data)
                if wanted:
                    start = int(wanted.group(1))
                    end = int(wanted.group(2)) + 1 if wanted.group(2) else len(data)
                    end = min(end, len(data))
                self.send_response(206 if wanted else 200)
                self.send_header("X-Repo-Commit", repo.commit)
                sibling = repo.sibling(name)
                if "lfs" in sibling:
                    self.send_header("X-Linked-Etag", f'"{sibling["lfs"]["sha256"]}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("ETag", f'"{sibling["blobId"]}"')
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(end - start))
                if wanted:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
                self.end_headers()
                if not body:
                    return
                try:
                    self._send(data[start:end])
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _send(self, payload: bytes) -> None:
                chunk = 64 * 1024
                for i in range(0, len(payload), chunk):
                    if server.hold_after is not None and i >= server.hold_after:
                        self.wfile.flush()
                        server.release.wait(timeout=120)
                    self.wfile.write(payload[i:i + chunk])
                    if server.bytes_per_s:
                        time.sleep(chunk / server.bytes_per_s)

        return Handler


def write_hub_cache(cache: Path, repo: HubRepo, names: list[str] | None = None) -> Path:
    """Put `names` (default: all) of a repo into a Hub cache folder exactly as huggingface_hub lays it out."""
    folder = Path(cache) / ("models--" + repo.repo_id.replace("/", "--"))
    snapshot = folder / "snapshots" / repo.commit
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    (folder / "refs").mkdir(exist_ok=True)
    for name in names if names is not None else list(repo.files):
        sibling = repo.sibling(name)
        etag = sibling["lfs"]["sha256"] if "lfs" in sibling else sibling["blobId"]
        blob = folder / "blobs" / etag
        blob.write_bytes(repo.files[name])
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    (folder / "refs" / "main").write_text(repo.commit)
    return snapshot


def repo_from_folder(repo_id: str, folder: Path, **kwargs) -> HubRepo:
    """A HubRepo holding every file of a local model folder."""
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}
    return HubRepo(repo_id=repo_id, files=files, **kwargs)
