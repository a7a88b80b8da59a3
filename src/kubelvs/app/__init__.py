"""The long-running programs, assembled: one module per program.

    director   DirectorOptions + a DesiredSource -> DirectorProgram (sources -> roles.director
               -> backend), run by the shared loop
    node       NodeOptions + a NodeSource -> NodeProgram (roles.node.NodeAgent)
    loop       the coalesced reconcile loop both run (resync timer, backoff, tamper check)
    state      the director's own state, published for ``kubelvs status``
    logs       one logging set-up (text or JSON lines)
    signals    SIGTERM/SIGINT -> a stop event

The CLI turns arguments into options and a source and calls ``run_director`` /
``run_node``; the tests assemble the same programs with ``start_director`` /
``start_node``. Imports go one way: cli -> app -> roles -> sources/backends.
"""
