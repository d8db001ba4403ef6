"""Shared fixtures.

The embedded model is converted once per test session into a shared cache under the repo
(`.workbench-test/`, git-ignored); each test that writes user state gets its own WORKBENCH_HOME
whose models/ links to that cache, so nothing is converted twice and no test sees another's runs.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
TEST_HOME = ROOT / ".workbench-test"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WORKBENCH_HOME", str(TEST_HOME))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Two test workers share two cores: spinning OpenMP threads (the default) made the suite 2-4x slower in a clean clone.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# Seconds each of the longest test files takes in `make test` (measured on 2 quiet cores, rounded). make test runs
# xdist with --dist loadfile --no-loadscope-reorder, so files are handed to the two workers in this order: longest
# first, so that no long file starts last while the other worker sits idle. A file not listed keeps its place after these.
LONGEST_FILES = {
    "e2e/test_journey.py": 300, "test_families.py": 230, "test_distill_variants.py": 165, "test_export.py": 120,
    "test_scale_runs.py": 115, "e2e/test_journey_preference.py": 110, "e2e/test_journey_export.py": 100, "test_distill.py": 90,
    "test_fault_drill.py": 75, "e2e/test_journey_distill.py": 75, "test_train.py": 70, "test_rag_jobs.py": 60,
    "test_preference_proof.py": 55, "test_compare.py": 55, "e2e/test_journey_grpo.py": 50, "test_grpo.py": 45,
    "test_preference_train.py": 40, "test_arena.py": 40, "test_rag_page.py": 40, "e2e/test_journey_raft.py": 35,
    "e2e/test_hub_journey.py": 35, "test_evaluate_page.py": 30, "test_distill_page.py": 30, "test_train_page.py": 30,
    "test_judge.py": 25,
}


def pytest_collection_modifyitems(config, items):
    tests = Path(__file__).parent

    def seconds(item) -> int:
        try:
            return LONGEST_FILES.get(Path(item.fspath).relative_to(tests).as_posix(), 0)
        except ValueError:
            return 0

    items.sort(key=lambda item: -seconds(item))  # stable: the tests of one file keep their order


def pytest_xdist_make_scheduler(config, log):
    """`make test`'s --dist loadfile, with every browser journey (tests/e2e) one unit of work: they run on one worker,
    against one app server, and the journeys that need a finished train run (export) reuse the main journey's instead of
    training their own; the other worker takes the rest of the files meanwhile."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class BrowserJourneysTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return "tests/e2e" if scope.startswith("tests/e2e/") else scope

    return BrowserJourneysTogether(config, log)


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    """A fresh, empty WORKBENCH_HOME sharing only the converted-model cache."""
    shared_models = TEST_HOME / "models"
    shared_models.mkdir(parents=True, exist_ok=True)
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(shared_models, target_is_directory=True)
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    from core.models import embedded_model_dir

    return embedded_model_dir()


@pytest.fixture(scope="session")
def embedded_tokenizer(embedded_dir):
    from core.models import ModelSource, load_tokenizer

    return load_tokenizer(ModelSource("local", str(embedded_dir)))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, embedded_tokenizer) -> Path:
    """A randomly initialised 2-layer Llama with the embedded model's tokenizer and chat template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(embedded_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=embedded_tokenizer.bos_token_id,
        eos_token_id=embedded_tokenizer.eos_token_id,
        pad_token_id=embedded_tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path, safe_serialization=True)
    embedded_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


def write_room_task(path: Path, n: int = 12) -> Path:
    """A small custom task (not the demo tickets): which room a meeting is in. One chat row per meeting."""
    import json

    rows = [{"messages": [{"role": "user", "content": f"Which room is meeting M{i:02d} in?"},
                          {"role": "assistant", "content": f"Meeting M{i:02d} is in room {100 + 7 * i}."}]} for i in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def room_task(tmp_path) -> Path:
    return write_room_task(tmp_path / "rooms.jsonl")


def model_of_a_train_run(dataset: Path, model_dir: Path) -> Path:
    """A train run (spec.yaml in the workspace's runs folder) on `dataset` whose merged model is a copy of model_dir:
    a model the workbench knows the training data of. Returns the merged model's folder."""
    import shutil

    from core.runs import create_run_from_dict

    run_dir = create_run_from_dict({"kind": "train", "dataset": str(dataset), "model": {"kind": "local", "ref": str(model_dir)}})
    return Path(shutil.copytree(model_dir, run_dir / "merged"))
