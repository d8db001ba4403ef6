"""Training beyond one process: what the spec's distribution section means on this machine.

- `distribution_refusal(spec, hardware)`: the combinations that cannot work here, refused with the reason
  (never silently changed into something else);
- `trainer_distribution_kwargs(spec, device)`: the TrainingArguments that make the HF Trainer run the strategy
  (ddp_backend, FSDP2 config, the DeepSpeed config dict);
- `deepspeed_config(spec)` / `fsdp_trainer_config(spec)`: the one place each strategy's settings are derived
  (core.train.launchers writes the same dicts into the run folder for accelerate and headless reruns);
- `RankInfo` + small collectives the trainer callback uses (a stop flag every rank agrees on, global token counts).

The processes themselves are started by existing launchers (torchrun, accelerate launch, Slurm, Ray Train):
see core.train.launchers (commands and files) and core.train.supervisor (the worker watching its ranks).
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from packaging.version import Version

from core.train.spec import TrainSpec
from core.workspace import read_json

# PEFT's documented minimum versions for QLoRA with sharded strategies (PEFT docs "DeepSpeed" and "FSDP" guides,
# "Use PEFT QLoRA and DeepSpeed with ZeRO3" / "Use PEFT QLoRA and FSDP"): the 4-bit weights are stored in the
# compute dtype (bnb_4bit_quant_storage) so that they can be flattened and sharded like any other weight.
QLORA_ZERO3_MINIMUM = {"accelerate": "1.0.1", "transformers": "4.44.2", "trl": "0.11.4", "peft": "0.13.0", "bitsandbytes": "0.43.0"}
QLORA_FSDP_MINIMUM = {"accelerate": "0.28.0", "transformers": "4.38.2", "peft": "0.10.0", "bitsandbytes": "0.43.0"}
SUPERVISOR_ENV = "WORKBENCH_SUPERVISOR_PID"  # set by core.train.supervisor for the ranks it starts


# ---------------------------------------------------------------- refusals


def distribution_refusal(spec: TrainSpec, hardware: Any, *, launching_here: bool = True) -> str | None:
    """One sentence saying why this distribution cannot run on `hardware`, or None.

    `launching_here`: the Start button / worker would start the processes on this machine (multi-node runs are
    started on each node with the generated files instead, so they are refused here but still previewed)."""
    if not spec.uses_launcher:
        return None
    device = getattr(hardware, "device", "cpu")
    n = spec.processes_per_node
    if device == "mps":
        return "Apple MPS has no multi-process training backend in PyTorch: use 1 process with distributed_strategy ddp."
    if spec.distributed_strategy == "fsdp" and device == "cpu":
        return ("FSDP needs CUDA GPUs: on a CPU, transformers / accelerate turn FSDP with use_cpu=True into plain DDP without "
                "a word (every rank keeps a full copy), so it is refused here. Use distributed_strategy ddp on a CPU.")
    if spec.distributed_strategy == "deepspeed" and device == "cpu":
        return ("DeepSpeed ZeRO needs CUDA GPUs here (its CPU accelerator needs Intel's extension and oneCCL). "
                "Use distributed_strategy ddp on a CPU.")
    if spec.distributed_strategy == "deepspeed" and not _installed("deepspeed"):
        return "DeepSpeed is not installed: pip install deepspeed (it builds its CUDA kernels on first use)."
    if spec.method == "qlora" and spec.distributed_strategy == "deepspeed" and spec.zero_offload == "optimizer_and_params":
        return ("QLoRA with ZeRO-3 weight offload is refused: PEFT documents that DeepSpeed stage 3 + QLoRA with CPU "
                "offloading uses more GPU memory than without it. Offload the optimizer only, or nothing.")
    too_old = _qlora_versions_missing(spec)
    if too_old:
        return too_old
    if launching_here and spec.num_nodes > 1:
        return (f"This run spans {spec.num_nodes} nodes: start it on every node with the generated files in the run "
                "folder's launch/ (torchrun per node, Slurm sbatch or Ray Train). Start here launches one node only.")
    if launching_here and device == "cuda" and n > max(1, int(getattr(hardware, "gpu_count", 1) or 1)):
        return f"processes_per_node is {n} but this machine has {getattr(hardware, 'gpu_count', 1)} GPU(s): one process per GPU."
    if launching_here and device == "cpu" and n > max(1, int(getattr(hardware, "cpu_cores", 1) or 1)):
        return f"processes_per_node is {n} but this machine has {hardware.cpu_cores} CPU cores: each process needs at least one core."
    return None


def _qlora_versions_missing(spec: TrainSpec) -> str | None:
    sharded = spec.distributed_strategy == "fsdp" or (spec.distributed_strategy == "deepspeed" and spec.zero_stage == 3)
    if spec.method != "qlora" or not sharded:
        return None
    needed = QLORA_FSDP_MINIMUM if spec.distributed_strategy == "fsdp" else QLORA_ZERO3_MINIMUM
    what = "FSDP" if spec.distributed_strategy == "fsdp" else "DeepSpeed ZeRO-3"
    old = [f"{name} {have or 'missing'} (needs >= {need})" for name, need in needed.items()
           if (have := _installed(name)) is None or _older(have, need)]
    if old:
        return f"QLoRA with {what} needs newer packages: {', '.join(old)}."
    return None


def _installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _older(have: str, need: str) -> bool:
    try:
        return Version(have) < Version(need)
    except Exception:  # noqa: BLE001 - an unparseable local version is taken as new enough
        return False


def distribution_notes(spec: TrainSpec, hardware: Any) -> list[str]:
    """What the user should know about a distribution that will run (shown by the pre-flight)."""
    if not spec.uses_launcher:
        return []
    notes = [f"{spec.world_size} process(es) ({spec.processes_per_node} per node × {spec.num_nodes} node(s)) through "
             f"{spec.launcher}, {strategy_label(spec)}: {spec.global_batch} rows per optimizer step "
             f"({spec.batch_size} per device × {spec.gradient_accumulation} accumulation × {spec.world_size})."]
    if getattr(hardware, "device", "cpu") == "cpu":
        notes.append("CPU processes use the gloo backend and share the cores (one thread each when processes = cores).")
        if spec.launcher == "accelerate":
            notes.append("accelerate on a CPU: the config says MULTI_GPU (accelerate's torchrun-based launcher) with use_cpu in "
                         "the trainer; MULTI_CPU would need MPI.")
    if spec.method == "qlora" and spec.distributed_strategy in ("fsdp", "deepspeed"):
        notes.append("QLoRA + sharding: the 4-bit weights are stored in the compute dtype (bnb_4bit_quant_storage) so they can be sharded.")
    return notes


def processes_field(hardware: Any) -> dict:
    """The Train form's processes_per_node sized to this machine: one process per GPU, or per CPU core."""
    if getattr(hardware, "device", "cpu") == "cuda":
        most, what = max(1, int(getattr(hardware, "gpu_count", 1) or 1)), "GPU(s)"
    else:
        most, what = max(1, int(getattr(hardware, "cpu_cores", 1) or 1)), "CPU cores (gloo, one thread each)"
    return {"max": most, "help": f"Training processes on this node: this machine has {most} {what}, so 1 to {most}. "
                                 "Above 1 the worker launches them with torchrun / accelerate and rank 0 writes the run."}


