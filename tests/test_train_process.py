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
