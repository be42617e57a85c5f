#!/usr/bin/env bash
# Set-up for the peer benchmark (benchmarks/etcd.py): Debian's etcd 3.4 (etcd-server: the
# etcd binary; etcd-client: etcdctl). Not a test dependency. As root, installs the two packages
# when missing; otherwise says what to install.
set -euo pipefail
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
