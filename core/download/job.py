"""The download job (`python -m core.runs.worker runs/<id>` with a DownloadSpec), and the same download as the
first stage of any job whose model is a Hub id not in the cache yet."""
from __future__ import annotations

import time
from typing import Any, Iterable

from core import hub
from core.models import hub_weights_present
from core.runs.jobs import JobContext, JobError


def files_to_fetch(repo: hub.RemoteRepo, remote_code: bool) -> list[hub.RemoteFile]:
    """The safetensors weights transformers loads (hub.weight_files), config and tokenizer files (and *.py only for
    trusted remote code); never pickles."""
    weights = hub.weight_files(repo)
    if not weights:
        pickles = [f.name for f in repo.select(hub.PICKLE_WEIGHTS)]
        detail = f" (only pickled weights: {', '.join(pickles[:3])})" if pickles else ""
        raise JobError(f"{repo.repo_id} has no .safetensors weights{detail}; the workbench loads safetensors only, "
                       "since pickled weights can run code when loaded.")
    patterns = hub.CONFIG_PATTERNS + (hub.CODE_PATTERNS if remote_code else ())
    return weights + [f for f in repo.select(patterns) if f not in weights]


def fetch(ctx: JobContext, source: Any, *, stage: str = "download", share: float = 1.0) -> dict:
    """Download one Hub source's weights, reporting progress through the job context. Returns the figures."""
    try:
        repo = hub.remote_repo(source.ref, source.revision)
        files = files_to_fetch(repo, source.trust_remote_code)
        hub.check_disk_space(repo, files)
    except hub.HubError as exc:
        raise JobError(str(exc)) from None
    ctx.log.info("%s: %d files, %s, commit %s", source.ref, len(files), _size(sum(f.size for f in files)), repo.commit)
    started = time.time()
    shown = [0.0]  # the fraction last reported

    def report(progress: hub.Progress) -> None:
        eta = progress.eta_s
        message = (f"downloading {source.ref}: {_size(progress.done_bytes)} of {_size(progress.total_bytes)} at "
                   f"{_size(progress.bytes_per_s)}/s" + (f", ETA {eta:.0f} s" if eta is not None else ""))
        shown[0] = share * progress.done_bytes / max(1, progress.total_bytes)
        ctx.progress(shown[0], message)
        ctx.metrics(stage=stage, model=source.ref, file=progress.current_file, bytes_done=progress.done_bytes,
                    bytes_total=progress.total_bytes, bytes_per_s=round(progress.bytes_per_s, 1),
                    eta_s=round(eta, 1) if eta is not None else None, elapsed_s=round(time.time() - started, 2))

    def waiting(f: hub.RemoteFile) -> None:
        message = f"waiting: another download of {source.ref} is fetching {f.name}; this one uses it when it is done"
        ctx.log.info(message)
        ctx.progress(shown[0], message)

    try:
        folder, progress, finished = hub.download(repo, files, revision=source.revision, on_progress=report,
                                                  should_stop=lambda: ctx.stop_requested, on_wait=waiting)
    except hub.HubError as exc:
        raise JobError(str(exc)) from None
    return {"model": source.ref, "commit": repo.commit, "folder": str(folder), "files": len(files),
            "bytes": progress.total_bytes, "resumed_bytes": progress.resumed_bytes, "finished": finished,
            "seconds": round(time.time() - started, 2), "bytes_per_s": round(progress.bytes_per_s, 1),
            "waited_for": progress.waited_for}


def run(ctx: JobContext) -> dict:
    spec = ctx.spec  # a DownloadSpec
    result = fetch(ctx, spec.source)
    ctx.write_result(result)
    if result["finished"]:
        ctx.progress(1.0, f"downloaded {spec.source.ref}: {_size(result['bytes'])}")
    return result


def ensure_weights(ctx: JobContext, sources: Iterable[Any]) -> list[dict]:
    """The first stage of a train / evaluate / merge job: fetch every Hub model whose weights are not cached yet."""
    done = []
    for source in sources:
        if source is None or source.kind != "hub" or hub_weights_present(source):
            continue
        ctx.progress(0.0, f"downloading {source.ref} (first stage)")
        result = fetch(ctx, source.with_adapter(""), stage="download")
        if not result["finished"]:
            raise JobError(f"stopped while downloading {source.ref}; start the job again to resume the download")
        done.append(result)
    return done


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
