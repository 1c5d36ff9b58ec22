# vmsup build and test entry points. `make test` is what CI runs.
GO ?= go
CACHE ?= $(CURDIR)/.cache

.PHONY: test vet unit guest demo

# The test command: vet, then every test with the race detector, real QEMU
# included.
test: vet
	$(GO) test -race -count=1 -timeout 20m ./...

vet:
	$(GO) vet ./...
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi

# Builds the tiny Linux guest (kernel + busybox initramfs from Debian
# packages) into $(CACHE)/guest.
guest:
	VMSUP_CACHE=$(CACHE) bash tests/guest/build-guest.sh

# Boots the tiny guest under supervision and shows its console; Ctrl-C shuts
# it down gracefully.
demo: guest
	$(GO) run ./examples/supervise -kernel $(CACHE)/guest/vmlinuz -initrd $(CACHE)/guest/initrd.img
