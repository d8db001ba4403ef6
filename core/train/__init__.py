"""Training: the LoRA family, the rest of the PEFT table ((IA)³, prompt / prefix tuning, LoHa, LoKr, BitFit,
partial) and full fine-tuning as a `train` job of core.runs.

- `core.train.methods`   the methods as data (fields, mergeability, learning rate) and the PEFT configs

- `core.train.spec`      TrainSpec: the YAML file, the CLI (`python -m core.train`) and the Train page's form
- `core.train.data`      data through core.data.masking into input_ids / labels, split, packed, padded
- `core.train.backends`  Unsloth when usable, else transformers + PEFT + TRL (ordered dispatch)
- `core.train.trainer`   the TRL trainer and the callback that writes metrics, stops and saves
- `core.train.job`       the job the worker runs: adapter, checkpoints, merged model, run card
- `core.train.preflight` lint + memory + steps before launching
"""
from core.train.spec import TrainSpec, hardware_defaults

__all__ = ["TrainSpec", "hardware_defaults", "continue_updates"]


def continue_updates(run_dir, more_steps: int) -> dict:
    """Spec changes that make a finished / stopped run train `more_steps` further from its last checkpoint."""
    from core.train.trainer import checkpoint_step, latest_checkpoint

    if more_steps < 1:
        raise ValueError("more_steps: must be at least 1")
    done = checkpoint_step(latest_checkpoint(run_dir))
    return {"max_steps": done + int(more_steps)}
