"""The commands and files that start a spec's processes, all generated from the same TrainSpec.

Written into `runs/<id>/launch/` when a multi-process run starts (and shown on the Train page before it does):

- `command.sh`        the exact single-node command the worker runs (torchrun or accelerate launch);
- `accelerate.yaml`   an accelerate config (MULTI_GPU / FSDP / DEEPSPEED) carrying the spec's values;
- `deepspeed.json`    the DeepSpeed config (DeepSpeed strategy only);
- `torchrun_node.sh`  multi-node: `bash torchrun_node.sh <node_rank>` on each node (static rendezvous on node 0);
- `slurm.sbatch`      Slurm: one task per node, torchrun's c10d rendezvous on the first node of the allocation;
- `ray_train.py`      Ray Train: TorchTrainer + ScalingConfig over a Ray cluster.

Every path starts the same rank entry point, `python -m core.train.rank <run_dir>`; rank 0 writes the run folder,
so every node must see it at the same path (a shared filesystem) and have the workbench at the same path.
"""
from __future__ import annotations

import json
import shlex
import socket
import sys
from pathlib import Path
from typing import Any

import yaml

from core.train.distributed import deepspeed_config, fsdp_trainer_config, strategy_label
from core.train.spec import TrainSpec
from core.workspace import REPO_ROOT, atomic_write_text

LAUNCH_DIR = "launch"
RANK_MODULE = "core.train.rank"


def target_device(spec: TrainSpec, hardware: Any) -> str:
    """The device the generated files are for: this machine's for a one-node DDP run, else CUDA GPUs
    (FSDP / DeepSpeed and multi-node runs are GPU runs, even when prepared on a laptop)."""
    device = getattr(hardware, "device", "cpu")
    if device == "cuda" or spec.distributed_strategy != "ddp" or spec.num_nodes > 1:
        return "cuda"
    return "cpu"


def mixed_precision(spec: TrainSpec, hardware: Any) -> str:
    """accelerate's mixed_precision for the spec: what core.train.backends.choose_precision picks on the target."""
    if target_device(spec, hardware) == "cpu" or spec.precision == "fp32":
        return "no"
    if spec.precision in ("bf16", "fp16"):
        return spec.precision
    local_cuda = getattr(hardware, "device", "cpu") == "cuda"
    return "bf16" if (getattr(hardware, "bf16", True) or not local_cuda) else "fp16"


def _master_host(spec: TrainSpec) -> str:
    return spec.rendezvous_host.strip() or ("127.0.0.1" if spec.num_nodes == 1 else "<node-0-address>")


# ---------------------------------------------------------------- commands


def torchrun_args(spec: TrainSpec, run_dir: str | Path, node_rank: int | None = None) -> list[str]:
    """torchrun's arguments (after `torchrun`): standalone on one node, static rendezvous on node 0 across nodes."""
    common = ["--nproc_per_node", str(spec.processes_per_node)]
    tail = ["-m", RANK_MODULE, str(run_dir)]
    if spec.num_nodes == 1 and node_rank is None:
        return ["--standalone", "--nnodes", "1", *common, *tail]
    return ["--nnodes", str(spec.num_nodes), *common, "--node_rank", str(node_rank or 0),
            "--master_addr", _master_host(spec), "--master_port", str(spec.rendezvous_port), *tail]


def accelerate_args(spec: TrainSpec, run_dir: str | Path, node_rank: int | None = None) -> list[str]:
    args = ["--config_file", str(Path(run_dir) / LAUNCH_DIR / "accelerate.yaml")]
    if node_rank is not None:
        args += ["--machine_rank", str(node_rank)]
    return [*args, "-m", RANK_MODULE, str(run_dir)]


def launch_argv(spec: TrainSpec, run_dir: str | Path, python: str | None = None) -> list[str]:
    """The exact argv the worker runs on this node (python -m torch.distributed.run is torchrun)."""
    python = python or sys.executable
    # one node: through core.train.loopback, whose c10d store listens on 127.0.0.1 only (torch's binds every interface)
    run_module = ["-m", "core.train.loopback"] if spec.num_nodes == 1 else ["-m"]
    if spec.launcher == "accelerate":
        return [python, *run_module, "accelerate.commands.launch", *accelerate_args(spec, run_dir)]
    return [python, *run_module, "torch.distributed.run", *torchrun_args(spec, run_dir)]


