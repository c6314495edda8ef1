"""Container Runtime Interface (CRI v1): how the kubelet drives containerd.

- ``kubesmith.cri.api``: the runtime.v1 protobuf messages and enums
  (generated from proto/api.proto, upstream's field numbers).
- ``kubesmith.cri.client.RuntimeClient``: an asyncio gRPC client over the
  runtime's unix socket, one coroutine per CRI RPC.
- ``kubesmith.cri.testing``: a throwaway containerd for tests.
"""
