"""Issue 25, the training process: trackio's project, packing at scale, the dead-rank diagnosis per attempt,
loopback-only process groups, stop before the process group exists, and the Unsloth -> hf fallback in a fresh process."""
from __future__ import annotations

from core.train.spec import TrainSpec


def test_trackio_gets_the_project_we_set(tmp_path, tiny_llama_dir):
    # transformers' TrackioCallback calls trackio.init(project=args.project): the args we build must carry ours
    from core.train.tracking import PROJECT, resolve
    from core.train.trainer import training_arguments

    spec = TrainSpec(model={"kind": "local", "ref": str(tiny_llama_dir)}, report_to=["trackio"])
    args = training_arguments(spec, tmp_path, device="cpu", bf16=False, fp16=False, has_eval=False, report_to=None)
    assert args.project == PROJECT != "huggingface"
    _, env, _ = resolve(["trackio"], tmp_path, "run")
    assert env.get("TRACKIO_PROJECT", PROJECT) == args.project


def _torchrun_report(rank: int, exitcode: int) -> str:
    return (f"torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n====\nRoot Cause (first observed failure):\n[0]:\n"
            f"  time      : 2026-12-07_10:00:00\n  host      : box\n  rank      : {rank} (local_rank: {rank})\n"
            f"  exitcode  : {exitcode} (pid: 4242)\n  error_file: <N/A>\n====\n")


def test_the_dead_rank_diagnosis_reads_only_the_current_attempt(tmp_path):
    from core.runs.status import LOG_FILE
    from core.train.supervisor import _failure, attempt_log_offset

    run_dir = tmp_path / "run"
    (run_dir / "ranks").mkdir(parents=True)
    log = run_dir / LOG_FILE
    log.write_text("attempt 1\n" + _torchrun_report(1, -9) + "resumed\n")  # the first attempt: rank 1 was killed
    offset = attempt_log_offset(run_dir)
    with open(log, "a") as handle:  # the second attempt: rank 0 exits with 1
        handle.write("launching again\n" + _torchrun_report(0, 1))
    spec = TrainSpec(processes_per_node=2)
    message = _failure(run_dir, spec, 1, offset)
    assert message.startswith("Rank 0 of 2 exited with code 1"), message
    # an attempt whose launcher printed no report: the earlier attempt's rank 1 is not blamed either
    offset = attempt_log_offset(run_dir)
    with open(log, "a") as handle:
        handle.write("launching a third time\nthe launcher died quietly\n")
    for rank in (0, 1):
        (run_dir / "ranks" / f"rank-{rank}.json").write_text(
            '{"rank": %d, "state": "%s", "error": "boom on rank %d", "finished_at": 1}'
            % (rank, "failed" if rank == 0 else "succeeded", rank))
    message = _failure(run_dir, spec, 1, offset)
    assert message.startswith("Rank 0 of 2 failed: boom on rank 0"), message


def test_a_one_node_run_binds_loopback_only(tmp_path, tiny_llama_dir):
    from core.hardware import HardwareInfo
    from core.train.launchers import command_script, loopback_interface, one_node_env
    from core.train.supervisor import _rank_env

    hardware = HardwareInfo(device="cpu", device_name="cpu", gpu_count=0, total_memory_gb=0.0, free_memory_gb=0.0, bf16=False,
                            cpu_cores=2, system_ram_gb=16.0, bnb_4bit=False, unsloth=False)
    spec = TrainSpec(model={"kind": "local", "ref": str(tiny_llama_dir)}, processes_per_node=2)
    env = _rank_env(spec, hardware)
    lo = loopback_interface()
    assert lo in {name for _, name in __import__("socket").if_nameindex()}
    assert env["MASTER_ADDR"] == "127.0.0.1" and env["PET_LOCAL_ADDR"] == "127.0.0.1", ("torchrun's --local-addr: workers reach the "
                                                                                        "store on loopback")
    assert env["GLOO_SOCKET_IFNAME"] == lo and env["NCCL_SOCKET_IFNAME"] == lo
    script = command_script(spec, tmp_path / "run")
    assert "export GLOO_SOCKET_IFNAME=" + lo in script and "export PET_LOCAL_ADDR=127.0.0.1" in script
    two_nodes = TrainSpec(model={"kind": "local", "ref": str(tiny_llama_dir)}, processes_per_node=2, num_nodes=2,
                          rendezvous_host="10.0.0.1")
    assert one_node_env(two_nodes) == {}, "multi-node runs listen where the other nodes reach them (README)"


def _kill_leftovers(run_dir) -> None:
    """If the run hangs (the bug this test guards against), end its worker and ranks so the test leaves nothing behind."""
    import os
    import signal

    from core import runs
    from core.train.distributed import read_rank_records

    pids = [r.get("pid") for r in read_rank_records(run_dir)] + [runs.read_status(run_dir).pid]
    for pid in filter(None, pids):
        for send in (lambda p: os.killpg(p, signal.SIGKILL), lambda p: os.kill(p, signal.SIGKILL)):
            try:
                send(pid)
            except (ProcessLookupError, PermissionError):
                pass


