"""Hub models: config / tokenizer look-ups that never read weights (a real Hub cache layout, HF_HUB_OFFLINE=1),
remote code only when ticked, and the download job against a real local HTTP endpoint (HF_ENDPOINT): progress,
disk-space refusal, interruption and resume, gated and unknown ids, and the download as a train job's first stage."""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hub_server import HubRepo, HubServer, repo_from_folder, write_hub_cache
from jobs_inline import jobs_inline_fixture  # noqa: F401 - a fixture

from conftest import ROOT
from core import runs
from core.download import DownloadSpec
from core.models import ModelLoadError, ModelSource, load_config, load_model, load_tokenizer

REPO = "tiny-org/tiny-llama"
_opened: list[str] = []
_recording: list[bool] = []


def _audit(event: str, args: tuple) -> None:
    if _recording and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # audit hooks cannot be removed; this one records only while _recording is set


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hub-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def online(hub_cache, monkeypatch):
    """Environment for a worker process, or this one, that talks to a local Hub server (set HF_ENDPOINT after starting
    it). huggingface_hub reads HF_HUB_OFFLINE once, at import: conftest's default (1) is undone here for this process."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return monkeypatch


def _files_opened(action) -> list[str]:
    _opened.clear()
    _recording.append(True)
    try:
        action()
    finally:
        _recording.clear()
    return list(_opened)


# --------------------------------------------------------------------------- look-ups from the cache (offline)


def test_cached_config_and_tokenizer_read_no_weight_file(hub_cache, tiny_llama_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_hub_cache(hub_cache, repo_from_folder(REPO, tiny_llama_dir))
    source = ModelSource("hub", REPO)
    timings = {}

    def look_up():
        start = time.perf_counter()
        timings["config"] = load_config(source)
        timings["config_s"] = time.perf_counter() - start
        start = time.perf_counter()
        timings["tokenizer"] = load_tokenizer(source)
        timings["tokenizer_s"] = time.perf_counter() - start

    opened = _files_opened(look_up)
    assert timings["config"].num_hidden_layers == 2 and timings["tokenizer"].chat_template
    assert any(p.endswith("config.json") for p in opened) and any(p.endswith("tokenizer.json") for p in opened)
    assert not [p for p in opened if p.endswith((".safetensors", ".bin"))], "a config look-up must never touch weights"
    # The bound: each look-up from the cache within a second (measured: milliseconds for the config).
    assert timings["config_s"] < 1.0 and timings["tokenizer_s"] < 1.0, timings


def test_weights_not_downloaded_is_a_clear_sentence_and_the_config_still_works(hub_cache, tiny_llama_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = repo_from_folder(REPO, tiny_llama_dir)
    write_hub_cache(hub_cache, repo, [n for n in repo.files if not n.endswith(".safetensors")])
    assert load_config(ModelSource("hub", REPO)).hidden_size == 64, "Budget / Decide / pre-flight work from the config alone"
    with pytest.raises(ModelLoadError, match="not downloaded yet.*download job"):
        load_model(ModelSource("hub", REPO))
    with pytest.raises(ModelLoadError, match="not in the local Hub cache"):
        load_config(ModelSource("hub", "someone/never-cached"))


def _custom_code_repo() -> HubRepo:
    code = ("from transformers import PretrainedConfig\n\n"
            "class MarkerConfig(PretrainedConfig):\n    model_type = 'wb-marker'\n\n"
            "    def __init__(self, marker=0, **kwargs):\n        self.marker = marker\n"
            "        self.loaded_by_remote_code = True\n        super().__init__(**kwargs)\n")
    config = {"model_type": "wb-marker", "marker": 7, "auto_map": {"AutoConfig": "configuration_marker.MarkerConfig"}}
    return HubRepo("someone/custom-code", {"config.json": json.dumps(config).encode(), "configuration_marker.py": code.encode()})


def test_remote_code_from_the_cache_is_used_only_when_ticked(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = _custom_code_repo()
    write_hub_cache(hub_cache, repo)
    with pytest.raises(ModelLoadError, match="Trust remote code"):
        load_config(ModelSource("hub", repo.repo_id))
    config = load_config(ModelSource("hub", repo.repo_id, trust_remote_code=True))
    assert config.loaded_by_remote_code and config.marker == 7


LOOKUP = """
import json, sys
from core.models import ModelLoadError, ModelSource, load_config
try:
    config = load_config(ModelSource("hub", sys.argv[1], trust_remote_code=sys.argv[2] == "1"))
    print(json.dumps({"remote_code": getattr(config, "loaded_by_remote_code", False)}))
