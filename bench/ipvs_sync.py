"""Control-plane benchmark of the IPVS backend (run in the VM tier: `make bench`).

For N services x 10 real servers (N = 1,000 and 10,000):
- ``ipvsadm -R`` restoring the set (the baseline), and ``kubelvs apply -f`` of the same
  set as a YAML config (a new process: start-up, YAML, validation, plan, netlink),
  each in a FRESH network namespace: IPVS is per namespace, and after a flush the
  kernel keeps deleted destinations in a trash list that slows later adds.
- keepalived (Debian's package) beside them, in the same rounds: a generated
  ``keepalived.conf`` of the same virtual servers with no checkers (so it adds every
  real server at once), timed from its start until the kernel holds the last virtual
  server's real servers; then one real-server weight changed in the file and a
  SIGHUP (keepalived's reload), timed until the kernel shows it. The same change for
  kubelvs: ``kubelvs apply -f`` of the edited file on the programmed namespace.
- one real-server change with N services present, in-process through the library
  API the long-running director uses (desired and kernel state already in memory).
Every table is read back with ``ipvsadm -Sn`` and compared with the config, so a fast
wrong answer cannot pass. (``ipvsadm``, not the backend's own read: decoding 100,000
destinations in Python under emulation takes minutes, and this is what users check.)
Results: bench/results/ipvs_sync.json and .md. Timings in the VM are emulated-CPU
times: only the ratios measured in the same run mean something.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import os
import platform
import py_compile
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml_rs

from kubelvs.backends import open_backend
from kubelvs.formats.ipvsadm_save import format_save
from kubelvs.model import RealServer, ServiceKey
from kubelvs.roles.director import Director
from kubelvs.sources.config import parse_config, to_desired

ROOT = Path(__file__).resolve().parents[1]
_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNS = 0x00020000
_MS_BIND, _MS_REC, _MS_PRIVATE = 0x1000, 0x4000, 0x40000
KUBELVS = str(ROOT / ".venv/bin/kubelvs")


def config_doc(n: int) -> dict[str, object]:
    services = []
    for i in range(n):
        vip = f"10.{200 + i // 65536}.{(i // 256) % 256}.{i % 256}"
        services.append(
            {
                "name": f"svc-{i}",
                "vip": vip,
                "port": 80,
                "scheduler": "rr",
                "forward": "dr",
                "realservers": [{"address": f"192.168.{i % 200}.{j + 1}"} for j in range(10)],
            }
        )
    return {"owned_cidrs": ["10.200.0.0/14"], "recommended_sysctls": False, "services": services}


class Namespace:
    def __init__(self, tag: str) -> None:
        self.name = f"kubelvs-bench-{os.getpid()}-{tag}"

    def __enter__(self) -> str:
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)
        return self.name

    def __exit__(self, *_: object) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def kernel_rules(ns: str) -> list[str]:
    """The namespace's IPVS table as sorted ``ipvsadm -Sn`` lines (the kernel lists in hash order)."""
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "ipvsadm", "-Sn"], capture_output=True, text=True, check=True
    ).stdout
    return sorted(out.splitlines())


