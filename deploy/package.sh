#!/usr/bin/env bash
# Builds meterflow's Debian package with dpkg-deb: the binary (/usr/bin/meterflow), the
# hardened systemd unit (/usr/lib/systemd/system/meterflow.service: its own user,
# StateDirectory=meterflow, UMask=0027, LimitNOFILE), the configuration
# (/etc/meterflow/meterflow.toml from deploy/debian/, a conffile: the defaults until a key is
# set; every key is in /usr/share/doc/meterflow/meterflow.example.toml)
# and scripts that make the `meterflow` system user and the state folder, and enable and start
# the service where systemd runs (as debhelper would: the admin's choice kept on upgrades,
# policy-rc.d honoured). Removing the package stops the service; purging it removes its
# config (not files an admin added to /etc/meterflow) and keeps the readings in
# /var/lib/meterflow (delete them yourself).
#
#   deploy/package.sh                    # cargo build --release, then target/debian/meterflow_VERSION_ARCH.deb
#   deploy/package.sh --binary PATH      # package a meterflow already built (the tests do)
#   deploy/package.sh --out DIR          # write the .deb into DIR
#
# Needs dpkg-deb, dpkg-shlibdeps and objcopy (Debian's dpkg-dev and binutils).
set -euo pipefail
# The package's modes are the ones written here, whatever the builder's umask.
umask 022
cd "$(dirname "$0")/.."

binary=""
out="target/debian"
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "deploy/package.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for tool in dpkg-deb dpkg-shlibdeps objcopy; do
  command -v "$tool" >/dev/null || { echo "deploy/package.sh: $tool is missing: apt-get install dpkg-dev binutils" >&2; exit 1; }
done
if [ -z "$binary" ]; then
  cargo build --release --locked --bin meterflow
  binary=target/release/meterflow