except ModelLoadError as exc:
    print(json.dumps({"refused": str(exc)}))
"""


def _look_up_in_a_fresh_process(repo_id: str, trust: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", LOOKUP, repo_id, "1" if trust else "0"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_remote_code_is_fetched_from_the_hub_only_when_ticked(online):
    repo = _custom_code_repo()
    with HubServer([repo]) as server:
        online.setenv("HF_ENDPOINT", server.url)
        refused = _look_up_in_a_fresh_process(repo.repo_id, trust=False)
        assert "Trust remote code" in refused["refused"]
        assert server.fetched("/config.json") and not server.fetched("configuration_marker.py"), server.requests
        used = _look_up_in_a_fresh_process(repo.repo_id, trust=True)
        assert used == {"remote_code": True}
        assert server.fetched("configuration_marker.py")


# --------------------------------------------------------------------------- the download job (a real HTTP endpoint)


def _download(workspace_model: dict) -> Path:
    run_dir = runs.create_run(DownloadSpec(model=workspace_model))
    runs.launch(run_dir)
    return run_dir


def _rows(run_dir: Path) -> list[dict]:
    return runs.read_all_metrics(run_dir / runs.METRICS_FILE)


def test_download_job_fetches_weights_with_progress_and_never_pickles(workspace, online, hub_cache, tiny_llama_dir):
    repo = repo_from_folder(REPO, tiny_llama_dir)
    repo.files["pytorch_model.bin"] = b"pickled weights that must never be fetched" * 100
    with HubServer([repo]) as server:
        online.setenv("HF_ENDPOINT", server.url)
        run_dir = _download({"kind": "hub", "ref": REPO})
        status = runs.wait(run_dir, timeout=180)
        assert status.state == "succeeded", runs.log_tail(run_dir)
        assert not server.fetched("pytorch_model.bin") and server.fetched("model.safetensors")
    rows = [r for r in _rows(run_dir) if r.get("stage") == "download"]
    weights = len(repo.files["model.safetensors"])
    assert rows and rows[-1]["bytes_done"] == rows[-1]["bytes_total"] >= weights
    assert all(r["bytes_per_s"] >= 0 and "eta_s" in r for r in rows)
    result = runs.read_result(run_dir)
    assert result["finished"] and result["commit"] == repo.commit and result["resumed_bytes"] == 0
    snapshot = Path(result["folder"])
    assert (snapshot / "model.safetensors").read_bytes() == repo.files["model.safetensors"]
    online.setenv("HF_HUB_OFFLINE", "1")  # the Hub is gone: the cached model loads on its own
    loaded = load_model(ModelSource("hub", REPO))
    assert loaded.info.parameters > 0


def test_download_refuses_before_any_byte_when_the_disk_is_too_small(workspace, online, tiny_llama_dir):
    repo = repo_from_folder(REPO, tiny_llama_dir, claimed_sizes={"model.safetensors": 10**16})
    with HubServer([repo]) as server:
        online.setenv("HF_ENDPOINT", server.url)
        run_dir = _download({"kind": "hub", "ref": REPO})
        status = runs.wait(run_dir, timeout=120)
        assert status.state == "failed" and "Not enough disk space" in status.error
        assert not server.fetched("model.safetensors"), "refused before the first byte"


def test_interrupted_download_resumes_where_it_stopped(workspace, online, hub_cache, tiny_llama_dir):
    repo = repo_from_folder(REPO, tiny_llama_dir)
    weights = repo.files["model.safetensors"]
    with HubServer([repo], bytes_per_s=2_000_000) as server:
        online.setenv("HF_ENDPOINT", server.url)
        run_dir = _download({"kind": "hub", "ref": REPO})
        deadline = time.time() + 90
        while time.time() < deadline and not any(r.get("bytes_done", 0) > 2_000_000 for r in _rows(run_dir)):
            time.sleep(0.2)
        pid = runs.read_status(run_dir).pid
        os.killpg(os.getpgid(pid), signal.SIGKILL)  # a real interruption: no chance to clean up
        deadline = time.time() + 30
        while runs.read_status(run_dir).state != "failed" and time.time() < deadline:
            time.sleep(0.2)
        partial = list((hub_cache / f"models--{REPO.replace('/', '--')}" / "blobs").glob("*.incomplete"))
        assert len(partial) == 1 and 0 < partial[0].stat().st_size < len(weights)
        kept = partial[0].stat().st_size

        server.bytes_per_s = None
        runs.relaunch(run_dir)
        status = runs.wait(run_dir, timeout=180)
        assert status.state == "succeeded", runs.log_tail(run_dir)
        ranges = [r[2] for r in server.fetched("model.safetensors")]
        assert f"bytes={kept}-" in ranges, ranges
    result = runs.read_result(run_dir)
    assert result["resumed_bytes"] >= kept
    blob = Path(result["folder"]) / "model.safetensors"
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == hashlib.sha256(weights).hexdigest()


def _listing(*names: str):
    from core import hub

    return hub.RemoteRepo("mistral-like/model", "0" * 40, tuple(hub.RemoteFile(n, 10, n, None) for n in names))


def test_weight_files_are_what_transformers_loads_never_mistral_consolidated_beside_them():
    from core import hub

    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = {"weight_map": {"a.weight": shards[0], "b.weight": shards[1], "c.weight": shards[1]}}
    repo = _listing(*shards, hub.WEIGHT_INDEX, "consolidated.safetensors", "config.json")
    picked = [f.name for f in hub.weight_files(repo, read_json=lambda r, f: index)]
    assert picked == [hub.WEIGHT_INDEX, *shards]
    assert [f.name for f in hub.weight_files(_listing("consolidated.safetensors", "params.json"))] == ["consolidated.safetensors"]
    assert [f.name for f in hub.weight_files(_listing("model.safetensors", "consolidated.safetensors"))] == ["model.safetensors"]
    # a stray shard the index does not name is not fetched; an index naming a missing shard is a sentence, not a crash
    stray = _listing(*shards, "model-00003-of-00003.safetensors", hub.WEIGHT_INDEX)
    assert "model-00003-of-00003.safetensors" not in [f.name for f in hub.weight_files(stray, read_json=lambda r, f: index)]
    with pytest.raises(hub.HubError, match="model-00002-of-00002.safetensors"):
        hub.weight_files(_listing(shards[0], hub.WEIGHT_INDEX), read_json=lambda r, f: index)


def _sharded_with_consolidated(tiny_llama_dir: Path) -> HubRepo:
    """The tiny model as two shards + index (as transformers saves it) and a consolidated.safetensors claimed 14.5 GB."""
    from safetensors.torch import load_file, save

    weights = load_file(str(tiny_llama_dir / "model.safetensors"))
    names = sorted(weights)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2], "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    repo = repo_from_folder(REPO, tiny_llama_dir, claimed_sizes={"consolidated.safetensors": 14_500_000_000_000})
    repo.files["consolidated.safetensors"] = repo.files.pop("model.safetensors")
    for shard, keys in halves.items():
        repo.files[shard] = save({k: weights[k] for k in keys}, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in halves.items() for k in keys}}
    repo.files["model.safetensors.index.json"] = json.dumps(index).encode()
    return repo


def test_download_of_a_mistral_style_repo_fetches_the_shards_the_index_names_and_not_consolidated(workspace, online, tiny_llama_dir):
    repo = _sharded_with_consolidated(tiny_llama_dir)
    with HubServer([repo]) as server:
        online.setenv("HF_ENDPOINT", server.url)
        run_dir = _download({"kind": "hub", "ref": REPO})
        status = runs.wait(run_dir, timeout=180)
        assert status.state == "succeeded", runs.log_tail(run_dir)  # the disk check counted only the selected files
        assert not server.fetched("consolidated.safetensors")
        assert server.fetched("model-00001-of-00002.safetensors") and server.fetched("model-00002-of-00002.safetensors")
        assert len(server.fetched("model.safetensors.index.json")) == 1, "the index is read once, then found in the cache"
    result = runs.read_result(run_dir)
    assert result["bytes"] == sum(len(v) for k, v in repo.files.items() if k != "consolidated.safetensors"), "every file but that one"
    online.setenv("HF_HUB_OFFLINE", "1")
    assert load_model(ModelSource("hub", REPO)).info.parameters > 0


def test_gated_and_unknown_models_fail_with_a_sentence_to_act_on(workspace, online, tiny_llama_dir):
    gated = repo_from_folder("meta-like/gated-model", tiny_llama_dir, gated=True)
    with HubServer([gated]) as server:
        online.setenv("HF_ENDPOINT", server.url)
        locked = _download({"kind": "hub", "ref": gated.repo_id})
        unknown = _download({"kind": "hub", "ref": "nobody/no-such-model"})
        locked_status, unknown_status = runs.wait(locked, timeout=120), runs.wait(unknown, timeout=120)
    assert locked_status.state == "failed" and "gated model" in locked_status.error and "HF_TOKEN" in locked_status.error
    assert f"{server.url}/{gated.repo_id}" in locked_status.error, "where to accept the licence"
    assert unknown_status.state == "failed" and "No model 'nobody/no-such-model' on the Hub" in unknown_status.error


def test_a_train_job_on_a_hub_model_downloads_it_as_its_first_stage(workspace, online, tiny_llama_dir, tmp_path, jobs_inline):
    from core.train.spec import TrainSpec

    repo = repo_from_folder(REPO, tiny_llama_dir)
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Say {w}"}, {"role": "assistant", "content": w}]}) + "\n"
                            for w in ("yes", "no", "maybe", "never")))
    with HubServer([repo]) as server:
        online.setenv("HF_ENDPOINT", server.url)
        spec = TrainSpec(model={"kind": "hub", "ref": REPO}, dataset=str(data), max_steps=1, batch_size=2, max_length=64,
                         eval_fraction=0.0, eval_on_start=False, lora_r=4, save_steps=100)
        run_dir = runs.create_run(spec)
        runs.launch(run_dir)  # its worker runs in this process (jobs_inline): the worker process is not what this tests
        status = runs.wait(run_dir, timeout=300)
        assert status.state == "succeeded", runs.log_tail(run_dir)
    rows = _rows(run_dir)
    first_download = next(i for i, r in enumerate(rows) if r.get("stage") == "download")
    first_start = next(i for i, r in enumerate(rows) if r.get("event") == "start")
    assert first_download < first_start and rows[first_start - 1]["bytes_done"] == rows[first_start - 1]["bytes_total"]


MERGE_CHECK = """
import json, sys
from core.merge.config import export_yaml
from core.merge.preflight import inspect_model
from core.merge.spec import MergeSpec
from core.models import ModelSource, hub_weights_present

