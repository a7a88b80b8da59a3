"""Doctor against real IPVS (VM tier): live analysis through /proc and netlink, collect,
and the parsers on the kernel's and ipvsadm's own output of the same table."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubelvs.doctor import Bundle, analyse, live_bundle
from kubelvs.formats.ipvs_conn import parse_conn_list, parse_proc_conn
from kubelvs.formats.ipvsadm_list import parse_listing, parse_proc_ip_vs
from kubelvs.model import Timeouts

from .conftest import ids
from .scenarios import kubectl_json, lab, nat_lab

pytestmark = pytest.mark.kernel_ipvs


def test_live_stale_realserver_and_its_fix(tmp_path: Path) -> None:
    with lab() as the_lab:
        d, c, r = nat_lab(the_lab, vip="10.96.0.20")
        the_lab.run(d, "ipvsadm", "-A", "-t", "10.96.0.20:6379", "-s", "rr")
        for port in ("80", "6379"):
            the_lab.run(d, "ipvsadm", "-a", "-t", "10.96.0.20:6379", "-r", f"10.0.2.2:{port}", "-m")
        the_lab.server(r, 6379)
        assert the_lab.clients(c, "10.96.0.20", 6379, 4) == 2  # every second connection fails
        live = live_bundle(d, kubectl=False)
        assert live.timeouts == Timeouts(7260, 30, 300)  # read over netlink
        findings = analyse(live)
        assert ids(findings) == ["stale-realserver"]
        assert findings[0].evidence[0].startswith("proc-net-ip_vs.txt:")
        the_lab.collect(d, tmp_path / "b", "director")
        (tmp_path / "b" / "kubectl.json").write_text(
            kubectl_json(
                [
                    {
                        "name": "redis",
                        "ip": "10.96.0.20",
                        "port": 6379,
                        "target": 6379,
                        "endpoints": ["10.0.2.2"],
                    }
                ]
            )
        )
        b = Bundle.load(str(tmp_path / "b"))
        # the kernel's hex listing and ipvsadm's text agree
        assert (
            parse_proc_ip_vs(b.texts["proc-net-ip_vs.txt"]).services
            == parse_listing(b.texts["ipvsadm-Ln.txt"]).services
        )
        # The same connections. The two reads are seconds apart on a loaded emulated VM:
        # expiry counts down between them (left out of the comparison), and an entry may
        # expire in between (the failed connections' CLOSE entries live 10 s). So every
        # entry is in both reads, except one close to its expiry in the read that has it.
        proc_rows = parse_proc_conn(b.texts["proc-net-ip_vs_conn.txt"]).rows
        lnc_rows = parse_conn_list(b.texts["ipvsadm-Lnc.txt"]).rows
        assert proc_rows and lnc_rows
        proc_set = {r[:1] + r[2:] for r in proc_rows}
        lnc_set = {r[:1] + r[2:] for r in lnc_rows}
        for rows, other in ((proc_rows, lnc_set), (lnc_rows, proc_set)):
            only_here = [r for r in rows if r[:1] + r[2:] not in other]
            assert all(r[1] <= 15 for r in only_here), only_here
        assert proc_set & lnc_set
        (f,) = analyse(b)
        assert f.id == "stale-realserver" and "endpoint 10.0.2.2:6379" in f.summary
        # apply the printed fix: the service works and doctor is quiet
        the_lab.run(d, *f.fix[0].split())
        assert the_lab.clients(c, "10.96.0.20", 6379, 4) == 4
        assert analyse(live_bundle(d, kubectl=False)) == []
