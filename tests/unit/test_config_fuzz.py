"""Property tests of the config loader: whatever bytes a user's file holds, loading it
gives a valid desired state or a ConfigError/ParseError, nothing else (no traceback, no
silently shortened config); and a config that validates round-trips through
``config_document`` -> YAML -> ``load_config`` -> ``to_desired`` unchanged.

The documents are config-shaped, with every key's value drawn either from values that
fit or from any YAML value (wrong types at every level, huge integers, NaN, deep
lists, odd keys), then written as YAML and sometimes damaged as bytes (a byte
inserted, a part cut out, a byte-order mark, UTF-16).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml_rs
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kubelvs.errors import ConfigError, ParseError
from kubelvs.model import MoreErrors
from kubelvs.sources.config import config_document, load_config, to_desired
from kubelvs.sources.kubernetes.settings import parse_kubernetes

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["", "0", "80", "true", "null", "~", "- x", "a: b", "[", "10.240.0.1", "\x1b[2J"])
)
junk = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6) | st.integers(), inner, max_size=3)
    ),
    max_leaves=8,
)


def either(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a value that fits, sometimes anything at all."""
    return st.one_of(good, good, good, junk)


ADDRESSES = [
    "10.240.0.101",
    "10.240.0.102",
    "10.240.0.103",
    "2001:db8::101",
    "0.0.0.0",
    "224.0.0.1",
    "10.240.0.300",
]
VIPS = ["10.240.0.201", "10.240.0.202", "2001:db8::10", "192.0.2.1", "::"]

realserver = st.fixed_dictionaries(
    {"address": either(st.sampled_from(ADDRESSES))},
    optional={
        "port": either(st.sampled_from([0, 80, 8080, 65535, 65536, -1])),
        "weight": either(st.integers(-1, 70000)),
        "forward": either(st.sampled_from(["dr", "nat", "tun", "local", "route"])),
        "u_thresh": either(st.integers(0, 100)),
        "l_thresh": either(st.integers(0, 100)),
        "adress": junk,
    },
)
service = st.fixed_dictionaries(
    {},
    optional={
        "name": either(st.text(max_size=10)),
        "vip": either(st.sampled_from(VIPS)),
        "port": either(st.sampled_from([0, 80, 443, 70000])),
        "protocol": either(st.sampled_from(["tcp", "udp", "sctp", "TCP"])),
        "fwmark": either(st.sampled_from([100, 150, 0, 2**32])),
        "family": either(st.sampled_from([4, 6, 5])),
        "scheduler": either(st.sampled_from(["rr", "wrr", "mh", "sh", "wlc", "roundrobin"])),
        "flags": either(
            st.lists(st.sampled_from(["mh-port", "mh-fallback", "sh-port", "ops", "bogus"]), max_size=2)
        ),
        "persistence": either(st.sampled_from([0, 300, 3_000_000])),
        "netmask": either(st.sampled_from([24, 32, 64, 129])),
        "forward": either(st.sampled_from(["dr", "nat", "tun"])),
        "realservers": either(st.lists(realserver, max_size=3)),
    },
)
document = st.fixed_dictionaries(
    {},
    optional={
        "owned_cidrs": either(
            st.lists(st.sampled_from(["10.240.0.0/24", "2001:db8::/64", "10.0.0.0/33"]), max_size=2)
        ),
        "owned_fwmarks": either(st.lists(st.sampled_from(["100-199", 150, "5-x", "0x64"]), max_size=2)),
        "timeouts": either(
            st.fixed_dictionaries(
                {"tcp": st.integers(0, 3_000_000), "tcpfin": st.just(30), "udp": st.just(300)}
            )
        ),
        "recommended_sysctls": either(st.booleans()),
        "sysctls": either(
            st.dictionaries(st.sampled_from(["net.ipv4.vs.conntrack", "kernel.panic"]), st.integers())
        ),
        "graceful": either(st.booleans()),
        "services": either(st.lists(service, max_size=4)),
        "kubernetes": either(
            st.fixed_dictionaries(
                {}, optional={"external_ip_cidrs": either(st.just(["10.240.0.192/26"])), "coalesce_ms": junk}
            )
        ),
    },
)


