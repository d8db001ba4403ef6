# Two commands on a fresh machine:  `make run`  (serve the app)  and  `make test`  (install + run every test).
PYTHON ?= python3
# `make run GPU=1` uses a separate virtualenv with the Unsloth stack (requirements-gpu.txt).
ifeq ($(GPU),1)
VENV   := .venv-gpu
REQS   := requirements-gpu.txt
TORCH  :=
else
VENV   := .venv
REQS   := requirements-dev.txt
# torch is pinned to the CPU build (a file on local disk here); an unpinned torch pulls a multi-GB CUDA build.
TORCH  := torch==2.13.0
endif
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8501
# pytest-xdist workers for `make test` (2: the CI box has two cores; the suite took 1106 s on one, 879 s on two)
TEST_WORKERS ?= 2
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt $(REQS) | sha1sum | cut -c1-12)
RAY_STAMP := $(VENV)/.installed-ray-$(shell cat requirements-ray.txt | sha1sum | cut -c1-12)

.PHONY: install run test chromium gpu-set ray-extra bench clean-venv

# pip byte-compiles what it installs one file at a time (about half of a clean install); compileall does it on every core
# afterwards (exit 1 only names files that never compile, e.g. other Pythons' test data: pip ignores those too).
PIP     = $(BIN)/python -m pip install -q --disable-pip-version-check --no-compile
COMPILE = $(BIN)/python -m compileall -q -j 0 $(VENV)/lib >/dev/null || true

$(STAMP): requirements.txt $(REQS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(if $(TORCH),$(PIP) $(TORCH))
	$(PIP) -r $(REQS) $(TORCH)
	$(COMPILE)
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

# Ray Data (curation on a cluster) is an extra: large, so only `make test` (and `make ray-extra`) install it.
$(RAY_STAMP): requirements-ray.txt $(STAMP)
	$(PIP) -r requirements-ray.txt $(TORCH)
	$(COMPILE)
	rm -f $(VENV)/.installed-ray-*
	touch $@

ray-extra: $(RAY_STAMP)

# Debian's chromium for the end-to-end test (Playwright's own browser download cannot work offline), and a colour emoji
# font: without it the page icons in the screenshots the test writes for README (WORKBENCH_SCREENSHOTS) are empty boxes.
chromium:
	@{ command -v chromium >/dev/null 2>&1 && [ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ]; } || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium fonts-noto-color-emoji >/dev/null; }

# HOST other than 127.0.0.1: the app has no authentication, so this needs WORKBENCH_ALLOW_REMOTE=1 (see README).
run: install
	$(BIN)/python -m tools.host_check $(HOST) $(PORT)
	$(BIN)/python -m core.models --prepare
	$(BIN)/streamlit run app.py --server.address $(HOST) --server.port $(PORT) --server.headless true --browser.gatherUsageStats false

# The GPU set must still resolve for a Linux CUDA target (pip's resolver, dry run: registry metadata only), and the
# CPU training tests run a second time on its transformers / TRL / datasets versions (an overlay, hf backend).
gpu-set: install
	$(BIN)/python -m tools.gpu_set resolve
	$(BIN)/python -m tools.gpu_set overlay

# `make test` runs gpu-set's two steps beside the main pytest pass: they wait on the registry (~30 s resolve, ~40 s overlay
# on a clean clone) more than they use the CPU. Their output follows the pass; either failing fails the target.
# The gpuset pass on two workers (worksteal): its stop / resume test (~80 s, mostly worker start-ups) runs beside the other
# four instead of after them.
test: install chromium ray-extra
	$(BIN)/ruff check .
	mkdir -p .gpuset; \
	{ $(BIN)/python -m tools.gpu_set resolve && $(BIN)/python -m tools.gpu_set overlay; } > .gpuset/gpu-set.log 2>&1 & gpuset=$$!; \
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder; tests=$$?; \
	wait $$gpuset; gpu=$$?; echo "== gpu-set (resolve + overlay, run beside the tests)"; cat .gpuset/gpu-set.log; \
	[ $$gpu = 0 ] || echo "gpu-set failed (exit $$gpu)"; [ $$tests = 0 ] && [ $$gpu = 0 ]
	PYTHONPATH=.gpuset/site $(BIN)/python -m pytest -q -m gpuset -p no:cacheprovider -n $(TEST_WORKERS) --dist worksteal tests/test_train.py

bench: install
	@for script in bench/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean-venv:
	rm -rf $(VENV)