def launch_command(spec: TrainSpec, run_dir: str | Path) -> str:
    """The same command as the user would type it (torchrun / accelerate launch from the repository folder)."""
    if spec.launcher == "accelerate":
        return shlex.join(["accelerate", "launch", *accelerate_args(spec, run_dir)])
    return shlex.join(["torchrun", *torchrun_args(spec, run_dir)])


def node_commands(spec: TrainSpec, run_dir: str | Path) -> list[str]:
    """One command per node (node 0 first), to run from the workbench folder on that node."""
    cmd = ["accelerate", "launch"] if spec.launcher == "accelerate" else ["torchrun"]
    build = accelerate_args if spec.launcher == "accelerate" else torchrun_args
    return [shlex.join([*cmd, *build(spec, run_dir, node_rank=k)]) for k in range(spec.num_nodes)]


# ---------------------------------------------------------------- files


def accelerate_config(spec: TrainSpec, run_dir: str | Path, hardware: Any, port: int | None = None) -> dict:
    """An accelerate config file's contents (accelerate's ClusterConfig keys) for the spec."""
    distributed_type = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed": "DEEPSPEED"}[spec.distributed_strategy]
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": distributed_type,  # on a CPU too: accelerate's MULTI_CPU launcher needs MPI
        "num_processes": spec.world_size,
        "num_machines": spec.num_nodes,
        "machine_rank": 0,
        "main_process_ip": _master_host(spec) if spec.num_nodes > 1 else None,
        "main_process_port": int(port or spec.rendezvous_port),
        "rdzv_backend": "static",
        "same_network": True,
        "mixed_precision": mixed_precision(spec, hardware),
        "use_cpu": False,  # the trainer sets use_cpu itself on a CPU machine
        "gpu_ids": "all",
        "downcast_bf16": "no",
        "debug": False,
    }
    if config["main_process_ip"] is None:
        del config["main_process_ip"]
    if spec.distributed_strategy == "fsdp":
        # accelerate's names for the trainer's fsdp_config keys (the same settings, one source)
        renamed = {"cpu_offload": "offload_params"}
        config["fsdp_config"] = {f"fsdp_{renamed.get(key, key)}": value for key, value in fsdp_trainer_config(spec).items()}
    elif spec.distributed_strategy == "deepspeed":
        config["deepspeed_config"] = {"deepspeed_config_file": str(Path(run_dir) / LAUNCH_DIR / "deepspeed.json"),
                                      "zero3_init_flag": spec.zero_stage == 3, "deepspeed_multinode_launcher": "standard"}
    return config


def slurm_script(spec: TrainSpec, run_dir: str | Path, hardware: Any) -> str:
    run_dir = Path(run_dir)
    gpus = target_device(spec, hardware) == "cuda"
    cpus = 8 * spec.processes_per_node if gpus else spec.processes_per_node
    torchrun = ["--nnodes", "$SLURM_NNODES", "--nproc_per_node", str(spec.processes_per_node), "--rdzv_id", "$SLURM_JOB_ID",
                "--rdzv_backend", "c10d", "--rdzv_endpoint", f"$head_node:{spec.rendezvous_port}", "-m", RANK_MODULE, str(run_dir)]
    quoted = " ".join(a if a.startswith("$") else shlex.quote(a) for a in torchrun).replace(
        f"$head_node:{spec.rendezvous_port}", f'"$head_node:{spec.rendezvous_port}"')
    lines = [
        "#!/bin/bash",
        f"# Generated by the Post-Training Workbench from {run_dir / 'spec.yaml'}:",
        f"# {spec.num_nodes} node(s) x {spec.processes_per_node} process(es), {strategy_label(spec)}. "
        f"Submit with: sbatch {run_dir / LAUNCH_DIR / 'slurm.sbatch'}",
        f"#SBATCH --job-name=wb-{run_dir.name[:40]}",
        f"#SBATCH --nodes={spec.num_nodes}",
        "#SBATCH --ntasks-per-node=1",
        *( [f"#SBATCH --gpus-per-node={spec.processes_per_node}"] if gpus else [] ),
        f"#SBATCH --cpus-per-task={cpus}",
        f"#SBATCH --output={run_dir / 'ranks' / 'slurm-%j.out'}",
        "set -euo pipefail",
        f"cd {shlex.quote(str(REPO_ROOT))}",
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f"srun {shlex.quote(sys.executable)} -m torch.distributed.run {quoted}",
        "",
    ]
    return "\n".join(lines)


