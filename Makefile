# Two commands on a fresh machine:  `make run` (the app)  and  `make test` (the test suite).
# Both create/refresh the virtual environment .venv first: this checkout installed editable
# (pyproject.toml, with the `test` extra) at the versions pinned in constraints.txt.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
PORT ?= 8501

.PHONY: setup run test checkpoints bench latency clean-venv

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/streamlit run app.py --server.port $(PORT)

test: $(STAMP)
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)

# Rebuild the shipped checkpoints (one per method, seed 0, each method's own training settings)
# with the per-epoch geometry record (NC1-NC4, JND) that the app plots,
# their manifest, the mechanism figures of the Claims page (results/mechanisms.json) and the
# Jacobian page's first view of each (results/precomputed.json).
CKPT_DIGITS := ce movr l2norm ib
CKPT_FINETUNE := oe separation  # fine-tune ce_digits.pt (their pretrain; the same weights as pretraining it again)
CKPT_CANVASES := jointenergy snojoe
checkpoints: $(STAMP)
	$(PY) -m ood_core train --method ce --dataset toy2d --seed 0 --track-geometry 1 --out checkpoints/ce_toy2d.pt --quiet
	for m in $(CKPT_DIGITS); do $(PY) -m ood_core train --method $$m --dataset digits --seed 0 --track-geometry 1 --out checkpoints/$${m}_digits.pt --quiet || exit 1; done
	for m in $(CKPT_FINETUNE); do $(PY) -m ood_core train --method $$m --dataset digits --seed 0 --init checkpoints/ce_digits.pt --track-geometry 1 --out checkpoints/$${m}_digits.pt --quiet || exit 1; done
	for m in $(CKPT_CANVASES); do $(PY) -m ood_core train --method $$m --dataset digit-canvases --seed 0 --track-geometry 1 --out checkpoints/$${m}_canvases.pt --quiet || exit 1; done
	$(PY) -m ood_core manifest checkpoints
	$(PY) -c "from ood_core.claims import write_mechanisms; print(write_mechanisms('checkpoints'))"
	$(PY) -c "from ood_core.precomputed import write_precomputed; print(write_precomputed('checkpoints'))"

# Every method side by side over 5 open-set splits x 5 seeds, and the five claims judged by paired
# 95 % intervals; writes results/compare.json, which the README and the app's Claims page read.
bench: $(STAMP)
	$(PY) benchmarks/compare.py --workers 2

# Every app page's first render and re-render on the shipped checkpoints (AppTest and, with
# Chromium installed, the browser); the README's latency tables come from this.
latency: $(STAMP)
	$(PY) benchmarks/app_latency.py $(if $(wildcard /usr/bin/chromium),--browser)