def strategy_label(spec: TrainSpec) -> str:
    if spec.distributed_strategy == "fsdp":
        return f"FSDP {spec.fsdp_sharding}" + (" + CPU offload" if spec.fsdp_cpu_offload else "")
    if spec.distributed_strategy == "deepspeed":
        offload = {"none": "", "optimizer": " + optimizer offload", "optimizer_and_params": " + optimizer and weight offload"}
        return f"DeepSpeed ZeRO-{spec.zero_stage}{offload[spec.zero_offload]}"
    return "DDP"


# ---------------------------------------------------------------- what the trainer gets


def fsdp_trainer_config(spec: TrainSpec) -> dict:
    """TrainingArguments.fsdp_config (FSDP2). The transformer wrap policy wraps the model's own decoder layer class
    (its `_no_split_modules`), so no class name has to be typed."""
    config: dict[str, Any] = {
        "version": 2,
        "reshard_after_forward": spec.fsdp_sharding == "full_shard",
        "cpu_offload": spec.fsdp_cpu_offload,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP" if spec.fsdp_wrap_policy == "transformer_layer" else "SIZE_BASED_WRAP",
        "state_dict_type": "FULL_STATE_DICT",
        "cpu_ram_efficient_loading": True,
        "activation_checkpointing": spec.gradient_checkpointing,
    }
    if spec.fsdp_wrap_policy == "size":
        config["min_num_params"] = spec.fsdp_min_params
    return config


