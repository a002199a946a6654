# bootcert — the two commands are `make demo` and `make test`.
SHELL := /bin/bash
GO    ?= go
export PATH := /usr/local/go/bin:$(PATH)

BIN   := bin
GOTEST_FLAGS ?= -count=1 -timeout 12m

# Release build of the shipped binaries (.deb/.rpm): cgo on (PKCS#11 needs it),
# the in-process TPM simulator left out (tag nosimulator: no libcrypto, demos
# only), stripped, no inlining (-l: about 0.7 MiB smaller, same behaviour).
# Use: CGO_ENABLED=$(RELEASE_CGO) $(GO) build $(RELEASE_FLAGS) $(RELEASE_GCFLAGS) -ldflags='$(RELEASE_LDFLAGS)' ./cmd/bootcertd
# Figures: docs/bootcertd.md (footprint), `make bench-daemon`.
RELEASE_CGO     := 1
RELEASE_FLAGS   := -trimpath -tags nosimulator
RELEASE_GCFLAGS := -gcflags=all=-l
RELEASE_LDFLAGS := -s -w

.PHONY: all deps deps-packages build sizes test test-compat test-go vet bench bench-daemon bench-fleet bench-storm bench-factory bench-lab factory-demo demo lambdas packages test-packages test-fresh clean

all: build

## deps: install the Debian packages tests and demo need (only missing ones)
deps:
	@./scripts/deps.sh

## deps-packages: deps plus what make test-packages needs: Debian's arm64 and armhf cross compilers, qemu-user-static
deps-packages:
	@./scripts/deps.sh packages

## build: the four binaries into bin/: bootcertd, bootcertctl (the gateway's package), bootcert-admin (the account tool, its own package), bootcert-lab
build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./cmd/bootcertd ./cmd/bootcertctl ./cmd/bootcert-admin ./cmd/bootcert-lab

## sizes: stripped sizes of the shipped binaries built with the RELEASE_* flags (what make packages ships on this architecture)
sizes:
	@d=$$(mktemp -d) && trap 'rm -rf "$$d"' EXIT && \
	  CGO_ENABLED=$(RELEASE_CGO) $(GO) build $(RELEASE_FLAGS) $(RELEASE_GCFLAGS) -ldflags='$(RELEASE_LDFLAGS)' -o "$$d/" ./cmd/bootcertd ./cmd/bootcertctl ./cmd/bootcert-admin && \
	  for b in bootcertd bootcertctl bootcert-admin; do \
	    stat -c '%n %s' "$$d/$$b" | awk '{ n = $$1; sub(".*/", "", n); printf "%-15s %9d bytes  %5.2f MiB\n", n, $$2, $$2 / 1048576 }'; \
	  done

## test: install what is missing, then run every test
test: deps vet
	CGO_ENABLED=0 $(GO) build ./cmd/bootcertctl ./cmd/bootcert-admin
	$(GO) test $(GOTEST_FLAGS) ./...

## test-compat: only the clients nobody here wrote (AWS IoT Device SDK for JavaScript, the Lambda zips under the Runtime Interface Emulator, the IAM check, cfn-lint where installed); part of make test too
test-compat: deps
	$(GO) test $(GOTEST_FLAGS) -v ./cloud/compat/...

## vet: go vet, go.mod tidy, staticcheck (pinned in tools/go.mod)
vet:
	$(GO) vet ./...
	$(GO) mod tidy -diff
	$(GO) tool -modfile=tools/go.mod staticcheck ./...

## bench: benchmark tables (figures, not assertions); the 15-minute idle memory run is in bench-daemon
bench: deps
	$(GO) test -run '^$$' -bench . -benchmem ./keystore/...
	$(GO) test -run '^$$' -bench . -benchmem ./attest/
	$(GO) test -run '^$$' -bench . -benchmem ./cloud/lab/...
	$(GO) test -run '^$$' -bench 'BootstrapToOperational|StartToReady|BinarySize' -benchtime 20x ./daemon/e2e

## bench-daemon: bootcertd figures (docs/bootcertd.md, Footprint): rotation overhead beyond TPM time p50/p99 and start to READY over 50 runs on swtpm, TPM commands per rotation; idle PSS/RSS of the release build (samples every 10s for 10m after a 5m warm-up: BENCH_IDLE_WARMUP, BENCH_IDLE_DURATION, BENCH_IDLE_INTERVAL shorten it); stripped sizes
bench-daemon: deps
	$(GO) test -run '^$$' -bench 'BootstrapToOperational|StartToReady' -benchtime 50x -timeout 30m ./daemon/e2e
	$(GO) test -run '^$$' -bench 'IdleRSS|BinarySize' -benchtime 1x -timeout 60m ./daemon/e2e

