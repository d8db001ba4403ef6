"""The same curation on Ray Data: exact, near (MinHash-LSH) and decontamination give the in-process results.

Ray runs locally with `ray.init(num_cpus=2)` (the CI machine's two cores); on a cluster RAY_ADDRESS points it
there. Ray comes from requirements-ray.txt, which `make test` installs; without it these tests skip and say so.
Small inputs cut into many small blocks, so the shuffle really groups across blocks.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -r requirements-ray.txt (make test installs it)")

from core.data import ray_curate  # noqa: E402
from core.data.decontam import DecontamConfig, decontaminate, load_builtin_benchmark  # noqa: E402
from core.data.dedup import ExactDedupConfig, NearDedupConfig, find_exact_duplicates, find_near_duplicates  # noqa: E402
from core.data.ray_curate import decontaminate_ray, find_exact_duplicates_ray, find_near_duplicates_ray, ray_session  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    saved, ray_curate.BLOCK_ROWS = ray_curate.BLOCK_ROWS, 100
    yield
    ray_curate.BLOCK_ROWS = saved
    ray.shutdown()


@pytest.fixture(scope="module")
def rows(shared_data) -> list[dict]:
    """Real Alpaca rows, 1-4-word edited copies of the first 300, exact copies and benchmark leaks."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from grow_alpaca import alpaca_rows, plant_edits

    base = alpaca_rows(shared_data / "alpaca_5000.json")[:500]
    planted, _, _ = plant_edits(base[:300], seed=3)
    gsm8k = load_builtin_benchmark("GSM8K")
    leaks = [{"messages": [{"role": "user", "content": gsm8k.items[k]}, {"role": "assistant", "content": "42"}]} for k in (5, 50, 500)]
    copies = [json.loads(json.dumps(base[k])) for k in (10, 20, 30)]
    copies[0]["messages"][1]["content"] = copies[0]["messages"][1]["content"].upper() + "!!"  # same after normalisation
    return planted + base[300:] + copies + leaks


def clusters_of(result):
    return [(c.members, c.representative, c.similarity) for c in result.clusters]


def test_exact_on_ray_matches_in_process(local_ray, rows):
    config = ExactDedupConfig(keep="longest_answer")  # the representative rule that reads the rows, not just their order
    here, there = find_exact_duplicates(rows, config), find_exact_duplicates_ray(rows, config)
    assert here.rows_to_drop == there.rows_to_drop and len(here.clusters) >= 3
    assert clusters_of(here) == clusters_of(there)


def test_near_on_ray_matches_in_process(local_ray, rows):
    config = NearDedupConfig(workers=1)
    here, there = find_near_duplicates(rows, config), find_near_duplicates_ray(rows, config)
    assert len(here.clusters) > 50
    assert here.rows_to_drop == there.rows_to_drop
    assert clusters_of(here) == clusters_of(there)
    assert {k: here.params[k] for k in ("candidate_pairs", "verified_pairs")} == {k: there.params[k]
                                                                                  for k in ("candidate_pairs", "verified_pairs")}
    assert there.params["engine"] == "ray"


@pytest.mark.parametrize("mode", ["ngram13", "substring50"])
def test_decontamination_on_ray_matches_in_process(local_ray, rows, mode):
    benchmarks = [load_builtin_benchmark("GSM8K"), load_builtin_benchmark("HumanEval")]
    config = DecontamConfig(mode=mode)
    here, there = decontaminate(rows, benchmarks, config), decontaminate_ray(rows, benchmarks, config)
    assert here.rows_to_drop == there.rows_to_drop and len(here.rows_to_drop) >= 3
    assert [r.summary() for r in here.reports] == [r.summary() for r in there.reports]
    assert [r.matches for r in here.reports] == [r.matches for r in there.reports]


def test_ray_session_uses_a_running_ray_and_leaves_it(local_ray):
    with ray_session() as session:
        assert session.is_initialized()
    assert ray.is_initialized(), "a Ray the caller started stays up"
