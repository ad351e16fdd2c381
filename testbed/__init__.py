"""Real-daemon test bed for pussh: a local Docker host and "remote" Docker hosts reached over SSH.

    from testbed import LocalHost, RemoteHost, build_test_image, build_python_base
    with LocalHost() as local, RemoteHost(store="classic", rate="200mbit", delay="10ms") as remote:
        ref, ref_v2 = build_test_image_pair(local, "bench/app:1", [150, 100, 50])
        remote.ssh("docker", "info")
"""
from ._proc import TestbedError
from .images import (build_python_base, build_registry_image, build_test_image, build_test_image_pair,
                     build_test_images)

from .local import LocalHost, Store
from .remote import RemoteHost, RemoteUser

__all__ = ["LocalHost", "RemoteHost", "RemoteUser", "Store", "TestbedError", "build_python_base",
           "build_registry_image", "build_test_image", "build_test_image_pair", "build_test_images"]
