# KiMap: `make demo` (set up + run the main job on a synthetic case), `make test` (set up + all tests).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUT    ?= out

.PHONY: setup demo test lint model bench clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m KiMapLib demo --out $(OUT)/demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Rebuild the packaged model from its synthetic training cohort (reproducible: fixed seeds).
model: $(STAMP)
	$(PY) -m KiMapLib phantom --out $(OUT)/training-cohort --patients 30 --seed 2026
	$(PY) -m KiMapLib extract --cohort $(OUT)/training-cohort --out $(OUT)/training-features.csv
	$(PY) -m KiMapLib train --features $(OUT)/training-features.csv --out Resources/Models/kimap-ki67-synthetic-v1 \
	  --model-id kimap-ki67-synthetic-v1 --seed 0 --register \
	  --data-description "synthetic phantom cohort: kimap phantom --patients 30 --seed 2026"

bench: $(STAMP)
	mkdir -p $(OUT)/bench
	for r in 1 2 3; do $(PY) -m KiMapLib bench-maps --image ../shared/data/tcga-du-7294/t1c.nii.gz --zscore \
	  --mask ../shared/data/tcga-du-7294/tumor_seg_isen20.nii.gz --kernel-radius $$r --json $(OUT)/bench/tcga_r$$r.json \
	  || exit 1; done
	$(PY) Testing/Python/bench_tcga_map.py --slicer

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache
