"""The kubelvs nftables ruleset as pure data, in one import (nftables backend).

Three modules, one concern each:

- ``schema``: the fixed part - the two ``kubelvs`` tables, their maps and chains,
  chain names, and the nft text that makes whatever of them is missing;
- ``elements``: one service as map elements, and element texts;
- ``readback``: the tables (the kernel's binary elements, or nft's JSON) -> the model.

This module only gathers their public names for code outside the backend's own
modules: ``kubelvs doctor`` reads a captured ``nft.json`` with ``parse_tables``; the
TUN and DR neighbour helpers (tunnel.py, neigh.py) use ``Element`` and ``Neighbour``.
"""

from __future__ import annotations

from .elements import (
    Neighbour,
    ServiceElements,
    elements_text,
    group_elements,
    ip_text,
    neighbour_elements,
    render_groups,
    service_elements,
    service_forward,
    service_key,
    service_text,
)
from .readback import ParsedTables, decode_counters, parse_raw, parse_tables, stats_of
from .schema import (
    CT_DEFAULTS,
    FAMILIES,
    HASH_SEED,
    SETS,
    SKELETON_VERSION,
    SUPPORTED_SCHEDULERS,
    TABLE,
    Element,
    delete_device_chain_text,
    device_chain_name,
    device_chain_text,
    parse_scheduler_chain,
    scheduler_chain,
    skeleton_text,
    timeouts_text,
)

__all__ = [
    "CT_DEFAULTS",
    "FAMILIES",
    "HASH_SEED",
    "SETS",
    "SKELETON_VERSION",
    "SUPPORTED_SCHEDULERS",
    "TABLE",
    "Element",
    "Neighbour",
    "ParsedTables",
    "ServiceElements",
    "decode_counters",
    "delete_device_chain_text",
    "device_chain_name",
    "device_chain_text",
    "elements_text",
    "group_elements",
    "ip_text",
    "neighbour_elements",
    "parse_raw",
    "parse_scheduler_chain",
    "parse_tables",
    "render_groups",
    "scheduler_chain",
    "service_elements",
    "service_forward",
    "service_key",
    "service_text",
    "skeleton_text",
    "stats_of",
    "timeouts_text",
]