def torchrun_node_script(spec: TrainSpec, run_dir: str | Path) -> str:
    args = torchrun_args(spec, run_dir, node_rank=0)
    at = args.index("--node_rank") + 1
    args[at] = "$NODE_RANK"
    quoted = " ".join('"$NODE_RANK"' if a == "$NODE_RANK" else shlex.quote(a) for a in args)
    return "\n".join([
        "#!/bin/bash",
        f"# Multi-node start of {Path(run_dir).name}: run `bash {Path(run_dir) / LAUNCH_DIR / 'torchrun_node.sh'} <node_rank>` on each of",
        f"# the {spec.num_nodes} nodes (node 0 = {_master_host(spec)}, which listens on port {spec.rendezvous_port}).",
        "set -euo pipefail",
        'NODE_RANK="${1:?usage: torchrun_node.sh <node_rank>}"',
        f"cd {shlex.quote(str(REPO_ROOT))}",
        f"exec {shlex.quote(sys.executable)} -m torch.distributed.run {quoted}",
        "",
    ])


RAY_TEMPLATE = '''#!/usr/bin/env python
"""Ray Train start of run {run_name} ({summary}), generated from its spec.yaml.

    python {script} [--address auto]     # on a machine of the Ray cluster; without --address a local Ray starts

Every worker runs the workbench's rank entry point (core.train.rank); rank 0 writes the run folder, which every
node must see at the same path.
"""
import argparse
import sys

REPO = {repo!r}
RUN_DIR = {run_dir!r}
NUM_WORKERS = {workers}
USE_GPU = {use_gpu}
CPUS_PER_WORKER = {cpus}
BACKEND = {backend!r}


def scaling_config():
    from ray.train import ScalingConfig

    return ScalingConfig(num_workers=NUM_WORKERS, use_gpu=USE_GPU, resources_per_worker={{"CPU": CPUS_PER_WORKER}})


def train_loop_per_worker(config):
    sys.path.insert(0, config["repo"])
    from core.train.rank import run_rank

    if run_rank(config["run_dir"]) != 0:
        raise RuntimeError("this rank failed: see ranks/rank-<k>.log in the run folder")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default=None, help="Ray cluster address (e.g. auto); default: start a local Ray")
    args = parser.parse_args(argv)
    import ray
    from ray.train import RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    ray.init(address=args.address) if args.address else ray.init(num_cpus=NUM_WORKERS * CPUS_PER_WORKER)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={{"repo": REPO, "run_dir": RUN_DIR}},
        scaling_config=scaling_config(),
        torch_config=TorchConfig(backend=BACKEND),
        run_config=RunConfig(name={run_name!r}, storage_path=RUN_DIR + "/ray"),
    )
    result = trainer.fit()
    print(result)
    return 0 if result.error is None else 1


if __name__ == "__main__":
    sys.exit(main())
'''


def ray_script(spec: TrainSpec, run_dir: str | Path, hardware: Any) -> str:
    run_dir = Path(run_dir)
    gpus = target_device(spec, hardware) == "cuda"
    return RAY_TEMPLATE.format(
        run_name=run_dir.name, summary=f"{spec.world_size} worker(s), {strategy_label(spec)}",
        script=run_dir / LAUNCH_DIR / "ray_train.py", repo=str(REPO_ROOT), run_dir=str(run_dir),
        workers=spec.world_size, use_gpu=gpus, cpus=8 if gpus else 1, backend="nccl" if gpus else "gloo",
    )