def damage(draw: st.DrawFn, data: bytes) -> bytes:
    how = draw(st.sampled_from(["none", "none", "insert", "cut", "bom", "utf16", "truncate"]))
    at = draw(st.integers(0, len(data)))
    if how == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=3)) + data[at:]
    if how == "cut":
        return data[:at] + data[at + draw(st.integers(1, 8)) :]
    if how == "bom":
        return draw(st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\xff\xfe\x00\x00"])) + data
    if how == "utf16":
        return data.decode("utf-8").encode(draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32"])))
    if how == "truncate":
        return data[:at]
    return data


@st.composite
def config_files(draw: st.DrawFn) -> bytes:
    doc = draw(document)
    return damage(draw, yaml_rs.dumps(doc).encode())


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "lb.yaml"


def load(path: Path, data: bytes) -> Any:
    """The desired state, or the ConfigError/ParseError: anything else escapes the test."""
    path.write_bytes(data)
    try:
        config = load_config(path)
        desired = to_desired(config)
        if config.kubernetes is not None:
            parse_kubernetes(config.kubernetes, desired.ownership)
    except ConfigError as exc:
        assert exc.errors, "a ConfigError names at least one problem"
        assert all(not isinstance(e, MoreErrors) for e in exc.errors[:-1])
        assert len(exc.errors) <= 51
        return exc
    except ParseError as exc:
        assert str(exc).startswith(str(path)), "a ParseError names the file"
        return exc
    return desired


def round_trip(path: Path, desired: Any) -> None:
    path.write_bytes(yaml_rs.dumps(config_document(desired)).encode())
    again = to_desired(load_config(path))
    assert again == desired
    assert [s.name for s in again.services.values()] == [s.name for s in desired.services.values()]


@FUZZ
@given(data=config_files())
def test_config_shaped_files_load_or_fail_cleanly_and_valid_ones_round_trip(
    scratch: Path, data: bytes
) -> None:
    result = load(scratch, data)
    if not isinstance(result, ConfigError | ParseError):
        round_trip(scratch, result)


@FUZZ
@given(
    data=st.binary(max_size=400)
    | st.text(alphabet="sevic:-[]{}#&*!|>'\"\n\t \x00\x1b\x85é10.", max_size=200).map(str.encode)
)
def test_any_bytes_load_or_fail_cleanly(scratch: Path, data: bytes) -> None:
    result = load(scratch, data)
    if not isinstance(result, ConfigError | ParseError):
        round_trip(scratch, result)


@settings(max_examples=60, deadline=None)
@given(
    doc=st.fixed_dictionaries(
        {"owned_cidrs": st.just(["10.240.0.0/24"]), "services": st.lists(service, max_size=3)}
    ),
    data=st.data(),
)
def test_a_nul_anywhere_in_a_config_is_refused_at_its_place(
    scratch: Path, doc: dict[str, Any], data: st.DataObject
) -> None:
    text = yaml_rs.dumps(doc).encode()
    # The NUL must be the file's first problem: text that is refused on its own (a name
    # with a control character) or a NUL that splits a UTF-8 sequence is another case.
    assume(not isinstance(load(scratch, text), ParseError))
    at = data.draw(st.integers(0, len(text)))
    assume(at == len(text) or text[at] & 0xC0 != 0x80)
    result = load(scratch, text[:at] + b"\0" + text[at:])
    assert isinstance(result, ParseError), "a NUL must never be read past"
    assert result.line == text[:at].count(b"\n") + 1
    assert (
        getattr(result, "column", None)
        == len(text[text.rfind(b"\n", 0, at) + 1 : at].decode(errors="replace")) + 1
    )


def test_the_generator_reaches_valid_configs(scratch: Path) -> None:
    # The round-trip property is empty unless valid configs come out: count them.
    valid = 0

    @settings(max_examples=100, deadline=None, database=None)
    @given(doc=document)
    def count(doc: dict[str, Any]) -> None:
        nonlocal valid
        if not isinstance(load(scratch, yaml_rs.dumps(doc).encode()), ConfigError | ParseError):
            valid += 1

    count()
    assert valid >= 5


def test_nan_is_no_number_anywhere(scratch: Path) -> None:
    doc = {"kubernetes": {"resync_seconds": math.nan}, "owned_cidrs": ["10.240.0.0/24"]}
    result = load(scratch, yaml_rs.dumps(doc).encode())
    assert isinstance(result, ConfigError)
    assert [str(e) for e in result.errors] == ["kubernetes.resync_seconds: must be a finite number, got nan"]
