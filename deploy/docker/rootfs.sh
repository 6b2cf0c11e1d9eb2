#!/usr/bin/env bash
# Assembles the root filesystem of tether's runtime image from a tether binary:
#   rootfs.sh BINARY OUT
# The binary with the shared libraries it links (so a glibc build needs no base image),
# a static busybox as /bin/sh (shell hooks and the demo), CA certificates (https
# webhooks), a /tmp any user can write (mode 1777), an unprivileged user 65532, the
# directory the state file goes to, and a minimal config. Used by the Dockerfile and by
# CI, which builds the image from the release binary it has just built.
set -euo pipefail
binary=$1
out=$2
here=$(cd "$(dirname "$0")" && pwd)

# /dev and /proc: mount points for the runtime (and for a chroot that tests the image).
mkdir -p "${out}"/{bin,dev,proc,etc/ssl/certs,etc/tether,tmp,run/tether}
install -m 0755 "${binary}" "${out}/tether"
# Every library the binary loads, the dynamic loader included, at its own path.
ldd "${binary}" | awk '/=>/ { print $3 } /^\t\// { print $1 }' | while read -r lib; do
    [ -n "${lib}" ] && cp --parents -L "${lib}" "${out}/"
done
busybox=$(command -v busybox)
if ldd "${busybox}" >/dev/null 2>&1; then
    echo "rootfs.sh: ${busybox} is not static (install busybox-static)" >&2
    exit 1
fi
install -m 0755 "${busybox}" "${out}/bin/busybox"
ln -sf busybox "${out}/bin/sh"
cp -L /etc/ssl/certs/ca-certificates.crt "${out}/etc/ssl/certs/"
chmod 1777 "${out}/tmp"
echo "nonroot:x:65532:65532:nonroot:/nonexistent:/bin/sh" >"${out}/etc/passwd"
echo "nonroot:x:65532:" >"${out}/etc/group"
chown 65532:65532 "${out}/run/tether"
install -m 0644 "${here}/tether.toml" "${out}/etc/tether/tether.toml"
