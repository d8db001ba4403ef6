"""Beyond one process, without training: the spec's distribution section, the refused combinations, and the generated
launch files read back by the tools that consume them (accelerate's launcher, torchrun's parser, DeepSpeed's config
model, bash, Python)."""
from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.hardware import HardwareInfo
from core.train import distributed
from core.train.distributed import (
    RankInfo,
    deepspeed_config,
    distribution_refusal,
    fsdp_trainer_config,
    trainer_distribution_kwargs,
)
from core.train.launchers import launch_files, node_commands, torchrun_args, write_launch_files
from core.train.spec import TrainSpec
from core.train.supervisor import dead_rank, root_cause


def _hw(device: str = "cpu", **changes) -> HardwareInfo:
    fields = dict(device=device, device_name=device.upper(), gpu_count=8 if device == "cuda" else 0, total_memory_gb=80.0,
                  free_memory_gb=79.0, bf16=device == "cuda", cpu_cores=2 if device == "cpu" else 64, system_ram_gb=512.0,
                  bnb_4bit=True, unsloth=False)
    fields.update(changes)
    return HardwareInfo(**fields)


CPU, GPU8 = _hw("cpu"), _hw("cuda")


# ---------------------------------------------------------------- the spec section


def test_distribution_defaults_are_a_plain_single_process_run():
    spec = TrainSpec()
    assert (spec.processes_per_node, spec.num_nodes, spec.distributed_strategy, spec.launcher) == (1, 1, "ddp", "torchrun")
    assert spec.world_size == 1 and not spec.uses_launcher and trainer_distribution_kwargs(spec, "cpu") == {}


def test_world_size_and_global_batch():
    spec = TrainSpec(processes_per_node=4, num_nodes=2, batch_size=3, gradient_accumulation=2)
    assert spec.world_size == 8 and spec.global_batch == 48 and spec.uses_launcher
    assert TrainSpec(distributed_strategy="fsdp").uses_launcher, "FSDP on one GPU (with offload) still goes through a launcher"


