# amesh — `make demo` shows it, `make test` checks it. See README.md.
SHELL := /bin/bash
GO    ?= go
# Debian packages: what `make demo` runs (the lab's ip/nsenter and the curl it shows), and what
# the tests and benchmarks need besides (clang and libbpf to check the committed eBPF objects,
# protoc for the API's generated code, iperf3, tcpdump, containerd and runc for the real nodes of
# test/node: no service is started, each test node runs its own).
DEMO_PKGS := curl iproute2 util-linux
APT_PKGS  := $(DEMO_PKGS) procps clang llvm libbpf-dev bpftool iperf3 tcpdump protobuf-compiler containerd runc
SUDO  := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FUZZTIME ?= 60s
BENCHTIME ?= 3s
# Peers for benchmarks are built outside the repo, from the scratch modules in ../shared/recipes.
CACHE   ?= $(HOME)/.cache/amesh
RECIPES ?= $(CURDIR)/../shared/recipes
GHOSTUNNEL := $(CACHE)/bin/ghostunnel
# SPIRE server and agent v1.13.3 for the SPIRE identity tests, from the recipe's scratch module
# (its go.sum pins them); ~8.5 min to build on a cold cache, once.
SPIRE_BIN := $(CACHE)/bin
# Real Kubernetes parts for the tests (built from modules, cached outside the repo): the CNI
# reference plugins + cnitool, and kube-apiserver + etcd + kubectl from test/k8s/tools (its go.sum
# pins them; the first build takes minutes).
CNI_PLUGINS_VERSION := v1.9.1
CNITOOL_VERSION     := v1.3.1
CNI_BIN  := $(CACHE)/cni/bin
K8S_BIN  := $(CACHE)/k8s
# promtool, Prometheus' metrics linter, from Debian's prometheus package, unpacked (not installed).
PROMTOOL := $(CACHE)/prometheus/usr/bin/promtool
K8S_VERSION := v1.37.2
K8S_LDFLAGS := -s -w $(foreach p,k8s.io/component-base/version k8s.io/client-go/pkg/version,-X $(p).gitVersion=$(K8S_VERSION) -X $(p).gitMajor=1 -X $(p).gitMinor=37 -X $(p).gitTreeState=clean -X $(p).buildDate=2026-01-01T00:00:00Z)

.PHONY: bench-scale image e2e-envoy all deps demo-deps base-deps soak cni-plugins k8s-bins promtool spire-bins build bin test unit race lint fmt-check vet staticcheck generate fuzz bench bench-suite peers demo clean clean-lab

all: build

## deps: install what build and tests need (idempotent, quiet when done)
deps: PKGS = $(APT_PKGS)
deps: base-deps
	@$(GO) build -o /dev/null tool
	@$(MAKE) --no-print-directory cni-plugins k8s-bins promtool spire-bins

## spire-bins: spire-server and spire-agent v1.13.3 into $(CACHE)/bin, once
spire-bins: $(SPIRE_BIN)/spire-server $(SPIRE_BIN)/spire-agent
$(SPIRE_BIN)/spire-server $(SPIRE_BIN)/spire-agent:
	@test -f $(RECIPES)/spire/go.mod || { echo "spire-bins: $(RECIPES)/spire missing"; exit 1; }
	@echo "deps: building $(notdir $@) v1.13.3 into $(SPIRE_BIN) (minutes, once)"
	@mkdir -p $(CACHE)/src/spire $(SPIRE_BIN)
	@cp $(RECIPES)/spire/go.mod $(RECIPES)/spire/go.sum $(CACHE)/src/spire/
	cd $(CACHE)/src/spire && GONOSUMDB=github.com/GoogleCloudPlatform/cloudsql-proxy $(GO) build -mod=mod -o $@ github.com/spiffe/spire/cmd/$(notdir $@)

## promtool: Debian's promtool, unpacked into $(CACHE)/prometheus, once (the tests lint a scrape)
promtool: $(PROMTOOL)
$(PROMTOOL):
	@echo "deps: unpacking promtool from Debian's prometheus package into $(CACHE)/prometheus"
	@d=$$(mktemp -d) && cd $$d && { apt-get download prometheus >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && apt-get download prometheus >/dev/null; }; } && \
	  mkdir -p $(CACHE)/prometheus && dpkg-deb -x prometheus_*.deb $(CACHE)/prometheus && rm -rf $$d && test -x $@

## demo-deps: only what `make demo` runs: its Debian packages, bpffs, the Go modules
demo-deps: PKGS = $(DEMO_PKGS)
demo-deps: base-deps

