"""Health probes: the I/O of health checking (what is probed and how often is decided in
``app.health``; what a result means in ``roles.health``).

    direct   the real server's own address: tcp, http, https, udp, exec
    vip      the VIP the way the director forwards it: DR (a SYN to the real server's MAC)
             and TUN (the SYN inside IPIP); the answer must come from the VIP
"""