source = ModelSource("hub", sys.argv[1])
facts = inspect_model(source)
spec = MergeSpec(method="linear", base={}, models=[{"source": source.as_dict(), "weight": 0.5},
                                                   {"source": {"kind": "local", "ref": sys.argv[2]}, "weight": 0.5}])
print(json.dumps({"parameters": facts.parameters, "tensors": len(facts.shapes), "yaml": export_yaml(spec),
                  "downloaded": hub_weights_present(source)}))
"""


def test_merge_preflight_and_yaml_of_a_hub_model_read_only_configs_and_weight_headers(online, tiny_llama_dir):
    from safetensors.torch import load_file

    repo = repo_from_folder(REPO, tiny_llama_dir)
    expected = sum(t.numel() for t in load_file(str(tiny_llama_dir / "model.safetensors")).values())
    with HubServer([repo]) as server:
        online.setenv("HF_ENDPOINT", server.url)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, "-c", MERGE_CHECK, REPO, str(tiny_llama_dir)], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        weight_reads = server.fetched("model.safetensors")
    assert result["parameters"] == expected and not result["downloaded"]
    assert f"model: {REPO}" in result["yaml"], "the exported YAML names the Hub id, so mergekit-yaml fetches it anywhere"
    assert weight_reads and all(r[2].startswith("bytes=") for r in weight_reads), "only range reads of the header"
    assert sum(int(r[2].split("-")[1]) + 1 for r in weight_reads if r[2].split("-")[1]) < len(repo.files["model.safetensors"]) // 4


# --------------------------------------------------------------------------- one cache, several downloads, hostile names (issue 25)


def _blobs(repo_id: str) -> Path:
    from core import hub

    return hub.repo_folder(repo_id) / "blobs"


def _fetch_in_process(repo_id: str, revision: str = ""):
    """The download job's steps (core.download.job.fetch) without a worker: listing, selection, disk check, download."""
    from core import hub
    from core.download.job import files_to_fetch

    repo = hub.remote_repo(repo_id, revision)
    files = files_to_fetch(repo, remote_code=False)
    hub.check_disk_space(repo, files)
    return hub.download(repo, files, revision=revision)


