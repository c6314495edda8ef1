#!/bin/sh
# Regenerates the Python modules committed beside this script from kv.proto and
# rpc.proto. Hosts never run this: they import the committed modules.
#
# Needs grpcio-tools (pinned in requirements-operator.txt). The generated code
# refuses to import with a protobuf or grpcio runtime older than the generator's,
# so after moving to another grpcio-tools raise the protobuf and grpcio lower
# bounds in pyproject.toml to the versions named in the new *_pb2.py and
# rpc_pb2_grpc.py headers.
#
# The .proto files import each other by their path from the repository root, so
# the generated modules import each other as kubesmith.store.proto.* and work
# from an installed wheel.
set -eu
root=$(cd "$(dirname "$0")/../../.." && pwd)
python=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && [ -x "$root/.venv/bin/python" ]; then
    python=$root/.venv/bin/python
fi
cd "$root"
"$python" -m grpc_tools.protoc -I . \
    --python_out=. --pyi_out=. --grpc_python_out=. \
    kubesmith/store/proto/kv.proto kubesmith/store/proto/rpc.proto
# kv.proto declares no service: its (empty) gRPC module is noise.
rm -f kubesmith/store/proto/kv_pb2_grpc.py