def timed(cmd: list[str], stdin: str | None = None, *, setup: Callable[[], None] | None = None) -> float:
    """Wall time of ``cmd``; ``setup`` runs in the child between fork and exec."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=False, preexec_fn=setup)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed: {proc.stderr[-2000:]}")
    return elapsed


class LocalRuntime:
    """The files a ``kubelvs apply`` process loads, copied into the guest's tmpfs and
    bind-mounted over their own paths for the timed command only (a private mount
    namespace set up in the child, see ``enter``).

    The VM sees the host's disk over 9p, where every file lookup is a round trip to
    the host: an interpreter start looks at ~1,700 paths, which alone took longer than
    ``ipvsadm -R`` of 1,000 services. A director host reads its disk through the page
    cache; this gives the Python process the same, while ``ipvsadm`` (one binary and
    libc, loaded once and then cached) is unaffected. Which files: every module a real
    ``kubelvs apply`` imported in a warm-up run (two applies: the second decodes what
    the first programmed, as the edit's apply does; a module the timed run needed but
    the warm-up did not would fail the run, not go unnoticed), with its bytecode
    (compiled here where the source tree has none, as ``pip install`` would).
    """

    def __init__(self, workdir: Path) -> None:
        self.stage = workdir / "runtime"
        self.roots = {
            "stdlib": Path(sys.base_prefix)
            / "lib"
            / f"python{sys.version_info.major}.{sys.version_info.minor}",
            "site": Path(next(p for p in sys.path if p.endswith("site-packages"))),
            "src": ROOT / "src",
        }

    def prepare(self) -> None:
        listing = self.stage.with_suffix(".modules.json")
        config_path = self.stage.with_suffix(".yaml")  # the modules loaded do not depend on the size
        config_path.write_text(yaml_rs.dumps(config_doc(10)))
        code = (
            "import atexit, json, sys\n"
            f"atexit.register(lambda: open({str(listing)!r}, 'w').write(json.dumps("
            "[getattr(m, '__file__', None) for m in list(sys.modules.values())])))\n"
            "from kubelvs.cli.main import main\n"
            # Twice: the second apply finds the services and decodes them (the edit's path).
            "main(sys.argv[1:])\n"
            "sys.exit(main(sys.argv[1:]))\n"
        )
        with Namespace("warmup") as ns:
            proc = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    code,
                    "apply",
                    "-f",
                    str(config_path),
                    "--backend",
                    "ipvs",
                    "--netns",
                    ns,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
        if proc.returncode != 0:
            raise SystemExit(f"warm-up apply failed: {proc.stderr[-2000:]}")
        files = [Path(f) for f in json.loads(listing.read_text()) if f]
        for root in self.roots.values():
            files += root.glob("*.pth")
        for name, root in self.roots.items():
            for f in files:
                if not f.is_relative_to(root):
                    continue
                rel = f.relative_to(root)
                staged = self.stage / name / rel
                self._copy(f, staged)
                if f.suffix != ".py":
                    continue
                pyc = f.parent / "__pycache__" / f"{f.stem}.{sys.implementation.cache_tag}.pyc"
                staged_pyc = staged.parent / "__pycache__" / pyc.name
                if pyc.exists():
                    self._copy(pyc, staged_pyc)
                else:
                    # The editable source tree has no bytecode when it is run with
                    # PYTHONDONTWRITEBYTECODE (the VM tier sets it), so every apply would
                    # compile kubelvs from source - about 1 s under emulation. Installed
                    # packages get their bytecode at install time (pip compiles them):
                    # compile here what an installed kubelvs would carry.
                    py_compile.compile(str(staged), cfile=str(staged_pyc), dfile=str(f), doraise=True)

    @staticmethod
    def _copy(src: Path, dst: Path) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)  # keeps mtimes: the bytecode stays valid for its source

    def enter(self) -> None:
        """For the timed child, between fork and exec: a private mount namespace with the
        staged trees bound over their own paths. System calls only: an ``unshare`` and
        ``sh`` and three ``mount`` processes cost 0.4 s per run under emulation, charged
        to kubelvs (``ipvsadm -R`` pays nothing like it)."""
        for ok in (
            _libc.unshare(_CLONE_NEWNS) == 0,
            _libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) == 0,
            *(
                _libc.mount(str(self.stage / name).encode(), str(root).encode(), None, _MS_BIND, None) == 0
                for name, root in self.roots.items()
            ),
        ):
            if not ok:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))


def keepalived_conf(doc: dict[str, object]) -> str:
    """The config's virtual servers as keepalived writes them (no checkers: a real server
    without one is up at once)."""
    parts = ["global_defs {\n    router_id kubelvs_bench\n}\n"]
    services: list[dict[str, Any]] = doc["services"]  # type: ignore[assignment]
    for svc in services:
        reals = "".join(
            f"    real_server {rs['address']} {svc['port']} {{\n"
            f"        weight {rs.get('weight', 1)}\n    }}\n"
            for rs in svc["realservers"]
        )
        parts.append(
            f"virtual_server {svc['vip']} {svc['port']} {{\n    lvs_sched {svc['scheduler']}\n"
            f"    lvs_method DR\n    protocol TCP\n{reals}}}\n"
        )
    return "".join(parts)


def _weights(ns: str, vip: str, port: int) -> dict[str, int] | None:
    """Real server -> weight of one virtual service, as ``ipvsadm -Ln -t`` lists it (None:
    no such service yet). One service, so polling it stays cheap at 100,000 real servers."""
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, "ipvsadm", "-Ln", "-t", f"{vip}:{port}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return None
    out = {}
    for line in proc.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[0] == "->" and fields[1][0].isdigit():
            out[fields[1]] = int(fields[3])
    return out


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 900) -> float:
    """Seconds until ``check()`` holds, polled every 20 ms."""
    start = time.perf_counter()
    while not check():
        if time.perf_counter() - start > timeout:
            raise SystemExit(f"keepalived: {what} not seen in {timeout:.0f} s")
        time.sleep(0.02)
    return time.perf_counter() - start


def keepalived_round(
    doc: dict[str, object], edited_doc: dict[str, object], changed: int, expected: list[str], workdir: Path
) -> tuple[float, float]:
    """keepalived's cold start with ``doc`` and one change (``edited_doc``, whose service
    ``changed`` has its first real server at weight 2: edit + SIGHUP), in a fresh namespace."""
    services: list[dict[str, Any]] = doc["services"]  # type: ignore[assignment]
    last = services[-1]
    conf = workdir / "keepalived.conf"
    conf.write_text(keepalived_conf(doc))
    with Namespace("keepalived") as ns:
        start = time.perf_counter()
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "keepalived", "-n", "-C", "-f", str(conf),
             "-p", str(workdir / "keepalived.pid"), "-c", str(workdir / "checkers.pid"),
             "-r", str(workdir / "vrrp.pid")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            # keepalived adds the virtual servers in the file's order, each with its
            # real servers: the last one complete means all are (checked right after).
            n_last = len(last["realservers"])
            _wait_for(
                lambda: len(_weights(ns, last["vip"], last["port"]) or {}) == n_last, "the last service"
            )
            cold = time.perf_counter() - start  # from the start of the process
            assert kernel_rules(ns) == expected, "keepalived did not program exactly the config"
            target = services[changed]
            rip = f"{target['realservers'][0]['address']}:{target['port']}"
            conf.write_text(keepalived_conf(edited_doc))
            start = time.perf_counter()
            proc.send_signal(signal.SIGHUP)
            change = _wait_for(
                lambda: (_weights(ns, target["vip"], target["port"]) or {}).get(rip) == 2, "the change"
            )
        finally:
            proc.terminate()  # keepalived removes what it programmed; the namespace goes anyway
            proc.wait(timeout=600)
    return cold, change


def cold_sync(n: int, workdir: Path, repeat: int) -> dict[str, object]:
    doc = config_doc(n)
    config_path = workdir / f"bench-{n}.yaml"
    config_path.write_text(yaml_rs.dumps(doc))
    desired = to_desired(parse_config(doc))
    rules = format_save(desired.services.values())
    expected = sorted(rules.splitlines())
    # The one change, for both kubelvs and keepalived.
    changed = n // 2
    edited_doc = copy.deepcopy(doc)
    edited_services: list[dict[str, Any]] = edited_doc["services"]  # type: ignore[assignment]
    edited_services[changed]["realservers"][0]["weight"] = 2
    edited_path = workdir / f"bench-{n}-edited.yaml"
    edited_path.write_text(yaml_rs.dumps(edited_doc))
    edited = sorted(format_save(to_desired(parse_config(edited_doc)).services.values()).splitlines())
    runtime = LocalRuntime(workdir)
    runtime.prepare()

    def apply(setup: Callable[[], None] | None, tag: str, then_edit: bool = False) -> tuple[float, float]:
        """``kubelvs apply`` in a fresh namespace; with ``then_edit``, also the edited file's."""
        with Namespace(tag) as ns:
            argv = [KUBELVS, "apply", "--backend", "ipvs", "--netns", ns, "-f"]
            elapsed = timed([*argv, str(config_path)], setup=setup)
            assert kernel_rules(ns) == expected, f"kubelvs apply ({tag}) did not program exactly the config"
            change = float("nan")
            if then_edit:
                change = timed([*argv, str(edited_path)], setup=setup)
                assert kernel_rules(ns) == edited, f"kubelvs apply ({tag}) did not program the edit"
        return elapsed, change

    # The legs alternate, each in a fresh namespace, so that a slow spell of the shared
    # host hits all; ratios are medians of the per-round ratios.
    restores: list[float] = []
    applies: list[float] = []
    apply_changes: list[float] = []
    ka_colds: list[float] = []
    ka_changes: list[float] = []
    for r in range(repeat):
        legs = ["ipvsadm", "kubelvs", "keepalived"]
        for leg in legs[r % 3 :] + legs[: r % 3]:
            if leg == "ipvsadm":
                with Namespace("ipvsadm") as ns:
                    restores.append(timed(["ip", "netns", "exec", ns, "ipvsadm", "-R"], stdin=rules))
                    assert kernel_rules(ns) == expected, "ipvsadm -R did not restore the set"
            elif leg == "kubelvs":
                cold, change = apply(runtime.enter, "kubelvs-local", then_edit=True)
                applies.append(cold)
                apply_changes.append(change)
            else:
                cold, change = keepalived_round(doc, edited_doc, changed, expected, workdir)
                ka_colds.append(cold)
                ka_changes.append(change)
    over_9p, _ = apply(None, "kubelvs-9p")
    t_ipvsadm = statistics.median(restores)

    def ratio(a: list[float], b: list[float]) -> float:
        return round(statistics.median(x / y for x, y in zip(a, b, strict=True)), 3)

    return {
        "services": n,
        "realservers": n * 10,
        "rounds": repeat,
        "ipvsadm_restore_s": round(t_ipvsadm, 3),
        "kubelvs_apply_s": round(statistics.median(applies), 3),
        "ratio_to_ipvsadm": ratio(applies, restores),
        "ipvsadm_restore_runs_s": [round(t, 3) for t in restores],
        "kubelvs_apply_runs_s": [round(t, 3) for t in applies],
        "kubelvs_apply_9p_s": round(over_9p, 3),
        "ratio_9p_to_ipvsadm": round(over_9p / t_ipvsadm, 3),
        "keepalived_start_s": round(statistics.median(ka_colds), 3),
        "keepalived_start_runs_s": [round(t, 3) for t in ka_colds],
        "ratio_kubelvs_apply_to_keepalived_start": ratio(applies, ka_colds),
        "keepalived_change_s": round(statistics.median(ka_changes), 3),
        "keepalived_change_runs_s": [round(t, 3) for t in ka_changes],
        "kubelvs_apply_change_s": round(statistics.median(apply_changes), 3),
        "kubelvs_apply_change_runs_s": [round(t, 3) for t in apply_changes],
        "ratio_kubelvs_apply_change_to_keepalived_change": ratio(apply_changes, ka_changes),
    }


