#!/usr/bin/env bash
# Make sure the base image docker/Dockerfile starts from (ARG PYTHON_IMAGE, python:3.11.11-slim-bookworm) is present.
#
#   docker/base-image.sh [ENGINE]        # ENGINE: podman or docker (default: the one docker/engine.sh finds)
#
# 1. present locally: nothing to do;
# 2. a registry answers: pull it;
# 3. no registry (air-gapped hosts, sandboxes): make a stand-in from Debian's packages and import it under the same
#    name and tag, so that the project's own Dockerfile is what gets built. Debian bookworm's python3 is 3.11
#    (3.11.2, not 3.11.11): `python`, `python3`, `pip` and `python -m venv` work as in the official image.
#    Needs root (debootstrap) and a Debian mirror: the first `URIs:`/`deb` line of apt's sources, or $DEBIAN_MIRROR.
#
# Environment: PYTHON_IMAGE (default: the Dockerfile's), DEBIAN_MIRROR, IRANKER_BASE_FROM_DEBIAN=1 (skip the pull).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ENGINE=${1:-$("$HERE/engine.sh")}
IMAGE=${PYTHON_IMAGE:-$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$HERE/Dockerfile" | head -n1)}
SUITE=bookworm

say() { echo "base-image: $*" >&2; }

if "$ENGINE" image inspect "$IMAGE" >/dev/null 2>&1; then
    say "$IMAGE is present"
    exit 0
fi
if [ "${IRANKER_BASE_FROM_DEBIAN:-0}" != 1 ]; then
    say "pulling $IMAGE"
    if timeout 300 "$ENGINE" pull "$IMAGE" >&2; then
        exit 0
    fi
    say "no registry answers; making $IMAGE from Debian's packages instead"
fi

case "$IMAGE" in *-bookworm | *-bookworm@*) ;; *)
    say "only a bookworm base can be made here (python3 is 3.11 in bookworm); $IMAGE is not one"; exit 1 ;;
esac
if [ "$(id -u)" != 0 ]; then
    say "making the base needs root (debootstrap): run 'sudo $0 $ENGINE'"; exit 1
fi
command -v debootstrap >/dev/null || { say "debootstrap is not installed (apt-get install debootstrap)"; exit 1; }

mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
    # deb822 sources (URIs:) first, then one-line sources (deb URL suite ...), the first main archive (not security)
    mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -n 's/^URIs:[[:space:]]*//p' \
        | tr ' ' '\n' | grep -v -- '-security' | head -n1 || true)
    [ -n "$mirror" ] || mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) {print $i; exit}}')
    [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
fi
security=${DEBIAN_SECURITY_MIRROR:-${mirror%/debian}/debian-security}

rootfs=$(mktemp -d /var/tmp/iranker-base.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
say "debootstrap --variant=minbase $SUITE from $mirror"
debootstrap --variant=minbase --include=ca-certificates,netbase,tzdata,python3,python3-venv,python3-pip \
    "$SUITE" "$rootfs" "$mirror" >&2

# the official image's layout: python, pip on PATH under their short names, pip allowed outside a venv,
# apt sources of bookworm with its updates and security suites, no package lists, no docs
ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python3"
ln -sf /usr/bin/pip3 "$rootfs/usr/local/bin/pip"
ln -sf /usr/bin/pip3 "$rootfs/usr/local/bin/pip3"
rm -f "$rootfs"/usr/lib/python3.*/EXTERNALLY-MANAGED
rm -f "$rootfs/etc/apt/sources.list"
cat > "$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/tmp/* "$rootfs"/var/log/*.log
version=$(chroot "$rootfs" /usr/bin/python3 -c 'import platform; print(platform.python_version())')

say "importing $IMAGE (Debian $SUITE, Python $version)"
tar --numeric-owner -C "$rootfs" -c . | "$ENGINE" import \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "ENV PYTHON_VERSION=$version" \
    --change 'CMD ["python3"]' \
    --message "stand-in for $IMAGE made by docker/base-image.sh from Debian $SUITE ($mirror)" \
    - "$IMAGE" >&2
"$ENGINE" run --rm --network none "$IMAGE" python -c 'import sys, venv, ensurepip; print(sys.version)' >&2
