#!/usr/bin/env bash
# kubesmith's two set-up commands (Debian 12, as root):
#
#   ./setup.sh lab    install what the operator side needs, make the lab hosts
#                     (1 master, 2 workers; MASTERS=3 WORKERS=2 ./setup.sh lab for more)
#                     and deploy the cluster onto them
#   ./setup.sh test   install what the tests need and run the whole test suite
#
# Both are safe to re-run. `./setup.sh deps` only installs.
set -euo pipefail
cd "$(dirname "$0")"
ROOT="$(pwd)"
VENV="$ROOT/.venv"

# Debian packages the operator's machine needs. The lab's hosts see this machine's
# files through their copy-on-write roots, so the packages hosts use are here too.
APT_PACKAGES=(
  python3 python3-venv python3-pip
  openssh-server openssh-client iproute2 util-linux kmod procps
  etcd-server etcd-client supervisor iptables
  containerd runc containernetworking-plugins busybox-static conntrack dnsutils
)

say() { printf '==> %s\n' "$*" >&2; }

require_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: must run as root (it installs Debian packages and makes network namespaces)" >&2
    exit 2
  fi
}

install_packages() {
  local missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing Debian packages: ${missing[*]}"
  # Packages such as openssh-server and etcd-server would start their services on this
  # machine; the lab runs them inside its hosts instead, so forbid starts while installing.
  local policy=/usr/sbin/policy-rc.d added_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; added_policy=1
  fi
  trap '[ "$added_policy" = 1 ] && rm -f "$policy"' EXIT
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$added_policy" = 1 ] && rm -f "$policy"
  trap - EXIT
}

install_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    /usr/bin/python3 -m venv "$VENV"
  fi
  local stamp="$VENV/.requirements.sha256" want components="$VENV/component-requirements.txt"
  want="$(cat requirements-operator.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing Python packages into $VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    # The components' own dependencies, as the wheel declares them (tests import them).
    "$VENV/bin/python" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > "$components"
    "$VENV/bin/pip" install --quiet -r requirements-operator.txt -r "$components"
    echo "$want" > "$stamp"
  fi
}

deps() {
  require_root
  install_packages
  install_venv
}

case "${1:-}" in
  deps)
    deps
    ;;
  lab)
    deps
    bin/kubesmith-lab up --masters "${MASTERS:-1}" --workers "${WORKERS:-2}"
    say "deploying: pyinfra -y inventories/lab.py deploy.py"
    "$VENV/bin/pyinfra" -y inventories/lab.py deploy.py
    say "cluster deployed; admin kubeconfig: $(bin/kubesmithctl kubeconfig)"
    ;;
  test)
    # The Vagrantfile's tests run it with ruby (no VM is made).
    APT_PACKAGES+=(ruby)
    deps
    shift
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  *)
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
