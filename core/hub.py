"""Every Hugging Face Hub call of the workbench: config / tokenizer look-ups that never fetch weights, the file
list of a repository, and resumable downloads into the standard Hub cache (so transformers and any other tool
find the files there too).

Layout written, as huggingface_hub itself does: <cache>/models--org--name/{blobs/<etag>, snapshots/<commit>/<file>
-> ../../blobs/<etag>, refs/<branch>}. The transfer itself is ours because huggingface_hub (2.x) writes every
download to a fresh process-unique temp file: after an interruption it starts the file again from byte 0. Here a
partial file stays as blobs/<etag>.incomplete and the next attempt asks the server for the rest (HTTP Range).

Two downloads of one model (the Download job and a train job's first stage, say) must not both append to that one
partial file: each blob is fetched under a lock, <cache>/.locks/models--org--name/<etag>.lock, the path
huggingface_hub locks too; the second waits, then finds the blob done. A partial longer than its blob is discarded,
and a blob is renamed into place only once its size and hash (sha256 for LFS files, the git blob id otherwise) match
the listing. Names from the Hub (file names, etags, the commit, the revision asked for) are checked before they are
joined to a cache path, and every such path is resolved under its root: a hostile mirror cannot write elsewhere.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import urlparse

from core.locks import file_lock
from core.workspace import atomic_write_text

DEFAULT_ENDPOINT = "https://huggingface.co"
# What a config or tokenizer look-up may fetch: never a weight file.
CONFIG_PATTERNS = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
                   "tokenizer.model", "spiece.model", "*.tiktoken", "chat_template.json", "chat_template.jinja")
CODE_PATTERNS = ("*.py",)  # only when the user ticked "Trust remote code"
WEIGHT_INDEX = "model.safetensors.index.json"  # what transformers looks for, in this order
WEIGHT_FILE = "model.safetensors"
MISTRAL_WEIGHTS = "consolidated*.safetensors"  # Mistral's own-format copy of the same weights: transformers never reads it
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
CHUNK = 1 << 20
COMMIT_RE = re.compile(r"[0-9a-f]{40}")
ETAG_RE = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # a git blob id (sha1) or an LFS sha256
REVISION_RE = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]*(?:/[A-Za-z0-9_+-][A-Za-z0-9._+-]*)*")  # branch / tag, refs/pr/1


class HubError(RuntimeError):
    """A Hub request failed; the message is one sentence a user can act on."""


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    etag: str  # the blob name in the cache: sha256 for LFS files, the git blob id otherwise
    sha256: str | None  # checked after the download when known


@dataclass(frozen=True)
class RemoteRepo:
    repo_id: str
    commit: str
    files: tuple[RemoteFile, ...]
    gated: bool = False

    def select(self, patterns: Iterable[str]) -> list[RemoteFile]:
        patterns = tuple(patterns)
        return [f for f in self.files if matches(f.name, patterns)]


# --------------------------------------------------------------------------- settings (read at call time)


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser()
    return home / "hub"


def token() -> str | None:
    return os.environ.get("HF_TOKEN") or None


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() not in ("0", "", "false", "no", "off")


def reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub (or HF_ENDPOINT's server) answers a TCP connection, without hanging."""
    if offline():
        return False
    url = urlparse(endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(Path(name).name, p) for p in patterns)


# --------------------------------------------------------------------------- names from the user and from the Hub


def check_revision(revision: str) -> str:
    """A revision the Hub accepts: a branch or tag name (slashes between parts, as in refs/pr/1) or a 40-hex commit.
    Anything else (a '..', an absolute path, odd characters) is refused by name before it reaches a URL or a path."""
    if not revision:
        return revision
    parts = revision.split("/")
    if (len(revision) > 255 or not REVISION_RE.fullmatch(revision) or ".." in revision
            or any(p.endswith((".", ".lock")) for p in parts)):
        raise HubError(f"Revision {revision!r} is not a branch, tag or commit name: use letters, digits and . _ - + with '/' "
                       "between parts (main, v1.0, refs/pr/1) or a 40-character commit hash; no '..', no leading '/' or '.'.")
    return revision