@__import__("pytest").mark.slow
def test_stop_while_a_rank_prepares_data_ends_the_run_stopped_in_seconds(workspace, tiny_llama_dir, tmp_path):
    # Rank 1 is held (SIGSTOP) before its data preparation; rank 0 gets past every stop check into init_process_group,
    # where it waits for rank 1. Stop arrives then, and rank 1 resumes: it sees the stop file and leaves, so without an
    # agreement rank 0 would wait ddp_timeout (30 minutes) for a peer that never joins.
    import json
    import os
    import signal
    import time

    from core import runs
    from core.train.distributed import read_rank_records

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                     {"role": "assistant", "content": f"a{i}"}]}) + "\n"
                            for i in range(32)))
    spec = TrainSpec(model={"kind": "local", "ref": str(tiny_llama_dir)}, dataset=str(data), max_steps=4, batch_size=2, max_length=64,
                     eval_fraction=0.0, lora_r=4, save_steps=100, logging_steps=1, processes_per_node=2)
    run_dir = runs.create_run(spec)
    runs.launch(run_dir)
    try:
        deadline = time.time() + 240
        records: dict = {}
        while 1 not in records:
            assert time.time() < deadline and runs.read_status(run_dir).is_active, runs.log_tail(run_dir)
            records = {r["rank"]: r for r in read_rank_records(run_dir)}
            time.sleep(0.05)
        os.kill(records[1]["pid"], signal.SIGSTOP)
        while records.get(0, {}).get("message") != "loading the model":
            assert time.time() < deadline and runs.read_status(run_dir).is_active, runs.log_tail(run_dir)
            records = {r["rank"]: r for r in read_rank_records(run_dir)}
            time.sleep(0.1)
        time.sleep(2.0)  # rank 0 loads the tiny model and enters init_process_group
        asked = time.time()
        assert runs.stop(run_dir)
        os.kill(records[1]["pid"], signal.SIGCONT)
        status = runs.wait(run_dir, timeout=60)
        took = time.time() - asked
    finally:
        _kill_leftovers(run_dir)
    assert status.state == "stopped", (status.state, status.error, runs.log_tail(run_dir))
    assert took < 30, f"the stop took {took:.0f} s"
    assert status.result["global_step"] == 0 and not (run_dir / "adapter").exists()
    assert {r["rank"]: r["state"] for r in read_rank_records(run_dir)} == {0: "stopped", 1: "stopped"}


PROBE_RANK = '''
import json, os, sys
import torch.distributed as dist

dist.init_process_group("gloo")
dist.barrier()
if dist.get_rank() == 0:
    print("LISTENING " + json.dumps(sys.modules["listening"].listening([os.getpid(), os.getppid()])), flush=True)
dist.barrier()
dist.destroy_process_group()
'''


def listening(pids: list[int]) -> list[str]:
    """The addresses the processes `pids` listen on (TCP, from /proc)."""
    import ipaddress
    import os

    inodes = set()
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in open(table).read().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                raw, port = fields[1].split(":")
                packed = b"".join(bytes.fromhex(raw[i:i + 8])[::-1] for i in range(0, len(raw), 8))
                found.append(f"{ipaddress.ip_address(packed[:width])}:{int(port, 16)}")
    return found


def test_a_one_node_launch_listens_on_loopback_only(tmp_path, tiny_llama_dir):
    # The real launch argv and environment of a one-node run, with a probe in place of core.train.rank: after the
    # process group exists, the launcher's c10d store and rank 0's gloo sockets listen on 127.0.0.1 only.
    import subprocess
    import sys as _sys

    from conftest import ROOT
    from core.hardware import HardwareInfo
    from core.train.launchers import launch_argv
    from core.train.supervisor import _rank_env

    if not _sys.platform.startswith("linux"):
        __import__("pytest").skip("reads /proc")
    hardware = HardwareInfo(device="cpu", device_name="cpu", gpu_count=0, total_memory_gb=0.0, free_memory_gb=0.0, bf16=False,
                            cpu_cores=2, system_ram_gb=16.0, bnb_4bit=False, unsloth=False)
    spec = TrainSpec(model={"kind": "local", "ref": str(tiny_llama_dir)}, processes_per_node=2)
    argv = launch_argv(spec, tmp_path / "run")
    probe = tmp_path / "probe.py"
    probe.write_text("import sys, importlib.util\nspec = importlib.util.spec_from_file_location('listening', %r)\n"
                     "module = importlib.util.module_from_spec(spec); sys.modules['listening'] = module; spec.loader.exec_module(module)\n"
                     % __file__ + PROBE_RANK)
    at = argv.index("core.train.rank")
    argv = argv[:at - 1] + [str(probe)]
    done = subprocess.run(argv, cwd=ROOT, env=_rank_env(spec, hardware), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("LISTENING "))
    addresses = __import__("json").loads(line.split(" ", 1)[1])
    assert addresses, "the probe found the store's and gloo's listening sockets"
    assert all(a.startswith("127.0.0.1:") for a in addresses), addresses


