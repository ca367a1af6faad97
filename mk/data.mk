# Demo data (chimera.data.synth): real music + synthetic voices from Debian packages.
# Included from the main Makefile, which provides $(PY) (the venv python) and the `venv` target.
#   make demo-data                         # 480 train + 8 valid + 8 test tracks of 20 s (~5 GB, ~3 min), wsj0-2mix 200/40/40
#   make demo-data DEMO_DATA_ARGS="--train 4 --valid 1 --test 1 --seconds 5 --speakers 10 2 2"
DEMO_DATA_DIR ?= demo-data
DEMO_DATA_ARGS ?= --seed 0 --train 480 --valid 8 --test 8 --seconds 20
DEMO_DATA_DEBS := warzone2100-music wesnoth-1.16-music espeak-ng flite festival festvox-kallpc16k \
	festvox-us-slt-hts festlex-cmu festlex-poslex fortunes-min fortunes
# apt-get needs root: use sudo when not root (and when sudo exists).
DEMO_DATA_SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: demo-data demo-data-debs

demo-data-debs: ## install the Debian packages the demo data is made from (music, speech synthesis)
	@missing=""; \
	for p in $(DEMO_DATA_DEBS); do \
	  dpkg -s $$p 2>/dev/null | grep -q '^Status: install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "demo-data: installing Debian packages:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(DEMO_DATA_SUDO) apt-get install -y --no-install-recommends $$missing \
	  || { $(DEMO_DATA_SUDO) apt-get update && $(DEMO_DATA_SUDO) apt-get install -y --no-install-recommends $$missing; }; \
	fi

# Splits whose options did not change are skipped and utterances are cached: a rerun takes seconds.
demo-data: venv demo-data-debs ## make the synthetic training data in $(DEMO_DATA_DIR)/ (~5 GB)
	$(PY) -m chimera.data.synth --out $(DEMO_DATA_DIR) $(DEMO_DATA_ARGS)