@pytest.mark.parametrize("fields, message", [
    (dict(fsdp_cpu_offload=True), "fsdp_cpu_offload: applies only with distributed_strategy fsdp"),
    (dict(zero_offload="optimizer"), "zero_offload: applies only with distributed_strategy deepspeed"),
    (dict(distributed_strategy="deepspeed", zero_stage=2, zero_offload="optimizer_and_params"),
     "zero_offload: weights can be offloaded only with zero_stage 3"),
    (dict(processes_per_node=2, fault_injection="kill@2:2"), "fault_injection: rank 2 does not exist in a run of 2 processes"),
    (dict(distributed_strategy="megatron"), "distributed_strategy: 'megatron' is not one of ddp, fsdp, deepspeed"),
    (dict(zero_stage=4), "zero_stage: 4 is not one of 1, 2, 3"),
    (dict(processes_per_node=0), "processes_per_node: 0 is below the minimum 1"),
])
def test_spec_refuses_inconsistent_distribution_fields(fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainSpec(**fields)


def test_distribution_fields_round_trip_through_yaml_and_the_cli(tmp_path):
    from core.runs.spec import spec_to_yaml
    from core.train.__main__ import main

    spec = TrainSpec(processes_per_node=2, distributed_strategy="deepspeed", zero_stage=3, zero_offload="optimizer_and_params",
                     launcher="accelerate", fault_injection="kill@3:1")
    again = TrainSpec.from_dict(yaml.safe_load(spec_to_yaml(spec)))
    assert again == spec and again.fault() == ("kill", 3) and again.fault_rank == 1
    path = tmp_path / "spec.yaml"
    path.write_text(spec_to_yaml(spec))
    result = subprocess.run([sys.executable, "-m", "core.train", str(path), "--processes_per_node", "4", "--dry-run"],
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["processes_per_node"] == 4 and printed["zero_stage"] == 3 and printed["launcher"] == "accelerate"
    assert main  # the CLI entry point is importable (its options are generated from the same fields)


def test_rank_info_reads_torchrun_and_ray_environments():
    torchrun = {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4", "GROUP_RANK": "1"}
    assert RankInfo.from_env(torchrun) == RankInfo(rank=5, local_rank=1, world_size=8, local_world_size=4, node_rank=1)
    ray = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "NODE_RANK": "1"}
    assert RankInfo.from_env(ray).node_rank == 1 and not RankInfo.from_env(ray).is_main
    assert RankInfo.from_env({}) == RankInfo() and not RankInfo().distributed


# ---------------------------------------------------------------- refused, with the reason


@pytest.mark.parametrize("fields, hardware, reason", [
    (dict(processes_per_node=2, distributed_strategy="fsdp"), CPU, "FSDP needs CUDA GPUs: on a CPU, transformers / accelerate turn FSDP"),
    (dict(distributed_strategy="fsdp", fsdp_cpu_offload=True), CPU, "into plain DDP without a word"),
    (dict(processes_per_node=2, distributed_strategy="deepspeed"), CPU, "DeepSpeed ZeRO needs CUDA GPUs here"),
    (dict(processes_per_node=3), CPU, "processes_per_node is 3 but this machine has 2 CPU cores"),
    (dict(processes_per_node=16), GPU8, "processes_per_node is 16 but this machine has 8 GPU(s)"),
    (dict(processes_per_node=2, num_nodes=2), GPU8, "This run spans 2 nodes: start it on every node"),
    (dict(processes_per_node=2), _hw("mps"), "Apple MPS has no multi-process training backend"),
    (dict(method="qlora", processes_per_node=2, distributed_strategy="deepspeed", zero_stage=3, zero_offload="optimizer_and_params"),
     GPU8, "QLoRA with ZeRO-3 weight offload is refused"),
])
def test_impossible_combinations_are_refused_with_the_reason(fields, hardware, reason):
    refusal = distribution_refusal(TrainSpec(**fields), hardware)
    assert refusal and reason in refusal


def test_combinations_that_work_are_not_refused():
    assert distribution_refusal(TrainSpec(processes_per_node=2), CPU) is None
    assert distribution_refusal(TrainSpec(processes_per_node=8, distributed_strategy="fsdp", fsdp_cpu_offload=True), GPU8) is None
    assert distribution_refusal(TrainSpec(distributed_strategy="deepspeed", zero_stage=3, zero_offload="optimizer_and_params"),
                                GPU8) is None
    assert distribution_refusal(TrainSpec(method="qlora", processes_per_node=2, distributed_strategy="deepspeed", zero_stage=3),
                                GPU8) is None
    multi = TrainSpec(processes_per_node=8, num_nodes=4)
    assert distribution_refusal(multi, GPU8, launching_here=False) is None, "previewed and written for the nodes, only not started here"


def test_qlora_with_zero3_is_refused_where_the_installed_stack_is_too_old(monkeypatch):
    real = distributed._installed
    monkeypatch.setattr(distributed, "_installed", lambda name: "0.9.0" if name == "peft" else real(name))
    spec = TrainSpec(method="qlora", processes_per_node=2, distributed_strategy="deepspeed", zero_stage=3)
    refusal = distribution_refusal(spec, GPU8)
    assert "QLoRA with DeepSpeed ZeRO-3 needs newer packages: peft 0.9.0 (needs >= 0.13.0)" in refusal
    assert distribution_refusal(TrainSpec(method="qlora", processes_per_node=2, distributed_strategy="deepspeed", zero_stage=2),
                                GPU8) is None
    monkeypatch.setattr(distributed, "_installed", lambda name: None if name == "deepspeed" else real(name))
    assert "DeepSpeed is not installed" in distribution_refusal(TrainSpec(distributed_strategy="deepspeed"), GPU8)


def test_unsloth_runs_ddp_but_is_refused_for_fsdp_and_deepspeed():
    from core.train.backends import choose_backend

    gpu = _hw("cuda", unsloth=True)
    backend, notes = choose_backend(TrainSpec(processes_per_node=2), gpu)
    assert backend.name == "unsloth", "Unsloth documents DDP through accelerate launch / torchrun"
    backend, notes = choose_backend(TrainSpec(processes_per_node=2, distributed_strategy="fsdp"), gpu)
    assert backend.name == "hf" and "documented multi-GPU path is DDP" in notes[0], "auto falls back visibly"
    with pytest.raises(ValueError, match="unsloth backend not used: Unsloth's documented multi-GPU path is DDP"):
        choose_backend(TrainSpec(backend="unsloth", processes_per_node=2, distributed_strategy="deepspeed"), gpu)


def test_the_preflight_shows_the_refusal_and_the_distribution(tmp_path, monkeypatch):
    from core.train import preflight

    monkeypatch.setattr(preflight, "memory_estimate", lambda spec, hw, **kwargs: (None, "no estimate in this test"))
    report = preflight.run_preflight(TrainSpec(processes_per_node=2, distributed_strategy="fsdp"), CPU)
    assert report.refusal and "FSDP needs CUDA GPUs" in report.refusal
    report = preflight.run_preflight(TrainSpec(processes_per_node=2), CPU)
    assert report.refusal is None and any("2 process(es)" in note for note in report.backend_notes)


# ---------------------------------------------------------------- what the trainer gets


def test_trainer_arguments_carry_the_strategy_unchanged():
    fsdp = TrainSpec(processes_per_node=4, distributed_strategy="fsdp", fsdp_sharding="shard_grad_op", fsdp_cpu_offload=True,
                     fsdp_wrap_policy="size", fsdp_min_params=5_000_000, gradient_checkpointing=True)
    kwargs = trainer_distribution_kwargs(fsdp, "cuda")
    assert kwargs["ddp_backend"] == "nccl" and kwargs["fsdp"] is True
    assert kwargs["fsdp_config"] == {"version": 2, "reshard_after_forward": False, "cpu_offload": True,
                                     "auto_wrap_policy": "SIZE_BASED_WRAP",
                                     "state_dict_type": "FULL_STATE_DICT", "cpu_ram_efficient_loading": True,
                                     "activation_checkpointing": True, "min_num_params": 5_000_000}
    ddp_cpu = trainer_distribution_kwargs(TrainSpec(processes_per_node=2), "cpu")
    assert ddp_cpu == {"ddp_backend": "gloo", "ddp_find_unused_parameters": False}
    zero = trainer_distribution_kwargs(TrainSpec(processes_per_node=2, distributed_strategy="deepspeed", zero_stage=1), "cuda")
    assert zero["deepspeed"]["zero_optimization"]["stage"] == 1


def test_transformers_accepts_the_fsdp_config():
    """TrainingArguments turns our fsdp_config into accelerate's FSDP plugin arguments (checked without a GPU)."""
    from transformers import TrainingArguments

    spec = TrainSpec(processes_per_node=2, distributed_strategy="fsdp", fsdp_sharding="full_shard", fsdp_cpu_offload=True)
    args = TrainingArguments.__new__(TrainingArguments)
    args.fsdp, args.fsdp_config, args.activation_checkpointing = True, fsdp_trainer_config(spec), False
    plugin = args._process_fsdp_args()
    assert plugin["fsdp_version"] == 2 and plugin["reshard_after_forward"] is True and plugin["cpu_offload"] is True
    assert plugin["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"


# ---------------------------------------------------------------- generated files, read back


def _accelerate_args(config_path: Path, run_dir: Path):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(config_path), "-m", "core.train.rank", str(run_dir)])
    args, _, _ = _validate_launch_command(args)
    return args


def test_accelerate_config_is_read_by_accelerates_own_launcher(tmp_path):
    run = tmp_path / "run"
    ddp = TrainSpec(processes_per_node=2)
    write_launch_files(ddp, run, CPU, port=29611)
    args = _accelerate_args(run / "launch" / "accelerate.yaml", run)
    assert (args.num_processes, args.num_machines, args.main_process_port, args.multi_gpu) == (2, 1, 29611, True)
    assert args.mixed_precision == "no" and args.module and args.training_script == "core.train.rank"

    fsdp = TrainSpec(processes_per_node=4, distributed_strategy="fsdp", fsdp_sharding="shard_grad_op", fsdp_cpu_offload=True)
    write_launch_files(fsdp, run, GPU8, port=29612)
    args = _accelerate_args(run / "launch" / "accelerate.yaml", run)
    assert args.use_fsdp and args.num_processes == 4 and args.mixed_precision == "bf16"
    assert args.fsdp_version == 2 and args.fsdp_reshard_after_forward is False and str(args.fsdp_offload_params).lower() == "true"

    zero = TrainSpec(processes_per_node=8, num_nodes=2, rendezvous_host="10.0.0.7", rendezvous_port=29400,
                     distributed_strategy="deepspeed", zero_stage=3, zero_offload="optimizer")
    write_launch_files(zero, run, GPU8)
    args = _accelerate_args(run / "launch" / "accelerate.yaml", run)
    assert args.use_deepspeed and (args.num_processes, args.num_machines) == (16, 2)
    assert (args.main_process_ip, args.main_process_port) == ("10.0.0.7", 29400) and args.zero3_init_flag is True
    assert Path(args.deepspeed_config_file) == run / "launch" / "deepspeed.json"


def test_deepspeed_config_is_valid_for_deepspeed_and_carries_the_spec():
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig  # requirements-dev.txt installs DeepSpeed (it builds on a CPU)

    spec = TrainSpec(processes_per_node=4, num_nodes=2, batch_size=3, gradient_accumulation=5, max_grad_norm=0.7,
                     distributed_strategy="deepspeed", zero_stage=3, zero_offload="optimizer_and_params")
    config = json.loads(launch_files(spec, "/runs/x", GPU8)["deepspeed.json"])
    assert config == deepspeed_config(spec)
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"], config["gradient_clipping"]) == (3, 5, 0.7)
    assert config["train_batch_size"] == 3 * 5 * 8, "DeepSpeed's rule: micro batch x accumulation x world size"
    zero = DeepSpeedZeroConfig(**{k: v for k, v in config["zero_optimization"].items() if v != "auto"})
    assert zero.stage == 3 and zero.offload_optimizer.device == "cpu" and zero.offload_param.device == "cpu"
    assert zero.gather_16bit_weights_on_model_save
    stage1 = DeepSpeedZeroConfig(**{k: v for k, v in deepspeed_config(TrainSpec(distributed_strategy="deepspeed", zero_stage=1))[
        "zero_optimization"].items() if v != "auto"})
    assert stage1.stage == 1 and stage1.offload_optimizer is None


def _torchrun(argv: list[str]):
    from torch.distributed.run import get_args_parser

    return get_args_parser().parse_args(argv)


def test_torchrun_commands_parse_with_torchruns_parser_per_node():
    spec = TrainSpec(processes_per_node=8, num_nodes=3, rendezvous_host="gpu-a.example", rendezvous_port=29555)
    commands = node_commands(spec, "/shared/runs/r1")
    assert len(commands) == 3
    for k, command in enumerate(commands):
        argv = shlex.split(command)
        assert argv[0] == "torchrun"
        args = _torchrun(argv[1:])
        assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("3", "8", k)
        assert (args.master_addr, args.master_port, args.module) == ("gpu-a.example", 29555, True)
        assert (args.training_script, args.training_script_args) == ("core.train.rank", ["/shared/runs/r1"])
    single = _torchrun(torchrun_args(TrainSpec(processes_per_node=2), "/runs/r2"))
    assert single.standalone and single.nproc_per_node == "2"


def test_multi_node_and_slurm_scripts_are_valid_bash_carrying_the_spec(tmp_path):
    spec = TrainSpec(processes_per_node=4, num_nodes=2, rendezvous_host="10.0.0.2", rendezvous_port=29777)
    files = write_launch_files(spec, tmp_path / "run", GPU8)
    for name in ("torchrun_node.sh", "slurm.sbatch", "command.sh"):
        check = subprocess.run(["bash", "-n", str(files[name])], capture_output=True, text=True)
        assert check.returncode == 0, f"{name}: {check.stderr}"
    node = files["torchrun_node.sh"].read_text()
    exec_line = next(line for line in node.splitlines() if line.startswith("exec "))
    argv = shlex.split(exec_line.replace('"$NODE_RANK"', "1"))
    args = _torchrun(argv[argv.index("torch.distributed.run") + 1:])
    assert (args.nnodes, args.nproc_per_node, args.node_rank, args.master_addr, args.master_port) == ("2", "4", 1, "10.0.0.2", 29777)

    slurm = files["slurm.sbatch"].read_text()
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)$", slurm, re.M))
    assert (directives["nodes"], directives["ntasks-per-node"], directives["gpus-per-node"]) == ("2", "1", "4")
    srun = next(line for line in slurm.splitlines() if line.startswith("srun "))
    srun = srun.replace("$SLURM_NNODES", "2").replace("$SLURM_JOB_ID", "77").replace("$head_node", "node-a")
    argv = shlex.split(srun)
    args = _torchrun(argv[argv.index("torch.distributed.run") + 1:])
    assert ((args.nnodes, args.nproc_per_node, args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id)
            == ("2", "4", "c10d", "node-a:29777", "77"))
    assert args.training_script_args == [str(tmp_path / "run")]


