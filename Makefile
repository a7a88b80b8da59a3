# kubelvs: everything runs as root on Linux (network namespaces, netlink, sysctls).
# Each command installs only what it needs, once (idempotent): `make demo` the demo's few
# Debian packages and the virtualenv; the test tiers, `make check` and the benchmarks add
# theirs. Nothing is ever installed into /boot: the VM tier's kernel is unpacked into a
# cache directory by scripts/vm-kernel.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Hypothesis settings profile (tests/conftest.py): `ci` is reproducible, `explore` runs
# many more examples. E.g. `make test-machine HYPOTHESIS_PROFILE=explore`.
HYPOTHESIS_PROFILE ?= ci
export HYPOTHESIS_PROFILE

# Debian packages, by the command that needs them (tests/test_setup_tools.py checks these
# lists against every program the code runs).
# The demo: the virtualenv, ip/ss, nft (and libnftables), sysctl, modprobe (backend detection).
APT_DEMO  := python3 python3-venv iproute2 nftables procps kmod
# The tests: conntrack, ipvsadm, netstat; the VM tier: qemu, a static busybox for
# virtme-ng's initramfs, `file` (virtme-ng reads the kernel's version with it), udev
# (virtme-ng's guest init needs udevd for its command channel: without it vng prints
# nothing and fails); keepalived and bird2: the director's VRRP and BGP (tests/ha, the HA scenarios;
# their own system services are not used); mmdebstrap, umoci: make image (the OCI image), runc: the
# test that runs it; openssl: scripts/kube-up's certificates (the real kube-apiserver tier).
APT_TEST  := $(APT_DEMO) conntrack ipvsadm net-tools qemu-system-x86 busybox-static file udev keepalived \
             bird2 mmdebstrap umoci runc openssl
# The benchmarks: the data path (bench-dr: nginx, wrk, iperf3, curl; here and in the VM).
APT_BENCH := $(APT_TEST) iperf3 wrk curl nginx

.PHONY: setup setup-test setup-kube setup-check setup-bench apt-demo apt-test apt-bench \
        test test-machine test-vm check demo demo-ipvs image bench bench-dr bench-health bench-faults bench-ha \
        bench-metrics kube-up kube-down clean

## Set-up. The apt-* steps cost a dpkg query when everything is there; the virtualenv
## stamps are rebuilt when pyproject.toml changes.
apt-demo:
	@scripts/apt-need $(APT_DEMO)
apt-test:
	@scripts/apt-need $(APT_TEST)
apt-bench:
	@scripts/apt-need $(APT_BENCH)

$(VENV)/.stamp-demo: pyproject.toml | apt-demo
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.stamp-test: $(VENV)/.stamp-demo | apt-test
	$(PY) -m pip install -q -e '.[test]'
	touch $@

$(VENV)/.stamp-check: $(VENV)/.stamp-demo
	$(PY) -m pip install -q -e '.[test,dev]'
	touch $@

## What `make demo` needs: Debian packages for the lab, .venv with kubelvs (editable).
setup: apt-demo $(VENV)/.stamp-demo

## What the tests need: + conntrack, ipvsadm, net-tools, qemu, busybox-static, file, udev; pytest,
## hypothesis, virtme-ng; and the VM's kernel, downloaded and unpacked into the cache.
setup-test: apt-test $(VENV)/.stamp-test
	@scripts/vm-kernel >/dev/null

## kube-apiserver and etcd for the real-API-server tier (tests/realkube) and make kube-up:
## built once from the upstream Go modules into ~/.cache/kubelvs (about 6 minutes here).
setup-kube:
	@scripts/apt-need openssl python3
	@scripts/kube-build >/dev/null

## What `make check` needs: mypy, ruff, import-linter and stubs (pyproject's dev extra).
setup-check: apt-demo $(VENV)/.stamp-check

## What the benchmarks need: the test set-up + iperf3, wrk, curl.
setup-bench: apt-bench setup-test

## Both tiers: the machine's kernel, then one VM boot with Debian's kernel (real IPVS).
test: setup-test
	$(MAKE) test-machine
	$(MAKE) test-vm

test-machine: setup-test setup-kube
	$(PY) -m pytest -q --durations=15 -m "not kernel_ipvs" tests

