"""Keep the GPU set (requirements-gpu.txt) honest on a machine without a GPU.

    python -m tools.gpu_set resolve   # pip's resolver, dry run, for Linux x86-64 / CPython 3.11 / wheels only
    python -m tools.gpu_set overlay   # the GPU set's transformers / TRL / datasets (...) into .gpuset/site

`resolve` asks the registry (nothing is downloaded but metadata) whether requirements-gpu.txt still installs on
a CUDA Linux box, checks that every package of the training stack is pinned with `==` and that the resolver
picks exactly those pins, and writes the resolved set to .gpuset/resolved.json. The machine's own pip settings
(local find-links, constraint files) are ignored, so the answer is PyPI's. Lines marked `# source-build` are
left out: pip cannot resolve a source build for a foreign platform.

`overlay` installs, with --no-deps, the resolved versions of the pure-Python stack whose version differs from
this interpreter's into .gpuset/site. With PYTHONPATH=.gpuset/site the CPU training tests then run on the GPU
set's transformers / TRL / datasets / huggingface_hub (the hf backend), so API drift between the two sets shows
up in CI. Both print one JSON line last.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "requirements-gpu.txt"
STATE = ROOT / ".gpuset"
RESOLVED = STATE / "resolved.json"
SITE = STATE / "site"

PYTHON_VERSION = "3.11"
# pip matches manylinux tags exactly; these cover the wheels the stack publishes (bitsandbytes: 2_24, torch: 2_28).
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)] + ["manylinux2014_x86_64", "linux_x86_64"]
# The packages whose versions decide whether training works: each must be pinned with ==.
STACK = ("torch", "unsloth", "unsloth-zoo", "transformers", "trl", "datasets", "peft", "accelerate", "bitsandbytes",
         "triton", "xformers", "huggingface-hub")
# What the CPU tests can run in the GPU set's versions: pure-Python (or ABI-stable) packages, no torch.
# triton too: TRL 1.15 imports its Triton kernels for the chunked loss even on CPU, and every Linux GPU set has it.
OVERLAY = ("transformers", "trl", "datasets", "huggingface-hub", "tokenizers", "accelerate", "peft", "safetensors",
           "fsspec", "dill", "multiprocess", "hf-xet", "triton")
_PIN = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#*]+)\s*(?:#.*)?$")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_lines(path: Path = REQUIREMENTS) -> list[str]:
    """The requirement lines the resolver can check for a foreign platform (source builds left out)."""
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "# source-build" in line:
            continue
        lines.append(line.split("#", 1)[0].strip())
    return lines


def pins(lines: list[str]) -> dict[str, str]:
    return {normalize(m.group(1)): m.group(2) for line in lines if (m := _PIN.match(line))}


def pip_environment() -> dict:
    """PyPI as pip sees it by default: no machine-wide config (local wheel folders, constraints)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_FIND_LINKS", "PIP_CONSTRAINT", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def resolve() -> dict:
    lines = requirement_lines()
    pinned = pins(lines)
    unpinned = [name for name in STACK if name not in pinned]
    if unpinned:
        raise SystemExit(f"requirements-gpu.txt: pin {', '.join(unpinned)} with == (the training stack must be a fixed set)")
    STATE.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text("\n".join(lines) + "\n")
        report = Path(tmp) / "report.json"
        # fast-deps: each wheel's metadata comes from a few HTTP range requests instead of the whole file (the index pages
        # here carry no PEP 658 metadata link, so without it pip downloads ~4 GB of torch / CUDA wheels on every resolve)
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
                   "--use-feature=fast-deps", "--only-binary=:all:", "--implementation", "cp", "--python-version", PYTHON_VERSION,
                   *[arg for platform in PLATFORMS for arg in ("--platform", platform)], "-r", str(requirements)]
        started = time.time()
        done = subprocess.run(command, env=pip_environment(), capture_output=True, text=True)
        seconds = time.time() - started
        if done.returncode != 0:
            tail = "\n".join(line for line in done.stderr.splitlines() if "is ignored" not in line and "fast-deps" not in line)[-3000:]
            raise SystemExit(f"requirements-gpu.txt no longer resolves for Linux x86-64 / CPython {PYTHON_VERSION} "
                             f"(pip's resolver, {seconds:.0f} s):\n{tail}")
        installed = json.loads(report.read_text())["install"]
    resolved = {normalize(item["metadata"]["name"]): item["metadata"]["version"] for item in installed}
    requires = {normalize(item["metadata"]["name"]): item["metadata"].get("requires_dist") or [] for item in installed}
    drift = {name: (want, resolved.get(name)) for name, want in pinned.items() if resolved.get(name) != want}
    if drift:
        raise SystemExit("requirements-gpu.txt pins and the resolver disagree: "
                         + ", ".join(f"{n} pinned {w}, resolved {g}" for n, (w, g) in drift.items()))
    RESOLVED.write_text(json.dumps({"versions": resolved, "requires": requires}, indent=1, sort_keys=True))
    stack = {name: resolved[name] for name in STACK}
    for name, pinned_version in stack.items():
        print(f"{name:16s} {pinned_version}")
    return {"resolved": True, "packages": len(resolved), "stack": stack, "seconds": round(seconds, 1)}


