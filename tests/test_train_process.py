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
            '{"rank": %d, "state": "%s", "error": "boom on rank %d", "finished_at": 1}' % (rank, "failed" if rank == 0 else "succeeded", rank))
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
    assert env["MASTER_ADDR"] == "127.0.0.1" and env["PET_LOCAL_ADDR"] == "127.0.0.1", "torchrun's --local-addr: workers reach the store on loopback"
    assert env["GLOO_SOCKET_IFNAME"] == lo and env["NCCL_SOCKET_IFNAME"] == lo
    script = command_script(spec, tmp_path / "run")
    assert "export GLOO_SOCKET_IFNAME=" + lo in script and "export PET_LOCAL_ADDR=127.0.0.1" in script
    two_nodes = TrainSpec(model={"kind": "local", "ref": str(tiny_llama_dir)}, processes_per_node=2, num_nodes=2, rendezvous_host="10.0.0.1")
    assert one_node_env(two_nodes) == {}, "multi-node runs listen where the other nodes reach them (README)"


def _kill_leftovers(run_dir) -> None:
    """If the run hangs (the bug this test guards against), end its worker and ranks so the test leaves nothing behind."""
    import os
    import signal

    from core import runs
    from core.train.rank import read_rank_records

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
    from core.train.rank import read_rank_records

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}) + "\n"
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
