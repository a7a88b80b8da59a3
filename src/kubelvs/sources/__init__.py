"""Where desired state comes from: the YAML config file, ipvsadm save files, Kubernetes."""
