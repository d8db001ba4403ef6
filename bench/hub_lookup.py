"""Config and tokenizer look-up time for a cached Hub id (what Budget, Decide, Template and the Train pre-flight do).

Builds a Hub cache in huggingface_hub's own layout (blobs / snapshots / refs) holding the embedded SmolLM2-135M's
config and tokenizer (the weights are left out: the tests show a look-up never opens them), then, with HF_HUB_OFFLINE=1, times \
`core.models.load_config` and
`load_tokenizer` for `HuggingFaceTB/SmolLM2-135M-Instruct` in a fresh process — the first look-up ("cold", after
the libraries are imported; their import is timed apart) and a second one ("warm"). Median of three processes.

    .venv/bin/python bench/hub_lookup.py      # last line is JSON
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"

TIMED = """
import json, time
start = time.perf_counter()
from transformers import AutoConfig, AutoTokenizer  # noqa: F401 - the libraries' own (lazy) imports, timed apart
from huggingface_hub import snapshot_download  # noqa: F401
from core.models import ModelSource, load_config, load_tokenizer
times = {"imports_s": time.perf_counter() - start}
source = ModelSource("hub", %r)
for label in ("cold", "warm"):
    start = time.perf_counter(); load_config(source); times[label + "_config_s"] = time.perf_counter() - start
    start = time.perf_counter(); load_tokenizer(source); times[label + "_tokenizer_s"] = time.perf_counter() - start
print(json.dumps(times))
"""


def main() -> int:
    import atexit
    import shutil

    from hub_server import HubRepo, write_hub_cache

    from core.models import embedded_model_dir

    cache = Path(tempfile.mkdtemp(prefix="hub-cache-"))
    atexit.register(shutil.rmtree, cache, True)
    folder = embedded_model_dir()
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not p.name.endswith(".safetensors")}
    write_hub_cache(cache, HubRepo(REPO, files))
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    runs = []
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", TIMED % REPO], env=env, capture_output=True, text=True, check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    figures = {key: round(statistics.median(r[key] for r in runs), 4) for key in runs[0]}
    for key, value in figures.items():
        print(f"{key:20s} {value * 1000:8.1f} ms")
    print(json.dumps({"repo": REPO, "runs": len(runs), **figures, "measured_at": time.strftime("%Y-%m-%d")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
