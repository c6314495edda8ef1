#!/bin/sh
# Regenerates the Python modules committed beside this script from api.proto.
# Hosts never run this: they import the committed modules.
#
# Needs grpcio-tools (pinned in requirements-operator.txt). The generated code
# refuses to import with a protobuf or grpcio runtime older than the generator's,
# so after moving to another grpcio-tools raise the protobuf and grpcio lower
# bounds in pyproject.toml to the versions named in the new api_pb2.py and
# api_pb2_grpc.py headers.
#
# The .proto is compiled by its path from the repository root, so the gRPC
# module imports the messages as kubesmith.cri.proto.api_pb2 and works from an
# installed wheel.
set -eu
root=$(cd "$(dirname "$0")/../../.." && pwd)
python=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && [ -x "$root/.venv/bin/python" ]; then
    python=$root/.venv/bin/python
fi
cd "$root"
"$python" -m grpc_tools.protoc -I . \
    --python_out=. --pyi_out=. --grpc_python_out=. \
    kubesmith/cri/proto/api.proto
