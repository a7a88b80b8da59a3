"""Network-namespace labs: topology toolkit (netlab) and tiny servers (servers)."""
