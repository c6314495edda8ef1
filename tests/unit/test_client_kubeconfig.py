"""The components' kubeconfig loader authenticates with the PKI's real certificates."""
import socket
import ssl
import threading

import pytest

from kubesmith.client import kubeconfig
from provision import pki
from provision.settings import load_settings
from provision.topology import Machine, Topology

TOPOLOGY = Topology((Machine("master-1", "127.0.0.1", frozenset({"masters", "etcd"})),))


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    root = tmp_path_factory.mktemp("state")
    pki.ensure_pki(root, load_settings({"state_dir": str(root)}), TOPOLOGY)
    return root


def serve_once(state, seen):
    """A TLS server with the apiserver cert that requires a client cert from the cluster CA."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(state / "pki" / "apiserver.crt", state / "pki" / "apiserver.key")
    server.load_verify_locations(state / "pki" / "ca.crt")
    server.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))

    def run():
        conn, _ = listener.accept()
        with server.wrap_socket(conn, server_side=True) as tls:
            seen.append(dict(x[0] for x in tls.getpeercert()["subject"]))
            tls.sendall(b"ok")
        listener.close()

    threading.Thread(target=run, daemon=True).start()
    return listener.getsockname()[1]


def test_admin_kubeconfig_authenticates(state):
    config = kubeconfig.load(state / "kubeconfigs" / "admin.conf")
    assert config.server == "https://127.0.0.1:6443"
    assert config.user == "kubernetes-admin"
    seen = []
    port = serve_once(state, seen)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with config.ssl_context.wrap_socket(raw, server_hostname="kubernetes.default.svc") as tls:
            assert tls.recv(2) == b"ok"
    assert seen == [{"commonName": "kubernetes-admin", "organizationName": "kubeadm:cluster-admins"}]


def test_missing_context_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.conf"
    path.write_text("apiVersion: v1\nkind: Config\ncurrent-context: nope\ncontexts: []\n")
    with pytest.raises(kubeconfig.KubeconfigError, match="no context named 'nope'"):
        kubeconfig.load(path)
