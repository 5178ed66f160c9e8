# Everything the project needs is installed from here; nothing by hand.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-fast lint bench bench-peers serve scan clean install-desktop screenshot

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[demo,dev]'
	touch $(STAMP)

# The desktop app where a display exists (DISPLAY / WAYLAND_DISPLAY), else the headless server.
run: $(STAMP)
	$(VENV)/bin/switchboard

serve: $(STAMP)
	$(VENV)/bin/switchboard serve

scan: $(STAMP)
	$(VENV)/bin/switchboard scan

# Lint, types, then every test (what CI runs).
test: lint
	$(PY) -m pytest

# The unit tests only (no processes, sockets or sleeps), property tests at a tenth of their examples: seconds.
test-fast: $(STAMP)
	HYPOTHESIS_EXAMPLES_SCALE=0.1 $(PY) -m pytest tests/unit tests/test_layout.py -q

lint: $(STAMP)
	$(VENV)/bin/ruff check app tests bench packaging
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m bench

# llama.cpp's llama-server for `python -m bench concurrency`, built from the llama.cpp vendored in the installed
# llama-cpp-python's source distribution, into ~/.cache/switchboard/peers/ (10-20 minutes on 2 cores).
bench-peers: $(STAMP)
	$(PY) -m bench.peers

# The .desktop entry and icons for this user, so the app starts from the applications menu or a file manager.
APPS_DIR  := $(HOME)/.local/share/applications
ICONS_DIR := $(HOME)/.local/share/icons/hicolor
install-desktop: $(STAMP)
	install -d $(APPS_DIR)
	sed 's|^Exec=switchboard |Exec=$(abspath $(VENV))/bin/switchboard |' packaging/linux/switchboard.desktop \
		> $(APPS_DIR)/switchboard.desktop
	chmod 644 $(APPS_DIR)/switchboard.desktop
	for size in 16 32 64 128 256; do \
		install -Dm644 app/ui/icons/switchboard-$$size.png $(ICONS_DIR)/$${size}x$${size}/apps/switchboard.png; \
	done
	install -Dm644 app/ui/icons/switchboard.svg $(ICONS_DIR)/scalable/apps/switchboard.svg
	if command -v update-desktop-database >/dev/null; then update-desktop-database -q $(APPS_DIR); fi
	if command -v gtk-update-icon-cache >/dev/null; then gtk-update-icon-cache -q -t $(ICONS_DIR); fi
	@echo "installed $(APPS_DIR)/switchboard.desktop and icons under $(ICONS_DIR)"

# Screenshots of the real window (default model loaded) under Xvfb, saved in docs/.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages: the X server, and the libraries Qt's xcb platform plugin loads that minimal systems lack.
XCB_LIBS := libxcb-cursor.so.0:libxcb-cursor0 libxcb-icccm.so.4:libxcb-icccm4 libxcb-keysyms.so.1:libxcb-keysyms1
screenshot: $(STAMP)
	@missing=""; command -v Xvfb >/dev/null || missing="xvfb xauth"; \
	for pair in $(XCB_LIBS); do \
		PATH="$$PATH:/sbin:/usr/sbin" ldconfig -p | grep -q "$${pair%%:*}" || missing="$$missing $${pair##*:}"; \
	done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q $$missing; fi
	xvfb-run -a -s "-screen 0 1600x900x24" $(PY) packaging/screenshot.py

clean:
	rm -rf $(VENV) build *.egg-info
