"""pussh-registry: an OCI Distribution v1.1 registry whose storage is a host's containerd."""
