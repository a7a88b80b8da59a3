# kubelvs: everything runs as root on Linux (network namespaces, netlink, sysctls).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
APT_PACKAGES := python3 python3-venv python3-pip iproute2 nftables ipvsadm kmod \
                qemu-system-x86 linux-image-amd64 busybox-static iputils-ping curl procps \
                iperf3 wrk

.PHONY: setup test test-machine test-vm demo demo-ipvs bench bench-dr clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

## Both tiers: the machine's kernel, then one VM boot with Debian's kernel (real IPVS).
test: setup
	$(MAKE) test-machine
	$(MAKE) test-vm

test-machine: setup
	$(PY) -m pytest -q -m "not kernel_ipvs" tests

test-vm: setup
	scripts/vm-run -- $(PY) -m pytest -q -m kernel_ipvs -p no:cacheprovider tests

## The seed's LVS-DR external IP end to end in a network-namespace lab on this kernel.
demo: setup
	$(VENV)/bin/kubelvs demo

## The same config on real IPVS, in the VM kernel.
demo-ipvs: setup
	scripts/vm-run -- scripts/demo-ipvs

bench: setup
	scripts/vm-run -- $(PY) bench/ipvs_sync.py --out bench/results
	$(PY) bench/nft_sync.py

## The DR data path in the VM: direct vs IPVS-DR vs nftables-DR with wrk and iperf3 (~12 min).
## The host's /proc/loadavg is copied into a file the VM reads, so the report records the load.
bench-dr: setup
	@mkdir -p .vmtmp; load=$$(mktemp .vmtmp/host-loadavg.XXXXXX); \
	( while cat /proc/loadavg > $$load.new && mv $$load.new $$load; do sleep 5; done ) & sampler=$$!; \
	scripts/vm-run -- $(PY) bench/dr_datapath.py --out bench/results --host-loadavg $$load; rc=$$?; \
	kill $$sampler; rm -f $$load $$load.new; exit $$rc

clean:
	rm -rf $(VENV) .vmtmp
