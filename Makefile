# unifork: the two commands of the quick start, and what they need.
#
#   make demo    set up this machine if needed, then run the example job
#   make test    set up this machine if needed, then run the whole test suite
#   make setup   install what is missing (apt packages, the venv, the guest); idempotent
#   make bench   run the benchmarks in bench/

PYTHON   ?= python3
VENV     := .venv
APT_PKGS := qemu-system-x86 musl-tools gcc make libc6-dev python3-venv util-linux redis-server iproute2 busybox-static bash-static nftables libssl-dev \
            openssh-server supervisor git docker-compose systemd \
            libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config

setup: .setup/apt .setup/libvirt $(VENV)/.installed guest native
	@$(VENV)/bin/python -m compileall -q broker workers bench tests >/dev/null

# Debian packages, installed only when one is missing.
.setup/apt: Makefile
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@mkdir -p .setup && touch $@

# The libvirt driver's QEMU user, as libvirt-daemon-system would make it
# (that package also brings a service manager this machine does not run):
# libvirtd will not start without it.  Tests start libvirtd themselves.
.setup/libvirt: .setup/apt
	@getent group kvm >/dev/null || groupadd --system kvm
	@getent passwd libvirt-qemu >/dev/null || useradd --system --no-create-home \
		--home-dir /var/lib/libvirt --shell /usr/sbin/nologin --user-group --groups kvm libvirt-qemu
	@id -nG libvirt-qemu | grep -qw kvm || usermod -a -G kvm libvirt-qemu
	@mkdir -p .setup && touch $@

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test,libvirt]' --config-settings editable_mode=compat
	@# The launcher is the minimal one: pip's console-script template imports
	@# re (7 ms here) and `site` costs 3 ms more; `unifork run` is measured
	@# against a bare QEMU launch.  It puts the project and the venv's
	@# packages on sys.path itself (none of them needs a .pth file).
	purelib=$$($(VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	printf '#!%s -S\nimport sys\nsys.path[:0] = ["%s"]\nsys.path.append("%s")\nfrom broker.cli import entry\nentry()\n' \
		"$(CURDIR)/$(VENV)/bin/python" "$(CURDIR)" "$$purelib" > $(VENV)/bin/unifork
	chmod +x $(VENV)/bin/unifork
	touch $@

guest:
	@$(MAKE) -s -C guest

# The host's native half (workers/native/: the pipe bridge's channels and
# its data path between rings and channels, the fast doorbell's backend),
# loaded by workers/native/lib.py; ufnet.h is its interface.  Built aside
# and renamed into place: a running worker keeps the library it mapped.
NATIVE_SRC := $(wildcard workers/native/*.c)
native: workers/native/libufnet.so
workers/native/libufnet.so: $(NATIVE_SRC) $(wildcard workers/native/*.h) guest/include/unifork_abi.h
	gcc -O2 -g -Wall -Wextra -shared -fPIC -pthread -o $@.new $(NATIVE_SRC) -lcrypto
	mv $@.new $@

# The example job: 8 forked workers count primes, results come back through
# pipes, a formatter process (stdin dup2'ed from a pipe) prints the table.
# Each process is a VM; the result is checked against the native run.
demo: setup
	@echo '$$ unifork run guest/build/examples/primes.musl 2000000 8'
	@$(VENV)/bin/unifork run guest/build/examples/primes.musl 2000000 8 | tee .setup/demo.out
	@guest/build/examples/primes.musl 2000000 8 | cmp -s - .setup/demo.out \
		&& echo "(identical to the native run)" || { echo "DIFFERS from the native run"; exit 1; }

test: setup
	$(VENV)/bin/python -m pytest -q

bench: setup
	$(VENV)/bin/python bench/boot.py
	$(VENV)/bin/python bench/fork.py
	$(VENV)/bin/python bench/shell.py
	$(VENV)/bin/python bench/files.py
	$(VENV)/bin/python bench/pipes.py
	$(VENV)/bin/python bench/cluster.py
	$(VENV)/bin/python bench/xpipe.py
	$(VENV)/bin/python bench/lossy.py
	$(VENV)/bin/python bench/drivers.py

clean:
	$(MAKE) -C guest clean
	rm -f workers/native/libufnet.so
	rm -rf .setup

.PHONY: setup guest native demo test bench clean
