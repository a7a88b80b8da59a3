"""The kernel-interface layer: the only code reading and changing links, addresses,
routes, neighbours (``iproute``, over ``rtnl``) and sysctls (``sysctl``), inside a named
network namespace (``netns``). Backends, roles and the lab call it; it imports only
``kubelvs.errors``."""
