"""What each kubelvs role does, one step at a time (the loops that repeat the steps are in
``kubelvs.app``).

    director   one reconcile of a backend to a desired state: plan against the picture of
               the kernel, apply, retry refused services with backoff
    guard      the deletion guard: no mass deletion on the word of one desired state
    health     probe results -> real-server states -> the weights the kernel gets
    node       the node agent: VIPs on lo, arp_ignore/arp_announce, rp_filter, tunl0
"""