def check_file_name(repo_id: str, name: str) -> str:
    """A file name from a Hub listing: a plain relative path inside the repository, else refused by name."""
    parts = name.split("/")
    if (not name or len(name) > 1000 or "\\" in name or any(p in ("", ".", "..") for p in parts)
            or any(ord(c) < 32 or c == "\x7f" for c in name)):
        raise HubError(f"{repo_id}: the Hub listing names a file {name!r}, which is not a safe file name (a plain path inside "
                       f"the repository); refused (is HF_ENDPOINT={endpoint()} a server you trust?).")
    return name


def _check_etag(repo_id: str, f: "RemoteFile") -> str:
    if not ETAG_RE.fullmatch(f.etag or ""):
        raise HubError(f"{repo_id}/{f.name}: the Hub listing gives it the etag {f.etag!r}, which is not a git blob id or a "
                       f"sha256; refused (is HF_ENDPOINT={endpoint()} a server you trust?).")
    return f.etag


def _check_commit(repo: "RemoteRepo") -> str:
    if not COMMIT_RE.fullmatch(repo.commit or ""):
        raise HubError(f"{repo.repo_id}: the Hub answered with the commit {repo.commit!r}, which is not a 40-character commit "
                       f"hash; refused (is HF_ENDPOINT={endpoint()} a server you trust?).")
    return repo.commit


def _under(root: Path, path: Path) -> Path:
    """`path`, once its folder is resolved, inside `root` (resolved); else HubError naming it."""
    resolved_root = root.resolve()
    resolved = path.parent.resolve() / path.name
    if resolved == resolved_root or resolved_root not in resolved.parents:
        raise HubError(f"{path} is not inside {root}; refused.")
    return path


# --------------------------------------------------------------------------- the cache


def repo_folder(repo_id: str) -> Path:
    return _under(cache_dir(), cache_dir() / ("models--" + repo_id.replace("/", "--")))


def blob_path(repo: RemoteRepo, f: RemoteFile) -> Path:
    """Where a file's content lives in the cache (blobs/<etag>), its etag checked first."""
    blobs = repo_folder(repo.repo_id) / "blobs"
    return _under(blobs, blobs / _check_etag(repo.repo_id, f))


def _lock_path(repo: RemoteRepo, f: RemoteFile) -> Path:
    """The blob's lock file, where huggingface_hub puts it: <cache>/.locks/models--org--name/<etag>.lock."""
    locks = cache_dir() / ".locks"
    return _under(locks, locks / repo_folder(repo.repo_id).name / f"{_check_etag(repo.repo_id, f)}.lock")


def _complete(blob: Path, f: RemoteFile) -> bool:
    """The blob is there at its listed size (a blob of another size is a corrupted cache entry, fetched again)."""
    return blob.is_file() and (not f.size or blob.stat().st_size == f.size)


def cached_snapshot(repo_id: str, revision: str = "") -> Path | None:
    """The cached snapshot folder of a repo at a revision (no network), or None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        check_revision(revision)
        return Path(snapshot_download(repo_id, revision=revision or None, cache_dir=cache_dir(), local_files_only=True))
    except (HubError, LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        return None


def weight_files(repo: RemoteRepo, read_json: Callable[[RemoteRepo, RemoteFile], dict] | None = None) -> list[RemoteFile]:
    """The safetensors files of a repo that transformers loads, and no others: the index and exactly the shards its
    weight_map names; else model.safetensors; else the other top-level *.safetensors (an adapter, a custom name);
    Mistral's consolidated*.safetensors (a second copy of the weights, as large as the model) only when nothing else
    exists. `read_json` reads the index (default: fetch it into the cache). Empty when the repo has no safetensors."""
    by_name = {f.name: f for f in repo.files}
    index = by_name.get(WEIGHT_INDEX)
    if index is not None:
        weight_map = (read_json or _fetch_json)(repo, index).get("weight_map") or {}
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if s not in by_name]
        if not shards or missing:
            raise HubError(f"{repo.repo_id}: {WEIGHT_INDEX} " + (f"names shards the repository does not have: {', '.join(missing[:3])}"
                                                                   if missing else "has an empty weight_map") + ".")
        return [index] + [by_name[s] for s in shards]
    if WEIGHT_FILE in by_name:
        return [by_name[WEIGHT_FILE]]
    top = [f for f in repo.files if "/" not in f.name and f.name.endswith(".safetensors")]
    return [f for f in top if not fnmatch.fnmatch(f.name, MISTRAL_WEIGHTS)] or top


def _fetch_json(repo: RemoteRepo, f: RemoteFile) -> dict:
    """A small JSON file of a repo, fetched into the cache (once) and read."""
    folder, _, _ = download(repo, [f])
    try:
        return json.loads((folder / f.name).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HubError(f"{repo.repo_id}/{f.name} is not valid JSON: {exc}") from exc


def has_weights(folder: Path) -> bool:
    """All safetensors shards are present (the index names them), or a single model file is."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        return bool(shards) and all((folder / s).is_file() for s in shards)
    return any(folder.glob("*.safetensors"))


