#!/usr/bin/env bash
# Debian's dlib and the BLAS/LAPACK it links, for the optional `dlib` feature (dlib's own HOG face
# detector, as the course's face_recognition uses). Needs root (apt-get).
set -euo pipefail
PKGS="libdlib-dev libopenblas-dev liblapack-dev"
if dpkg -s $PKGS >/dev/null 2>&1; then echo "dlib packages present"; exit 0; fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q $PKGS >/dev/null
echo "dlib packages installed"
