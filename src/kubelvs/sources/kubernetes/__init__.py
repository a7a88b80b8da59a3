"""The Kubernetes source of the director: Services, EndpointSlices and Nodes -> LVS.

Layers (each module one concern):

    objects     typed, frozen views of the API's JSON (only the fields we use)
    settings    the ``kubernetes:`` section of the config file, checked at the edge
    ipam        pure: LoadBalancer IP allocation from pools, rebuilt from status
    mapping     pure: objects + allocations -> DesiredState, Events, VIPs per node
    tracker     object store with previous/current per object, and the coalescer
    api         HTTP to the API server through kubernetes_asyncio (auth, TLS, kubeconfig)
    watch       list + watch per kind: resourceVersion, bookmarks, 410 relist, backoff
    leader      Lease-based leader election for the one status/Event writer
    manifests   the offline source: ``kubectl get -o yaml`` files in a directory
    source      API (list + watch) or manifests -> Store: shared by director and node agent
    loop        the coalesced reconcile loop, shared by director and node agent
    reconciler  ties them together and drives ``roles.director.Director``
    runner      ``kubelvs director --kubernetes | --from-manifests``
    noderunner  ``kubelvs node --kubernetes | --from-manifests``: the VIPs the mapping
                gives this node -> ``roles.node.NodeAgent``
"""
