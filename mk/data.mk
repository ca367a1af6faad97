# Demo data (tools/demodata): real music under synthetic, recorded and sung voices, from Debian
# packages. Included from the main Makefile, which provides $(PY) (the venv python), $(SUDO) and `venv`.
#   make demo-data     # 720 train (20 s) + 12 valid + 7 held-out splits x 8 (45 s), wsj0-2mix 200/40/40
#   make demo-data-more  # 1,440 more training tracks (seed 1, training material only): recipes/demo-more.toml
#   make demo-data-more DEMO_DATA_MORE_SEED=2 DEMO_DATA_MORE_DIR=demo-data-more2   # a third draw: recipes/demo-more2.toml
#   make demo-data-formants   # 1,440 more (seed 4): half sung, 70 % of sung/recorded voices given other formants
#   make demo-data DEMO_DATA_ARGS="--train 4 --valid 1 --test 1 --solo 1 --seconds 5 --test-seconds 8 --speakers 10 2 2"
DEMO_DATA_DIR ?= demo-data
DEMO_DATA_ARGS ?= --seed 0
# The package list lives in the tool (stdlib only, so this works before the venv exists).
DEMO_DATA_DEBS := $(shell python3 tools/demodata/packages.py)

DEMO_DATA_MORE_DIR ?= demo-data-more
DEMO_DATA_MORE_SEED ?= 1

.PHONY: demo-data demo-data-more demo-data-formants demo-data-debs

demo-data-debs: ## install the Debian packages the demo data is made from (music, speech synthesis)
	@missing=""; \
	for p in $(DEMO_DATA_DEBS); do \
	  dpkg -s $$p 2>/dev/null | grep -q '^Status: install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "demo-data: installing Debian packages:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get install -y --no-install-recommends $$missing \
	  || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends $$missing; }; \
	fi

# Splits whose options did not change are skipped and utterances are cached: a rerun takes seconds.
demo-data: venv demo-data-debs ## make the training and held-out data in demo-data/ (DEMO_DATA_DIR; tools/demodata)
	$(PY) -m tools.demodata --out $(DEMO_DATA_DIR) $(DEMO_DATA_ARGS)

# A second draw of training tracks (another seed: other excerpts of the training music, other
# utterances and mixes; held-out material stays out by the same hash split). It shares the
# demo data's utterance cache.
demo-data-more: venv demo-data-debs ## make 1,440 more training tracks in demo-data-more/ (DEMO_DATA_MORE_DIR; recipes/demo-more.toml)
	$(PY) -m tools.demodata --out $(DEMO_DATA_MORE_DIR) --seed $(DEMO_DATA_MORE_SEED) --train 1440 --valid 0 --test 0 --solo 0 \
	  --speakers 0 0 0 --cache $(DEMO_DATA_DIR)/.cache/utterances

# A fourth draw for recipes/demo-formants.toml: half the tracks sung, and 70 % of the sung
# phrases and recorded clips given other formants (other vowels, other singers' and speakers'
# vocal tracts), since the held-out choir preset and speakers differ from training by timbre.
demo-data-formants: venv demo-data-debs ## make 1,440 training tracks with more sung and warped formants in demo-data-more3/
	$(PY) -m tools.demodata --out demo-data-more3 --seed 4 --train 1440 --valid 0 --test 0 --solo 0 \
	  --speakers 0 0 0 --train-kinds sung=0.5,speech=0.25,recorded=0.25 --formant-share 0.7 \
	  --cache $(DEMO_DATA_DIR)/.cache/utterances
