# Two commands on a fresh machine:  `make run` (the app)  and  `make test` (the test suite).
# Both create/refresh the virtual environment .venv from requirements.txt first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
PORT ?= 8501

.PHONY: setup run test checkpoints clean-venv

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/streamlit run app.py --server.port $(PORT)

test: $(STAMP)
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)

# Rebuild the shipped checkpoints of the embedded benchmark (seed 0) and their manifest.
checkpoints: $(STAMP)
	$(PY) -m ood_core train --method ce --dataset digits --epochs 30 --seed 0 --out checkpoints/ce_digits.pt --quiet
	$(PY) -m ood_core train --method ce --dataset toy2d --epochs 30 --seed 0 --out checkpoints/ce_toy2d.pt --quiet
	$(PY) -m ood_core manifest checkpoints