# base-deps installs $(PKGS) (set by the target that asks for it), mounts bpffs and downloads
# the Go modules.
base-deps:
	@missing=""; for p in $(PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null || exit 1; \
	fi
	@if ! mountpoint -q /sys/fs/bpf; then \
	  echo "deps: mounting bpffs on /sys/fs/bpf"; $(SUDO) mount -t bpf bpf /sys/fs/bpf || exit 1; \
	fi
	@$(GO) mod download

## cni-plugins: the reference CNI plugins (bridge, host-local, loopback) and cnitool, pinned
cni-plugins: $(CNI_BIN)/bridge $(CNI_BIN)/host-local $(CNI_BIN)/loopback $(CNI_BIN)/cnitool
$(CNI_BIN)/bridge $(CNI_BIN)/host-local $(CNI_BIN)/loopback:
	@echo "deps: building CNI plugin $(@F) $(CNI_PLUGINS_VERSION) into $(CNI_BIN)"
	@mkdir -p $(CNI_BIN)
	@GOBIN=$(CNI_BIN) $(GO) install github.com/containernetworking/plugins/plugins/$(if $(filter host-local,$(@F)),ipam,main)/$(@F)@$(CNI_PLUGINS_VERSION)
$(CNI_BIN)/cnitool:
	@mkdir -p $(CNI_BIN)
	@GOBIN=$(CNI_BIN) $(GO) install github.com/containernetworking/cni/cnitool@$(CNITOOL_VERSION)

## k8s-bins: kube-apiserver, etcd, kubectl, and for the real nodes kubelet, kube-scheduler and
## kube-controller-manager (v1.37.2, etcd 3.7.0) from test/k8s/tools, once
k8s-bins: $(K8S_BIN)/kube-apiserver $(K8S_BIN)/etcd $(K8S_BIN)/kubectl $(K8S_BIN)/kubelet $(K8S_BIN)/kube-scheduler $(K8S_BIN)/kube-controller-manager
$(K8S_BIN)/kube-apiserver $(K8S_BIN)/kubectl $(K8S_BIN)/kubelet $(K8S_BIN)/kube-scheduler $(K8S_BIN)/kube-controller-manager:
	@echo "deps: building $(@F) $(K8S_VERSION) into $(K8S_BIN) (minutes, once)"
	@mkdir -p $(K8S_BIN)
	@cd test/k8s/tools && CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(K8S_LDFLAGS)" -o $@.tmp k8s.io/kubernetes/cmd/$(@F) && mv $@.tmp $@
$(K8S_BIN)/etcd:
	@echo "deps: building etcd into $(K8S_BIN)"
	@mkdir -p $(K8S_BIN)
	@cd test/k8s/tools && CGO_ENABLED=0 $(GO) build -trimpath -o $@.tmp go.etcd.io/etcd/server/v3 && mv $@.tmp $@

build:
	$(GO) build ./...

## bin: the binaries (amesh-agent, amesh-cni, amesh-waypoint, ameshctl) into bin/
bin:
	$(GO) build -o bin/ ./cmd/...

## image: amesh's OCI image (amesh-agent, amesh-cni, amesh-waypoint, ameshctl in /usr/local/bin) from static
## binaries, without a container engine, as bin/amesh-image.tar (ctr images import, kind load
## image-archive, docker load); reproducible: the same commit gives the same digest
IMAGE     ?= ghcr.io/amesh-dev/amesh:dev
IMAGE_BIN := $(CACHE)/image/bin
image:
	@mkdir -p bin $(IMAGE_BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -buildid=" -o $(IMAGE_BIN)/ ./cmd/amesh-agent ./cmd/amesh-cni ./cmd/amesh-waypoint ./cmd/ameshctl
	$(GO) run ./cmd/amesh-image --tag $(IMAGE) --out bin/amesh-image.tar \
	  --created "$$(git log -1 --format=%ct 2>/dev/null || echo 0)" \
	  --label org.opencontainers.image.source=https://github.com/amesh-dev/amesh \
	  --label org.opencontainers.image.revision="$$(git rev-parse HEAD 2>/dev/null)" \
	  $(IMAGE_BIN)/amesh-agent $(IMAGE_BIN)/amesh-cni $(IMAGE_BIN)/amesh-waypoint $(IMAGE_BIN)/ameshctl

## test: everything a change must pass — the README's test command
test: deps lint unit race

unit:
	$(GO) test -count=1 -timeout 15m ./...

# The race detector on the same tests, with -short payloads so it stays quick.
race:
	$(GO) test -race -short -count=1 -timeout 15m ./...

lint: fmt-check vet staticcheck

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

staticcheck:
	$(GO) tool staticcheck ./...

## generate: regenerate generated code (bpf2go objects once bpf/ has programs)
generate:
	$(GO) generate ./...

## soak: the hostile-peer tests at full counts (make test runs them with smaller ones): the tunnel's
## adversarial suite and the lab's hostile pods (root)
## (10,000 connections hold 10,000 descriptors in the test, its echo and each agent: the soft
## limit is raised to the hard one first)
soak: deps
	AMESH_SOAK=1 $(GO) test -count=1 -timeout 30m ./tunnel/
	ulimit -n $$(ulimit -Hn) && AMESH_SOAK=1 $(GO) test -count=1 -timeout 30m -v -run 'TestHostile|TestManyConnections|TestStolenIdentity' ./test/e2e/

## fuzz: run the HBONE request parser, frame and pod decoder fuzzers for FUZZTIME each
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParseConnect$$' -fuzztime $(FUZZTIME) ./tunnel/
	$(GO) test -run '^$$' -fuzz '^FuzzServerFrames$$' -fuzztime $(FUZZTIME) ./tunnel/
	$(GO) test -run '^$$' -fuzz '^FuzzPodWire$$' -fuzztime $(FUZZTIME) ./workload/kube/

## e2e-envoy: the waypoint end-to-end test with a real Envoy (configured by amesh-waypoint
## --xds-only) when envoy is on PATH; not part of `make test` (no Envoy can be installed here)
e2e-envoy: deps
	@if ! command -v envoy >/dev/null; then echo "e2e-envoy: SKIPPED: no envoy on PATH (put one there to run TestWaypointEnvoy)"; exit 0; fi; \
	  $(GO) test -tags envoy -count=1 -run '^TestWaypointEnvoy$$' -v ./test/e2e/

## bench: everything below in one go: the tunnel benchmark, the lab benchmark and the suite
bench: deps peers
	AMESH_GHOSTUNNEL=$(GHOSTUNNEL) $(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) -benchmem -count 1 ./tunnel/
	$(GO) test -run '^$$' -bench BenchmarkLab -benchtime 1x -count 1 ./test/e2e/
	$(MAKE) --no-print-directory bench-suite

## bench-suite: `ameshctl bench`: direct, amesh (same-node kernel/splice/hbone, cross-node), HTTP
## with and without a waypoint, and the ghostunnel and stunnel pairs side by side in the lab
## (fortio RR, iperf3, conn/s, agent CPU);
## writes bench-out/ (root)
bench-suite: deps peers bin
	bin/ameshctl bench -agent bin/amesh-agent -waypoint bin/amesh-waypoint -ghostunnel $(GHOSTUNNEL) -out bench-out

## bench-scale: one agent against a real kube-apiserver holding 1,000 then 10,000 pods (100 and
## 1,000 services with EndpointSlices, 100 policies), churn 10 then 100 pods/s for SCALE_DURATION
## each (20 s, as the README's figures were measured): memory, CPU per watch event, API change ->
## enforced on real traffic, state builds;
## writes bench-out/scale.{json,md} (root)
SCALE_DURATION ?= 20s
bench-scale: deps
	$(GO) test -run '^$$' -bench '^BenchmarkScale$$' -benchtime 1x -count 1 -timeout 60m ./bench/scale/ \
	  -args -scale-pods 1000,10000 -scale-services 100,1000 -scale-policies 100 -scale-churn 10,100 -scale-duration $(SCALE_DURATION)

## peers: build ghostunnel v1.8.4 (pinned by the recipe's go.sum) into $(CACHE)/bin, once, and
## install stunnel4 (Debian)
peers: $(GHOSTUNNEL)
	@dpkg-query -W -f='$${Status}' stunnel4 2>/dev/null | grep -q "install ok installed" || \
	  { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends stunnel4 >/dev/null; }

$(GHOSTUNNEL):
	@test -f $(RECIPES)/peers/ghostunnel/go.mod || { echo "peers: $(RECIPES)/peers/ghostunnel missing"; exit 1; }
	mkdir -p $(CACHE)/src/ghostunnel $(CACHE)/bin
	cp $(RECIPES)/peers/ghostunnel/go.mod $(RECIPES)/peers/ghostunnel/go.sum $(RECIPES)/peers/ghostunnel/tools.go $(CACHE)/src/ghostunnel/
	cd $(CACHE)/src/ghostunnel && GONOSUMDB=github.com/landlock-lsm/go-landlock $(GO) build -o $(GHOSTUNNEL) github.com/ghostunnel/ghostunnel

## demo: a 2-node netns lab with one agent per node: curl across and within nodes with the
## SPIFFE identities used, a policy denial, a STRICT refusal, latency direct vs mesh (root).
## It needs only the agent and the lab, not the Kubernetes parts the tests build.
demo: demo-deps
	$(GO) run ./test/demo

clean: clean-lab
	$(GO) clean -testcache

## clean-lab: remove what an interrupted test or lab run left (namespaces, links, bpffs pins)
clean-lab:
	@for ns in $$(ip netns list 2>/dev/null | awk '{print $$1}' | grep -E '^(amt[0-9a-f]{6}|amesh-lab-)'); do \
	  echo "clean-lab: netns $$ns"; $(SUDO) ip netns del $$ns; done
	@for p in /sys/fs/bpf/amt* /sys/fs/bpf/amesh-lab-* /tmp/amesh-lab-* /tmp/amesh-e2e-bin-* /tmp/amesh-demo-*; do \
	  [ -e "$$p" ] && { echo "clean-lab: $$p"; $(SUDO) rm -rf "$$p"; }; done; true
