"""Run a mergekit merge on this machine, and fold LoRA adapters into their base first."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from core.merge.config import to_yaml, validate_with_mergekit
from core.models import ModelSource, load_model, merge_adapter_weights, save_model
from core.workspace import atomic_write_dir, atomic_write_text, safe_name

MERGE_YAML = "merge.yaml"
log = logging.getLogger("workbench.merge")


def merge_adapter_into_base(source: ModelSource, target: str | Path) -> str:
    """PEFT merge_and_unload of `source.adapter` into its base, saved as a full model folder."""
    target = Path(target)
    if (target / "config.json").is_file() and (target / ".complete").is_file():
        return str(target)  # a resumed run reuses the folder it already wrote
    log.info("merging adapter %s into %s", source.adapter, source.with_adapter("").label)
    loaded = load_model(source, device="cpu")
    merged = merge_adapter_weights(loaded.model, source.adapter)
    save_model(merged, loaded.tokenizer, target)
    return str(target)


def adapter_target(inputs_dir: Path, source: ModelSource) -> Path:
    return inputs_dir / safe_name(f"{source.with_adapter('').label}+{Path(source.adapter).name}")


def run_mergekit(config: dict, out_dir: str | Path, *, seed: int = 0) -> float:
    """Merge on CPU into `out_dir` (replaced atomically); writes merge.yaml next to the weights. Returns seconds."""
    from mergekit.merge import MergeOptions, run_merge

    out_dir = Path(out_dir)
    merge_config = validate_with_mergekit(config)
    options = MergeOptions(
        cuda=False,
        device="cpu",
        copy_tokenizer=True,
        lazy_unpickle=False,
        out_shard_size=2_000_000_000,
        random_seed=seed,
        quiet=True,
        write_model_card=True,
        safe_serialization=True,
    )
    started = time.perf_counter()

    def write(tmp: Path) -> None:
        run_merge(merge_config, str(tmp), options=options, config_source=to_yaml(config))
        atomic_write_text(tmp / MERGE_YAML, to_yaml(config))

    atomic_write_dir(out_dir, write)  # the earlier merge is swapped out only once the new one is complete
    return time.perf_counter() - started
