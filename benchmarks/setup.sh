#!/usr/bin/env bash
# Set-up for the peer benchmarks (benchmarks/etcd.py, benchmarks/idle.py): Debian's etcd 3.4
# (etcd-server: the etcd binary; etcd-client: etcdctl), and PySyncObj 0.3.17 in a venv of its
# own (benchmarks/.peers-venv, not committed). Not a test dependency. As root, installs the two
# Debian packages when missing; otherwise says what to install.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
pysyncobj() {
  local venv="$here/.peers-venv"
  if ! "$venv/bin/python" -c "import pysyncobj" >/dev/null 2>&1; then
    echo "installing PySyncObj 0.3.17 into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "pysyncobj==0.3.17"
  fi
  echo "pysyncobj $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("pysyncobj"))') ($venv)"
}
pysyncobj
if command -v etcd >/dev/null 2>&1 && command -v etcdctl >/dev/null 2>&1; then
  etcd --version | head -1
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "benchmarks/etcd.py needs etcd and etcdctl: as root on Debian," \
       "apt-get install etcd-server etcd-client" >&2
  exit 1
fi
echo "installing etcd-server and etcd-client from Debian's archive" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  etcd-server etcd-client >/dev/null
# Debian's package enables an etcd service; the benchmark starts its own members.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  echo "note: Debian started its etcd service (systemctl stop etcd if you do not want it)" >&2
fi
etcd --version | head -1
