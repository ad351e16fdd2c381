"""containerd API definitions used by pussh and their generated grpclib stubs (see generate.py)."""