def test_ray_train_script_compiles_and_carries_the_scaling_config(tmp_path):
    spec = TrainSpec(processes_per_node=4, num_nodes=2)
    path = write_launch_files(spec, tmp_path / "run", GPU8)["ray_train.py"]
    module_spec = importlib.util.spec_from_file_location("ray_train_generated", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)  # top level imports only argparse and sys: Ray is needed only to run it
    assert (module.NUM_WORKERS, module.USE_GPU, module.BACKEND, module.RUN_DIR) == (8, True, "nccl", str(tmp_path / "run"))
    cpu = write_launch_files(TrainSpec(processes_per_node=2), tmp_path / "cpu", CPU)["ray_train.py"].read_text()
    assert "NUM_WORKERS = 2" in cpu and "USE_GPU = False" in cpu and "BACKEND = 'gloo'" in cpu
    if importlib.util.find_spec("ray") is not None:
        config = module.scaling_config()
        assert config.num_workers == 8 and config.use_gpu


# ---------------------------------------------------------------- which rank died


TORCHRUN_REPORT = """torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
core.train.rank FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-01_22:50:51
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 14279)  (SIGTERM)
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-01_22:50:51
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 14280)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 14280
============================================================"""


def test_the_dead_rank_is_the_launchers_root_cause_not_the_rank_it_shut_down():
    assert root_cause(TORCHRUN_REPORT) == (1, -9)
    records = [{"rank": 0, "state": "failed", "error": "Connection reset by peer", "finished_at": 2.0},
               {"rank": 1, "state": "running"}]
    assert dead_rank(records, 2, root_cause(TORCHRUN_REPORT))[:1] == (1,)
    assert dead_rank(records, 2, None)[0] == 1, "without a report: the rank that died without a final state"
    assert dead_rank(records[:1], 2, None)[0] == 1, "a rank that never wrote its record died first"
    failed = [{"rank": 0, "state": "failed", "finished_at": 5.0}, {"rank": 1, "state": "failed", "finished_at": 3.0}]
    assert dead_rank(failed, 2, None)[0] == 1, "else the first recorded failure"