def _best_fit_decreasing(lengths: list[int], max_length: int) -> list[list[int]]:
    """The definition, one scan over every sequence per row (quadratic): longest row first into the fullest
    sequence that still has room, ties to the earliest sequence."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: lengths[k], reverse=True):
        best = min((k for k, r in enumerate(room) if r >= lengths[i]), key=lambda k: room[k], default=None)
        if best is None:
            bins.append([i])
            room.append(max_length - lengths[i])
        else:
            bins[best].append(i)
            room[best] -= lengths[i]
    return bins


def test_packing_is_best_fit_decreasing_and_scales(tmp_path):
    import random
    import time

    from core.data.masking import pack_bins, packing_preview
    from core.train.data import pack_features

    rng = random.Random(0)
    for _ in range(200):
        max_length = rng.choice([8, 16, 64, 512])
        lengths = [rng.randint(1, max_length + 3) for _ in range(rng.randint(0, 200))]
        assert pack_bins(lengths, max_length) == _best_fit_decreasing(lengths, max_length), (max_length, lengths)
    # 100k rows: the quadratic packing needs minutes for this (20k rows took 22 s here, 25x that for 5x the rows)
    lengths = [rng.randint(1, 200) for _ in range(100_000)]
    features = [{"input_ids": [7] * n, "labels": [7] * n} for n in lengths]
    started = time.perf_counter()
    packed = pack_features(features, 256)
    preview = packing_preview(lengths, 256)
    took = time.perf_counter() - started
    assert took < 30, f"packing 100k rows took {took:.1f} s"
    assert preview.n_sequences == len(packed) and sum(len(p["input_ids"]) for p in packed) == sum(lengths)
    assert all(len(p["input_ids"]) <= 256 for p in packed) and preview.fill > 0.99


def test_the_data_check_runs_in_the_background_keyed_by_the_data(tmp_path, tiny_llama_dir, monkeypatch):
    import json
    import threading
    import time

    import core.train.data
    from core.train.preflight import DataChecks

    release = threading.Event()
    calls = []
    real = core.train.data.prepare_data

    def slow_prepare(spec, tokenizer, **kwargs):
        calls.append(spec.max_length)
        release.wait(30)  # a large dataset: tokenizing takes a while
        return real(spec, tokenizer, **kwargs)

    monkeypatch.setattr(core.train.data, "prepare_data", slow_prepare)
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                     {"role": "assistant", "content": f"a{i}"}]}) + "\n"
                            for i in range(8)))
    spec = TrainSpec(model={"kind": "local", "ref": str(tiny_llama_dir)}, dataset=str(data), max_length=128, eval_fraction=0.0)
    checks = DataChecks()
    started = time.perf_counter()
    assert checks.result(spec) is None, "still tokenizing: the caller (the page's script thread) is not held"
    assert time.perf_counter() - started < 1.0
    queued = TrainSpec(**{**spec.__dict__, "max_length": 112})
    latest = TrainSpec(**{**spec.__dict__, "max_length": 96})
    assert checks.result(queued) is None and checks.result(latest) is None
    release.set()
    answer = checks.result(latest, wait=60)
    assert answer is not None and answer.rows == 8 and answer.refusal is None
    assert calls == [128, 96], "the check the form moved past while it waited in the queue was cancelled"
    same_data = TrainSpec(**{**latest.__dict__, "learning_rate": 1e-3})  # a training-only field: the same answer, no new check
    assert checks.result(same_data) is answer and calls == [128, 96]


def test_the_train_page_shows_checking_the_data_while_it_runs(workspace, tiny_llama_dir, monkeypatch):
    import threading

    from streamlit.testing.v1 import AppTest

    import core.train.data
    import core.train.preflight
    from conftest import ROOT

    release = threading.Event()
    real = core.train.data.prepare_data
    monkeypatch.setattr(core.train.data, "prepare_data", lambda *a, **k: release.wait(60) and real(*a, **k))
    monkeypatch.setattr(core.train.preflight, "DATA_CHECKS", core.train.preflight.DataChecks())
    monkeypatch.setattr(core.train.preflight, "DATA_CHECK_WAIT_S", 0.1)
    at = AppTest.from_file(str(ROOT / "app_pages" / "train.py"), default_timeout=120)
    at.session_state["active_model"] = {"kind": "local", "ref": str(tiny_llama_dir)}
    at.run()
    assert not at.exception
    assert any("checking the data" in i.value for i in at.info), [i.value for i in at.info]
    assert at.button(key="train_start").disabled and "Training rows" not in {m.label for m in at.metric}
    release.set()
    core.train.preflight.DATA_CHECKS._futures[next(iter(core.train.preflight.DATA_CHECKS._futures))].result(60)
    at.run()
    assert not at.exception and int({m.label: m.value for m in at.metric}["Training rows"]) == 270
    assert not at.button(key="train_start").disabled