fi
[ -x "$binary" ] || { echo "deploy/package.sh: $binary is not an executable" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
arch=$(dpkg --print-architecture)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/root"

install -d "$root/DEBIAN" "$root/usr/bin" "$root/usr/lib/systemd/system" "$root/etc/meterflow" \
  "$root/usr/share/doc/meterflow"
# Without the line tables (a third of the size); symbols stay for backtraces.
objcopy --strip-debug "$binary" "$root/usr/bin/meterflow"
chmod 0755 "$root/usr/bin/meterflow"
# The unit without its header of manual install steps (the package does them), at /usr/bin.
{
  echo "# meterflow's service, installed by the meterflow package. Settings: /etc/meterflow/meterflow.toml,"
  echo "# secrets in /etc/meterflow/env; an override: systemctl edit meterflow."
  sed -e 's#/usr/local/bin/meterflow#/usr/bin/meterflow#' -e '1,/^\[Unit\]/{/^\[Unit\]/!d}' deploy/meterflow.service
} > "$root/usr/lib/systemd/system/meterflow.service"
# Closed to others from the start; postinst gives the group to the service's user.
install -m 0640 deploy/debian/meterflow.toml "$root/etc/meterflow/meterflow.toml"
chmod 0750 "$root/etc/meterflow"
install -m 0644 deploy/meterflow.example.toml README.md "$root/usr/share/doc/meterflow/"
cat > "$root/usr/share/doc/meterflow/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: meterflow
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
EOF
chmod 0644 "$root/usr/lib/systemd/system/meterflow.service" "$root/usr/share/doc/meterflow/"*

# The libraries the binary links, as Debian's tools compute them.
shlibs_dir="$work/shlibs"
mkdir -p "$shlibs_dir/debian"
printf 'Source: meterflow\n\nPackage: meterflow\nArchitecture: any\n' > "$shlibs_dir/debian/control"
depends=$(cd "$shlibs_dir" && dpkg-shlibdeps -O "$root/usr/bin/meterflow" 2>/dev/null \
  | sed -n 's/^shlibs:Depends=//p')
[ -n "$depends" ] || { echo "deploy/package.sh: dpkg-shlibdeps found no dependencies" >&2; exit 1; }

size=$(du -sk "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<EOF
Package: meterflow
Version: $version
Architecture: $arch
Maintainer: meterflow developers <meterflow@users.noreply.github.com>
Installed-Size: $size
Depends: $depends, adduser, init-system-helpers (>= 1.54~)
Section: net
Priority: optional
Homepage: https://github.com/meterflow/meterflow
Description: ingestion pipeline for smart-meter telemetry
 MQTT (3.1.1 and 5, TLS), CoAP/DTLS/LwM2M and DLMS/COSEM in; each device
 authenticated, each report acknowledged once the write-ahead log has it;
 protobuf, JSON, CBOR, SenML, DSMR P1, LwM2M and DLMS decoded to one
 canonical form; Parquet and ClickHouse out; billing, validation and
 estimation, and revenue protection on top.
EOF
echo /etc/meterflow/meterflow.toml > "$root/DEBIAN/conffiles"

# The maintainer scripts do what debhelper's dh_installsystemd would: enable the unit on the
# first install and keep the admin's choice on upgrades (deb-systemd-helper), start or restart
# it through deb-systemd-invoke (which honours policy-rc.d), stop it on remove, forget it on
# purge.
cat > "$root/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
case "$1" in
  configure|abort-upgrade|abort-deconfigure|abort-remove)
    if ! getent passwd meterflow >/dev/null; then
      adduser --system --group --home /var/lib/meterflow --no-create-home \
        --shell /usr/sbin/nologin meterflow >/dev/null
    fi
    # The config may hold a ClickHouse password: readable by the service, not by everyone.
    chgrp meterflow /etc/meterflow
    if [ -e /etc/meterflow/meterflow.toml ]; then
      chgrp meterflow /etc/meterflow/meterflow.toml
    fi
    install -d -m 0750 -o meterflow -g meterflow /var/lib/meterflow
    deb-systemd-helper unmask meterflow.service >/dev/null || true
    # was-enabled answers yes for a new install, and the admin's choice on an upgrade.
    if deb-systemd-helper --quiet was-enabled meterflow.service; then
      deb-systemd-helper enable meterflow.service >/dev/null || true
    else
      deb-systemd-helper update-state meterflow.service >/dev/null || true
    fi
    if [ -d /run/systemd/system ]; then
      systemctl --system daemon-reload >/dev/null || true
      if [ -n "$2" ]; then action=restart; else action=start; fi
      deb-systemd-invoke "$action" meterflow.service >/dev/null || true
    fi
    ;;
esac
exit 0
EOF
cat > "$root/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
# On remove, stop it (SIGTERM: what was read is stored, the files completed); an upgrade
# restarts it in the new postinst.
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  deb-systemd-invoke stop meterflow.service >/dev/null || true
fi
exit 0
EOF
cat > "$root/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -x /usr/bin/deb-systemd-helper ]; then
  deb-systemd-helper mask meterflow.service >/dev/null || true
fi
if [ "$1" = purge ]; then
  if [ -x /usr/bin/deb-systemd-helper ]; then
    deb-systemd-helper purge meterflow.service >/dev/null || true
    deb-systemd-helper unmask meterflow.service >/dev/null || true
  fi
  # dpkg removes the conffile; the secrets file is the package's too. Anything else an admin
  # put there (certificates, keys) stays, and so does the folder then.
  rm -f /etc/meterflow/env
  rmdir --ignore-fail-on-non-empty /etc/meterflow 2>/dev/null || true
  if [ -d /var/lib/meterflow ]; then
    echo "meterflow: the readings, WAL and credentials in /var/lib/meterflow are kept; delete them yourself" >&2
  fi
fi
if [ -d /run/systemd/system ]; then
  systemctl --system daemon-reload >/dev/null || true
fi
exit 0
EOF
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"

mkdir -p "$out"
deb="$out/meterflow_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz -z6 --build "$root" "$deb" >/dev/null
echo "$deb"
