"""Training: the LoRA family, the rest of the PEFT table ((IA)³, prompt / prefix tuning, LoHa, LoKr, BitFit,
partial) and full fine-tuning, the preference objectives and GRPO, as a `train` job of core.runs. Every module:

- `core.train.methods`      the methods and objectives as data (fields, mergeability, learning rate) and PEFT configs
- `core.train.spec`         TrainSpec: the YAML file, the CLI (`python -m core.train`) and the Train page's form
- `core.train.data`         rows through core.data.masking into input_ids / labels: split, packed, padded
- `core.train.backends`     Unsloth when usable, else transformers + PEFT + TRL (ordered dispatch)
- `core.train.trainer`      the TRL trainer and the callback that writes metrics, stops and saves
- `core.train.gkd`          on-policy distillation through TRL's GKD trainer
- `core.train.grpo`         GRPO on verifiable rewards through TRL's GRPOTrainer; the sampled-completions table
- `core.train.tracking`     `report_to`: the trackers a run also logs to
- `core.train.distributed`  what the spec's distribution section means here; the rank folder's layout
- `core.train.launchers`    the commands and files that start a spec's processes (torchrun, accelerate, Slurm, Ray)
- `core.train.loopback`     torchrun / accelerate on loopback only
- `core.train.rank`         one training process of a multi-process run (`python -m core.train.rank <run_dir>`)
- `core.train.supervisor`   the worker watching the ranks it launched
- `core.train.job`          the job the worker runs: adapter, checkpoints, merged model, run card
- `core.train.preflight`    lint + memory + steps before launching
- `core.train.recipes`      one-click recipes of more than one run (SFT -> DPO)
- `core.train.live`         what the Train page shows: the runs table, live summary, charts and reading guide
- `core.train.__main__`     `python -m core.train`: create a training run and run it in the foreground
"""
from core.train.spec import TrainSpec, hardware_defaults
from core.train.trainer import checkpoint_step, latest_checkpoint

__all__ = ["TrainSpec", "hardware_defaults", "continue_updates"]


def continue_updates(run_dir, more_steps: int) -> dict:
    """Spec changes that make a finished / stopped run train `more_steps` further from its last checkpoint."""
    if more_steps < 1:
        raise ValueError("more_steps: must be at least 1")
    done = checkpoint_step(latest_checkpoint(run_dir))
    return {"max_steps": done + int(more_steps)}
