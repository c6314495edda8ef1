"""The CRI runtime.v1 message classes and enum values, under one short name.

    from kubesmith.cri import api
    config = api.PodSandboxConfig(metadata=api.PodSandboxMetadata(name="web", ...))
    api.NODE, api.CONTAINER_RUNNING, api.SANDBOX_READY, api.TCP, ...

Everything here comes from the generated kubesmith.cri.proto.api_pb2 (see
proto/api.proto for the fields); this module only re-exports it so callers
need not know where generated code lives.
"""
from kubesmith.cri.proto.api_pb2 import *  # noqa: F401,F403  (the whole message set)
