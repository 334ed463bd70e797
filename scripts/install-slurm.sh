#!/usr/bin/env bash
# Debian's Slurm (controller, node daemon, client commands: the `slurm-wlm` set) and munge, its
# authentication, for tests/slurm_array.rs, which runs examples/slurm/ on a one-node cluster of its own
# (its own slurm.conf, munge key and socket in a temp dir: nothing under /etc is configured here).
# Needs root (apt-get). In a container policy-rc.d keeps the packages' services from starting; on a
# machine with systemd they start and fail or idle without a config, which the test does not use.
set -euo pipefail
PKGS=(slurmctld slurmd slurm-client munge)
if dpkg -s "${PKGS[@]}" >/dev/null 2>&1; then echo "slurm packages present"; exit 0; fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${PKGS[@]}" >/dev/null
echo "slurm packages installed"
