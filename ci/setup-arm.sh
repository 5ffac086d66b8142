#!/usr/bin/env bash
# Set up aarch64 emulation for `detharness matrix ci/profiles-arm.toml` (an explicit step, as root):
#   1. Debian's qemu-user-static (the emulator; invoked directly, binfmt_misc is not needed);
#   2. the arm64 packages of Debian's Python 3.11 and the libraries it links, *downloaded* into
#      $DETHARNESS_ARM_DEBS (default /var/cache/detharness/arm64-debs), never installed on this machine.
# detharness extracts them into its cache (a folder the emulator uses as its root, -L) on first use.
# The arm64 architecture is added to dpkg only for the download and removed after it.
set -euo pipefail
debs="${DETHARNESS_ARM_DEBS:-/var/cache/detharness/arm64-debs}"
packages=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib python3.11 libc6 libgcc-s1
  libstdc++6 zlib1g libexpat1 libffi8 libssl3 libbz2-1.0 liblzma5 libsqlite3-0 libgomp1 libncursesw6
  libtinfo6 libreadline8 libuuid1 libdb5.3 libgdbm6 libnsl2 libtirpc3 libcrypt1 libzstd1 libgssapi-krb5-2
  libkrb5-3 libk5crypto3 libkrb5support0 libcom-err2 libkeyutils1)

if [ "$(id -u)" != 0 ]; then
  echo "ci/setup-arm.sh: run as root (it uses apt-get)" >&2
  exit 2
fi
if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg >/dev/null 2>&1; then
  echo "ci/setup-arm.sh: needs a Debian-like system (apt-get, dpkg)" >&2
  exit 2
fi
if command -v qemu-aarch64-static >/dev/null 2>&1 && compgen -G "$debs/python3.11-minimal_*_arm64.deb" >/dev/null; then
  echo "ci/setup-arm.sh: already set up ($(qemu-aarch64-static --version | head -1); packages in $debs)"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
added=0
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
  added=1
fi
cleanup() {
  if [ "$added" = 1 ]; then
    dpkg --remove-architecture arm64 || true
    apt-get update -qq || true
  fi
}
trap cleanup EXIT
apt-get update -qq
if ! command -v qemu-aarch64-static >/dev/null 2>&1; then
  apt-get install -y -qq --no-install-recommends qemu-user-static >/dev/null
fi
mkdir -p "$debs"
# apt downloads as its own unprivileged user where that user can write the folder
if id _apt >/dev/null 2>&1; then chown _apt "$debs"; fi
rm -f "$debs"/*.deb.partial
(
  cd "$debs"
  # media-types is architecture-independent (Python's mimetypes reads /etc/mime.types).
  apt-get download -qq "${packages[@]/%/:arm64}" media-types
)
echo "ci/setup-arm.sh: $(qemu-aarch64-static --version | head -1); $(find "$debs" -name '*.deb' | wc -l) packages in $debs"