def overlay() -> dict:
    if not RESOLVED.is_file():
        raise SystemExit(f"{RESOLVED} is missing: run `python -m tools.gpu_set resolve` first")
    data = json.loads(RESOLVED.read_text())
    resolved = data["versions"]
    wanted = {name: resolved[name] for name in OVERLAY if name in resolved}
    # Their dependencies that this interpreter lacks altogether (huggingface_hub 1.x needs httpx, ...).
    wanted.update({name: resolved[name] for name in _dependencies(list(wanted), data) if _installed(name) is None})
    stamp = SITE / ".wanted.json"
    started = time.time()
    if not (stamp.is_file() and json.loads(stamp.read_text()) == wanted):
        needed = [f"{name}=={v}" for name, v in wanted.items() if _installed(name) != v]
        if SITE.exists():
            import shutil

            shutil.rmtree(SITE)
        SITE.mkdir(parents=True)
        if needed:
            subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile", "--only-binary=:all:",
                            "--target", str(SITE), *needed], check=True, env=pip_environment())
        stamp.write_text(json.dumps(wanted))
    found = _versions_in_overlay(list(wanted))
    wrong = {n: (wanted[n], found.get(n)) for n in wanted if found.get(n) != wanted[n]}
    if wrong:
        raise SystemExit(f"the overlay does not give the GPU set's versions: {wrong}")
    for name, v in found.items():
        print(f"{name:16s} {v}")
    return {"overlay": str(SITE.relative_to(ROOT)), "versions": found, "seconds": round(time.time() - started, 1)}


def _dependencies(names: list[str], data: dict) -> set[str]:
    """Every package the given ones need on Linux / CPython 3.11 (no extras), by the resolver's metadata."""
    from packaging.requirements import Requirement

    environment = {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                   "python_version": PYTHON_VERSION, "python_full_version": PYTHON_VERSION + ".0", "extra": ""}
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        for line in data["requires"].get(name, []):
            requirement = Requirement(line)
            dep = normalize(requirement.name)
            if dep in seen or dep not in data["versions"] or _is_gpu_build(dep):
                continue
            if requirement.marker is None or requirement.marker.evaluate(environment):
                seen.add(dep)
                todo.append(dep)
    return seen - set(names)


def _is_gpu_build(name: str) -> bool:
    """torch and the CUDA libraries: the CPU tests keep this machine's CPU build of torch."""
    return name in ("torch", "torchvision", "xformers", "bitsandbytes") or name.startswith(("nvidia-", "cuda-"))


def _installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _versions_in_overlay(names: list[str]) -> dict[str, str]:
    """What a fresh interpreter with the overlay first on its path actually imports."""
    code = ("import json, sys; from importlib.metadata import version; "
            f"print(json.dumps({{n: version(n) for n in {names!r}}}))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SITE), os.environ.get("PYTHONPATH", "")]))}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return {normalize(k): v for k, v in json.loads(done.stdout).items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("resolve", "overlay"))
    args = parser.parse_args(argv)
    result = resolve() if args.command == "resolve" else overlay()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