def _small_model(repo_id: str, weight_bytes: int = 300_000, **kwargs) -> HubRepo:
    import random

    weights = random.Random(repo_id).randbytes(weight_bytes)  # LFS in the listing (sha256); config.json is a plain git blob
    return HubRepo(repo_id, {"config.json": b'{"model_type": "llama", "hidden_size": 64}\n', "model.safetensors": weights}, **kwargs)


def test_two_downloads_of_one_model_in_two_processes_leave_one_intact_file(workspace, online, hub_cache):
    repo = _small_model("org/two-at-once", weight_bytes=4 * CHUNK_BYTES + 80)
    weights = repo.files["model.safetensors"]
    partial = hub_cache / "models--org--two-at-once" / "blobs" / (hashlib.sha256(weights).hexdigest() + ".incomplete")
    # every file body pauses after its first MB until released: the first process is mid-file when the second starts
    with HubServer([repo], hold_after=CHUNK_BYTES) as server:
        online.setenv("HF_ENDPOINT", server.url)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        started = time.time()

        def cli() -> subprocess.Popen:
            return subprocess.Popen([sys.executable, "-m", "core.download", repo.repo_id], cwd=ROOT, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        first = cli()
        _until(lambda: partial.is_file() and partial.stat().st_size >= CHUNK_BYTES, 60, "the first download's partial file")
        second = cli()

        def second_waits_or_fetches() -> bool:  # today: waits on the blob's lock; before the fix: fetched the same file
            logs = [p.read_text() for p in (workspace / "runs").glob("*/" + runs.LOG_FILE)]
            return any("waiting: another download" in text for text in logs) or len(server.fetched("model.safetensors")) >= 2

        _until(second_waits_or_fetches, 60, "the second download to reach model.safetensors")
        server.release.set()
        outcomes = [(p.communicate(timeout=120)[1], p.returncode)[::-1] for p in (first, second)]
        elapsed = time.time() - started
    blob = hub_cache / "models--org--two-at-once" / "snapshots" / repo.commit / "model.safetensors"
    assert blob.is_file() and blob.read_bytes() == weights, f"{blob.stat().st_size if blob.exists() else 'no'} bytes for {len(weights)}"
    assert not partial.exists()
    run_dirs = [Path(err.split("run folder: ")[1].splitlines()[0].strip()) for _, err in outcomes]
    for (code, err), run_dir in zip(outcomes, run_dirs):
        assert code == 0 and runs.read_status(run_dir).state == "succeeded", runs.log_tail(run_dir) + err[-2000:]
    assert len(server.fetched("model.safetensors")) == 1, "the second used the first one's file instead of fetching it again"
    results = [runs.read_result(run_dir) for run_dir in run_dirs]
    assert results[0]["waited_for"] == [] and results[1]["waited_for"] == ["model.safetensors"], results
    assert "waiting: another download of org/two-at-once is fetching model.safetensors" in runs.log_tail(run_dirs[1])
    assert Path(results[1]["folder"]) == blob.parent and elapsed < 60


CHUNK_BYTES = 1 << 20  # core.hub.CHUNK: what one read of the body writes to the partial file


def _until(condition, seconds: float, what: str) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_an_over_long_partial_or_a_wrong_size_blob_is_discarded_and_fetched_again(online, hub_cache):
    from core import hub

    repo = _small_model("org/corrupted-cache")
    weights, config = repo.files["model.safetensors"], repo.files["config.json"]
    blobs = hub_cache / "models--org--corrupted-cache" / "blobs"
    weight_blob, config_blob = blobs / hashlib.sha256(weights).hexdigest(), blobs / repo.sibling("config.json")["blobId"]
    with HubServer([repo]) as server:
        online.setenv("HF_ENDPOINT", server.url)
        blobs.mkdir(parents=True)
        # what two interleaved appends left: longer than the file ("have >= size" must not end the attempt)
        Path(f"{weight_blob}.incomplete").write_bytes(weights + weights[:50_000])
        snapshot, _, finished = _fetch_in_process(repo.repo_id)
        assert finished and (snapshot / "model.safetensors").read_bytes() == weights
        assert [r[2] for r in server.fetched("model.safetensors")] == [""], "fetched again from byte 0"

        # a blob already renamed into place at the wrong size is a corrupted cache entry, not a finished file
        weight_blob.write_bytes(weights[:1000])
        snapshot, progress, finished = _fetch_in_process(repo.repo_id)
        assert finished and (snapshot / "model.safetensors").read_bytes() == weights and progress.resumed_bytes < len(weights)

        # a plain (non-LFS) file's partial of the right length but the wrong bytes fails its git blob id and is removed
        config_blob.unlink()
        Path(f"{config_blob}.incomplete").write_bytes(b"x" * len(config))
        with pytest.raises(hub.HubError, match="config.json: the downloaded file does not match its git blob id"):
            _fetch_in_process(repo.repo_id)
        assert not config_blob.exists() and not Path(f"{config_blob}.incomplete").exists()
        snapshot, _, finished = _fetch_in_process(repo.repo_id)
        assert finished and (snapshot / "config.json").read_bytes() == config


def test_a_revision_with_slashes_downloads_and_bad_revisions_are_refused_by_name(online, hub_cache):
    from core import hub

    repo = _small_model("org/with-a-pr")
    with HubServer([repo]) as server:
        online.setenv("HF_ENDPOINT", server.url)
        snapshot, _, finished = _fetch_in_process(repo.repo_id, "refs/pr/1")
        assert finished and (snapshot / "model.safetensors").read_bytes() == repo.files["model.safetensors"]
        assert (hub_cache / "models--org--with-a-pr" / "refs" / "refs" / "pr" / "1").read_text() == repo.commit
        assert hub.cached_snapshot(repo.repo_id, "refs/pr/1") == snapshot, "found again offline, as huggingface_hub reads refs/"
        served = len(server.requests)
        for bad in ("../../../outside", "/etc/passwd", "main..dev", "refs//pr/1", "refs/pr/1/", ".hidden", "v1 final", "x.lock", "a\\b"):
            with pytest.raises(hub.HubError, match=f"Revision {re.escape(repr(bad))} is not a branch, tag or commit name"):
                _fetch_in_process(repo.repo_id, bad)
            with pytest.raises(ValueError, match="model.revision: Revision"):
                DownloadSpec(model={"kind": "hub", "ref": repo.repo_id, "revision": bad})
        assert len(server.requests) == served, "refused before any request"
    for good in ("main", "v1.0", "refs/pr/1", "release/2024-06_rc+1", repo.commit):
        assert hub.check_revision(good) == good


HOSTILE = "../../../outside"  # from blobs/ or snapshots/, three levels up is the test's tmp_path, beside the cache


@pytest.mark.parametrize("where", ["file name", "etag of a plain file", "sha256 of an LFS file", "commit"])
def test_hostile_names_in_a_listing_are_refused_and_nothing_is_written_outside_the_cache(online, hub_cache, tmp_path, where):
    from core import hub

    repo = _small_model("org/hostile")
    if where == "file name":
        repo.files["../" + HOSTILE + "/config.json"] = b"{}"  # from snapshots/<commit>/: four levels up
        offending = "../" + HOSTILE + "/config.json"
    elif where == "etag of a plain file":
        repo.listing["config.json"] = {"blobId": HOSTILE}
        offending = HOSTILE
    elif where == "sha256 of an LFS file":
        repo.listing["model.safetensors"] = {"lfs": {"sha256": HOSTILE}}
        offending = HOSTILE
    else:
        repo.commit = HOSTILE
        offending = HOSTILE

    def outside() -> set[Path]:
        return {p for p in tmp_path.rglob("*") if hub_cache not in p.parents and p != hub_cache}

    before = outside()
    with HubServer([repo]) as server:
        online.setenv("HF_ENDPOINT", server.url)
        with pytest.raises(hub.HubError, match=re.escape(repr(offending))):
            _fetch_in_process(repo.repo_id)
        assert not [r for r in server.requests if "/resolve/" in r[1]], "refused before any file was fetched"
    assert outside() == before


def test_a_download_waiting_on_another_ones_blob_says_so_and_a_stop_ends_the_wait(online, hub_cache):
    from core import hub
    from core.download.job import files_to_fetch
    from core.locks import file_lock

    repo = _small_model("org/held-elsewhere")
    with HubServer([repo]) as server:
        online.setenv("HF_ENDPOINT", server.url)
        remote = hub.remote_repo(repo.repo_id)
        files = files_to_fetch(remote, remote_code=False)
        weights = next(f for f in files if f.name == "model.safetensors")
        waited: list[str] = []
        with file_lock(hub.cache_dir() / ".locks" / "models--org--held-elsewhere" / f"{weights.etag}.lock"):  # another process
            started = time.time()
            _, progress, finished = hub.download(remote, files, should_stop=lambda: time.time() - started > 0.3,
                                                 on_wait=lambda f: waited.append(f.name))
        assert not finished and waited == progress.waited_for == ["model.safetensors"]
        assert not server.fetched("model.safetensors"), "nothing fetched while the other holder had the blob"
        _, progress, finished = hub.download(remote, files)  # the lock is free again: no wait
        assert finished and progress.waited_for == [] and len(server.fetched("model.safetensors")) == 1


def test_file_names_from_a_listing_are_plain_paths_inside_the_repository():
    from core import hub

    for bad in ("/tmp/pwned.txt", "../x", "a/../../x", "a//b", "./config.json", "a\\..\\b", "a/b/", "", "tab\there", "nul\x00"):
        with pytest.raises(hub.HubError, match=f"names a file {re.escape(repr(bad))}, which is not a safe file name"):
            hub.check_file_name("org/m", bad)
    for good in ("config.json", "onnx/model.onnx", "2_Dense/config.json", "weird name é.json", "..hidden-but-a-name"):
        assert hub.check_file_name("org/m", good) == good
