"""``kubelvs explain``'s answer (formats/explain.py, pure) and its arguments."""

from __future__ import annotations

import subprocess
import sys

from kubelvs.formats.explain import explanation, render_explanation, render_site, site
from kubelvs.model import FlowEntry, Prediction, ServiceKey

KEY = ServiceKey.parse("TCP 10.240.0.201:80")
MH = Prediction("10.240.0.101:80", True, "mh: bucket 17 of 4093, owned by 10.240.0.101:80", 17, 4093)


def test_an_entry_wins_and_a_disagreement_is_said() -> None:
    entry = FlowEntry("10.240.0.102:80", "connection", "ESTABLISHED")
    doc = explanation("ipvs", "10.240.0.10:40000", KEY, entry, MH)
    assert doc["realserver"] == "10.240.0.102:80" and doc["agree"] is False
    assert doc["entry"] == {"realserver": "10.240.0.102:80", "kind": "connection", "state": "ESTABLISHED"}
    assert render_explanation(doc).splitlines() == [
        "10.240.0.10:40000 -> TCP 10.240.0.201:80 (ipvs): 10.240.0.102:80",
        "  connection entry (ESTABLISHED) sends it to 10.240.0.102:80",
        "  the scheduler would send a new flow to 10.240.0.101:80: the entry wins until it expires "
        "(the table changed since the flow began)",
        "  a new flow: mh: bucket 17 of 4093, owned by 10.240.0.101:80",
    ]


def test_without_an_entry_the_prediction_answers() -> None:
    doc = explanation("nftables", "10.240.0.10:40000", KEY, None, MH)
    assert (doc["realserver"], doc["agree"], doc["prediction"]["slot"]) == ("10.240.0.101:80", None, 17)
    rr = Prediction(None, False, "rr depends on the kernel's state (counters, positions)")
    unknown = explanation("ipvs", "10.240.0.10", KEY, None, rr)
    assert unknown["realserver"] is None
    assert render_explanation(unknown).startswith("10.240.0.10 -> TCP 10.240.0.201:80 (ipvs): unknown")


def test_directors_agree_only_when_every_one_names_the_same_real_server() -> None:
    one = explanation("nftables", "10.240.0.10:40000", KEY, None, MH)
    other = explanation("nftables", "10.240.0.10:40000", KEY, None, Prediction("10.240.0.102:80", True, "x"))
    assert site({"dir1": one, "dir2": one})["agree"] is True
    split = site({"dir1": one, "dir2": other})
    assert split["agree"] is False
    assert render_site(split).endswith(
        "directors: DISAGREE: a packet of this flow may reach another real server"
    )
    blind = explanation("ipvs", "10.240.0.10", KEY, None, Prediction(None, False, "rr"))
    assert site({"dir1": one, "dir2": blind})["agree"] is None


def test_bad_arguments_name_the_argument_and_change_nothing() -> None:
    for client, service, field in (
        ("10.0.0.1:0", "10.240.0.201:80", "CLIENT"),
        ("fe80::1", "10.240.0.201:80", "CLIENT"),
        ("client.example", "10.240.0.201:80", "CLIENT"),
        ("10.0.0.1:40000", "10.240.0.201", "VIP:PORT[/PROTO]"),
        ("10.0.0.1:40000", "10.240.0.201:80/icmp", "VIP:PORT[/PROTO]"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "kubelvs", "explain", client, service, "--backend", "nftables"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 2 and field in done.stderr, (client, service, done.stderr)