# --------------------------------------------------------------------------- the remote repository


def gated_sentence(repo_id: str) -> str:
    return (f"{repo_id} is a gated model: accept its licence on {endpoint()}/{repo_id} with your account, then set "
            "HF_TOKEN to a token of that account (Settings > Access Tokens) and start again.")


def explain(exc: BaseException, repo_id: str) -> str:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(exc, GatedRepoError):
        return gated_sentence(repo_id)
    if isinstance(exc, RevisionNotFoundError):
        return f"{repo_id} has no revision by that name on the Hub."
    if isinstance(exc, RepositoryNotFoundError):
        return (f"No model {repo_id!r} on the Hub: check the id (organisation/name); a private model also needs "
                "HF_TOKEN set to a token that can read it.")
    return f"The Hub request for {repo_id} failed: {exc}"


def remote_repo(repo_id: str, revision: str = "") -> RemoteRepo:
    """The commit and every file (with size and etag) of a Hub model at a revision."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if offline():
        raise HubError(f"Offline mode (HF_HUB_OFFLINE=1): {repo_id} cannot be fetched from the Hub.")
    check_revision(revision)
    try:
        info = HfApi(endpoint=endpoint()).model_info(repo_id, revision=revision or None, files_metadata=True, token=token())
    except HfHubHTTPError as exc:
        raise HubError(explain(exc, repo_id)) from exc
    except OSError as exc:
        raise HubError(f"The Hub at {endpoint()} could not be reached for {repo_id}: {exc}") from exc
    files = tuple(
        RemoteFile(name=s.rfilename, size=int(s.lfs.size if s.lfs else (s.size or 0)),
                   etag=s.lfs.sha256 if s.lfs else (s.blob_id or ""), sha256=s.lfs.sha256 if s.lfs else None)
        for s in info.siblings or []
    )
    return RemoteRepo(repo_id=repo_id, commit=info.sha, files=files, gated=bool(getattr(info, "gated", False)))


def remote_safetensors_shapes(repo_id: str, revision: str = "") -> tuple[dict[str, tuple[int, ...]], int]:
    """Every tensor's shape and the total bytes of a Hub model's safetensors, read from the file headers only."""
    from huggingface_hub import get_safetensors_metadata
    from huggingface_hub.errors import HfHubHTTPError, NotASafetensorsRepoError

    if not reachable():
        raise HubError(f"the Hub is unreachable, so the weight headers of {repo_id} cannot be read; download it first")
    try:
        meta = get_safetensors_metadata(repo_id, revision=revision or None, token=token())
    except NotASafetensorsRepoError as exc:
        raise HubError(f"{repo_id} has no .safetensors weights: {exc}") from exc
    except HfHubHTTPError as exc:
        raise HubError(explain(exc, repo_id)) from exc
    shapes, total = {}, 0
    for file in meta.files_metadata.values():
        for name, info in file.tensors.items():
            shapes[name] = tuple(info.shape)
            total += info.parameter_count * _DTYPE_BYTES.get(info.dtype, 4)
    return shapes, total


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


# --------------------------------------------------------------------------- downloading


@dataclass
class Progress:
    total_bytes: int
    done_bytes: int = 0
    resumed_bytes: int = 0  # bytes that were already on disk from an earlier attempt
    current_file: str = ""
    started: float = 0.0
    waited_for: list[str] = field(default_factory=list)  # files another download was fetching; this one waited for it

    @property
    def bytes_per_s(self) -> float:
        seconds = time.time() - self.started
        return (self.done_bytes - self.resumed_bytes) / seconds if seconds > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        speed = self.bytes_per_s
        return (self.total_bytes - self.done_bytes) / speed if speed > 0 else None


def missing_bytes(repo: RemoteRepo, files: list[RemoteFile]) -> int:
    """Bytes still to fetch: files not in the cache yet, less what their partial files already hold."""
    total = 0
    for f in files:
        blob = blob_path(repo, f)
        if _complete(blob, f):
            continue
        partial = _partial(blob)
        have = partial.stat().st_size if partial.is_file() else 0
        total += f.size - (have if have <= f.size else 0)
    return total


def _partial(blob: Path) -> Path:
    return blob.with_name(f"{blob.name}.incomplete")


def check_disk_space(repo: RemoteRepo, files: list[RemoteFile], margin: float = 1.05) -> None:
    needed = missing_bytes(repo, files)
    target = cache_dir()
    while not target.exists():
        target = target.parent
    free = shutil.disk_usage(target).free
    if needed * margin > free:
        raise HubError(f"Not enough disk space for {repo.repo_id}: it needs {_gb(needed)} more but only {_gb(free)} is free "
                       f"in {cache_dir()} (set HF_HUB_CACHE to a larger disk, or free some space).")


def download(repo: RemoteRepo, files: list[RemoteFile], *, revision: str = "", on_progress: Callable[[Progress], None] | None = None,
             should_stop: Callable[[], bool] | None = None, on_wait: Callable[[RemoteFile], None] | None = None,
             report_every: float = 0.5) -> tuple[Path, Progress, bool]:
    """Fetch `files` of `repo` into the cache; resumes partial files. Each blob is fetched under its lock: when another
    process holds it, on_wait(file) is called and this waits (stoppable), then uses the blob the other one finished.
    Returns (snapshot folder, progress, finished)."""
    check_revision(revision)
    folder = repo_folder(repo.repo_id)
    snapshots = folder / "snapshots"
    snapshot = _under(snapshots, snapshots / _check_commit(repo))
    targets = [(f, blob_path(repo, f), _under(snapshot, snapshot / check_file_name(repo.repo_id, f.name))) for f in files]
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    progress = Progress(total_bytes=sum(f.size for f in files), started=time.time())
    for f, blob, _ in targets:  # what is already complete counts as done
        if _complete(blob, f):
            progress.done_bytes += f.size
            progress.resumed_bytes += f.size
    last_report = 0.0
    for f, blob, link in targets:
        if not _complete(blob, f):
            progress.current_file = f.name

            def waiting(f: RemoteFile = f) -> None:
                progress.waited_for.append(f.name)
                if on_wait:
                    on_wait(f)

            with file_lock(_lock_path(repo, f), on_wait=waiting, give_up=should_stop) as held:
                if not held:
                    return snapshot, progress, False
                if _complete(blob, f):  # another download finished it while this one waited
                    progress.done_bytes += f.size
                    progress.resumed_bytes += f.size
                else:
                    blob.unlink(missing_ok=True)  # a blob of the wrong size (a corrupted cache entry)
                    partial = _partial(blob)
                    have = partial.stat().st_size if partial.is_file() else 0
                    if f.size and have > f.size:  # longer than the file: never resumable, start it again
                        partial.unlink()
                        have = 0
                    progress.done_bytes += have
                    progress.resumed_bytes += have
                    for written in _transfer(repo, f, partial, have):
                        progress.done_bytes += written
                        if on_progress and time.time() - last_report >= report_every:
                            on_progress(progress)
                            last_report = time.time()
                        if should_stop and should_stop():
                            return snapshot, progress, False
                    _finish_blob(repo, f, partial, blob)
        _link(link, blob)
    ref = revision or "main"
    if ref != repo.commit:  # a branch or tag name (refs/pr/1 too) -> the commit, as huggingface_hub records it
        refs = folder / "refs"
        atomic_write_text(_under(refs, refs / ref), repo.commit)
    if on_progress:
        on_progress(progress)
    return snapshot, progress, True


def _transfer(repo: RemoteRepo, f: RemoteFile, partial: Path, have: int):
    """Append the rest of one file to its partial file (the caller holds the blob's lock); yields the bytes written."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    if have == f.size > 0:
        return
    url = hf_hub_url(repo.repo_id, f.name, revision=repo.commit, endpoint=endpoint())
    headers = build_hf_headers(token=token())
    headers["Accept-Encoding"] = "identity"
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as exc:
        raise HubError(_http_sentence(exc, repo.repo_id, f.name)) from exc
    except OSError as exc:
        raise HubError(f"The download of {repo.repo_id}/{f.name} broke off: {exc}. Start it again to resume.") from exc
    resume = bool(have) and response.status == 206
    if resume and not (response.headers.get("Content-Range") or "").startswith(f"bytes {have}-"):
        response.close()
        raise HubError(f"The Hub answered {repo.repo_id}/{f.name}'s resume from byte {have} with the range "
                       f"{response.headers.get('Content-Range')!r}; start the download again.")
    try:
        with response, open(partial, "ab" if resume else "wb") as out:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                yield len(chunk)
    except OSError as exc:
        raise HubError(f"The download of {repo.repo_id}/{f.name} broke off: {exc}. Start it again to resume.") from exc


def _finish_blob(repo: RemoteRepo, f: RemoteFile, partial: Path, blob: Path) -> None:
    """Rename the partial file to its blob once its size and hash match the listing (the caller holds the lock)."""
    size = partial.stat().st_size if partial.is_file() else 0
    if f.size and size < f.size:
        raise HubError(f"{repo.repo_id}/{f.name}: got {size} bytes of {f.size}; start the download again to resume.")
    if f.size and size > f.size:
        partial.unlink()
        raise HubError(f"{repo.repo_id}/{f.name}: got {size} bytes, more than its {f.size}; the partial file was removed, "
                       "start the download again.")
    if not partial.exists():
        partial.write_bytes(b"")
    if f.sha256:
        kind, digest = "sha256", hashlib.sha256()
        expected = f.sha256
    else:  # a regular (non-LFS) file: its etag is the git blob id, sha1 over "blob <size>\0" + content
        kind, digest = "git blob id", hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False)
        expected = f.etag
    with open(partial, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
        os.fsync(handle.fileno())
    if digest.hexdigest() != expected:
        partial.unlink()
        raise HubError(f"{repo.repo_id}/{f.name}: the downloaded file does not match its {kind} from the Hub; it was removed, "
                       "start the download again.")
    os.replace(partial, blob)


def _link(path: Path, blob: Path) -> None:
    """snapshots/<commit>/<name> -> ../../blobs/<etag>, swapped in atomically (two downloads may link at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    target = os.path.relpath(blob, path.parent)
    if path.is_symlink() and os.readlink(path) == target:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.link")
    tmp.symlink_to(target)
    os.replace(tmp, path)


def _http_sentence(exc: urllib.error.HTTPError, repo_id: str, name: str) -> str:
    code = exc.headers.get("X-Error-Code", "")
    if code == "GatedRepo" or (exc.code in (401, 403) and "gated" in (exc.headers.get("X-Error-Message") or "").lower()):
        return gated_sentence(repo_id)
    if code == "RepoNotFound" or exc.code == 404:
        return f"{repo_id}/{name} was not found on the Hub ({exc.code})."
    return f"The Hub refused {repo_id}/{name}: HTTP {exc.code} {exc.reason}."


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


# --------------------------------------------------------------------------- look-ups


def config_snapshot(repo_id: str, revision: str = "", *, remote_code: bool = False) -> Path:
    """A snapshot folder holding the repo's config and tokenizer files (and its *.py only with remote_code) — from
    the cache when they are there, else fetched (a few small files). Never a weight file."""
    patterns = CONFIG_PATTERNS + (CODE_PATTERNS if remote_code else ())
    folder = cached_snapshot(repo_id, revision)
    if folder is not None and (folder / "config.json").is_file() and (not remote_code or _code_present(folder)):
        return folder
    if not reachable():
        where = "the Hub is unreachable (offline mode, HF_HUB_OFFLINE=1)" if offline() else f"the Hub at {endpoint()} is unreachable"
        raise HubError(f"{repo_id!r} is not in the local Hub cache ({cache_dir()}) and {where}: download it on a connected "
                       "machine, or choose a local folder.")
    repo = remote_repo(repo_id, revision)
    wanted = repo.select(patterns)
    if not any(f.name == "config.json" for f in wanted):
        raise HubError(f"{repo_id} has no config.json: it is not a transformers model repository.")
    snapshot, _, _ = download(repo, wanted, revision=revision)
    return snapshot


def _code_present(folder: Path) -> bool:
    """Every module the config's auto_map names is in the folder."""
    try:
        auto_map = json.loads((folder / "config.json").read_text()).get("auto_map") or {}
    except (OSError, ValueError):
        return False
    modules = {str(ref).split("--")[-1].split(".")[0] for ref in _flatten(auto_map.values())}
    return all((folder / f"{module}.py").is_file() for module in modules)


def _flatten(values) -> list:
    out = []
    for value in values:
        out.extend(_flatten(value) if isinstance(value, (list, tuple)) else [value] if value else [])
    return out