test-vm: setup-test
	scripts/vm-run -- $(PY) -m pytest -q --durations=25 -m kernel_ipvs -p no:cacheprovider tests

## A real Kubernetes control plane on 127.0.0.1 for trying kubelvs by hand: etcd and
## kube-apiserver, built once from their upstream Go modules (scripts/kube-build, cached in
## ~/.cache/kubelvs), admin kubeconfig in .kube-local/admin.kubeconfig. kube-down stops them.
kube-up: setup-kube
	scripts/kube-up
kube-down:
	scripts/kube-down

## Static checks; every one runs, and the target fails if any failed.
check: setup-check
	@rc=0; for cmd in "$(VENV)/bin/mypy" "$(VENV)/bin/ruff check" "$(VENV)/bin/ruff format --check" \
	                  "$(VENV)/bin/lint-imports"; do \
	    echo "== $$cmd"; $$cmd || rc=1; done; exit $$rc

## An LVS-DR external IP end to end in a network-namespace lab on this kernel.
demo: setup
	$(VENV)/bin/kubelvs demo

## The same config on real IPVS, in the VM kernel.
demo-ipvs: setup-test
	scripts/vm-run -- scripts/demo-ipvs

bench: setup-test
	scripts/vm-run -- $(PY) bench/ipvs_sync.py --out bench/results
	$(PY) bench/nft_sync.py

## Health checks: probe load and node failure at 10,000 services (nftables, this kernel),
## detection and failed requests of the backend-failure scenario; then in the VM (IPVS) the
## node failure and kubelvs beside keepalived on the same lab (~45 min in all).
bench-health: setup-bench
	$(PY) bench/health.py --out bench/results
	$(PY) bench/backend_failure.py --out bench/results
	scripts/vm-run -- $(PY) bench/health.py --backends ipvs --no-probe-load --out bench/results
	scripts/vm-run -- $(PY) bench/health_keepalived.py --out bench/results

## Fault injection: failed requests and repair time per fault (nftables here, IPVS in the VM; ~12 min).
## HA: the VRRP and BGP scenarios, 3 rounds on nftables here and on IPVS in the VM, and the
## cost of one Maglev order on IPVS (bench/results/ha-*.md, ipvs_order.md).
bench-ha: setup-test
	$(PY) bench/ha.py --backend nftables --out bench/results
	scripts/vm-run -- $(PY) bench/ha.py --backend ipvs --out bench/results
	scripts/vm-run -- $(PY) bench/ipvs_order.py --services 1000 10000 --out bench/results

## The container image, as an OCI archive: dist/kubelvs-VERSION.oci.tar (scripts/image says how).
image: setup-test
	scripts/image dist

## A /metrics scrape of 100 VIPs x 20 real servers: nftables here, IPVS in the VM.
bench-metrics: setup-test
	$(PY) bench/metrics_scrape.py --backend nftables --out bench/results
	scripts/vm-run -- $(PY) bench/metrics_scrape.py --backend ipvs --out bench/results

bench-faults: setup-test
	$(PY) bench/faults.py --backend nftables --out bench/results
	scripts/vm-run -- $(PY) bench/faults.py --backend ipvs --out bench/results

## The DR data path with nginx, wrk and iperf3: on this machine's kernel direct vs hand-written
## netdev DR vs nftables-DR (~5 min), then in the VM the same and IPVS-DR (~15 min). The host's
## /proc/loadavg is copied into a file the VM reads, so the VM's report records the load.
bench-dr: setup-bench
	$(PY) bench/dr_datapath.py --no-ipvs --name dr_datapath-machine --out bench/results
	@mkdir -p .vmtmp; load=$$(mktemp .vmtmp/host-loadavg.XXXXXX); \
	( while cat /proc/loadavg > $$load.new && mv $$load.new $$load; do sleep 5; done ) & sampler=$$!; \
	scripts/vm-run -- $(PY) bench/dr_datapath.py --out bench/results --host-loadavg $$load; rc=$$?; \
	kill $$sampler; rm -f $$load $$load.new; exit $$rc

## The VM's unpacked kernel stays in $XDG_CACHE_HOME/kubelvs/vm-kernel (~/.cache/...; outside
## the repository, ~400 MB per kernel version): delete that directory to reclaim it.
clean:
	rm -rf $(VENV) .vmtmp dist