def loopback_interface() -> str:
    """The name of this machine's loopback interface ("lo" on Linux, "lo0" on macOS)."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        names = []
    return next((name for name in names if name in ("lo", "lo0")), next((name for name in names if name.startswith("lo")), "lo"))


def one_node_env(spec: TrainSpec) -> dict[str, str]:
    """The environment that keeps a one-node run's c10d store and gloo / NCCL sockets on loopback: the ranks exchange
    pickled objects (all_gather_object unpickles what it receives), so nothing outside this machine may connect.
    PET_LOCAL_ADDR is torchrun's --local-addr (the MASTER_ADDR its workers get, instead of this host's FQDN);
    GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME pin the collectives' sockets to the loopback interface. Multi-node runs
    get nothing here: they must listen on a network every node reaches (README: "Serving other machines")."""
    if spec.num_nodes != 1:
        return {}
    lo = loopback_interface()
    return {"MASTER_ADDR": "127.0.0.1", "PET_LOCAL_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": lo, "NCCL_SOCKET_IFNAME": lo}


def command_script(spec: TrainSpec, run_dir: str | Path) -> str:
    return "\n".join([
        "#!/bin/bash",
        f"# The command the workbench worker ran for {Path(run_dir).name} on one node ({launch_command(spec, run_dir)}).",
        "# Rerun headless with `python -m core.runs.worker <run_dir>` (it regenerates these files), or run this file.",
        f"cd {shlex.quote(str(REPO_ROOT))}",
        *[f"export {name}={shlex.quote(value)}" for name, value in one_node_env(spec).items()],
        f"exec {shlex.join(launch_argv(spec, run_dir))}",
        "",
    ])


def launch_files(spec: TrainSpec, run_dir: str | Path, hardware: Any, port: int | None = None) -> dict[str, str]:
    """file name -> text, for everything under launch/ (the Train page previews the same dict)."""
    files = {
        "command.sh": command_script(spec, run_dir),
        "accelerate.yaml": "# accelerate config generated from spec.yaml by the Post-Training Workbench\n"
                           + yaml.safe_dump(accelerate_config(spec, run_dir, hardware, port), sort_keys=False),
    }
    if spec.distributed_strategy == "deepspeed":
        files["deepspeed.json"] = json.dumps(deepspeed_config(spec), indent=2) + "\n"
    if spec.num_nodes > 1:
        files["torchrun_node.sh"] = torchrun_node_script(spec, run_dir)
    files["slurm.sbatch"] = slurm_script(spec, run_dir, hardware)
    files["ray_train.py"] = ray_script(spec, run_dir, hardware)
    return files


def write_launch_files(spec: TrainSpec, run_dir: str | Path, hardware: Any, port: int | None = None) -> dict[str, Path]:
    folder = Path(run_dir) / LAUNCH_DIR
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, text in launch_files(spec, run_dir, hardware, port).items():
        written[name] = atomic_write_text(folder / name, text)
        if name.endswith((".sh", ".sbatch", ".py")):
            written[name].chmod(0o755)
    return written


def launch_preview(spec: TrainSpec, hardware: Any, run_dir: str | Path) -> list[tuple[str, str, str]]:
    """(title, code language, text) for the Train page: the command, then every file written into launch/."""
    languages = {".sh": "bash", ".sbatch": "bash", ".yaml": "yaml", ".json": "json", ".py": "python"}
    if spec.num_nodes > 1:
        commands = "\n".join(f"# node {k}\n{command}" for k, command in enumerate(node_commands(spec, run_dir)))
        first = ("torchrun on each node" if spec.launcher == "torchrun" else "accelerate on each node", "bash", commands)
    else:
        first = ("launch command", "bash", launch_command(spec, run_dir))
    files = launch_files(spec, run_dir, hardware)
    return [first] + [(name, languages[Path(name).suffix], text) for name, text in files.items() if name != "command.sh"]
