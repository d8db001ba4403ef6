"""Embedded model: first-ever load (GGUF -> safetensors conversion), cached load, time to first token
and decode tokens/s on this machine. Usage: python bench/models_chat.py"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    with tempfile.TemporaryDirectory() as home:
        os.environ["WORKBENCH_HOME"] = home  # an empty workspace: the first load really converts
        from core.generation import GenerationSettings, generate_blocking
        from core.models import ModelSource, embedded_model_dir, load_model

        start = time.perf_counter()
        embedded_model_dir()
        first_load = time.perf_counter() - start
        start = time.perf_counter()
        loaded = load_model(ModelSource())
        cached_load = time.perf_counter() - start

        settings = GenerationSettings(temperature=0.0, max_new_tokens=64)
        history = [{"role": "user", "content": "Write three sentences about the history of Paris."}]
        generate_blocking(loaded, history, settings)  # warm-up
        runs = [generate_blocking(loaded, history, settings).stats for _ in range(3)]
        ttft = sorted(s.time_to_first_token_s for s in runs)[1]
        tps = sorted(s.tokens_per_s for s in runs)[1]
        figures = {
            "first_load_s": round(first_load, 1),
            "cached_load_s": round(cached_load, 2),
            "time_to_first_token_s": round(ttft, 3),
            "decode_tokens_per_s": round(tps, 1),
            "new_tokens": runs[1].new_tokens,
            "threads": __import__("torch").get_num_threads(),
        }
        print(f"first-ever load (GGUF -> safetensors): {figures['first_load_s']} s")
        print(f"cached load: {figures['cached_load_s']} s")
        print(f"time to first token: {figures['time_to_first_token_s']} s, decode: {figures['decode_tokens_per_s']} tokens/s")
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
