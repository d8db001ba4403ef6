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
