#!/usr/bin/env bash
# Fetches Debian trixie's u-boot-qemu (Architecture: all) and extracts the arm64
# U-Boot for QEMU virt into DEST/u-boot.bin. Used by tests/uboot_qemu.rs.
# The mirror is read from this machine's apt configuration; apt runs with a private
# configuration under DEST/apt and leaves the system's apt state alone.
# usage: fetch-u-boot-qemu.sh DEST
set -euo pipefail

DEST="${1:?usage: $0 DEST}"
SUITE=trixie
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
[ -f "$DEST/u-boot.bin" ] && exit 0

mirror_uri() {
	local f uri=""
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		# first URIs: of a stanza whose Suites: is not the security archive
		uri=$(awk '
			/^[[:space:]]*$/ { if (u != "" && s !~ /security/) { print u; exit } u=""; s="" }
			/^URIs:/ { u=$2 }
			/^Suites:/ { s=$0 }
			END { if (u != "" && s !~ /security/) print u }' "$f" | grep -i debian | grep -vi security | head -n1 || true)
		[ -n "$uri" ] && break
	done
	if [ -z "$uri" ]; then
		for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
			[ -f "$f" ] || continue
			uri=$(sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" { print $2 }' |
				grep -i debian | grep -vi security | head -n1 || true)
			[ -n "$uri" ] && break
		done
	fi
	[ -n "$uri" ] || { echo "no Debian mirror in /etc/apt" >&2; exit 1; }
	echo "$uri"
}

[ -f "$KEYRING" ] || { echo "missing $KEYRING (apt-get install debian-archive-keyring)" >&2; exit 1; }
APT="$DEST/apt"
mkdir -p "$APT/lists/partial" "$APT/archives/partial" "$APT/etc"
echo "deb [signed-by=$KEYRING] $(mirror_uri) $SUITE main" >"$APT/etc/sources.list"
opts=(
	-o "Dir::Etc::SourceList=$APT/etc/sources.list"
	-o "Dir::Etc::SourceParts=/dev/null"
	-o "Dir::State::Lists=$APT/lists"
	-o "Dir::Cache::Archives=$APT/archives"
	-o "Dir::State::status=/dev/null"
	-o "Acquire::Check-Valid-Until=false"
	-o "Acquire::Languages=none"
	-o "APT::Sandbox::User=root"
)
apt-get "${opts[@]}" -q update >"$APT/update.log" 2>&1 || { cat "$APT/update.log" >&2; exit 1; }
(cd "$APT" && apt-get "${opts[@]}" -q download "u-boot-qemu/$SUITE") >"$APT/download.log" 2>&1 ||
	{ cat "$APT/download.log" >&2; exit 1; }
deb=$(ls "$APT"/u-boot-qemu_*_all.deb | head -n1)
rm -rf "$APT/x"
dpkg-deb -x "$deb" "$APT/x"
cp "$APT/x/usr/lib/u-boot/qemu_arm64/u-boot.bin" "$DEST/u-boot.bin.tmp"
mv "$DEST/u-boot.bin.tmp" "$DEST/u-boot.bin"
rm -rf "$APT/x" "$APT/lists"
echo "$(basename "$deb") -> $DEST/u-boot.bin"