## bench-fleet: the lab's fleet load harness (2,000 TLS MQTT clients at 500 connects/s; see bench/README.md)
FLEET_FLAGS ?= -clients 2000 -rate 500
bench-fleet:
	$(GO) run ./bench/fleet $(FLEET_FLAGS)

## bench-storm: fleet power-on storm, N gateways running the real engine against the lab with the real template and scaled aws-default quotas (bench/README.md)
STORM_FLAGS ?= -devices 50 -window 1s -scale 10 -lab build
bench-storm:
	$(GO) run ./bench/storm/cmd/bench-storm $(STORM_FLAGS)

## bench-lab: lab figures (registry JITR+activation flow: in memory, synced writes, write-behind; limiter; SDK calls over TLS)
bench-lab:
	$(GO) test -run '^$$' -bench . -benchtime 100x ./cloud/lab/registry ./cloud/lab/limits ./cloud/lab/api

## bench-factory: factory figures (issue, CRL, manifest append, provision on swtpm and SoftHSM2)
bench-factory: deps
	$(GO) test -run '^$$' -bench . -benchmem ./factory ./manifest
	$(GO) test -run '^$$' -bench Provision -benchtime 20x ./ctl

## factory-demo: the factory runbook (docs/factory.md) on SoftHSM2 + swtpm, in a temporary directory
factory-demo: deps build
	BOOTCERTCTL=$(BIN)/bootcertctl ./packaging/factory/station-demo.sh

## demo: the main job, end to end on this machine (SCENARIO=default|rollback|crash|fleet-provisioning, KEEP=1 keeps the directory; docs/demo.md)
SCENARIO ?= default
demo: deps
	@SCENARIO=$(SCENARIO) KEEP=$(KEEP) ./scripts/demo.sh

## lambdas: Lambda bootstrap zips (provided.al2023) for arm64 and x86_64 in dist/lambda/<arch>/<name>.zip
lambdas:
	@./scripts/lambdas.sh dist/lambda
	@ls -l dist/lambda/*/*.zip

## packages: $(DIST)/bootcert_<version>_<arch>.deb and bootcert-<version>-1.<rpmarch>.rpm (the gateway: bootcertd, bootcertctl), bootcert-admin_<version>_<arch>.deb and bootcert-admin-<version>-1.<rpmarch>.rpm (the account tool) with the RELEASE_* flags for amd64, arm64, armhf (cgo: TPM + PKCS#11; Debian's cross compilers from make deps-packages, against Debian 11's libc: scripts/sysroot.sh downloads it once into dist/cache); with man pages, completions, copyright; Depends: libc6 (>= the glibc the binaries need); VERSION=x.y.z overrides git describe, ARCHES=amd64 builds one
## sign the result: BOOTCERT_SIGN_KEY=<key> [GNUPGHOME=dir] packaging/release/sign.sh $(DIST) (rpm --addsign, signed apt repository in $(DIST)/apt; docs/operators.md)
DIST ?= dist
packages:
	@RELEASE_CGO='$(RELEASE_CGO)' RELEASE_FLAGS='$(RELEASE_FLAGS)' RELEASE_GCFLAGS='$(RELEASE_GCFLAGS)' \
	  RELEASE_LDFLAGS='$(RELEASE_LDFLAGS)' GO='$(GO)' ./packaging/release/build.sh $(DIST)

## test-packages: package tests (downloads; not part of make test; roots cached in dist/cache): release_test.go for amd64, arm64, armhf; install-test.sh (the .deb in a debootstrapped Debian 12: install, upgrade, remove; the .rpm with rpm --root); arch-test.sh (signed packages: rpm -K, apt from the signed repository into Debian 12 for each architecture, arm64 and armhf under qemu-user, bootcertd/bootcertctl --version and a PKCS#11 key in that architecture's SoftHSM2; the amd64 .deb in Debian 11)
test-packages: deps deps-packages
	BOOTCERT_TEST_PACKAGES=1 CI=true $(GO) test $(GOTEST_FLAGS) ./packaging/release ./internal/gendocs
	@./packaging/release/install-test.sh
	@./packaging/release/arch-test.sh

## test-fresh: make test (CI=true) in a bare Debian 12 root (debootstrap minbase + git, make, ca-certificates, and this Go); downloads, so not part of make test
test-fresh: deps
	@./scripts/test-fresh.sh

clean:
	rm -rf $(BIN) dist