def deepspeed_config(spec: TrainSpec) -> dict:
    """The DeepSpeed config for the spec. Batch and clipping values are the spec's own (DeepSpeed checks
    train_batch_size = micro batch x accumulation x world size); precision is "auto" so that the trainer's
    bf16 / fp16 choice for the GPU it finds fills it in."""
    zero: dict[str, Any] = {"stage": spec.zero_stage, "overlap_comm": True, "contiguous_gradients": True,
                            "reduce_bucket_size": "auto"}
    if spec.zero_stage == 3:
        zero.update({"stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto",
                     "stage3_gather_16bit_weights_on_model_save": True})
    if spec.zero_offload in ("optimizer", "optimizer_and_params"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if spec.zero_offload == "optimizer_and_params":
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": spec.batch_size,
        "gradient_accumulation_steps": spec.gradient_accumulation,
        "train_batch_size": spec.global_batch,
        "gradient_clipping": spec.max_grad_norm,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
        "steps_per_print": 10**9,  # the workbench logs its own metrics; keep DeepSpeed's step prints out of the rank logs
        "wall_clock_breakdown": False,
    }


def trainer_distribution_kwargs(spec: TrainSpec, device: str) -> dict:
    """Extra SFTConfig arguments for a process started by torchrun / accelerate / Ray (empty for a plain run)."""
    if not spec.uses_launcher:
        return {}
    # Every trainable parameter takes part in every forward pass (adapters, or all weights), so DDP need not search
    # the graph for unused ones each step.
    kwargs: dict[str, Any] = {"ddp_backend": "gloo" if device == "cpu" else "nccl", "ddp_find_unused_parameters": False}
    if spec.distributed_strategy == "fsdp":
        kwargs.update(fsdp=True, fsdp_config=fsdp_trainer_config(spec))
    elif spec.distributed_strategy == "deepspeed":
        kwargs["deepspeed"] = deepspeed_config(spec)
    return kwargs


def needs_quant_storage(spec: TrainSpec) -> bool:
    """QLoRA weights must be stored in the compute dtype when FSDP or ZeRO-3 flattens and shards them."""
    return spec.method == "qlora" and (spec.distributed_strategy == "fsdp"
                                       or (spec.distributed_strategy == "deepspeed" and spec.zero_stage == 3))


# ---------------------------------------------------------------- this process's place


@dataclass(frozen=True)
class RankInfo:
    """Where this process sits, from the environment torchrun / accelerate / Ray Train set (torchrun's names)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    node_rank: int = 0

    @classmethod
    def from_env(cls, env: dict | None = None) -> "RankInfo":
        env = os.environ if env is None else env
        world = int(env.get("WORLD_SIZE", 1))
        local_world = int(env.get("LOCAL_WORLD_SIZE", world))
        rank = int(env.get("RANK", 0))
        node = env.get("GROUP_RANK", env.get("NODE_RANK"))
        return cls(rank=rank, local_rank=int(env.get("LOCAL_RANK", 0)), world_size=world, local_world_size=local_world,
                   node_rank=int(node) if node is not None else rank // max(1, local_world))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


# ---------------------------------------------------------------- the run folder's rank files (ranks/)

RANKS_DIR = "ranks"
STOP_FILE = "stop.request"
RESULT_FILE = "result.json"


def ranks_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / RANKS_DIR


def rank_log(run_dir: str | Path, rank: int) -> Path:
    return ranks_dir(run_dir) / f"rank-{rank}.log"


def rank_record_path(run_dir: str | Path, rank: int) -> Path:
    return ranks_dir(run_dir) / f"rank-{rank}.json"


def read_rank_records(run_dir: str | Path) -> list[dict]:
    """Every rank's record, in rank order (empty for a single-process run)."""
    records = [read_json(path) for path in ranks_dir(run_dir).glob("rank-*.json")]
    return sorted((r for r in records if isinstance(r, dict) and "rank" in r), key=lambda r: r["rank"])


def in_launched_process() -> bool:
    """True inside a process that torchrun / accelerate / Ray Train started (they set RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def supervised() -> bool:
    """True when the workbench worker that started this rank owns status.json (single-node launches)."""
    return bool(os.environ.get(SUPERVISOR_ENV))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- collectives (no-ops in a single process)


def _group_ready() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _collective_device() -> Any:
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_ranks_sum(values: list[float]) -> list[float]:
    """Element-wise sum over every rank (the values themselves in a single process)."""
    if not _group_ready():
        return list(values)
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on any (so that all ranks stop at the same step)."""
    if not _group_ready():
        return bool(flag)
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def all_ranks_gather(value: float) -> list[float]:
    """One number from every rank, in rank order ([value] in a single process)."""
    if not _group_ready():
        return [float(value)]
    import torch.distributed as dist

    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, float(value))
    return [float(v) for v in gathered]


def barrier() -> None:
    if _group_ready():
        import torch.distributed as dist

        dist.barrier()
