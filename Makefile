# vmsup build and test entry points. `make test` is what CI runs.
GO ?= go
CACHE ?= $(CURDIR)/.cache
BIN ?= $(CURDIR)/bin

.PHONY: test vet unit guest image image-smoke guest-smoke demo demo-tiny demo-run demo-image test-debian bench fuzz vmsup qemu

# The test command: vet, then every test with the race detector, real QEMU
# included.
test: vet
	$(GO) test -race -count=1 -timeout 20m ./...

# Runs every fuzz target for FUZZTIME each (their seeds in testdata/ also
# run under make test). CI runs it briefly after make test.
FUZZTIME ?= 10s
FUZZ_TARGETS = ./domain:FuzzParseSpec ./monitor:FuzzTransportLines ./monitor:FuzzParseCommand \
	./cmd/internal/server:FuzzRequest ./cmd/internal/server:FuzzCheckQMPCommand ./domain/netcfg:FuzzParseForward
# The access decision and the host policy's checks.
FUZZ_TARGETS += ./cmd/internal/server:FuzzAuthorize ./cmd/internal/peer:FuzzDecide \
	./domain/policy:FuzzCheckPath ./domain/policy:FuzzQMPAllowed
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$name ($$pkg) for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 5s $$pkg; \
	done

vet:
	$(GO) vet ./...
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi

# Builds the tiny Linux guest (kernel + busybox initramfs from Debian
# packages) into $(CACHE)/guest.
guest:
	VMSUP_CACHE=$(CACHE) bash tests/guest/build-guest.sh

# Boots the tiny guest with plain QEMU and checks its console lines, its
# network, HTTP server, seed reader, disk marker and console shell.
guest-smoke:
	VMSUP_CACHE=$(CACHE) bash tests/guest/smoke.sh

# Builds the demo VM image (Debian 12 with cloud-init, SSH and the guest
# agent, from Debian packages) into $(CACHE)/image; a no-op while the
# package versions and the script are unchanged. FORCE=1 rebuilds.
image:
	VMSUP_CACHE=$(CACHE) bash tests/image/build-image.sh $(if $(FORCE),--force)

# Boots the demo image with plain QEMU (no vmsup): SSH with a generated key,
# the guest agent, an ACPI powerdown. Prints the boot-to-SSH time.
image-smoke:
	VMSUP_CACHE=$(CACHE) bash tests/image/smoke.sh

# Builds the vmsup CLI and the daemon it runs for `vmsup daemon`, vmsupd,
# into $(BIN) (ignored by git). They are two binaries so that the CLI does
# not link (and initialise) the daemon's packages.
vmsup:
	$(GO) build -o $(BIN)/ ./cmd/vmsup ./cmd/vmsupd

# QEMU must be installed: as root it is installed with apt-get; otherwise the
# exact command is printed and make fails. A root daemon runs QEMU as the
# system user vmsup-qemu: as root it is created when missing.
qemu:
	@if [ "$$(id -u)" = 0 ] && ! id vmsup-qemu >/dev/null 2>&1; then \
		echo "creating the QEMU user: useradd --system --no-create-home --shell /usr/sbin/nologin vmsup-qemu"; \
		useradd --system --no-create-home --shell /usr/sbin/nologin vmsup-qemu; \
	fi
	@if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing QEMU: apt-get install -y --no-install-recommends qemu-system-x86"; \
			apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends qemu-system-x86; \
		else \
			echo "QEMU (qemu-system-x86_64) is missing. Install it with:" >&2; \
			echo "  sudo apt-get install -y --no-install-recommends qemu-system-x86" >&2; \
			exit 1; \
		fi; \
	fi

# The demo: the Debian 12 image (make image) under a vmsup daemon, with its
# console attached. The daemon runs on a temp state dir (its own session,
# so Ctrl-C never reaches it), VMSUP_SOCKET points into that dir, and
# `vmsup up $(DEMO_SPEC)` runs in the foreground: it fills your SSH key
# (or one it generates under the cache) into the guest's cloud-init, and
# prints the `vmsup ssh demo` line once SSH answers. Ctrl-C shuts the guest
# down through ACPI; on exit the VM is destroyed if it still runs and the
# daemon is stopped. make demo-tiny does the same with the tiny guest.
DEMO_SPEC ?= examples/debian.yaml
DEMO_NAME ?= demo
demo: qemu demo-image vmsup
	@$(MAKE) --no-print-directory demo-run
demo-tiny: qemu guest vmsup
	@$(MAKE) --no-print-directory demo-run DEMO_SPEC=examples/tiny.yaml DEMO_NAME=tiny
demo-run:
	@dir=$$(mktemp -d "$${TMPDIR:-/tmp}/vmsup-demo.XXXXXX"); \
	chmod 0711 "$$dir"; \
	chmod 711 "$$dir"; \
	export VMSUP_SOCKET="$$dir/vmsup.sock"; \
	setsid $(BIN)/vmsup daemon --state-dir "$$dir/state" --image-root "$(CURDIR)/.cache" --log-format console 2>"$$dir/daemon.log" & \
	daemon=$$!; \
	cleanup() { \
		status=$$?; \
		$(BIN)/vmsup destroy $(DEMO_NAME) >/dev/null 2>&1 || true; \
		kill -TERM $$daemon 2>/dev/null && wait $$daemon 2>/dev/null; \
		if [ $$status -ne 0 ] && [ $$status -ne 130 ]; then \
			echo "vmsup daemon log ($$dir/daemon.log):" >&2; tail -n 20 "$$dir/daemon.log" >&2; \
		fi; \
		rm -rf "$$dir"; \
	}; \
	trap cleanup EXIT; \
	trap 'exit 130' INT TERM; \
	for i in $$(seq 100); do \
		$(BIN)/vmsup list >/dev/null 2>&1 && break; \
		kill -0 $$daemon 2>/dev/null || { echo "vmsup daemon failed to start" >&2; exit 1; }; \
		sleep 0.1; \
	done; \
	echo "vmsup daemon pid $$daemon, state dir $$dir/state, VMSUP_SOCKET=$$VMSUP_SOCKET"; \
	$(BIN)/vmsup up $(DEMO_SPEC)

# The image for the demo: as root, make image (it checks the package
# versions); otherwise the image built earlier with sudo make image, as is.
demo-image:
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory image; \
	else VMSUP_CACHE=$(CACHE) bash tests/image/build-image.sh --cached >/dev/null; fi

# End to end: boots the Debian image with vmsup up, runs
# `vmsup ssh demo -- uname -a`, and shuts it down with SIGINT (ACPI).
# .ci/run runs it after make test; about 90 s to SSH under TCG.
test-debian: demo-image vmsup
	VMSUP_CACHE=$(CACHE) BIN=$(BIN) bash tests/image/e2e.sh

# Runs the benchmarks: vmsup side by side with raw QMP, libvirt's lock
# design (tests/bench/lockbase), 10,000 simulated domains and real QEMUs.
# Prints one table and writes docs/BENCHMARKS.md; about 6 minutes on 2
# cores. One group of rows: go run ./tests/bench/cmd/benchtable -only floor
bench:
	$(GO) run ./tests/bench/cmd/benchtable -out docs/BENCHMARKS.md
