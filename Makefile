# KiMap: `make demo` (set up + run the main job on a synthetic case), `make test` (set up + all tests),
# `make web` (set up + serve the point-and-click app on http://127.0.0.1:8080/).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUT    ?= out
PORT   ?= 8080

.PHONY: setup demo test lint model bench bench-peers web clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m KiMapLib demo --out $(OUT)/demo

# The web app (trame-slicer): slice views rendered here, the browser shows images. 127.0.0.1 only; see `kimap web -h`.
web: $(STAMP)
	$(PY) -m KiMapLib web --port $(PORT)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Rebuild the packaged models from their synthetic training cohort (reproducible: fixed seeds). Nested selection
# within the random-forest family (40 mRMR features, leaves of 3 or 8): on validation patients (seed 3131) a forest
# ranked the whole-tumour map's voxels far better than ridge / elastic net, whose biopsy RMSE is similar (README).
model: $(STAMP)
	$(PY) -m KiMapLib phantom --out $(OUT)/training-cohort --patients 30 --seed 2026
	$(PY) -m KiMapLib extract --cohort $(OUT)/training-cohort --out $(OUT)/training-features.csv
	$(PY) -m KiMapLib train --features $(OUT)/training-features.csv --out Resources/Models/kimap-ki67-synthetic-adc-v3 \
	  --model-id kimap-ki67-synthetic-adc-v3 --seed 0 --register --families rf \
	  --data-description "synthetic phantom cohort: kimap phantom --patients 30 --seed 2026"
	$(PY) -m KiMapLib train --features $(OUT)/training-features.csv --out Resources/Models/kimap-ki67-synthetic-v3 \
	  --model-id kimap-ki67-synthetic-v3 --seed 0 --register --families rf --sequences t1c,t2,flair \
	  --data-description "synthetic phantom cohort: kimap phantom --patients 30 --seed 2026 (t1c, t2, flair)"

# The engine vs pyradiomics on the issue-17 inputs (same-run ratios, exactness checked; docs/featuremaps.md):
# TCGA tumour, brain1's enhancing tumour, the phantom's enhancing rim (z-scored, bin widths 25 and 10) and the
# AURORA case's brightest enhancement; r = 1, 2, 3; cube (pyradiomics voxel-based) and ball (normal mode per ball).
# Medians of 3 engine runs and of 3 pyradiomics timings per row. At binWidth 10 pyradiomics runs at ~2-3 voxels/s, so
# its rows time it on 60 voxels (6 balls) instead of 300 (12): ~5 minutes per radius instead of ~25. On TCGA it runs
# at ~250 voxels/s, so 300 voxels are a 1-2 s difference between two calls that each carry 2-5 s of fixed cost: its
# cube rows time 3,000 voxels for a stable marginal rate.
BENCH    := $(PY) -m KiMapLib bench-maps --kernel cube ball --kernel-radius 1 2 3 --pyradiomics-repeats 3
DATA     := ../shared/data
PHANTOM  := $(OUT)/bench/phantom/SYN001
bench: $(STAMP)
	mkdir -p $(OUT)/bench
	test -f $(PHANTOM)/t1c.nrrd || $(PY) -m KiMapLib phantom --out $(OUT)/bench/phantom --patients 1 --seed 2026
	$(BENCH) --name tcga --image $(DATA)/tcga-du-7294/t1c.nii.gz --zscore --reference-voxels 3000 \
	  --mask $(DATA)/tcga-du-7294/tumor_seg_isen20.nii.gz --json $(OUT)/bench/tcga.json
	$(BENCH) --name brain1 --image $(DATA)/pyradiomics-brain/brain1_image.nrrd \
	  --mask $(DATA)/pyradiomics-brain/brain1_label.nrrd --json $(OUT)/bench/brain1.json
	$(BENCH) --name phantom-rim-bw25 --image $(PHANTOM)/t1c.nrrd --zscore \
	  --mask $(PHANTOM)/tumor_label.nrrd --label 2 --bin-width 25 --json $(OUT)/bench/phantom_bw25.json
	$(BENCH) --name phantom-rim-bw10 --image $(PHANTOM)/t1c.nrrd --zscore \
	  --mask $(PHANTOM)/tumor_label.nrrd --label 2 --bin-width 10 --reference-voxels 60 --ball-reference-voxels 6 \
	  --json $(OUT)/bench/phantom_bw10.json
	$(BENCH) --name aurora-brightest --image $(DATA)/aurora-case/t1c.nii.gz --brightest 1500 \
	  --json $(OUT)/bench/aurora.json
	$(PY) Testing/Python/bench_tcga_map.py --slicer

# Peers side by side on brain1 (all tumour voxels, r = 1 and 3): pyradiomics, KiMap, flash-radiomics, ITK
# TextureFeatures. The peers go into their own venv (pinned; not requirements.txt); one that fails to install is
# reported and skipped. flash-radiomics' wheel declares only numpy: its other imports are listed here.
PEERS_VENV := .venv-peers
FLASH      := flash-radiomics==1.0.0 h5py==3.12.1 SimpleITK==2.4.0 pykwalify==1.8.0 PyWavelets==1.8.0 scipy==1.14.1 \
              scikit-image==0.24.0 scikit-learn==1.5.2 trimesh==4.5.3
ITKTEX     := itk-texturefeatures==4.0.1 SimpleITK==2.4.0

bench-peers: $(STAMP)
	mkdir -p $(OUT)/bench
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install --quiet $(FLASH) || echo "bench-peers: flash-radiomics could not be installed; it is skipped"
	$(PEERS_VENV)/bin/pip install --quiet $(ITKTEX) || echo "bench-peers: itk-texturefeatures could not be installed; it is skipped"
	$(PY) Testing/Python/bench_peers.py --peers-python $(PEERS_VENV)/bin/python --json $(OUT)/bench/peers.json

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache
