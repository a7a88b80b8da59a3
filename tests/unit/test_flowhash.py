"""The kernels' flow hashes re-computed for ``kubelvs explain`` (pure), checked against
their algorithms' published test vectors. Whether they pick what the kernels pick is
checked against real traffic in tests/lab/test_explain.py (1,000 flows per backend)."""

from __future__ import annotations

from kubelvs.backends.ipvs.flowhash import MH_TABLE_SIZE, mh_table, sh_table, siphash
from kubelvs.backends.nftables.flowhash import flow_key, jhash


def test_jhash_is_lookup3() -> None:
    # Bob Jenkins' lookup3.c driver5: hashlittle("", 0, 0), ("Four score ...", 30, 0 and 1).
    assert jhash(b"", 0) == 0xDEADBEEF
    assert jhash(b"Four score and seven years ago", 0) == 0x17770551
    assert jhash(b"Four score and seven years ago", 1) == 0xCD628161


def test_nft_registers_of_a_concatenation_pad_the_port() -> None:
    assert flow_key("10.0.0.1", None) == bytes([10, 0, 0, 1])
    assert flow_key("10.0.0.1", 0x1234) == bytes([10, 0, 0, 1, 0x12, 0x34, 0, 0])


def test_siphash_matches_the_reference_vectors() -> None:
    key = (int.from_bytes(bytes(range(8)), "little"), int.from_bytes(bytes(range(8, 16)), "little"))
    assert siphash(b"", key, 2, 4) == 0x726FDB47DD0E0E31
    assert siphash(bytes(range(15)), key, 2, 4) == 0xA129CA6149BE45E5


def test_sh_gives_each_destination_its_weight_in_consecutive_buckets() -> None:
    table = sh_table([2, 1, 0])
    assert table[:6] == [0, 0, 1, 2, 0, 0]  # weight 0: still one bucket (unavailable at lookup)


def test_mh_fills_the_table_in_proportion_to_the_weights() -> None:
    table = mh_table([("10.0.0.1", 80, 1), ("10.0.0.2", 80, 1), ("10.0.0.3", 80, 2), ("10.0.0.4", 80, 0)])
    counts = [table.count(i) for i in range(4)]
    assert sum(counts) == MH_TABLE_SIZE and counts[3] == 0
    assert abs(counts[2] - 2 * counts[0]) <= 2 and abs(counts[0] - counts[1]) <= 1
