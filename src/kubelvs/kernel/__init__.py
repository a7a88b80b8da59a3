"""Small side-effecting helpers shared by backends and roles: namespaces and sysctls."""