def one_change(n: int, rounds: int) -> dict[str, object]:
    desired = to_desired(parse_config(config_doc(n)))
    keys = sorted(desired.services, key=ServiceKey.sort_key)
    with Namespace("change") as ns:
        backend = open_backend("ipvs", netns=ns)
        director = Director(backend)
        start = time.perf_counter()
        director.sync(desired)
        library_cold = time.perf_counter() - start
        times = []
        current = desired
        for r in range(rounds):
            key = keys[(r * 7919) % n]
            svc = current.services[key]
            first = svc.realservers[0]
            changed_rs = RealServer(first.address, first.port, first.weight % 7 + 1, first.forward)
            new_services = dict(current.services)
            new_services[key] = svc.with_realservers((changed_rs, *svc.realservers[1:]))
            new = replace(current, services=new_services)
            # The event source knows which service changed (the Kubernetes source's
            # change tracker does): no O(all) comparison in the measured path.
            start = time.perf_counter()
            result = director.sync(new, changed={key})
            times.append(time.perf_counter() - start)
            assert len(result.plan) == 1 and not result.full
            current = new
        backend.close()
        assert kernel_rules(ns) == sorted(format_save(current.services.values()).splitlines())
    return {
        "services": n,
        "library_cold_sync_s": round(library_cold, 3),
        "rounds": rounds,
        "change_median_ms": round(statistics.median(times) * 1000, 3),
        "change_max_ms": round(max(times) * 1000, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument(
        "--repeat", type=int, default=5, help="cold-sync rounds per size (medians are reported)"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, object] = {
        "benchmark": "ipvs_sync",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "note": "VM with emulated CPU (qemu, no KVM): compare ratios, not absolute times",
        "cold_sync": [],
        "one_realserver_change": [],
    }
    # Results are written after every step: a long run cut short still leaves data.
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            results["cold_sync"].append(cold_sync(n, Path(tmp), args.repeat))  # type: ignore[attr-defined]
            write(results, args.out)
            results["one_realserver_change"].append(one_change(n, args.rounds))  # type: ignore[attr-defined]
            write(results, args.out)
    return 0


def per_round(row: dict[str, list[float]]) -> str:
    pairs = zip(row["kubelvs_apply_runs_s"], row["ipvsadm_restore_runs_s"], strict=True)
    return ", ".join(f"{a}/{r}" for a, r in pairs)


def write(results: dict[str, object], out: Path) -> None:
    (out / "ipvs_sync.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# IPVS control-plane benchmark",
        "",
        f"Kernel {results['kernel']}, Python {results['python']}, {results['when']}. {results['note']}.",
        "",
        "## Cold sync (fresh namespace each), N services x 10 real servers",
        "",
        "| services | real servers | rounds | ipvsadm -R (s) | kubelvs apply (s) | ratio kubelvs / ipvsadm | "
        "per round | kubelvs apply, files over 9p (s) | ratio |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for row in results["cold_sync"]:  # type: ignore[attr-defined]
        lines.append(
            f"| {row['services']} | {row['realservers']} | {row['rounds']} | {row['ipvsadm_restore_s']} | "
            f"{row['kubelvs_apply_s']} | {row['ratio_to_ipvsadm']} | {per_round(row)} | "
            f"{row['kubelvs_apply_9p_s']} | {row['ratio_9p_to_ipvsadm']} |"
        )
    lines += [
        "",
        "Target: ratio at most 1.0, aim 0.5. kubelvs apply is a whole new process "
        "(interpreter start, YAML, validation, plan, netlink).",
        "Times are medians over the rounds; `per round`: kubelvs/ipvsadm seconds of each round "
        "(the legs alternate).",
        "`kubelvs apply`: the Python files it loads are read from the guest's memory (copied to tmpfs and "
        "bind-mounted over",
        "their paths), as a director reads its local disk through the page cache. `files over 9p`: the same "
        "process reading",
        "every file from the host over the VM's 9p share, where each lookup is a round trip (the interpreter "
        "start alone",
        "looks at ~1,700 paths); shown for completeness, it measures the test rig.",
        "",
        "## One real-server change with N services present (in-process, director library API)",
        "",
        "| services | library cold sync (s) | rounds | median (ms) | max (ms) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in results["one_realserver_change"]:  # type: ignore[attr-defined]
        lines.append(
            f"| {row['services']} | {row['library_cold_sync_s']} | {row['rounds']} | "
            f"{row['change_median_ms']} | {row['change_max_ms']} |"
        )
    lines += [
        "",
        "Target: under 10 ms regardless of the number of services.",
        "",
        "## Beside keepalived (the same rounds, each leg in a fresh namespace)",
        "",
        "keepalived (Debian's package, `keepalived -n -C`) programs the same virtual servers from a",
        "generated `keepalived.conf` without checkers (so it adds every real server at once). Start: from",
        "its start until the kernel holds the last virtual server's real servers (the whole table is then",
        "compared with the config). One change: one real server's weight edited in the file, then SIGHUP",
        "(its reload), until `ipvsadm` shows it; for kubelvs the same edit and `kubelvs apply -f` (a new",
        "process that reads the kernel back and applies the difference), and the running director's change",
        "(library API, above).",
        "",
        "| services | keepalived start (s) | kubelvs apply (s) | ratio kubelvs / keepalived | "
        "keepalived edit + reload (s) | kubelvs edit + apply (s) | ratio | director one change (ms) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    changes = {row["services"]: row for row in results["one_realserver_change"]}  # type: ignore[attr-defined]
    for row in results["cold_sync"]:  # type: ignore[attr-defined]
        if "keepalived_start_s" not in row:
            continue
        lib = changes.get(row["services"], {}).get("change_median_ms", "-")
        lines.append(
            f"| {row['services']} | {row['keepalived_start_s']} | {row['kubelvs_apply_s']} | "
            f"{row['ratio_kubelvs_apply_to_keepalived_start']} | {row['keepalived_change_s']} | "
            f"{row['kubelvs_apply_change_s']} | {row['ratio_kubelvs_apply_change_to_keepalived_change']} | "
            f"{lib} |"
        )
    lines.append("")
    (out / "ipvs_sync.md").write_text("\n".join(lines))
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
