# shellcheck shell=bash
# Root filesystem assembly (sourced by scripts/build-image).
#
# The .debs are unpacked with dpkg-deb; no maintainer script runs. What those
# scripts would have done is done here from the host: users and groups
# (base-passwd masters + sysusers.d by the target's systemd-sysusers),
# directories (tmpfiles.d via systemd-tmpfiles --root, and again at boot),
# the CA bundle, busybox applet links, the ld.so cache and Python byte code
# (both by the target's own binaries under qemu-aarch64-static in a chroot).

# Greenbone's Community Feed integrity key: the only key Debian's
# GBCommunitySigningKey.asc may hold.
GREENBONE_FEED_KEY_FPR=8AE4BE429B60A59B311C2E739823FAA60ED1E580

# Runs an arm64 program inside the rootfs with the static qemu user emulator,
# invoked directly (no binfmt_misc registration needed).
run_target() {
	local rootfs="$1"
	shift
	local q=".qemu-aarch64-static.$BASHPID" rc=0
	install -m 0755 "$(command -v qemu-aarch64-static)" "$rootfs/$q"
	chroot "$rootfs" "/$q" "$@" || rc=$?
	rm -f "${rootfs:?}/$q"
	return $rc
}

# chown by the TARGET's user and group names (numeric ids from its /etc/passwd).
chroot_chown() {
	local rootfs="$1" owner="$2" path="$3" rec="${4:-}" uid gid
	uid=$(awk -F: -v u="${owner%%:*}" '$1 == u { print $3 }' "$rootfs/etc/passwd")
	gid=$(awk -F: -v g="${owner##*:}" '$1 == g { print $3 }' "$rootfs/etc/group")
	[ -n "$uid" ] && [ -n "$gid" ] || die "no user/group $owner in the image"
	chown -h $rec "$uid:$gid" "$rootfs$path"
}

rootfs_unpack() {
	local rootfs="$1" list="$2" name ver arch
	rm -rf "$rootfs"
	mkdir -p "$rootfs"/usr/{bin,sbin,lib} "$rootfs"/{etc,var,run,tmp,proc,sys,dev,boot,data,root}
	# merged /usr, as Debian trixie and later lay it out
	ln -s usr/bin "$rootfs/bin"
	ln -s usr/sbin "$rootfs/sbin"
	ln -s usr/lib "$rootfs/lib"
	chmod 1777 "$rootfs/tmp"
	chmod 0700 "$rootfs/root"
	while read -r name ver arch; do
		dpkg-deb --fsys-tarfile "$(deb_path "$name" "$ver" "$arch")" |
			tar -x --keep-directory-symlink --no-same-owner -C "$rootfs" ||
			die "unpacking $name $ver failed"
	done <"$list"
	# ld-linux is looked up at /lib/ld-linux-aarch64.so.1 (through the symlink)
	[ -e "$rootfs/lib/ld-linux-aarch64.so.1" ] || die "rootfs has no dynamic loader after unpacking"
}

rootfs_users() {
	local rootfs="$1"
	# base-passwd's preinst: the static system users and groups
	cp "$rootfs/usr/share/base-passwd/passwd.master" "$rootfs/etc/passwd"
	cp "$rootfs/usr/share/base-passwd/group.master" "$rootfs/etc/group"
	# locked passwords for everyone: no console login exists anyway
	awk -F: '{ print $1 ":*:20000:0:99999:7:::" }' "$rootfs/etc/passwd" >"$rootfs/etc/shadow"
	awk -F: '{ print $1 ":*::" }' "$rootfs/etc/group" >"$rootfs/etc/gshadow"
	chmod 0640 "$rootfs/etc/shadow" "$rootfs/etc/gshadow"
	# the packages' sysusers.d (mosquitto, _gvm, ...) and ours (redis), applied
	# by the target's own systemd-sysusers (the host's may be too old)
	cp -a "$ROOT/image/rootfs-overlay/usr/lib/sysusers.d/." "$rootfs/usr/lib/sysusers.d/"
	run_target "$rootfs" /usr/bin/systemd-sysusers >/dev/null || die "systemd-sysusers failed"
	# shells that exist in the image
	printf '/bin/sh\n/usr/bin/sh\n' >"$rootfs/etc/shells"
}

rootfs_configure() {
	local rootfs="$1" variant="$2"
	# busybox applets for every command no package provides
	local applet
	while read -r applet; do
		[ -n "$applet" ] || continue
		[ -e "$rootfs/$applet" ] || [ -L "$rootfs/$applet" ] && continue
		mkdir -p "$(dirname "$rootfs/$applet")"
		ln -s /usr/bin/busybox "$rootfs/$applet"
	done < <(run_target "$rootfs" /usr/bin/busybox --list-full | sed -e 's|^/||' -e 's|^bin/|usr/bin/|' -e 's|^sbin/|usr/sbin/|')
	ln -sf /usr/bin/busybox "$rootfs/usr/sbin/init"

	# our init and service files
	cp -a "$ROOT/image/rootfs-overlay/." "$rootfs/"
	if [ "$variant" = test ]; then
		cp -a "$ROOT/image/test-overlay/usr/." "$rootfs/usr/"
		# the demo scan target, for the demo lab (demo-lab up)
		install -m 0755 "$ROOT/image/feed-demo/target/demo-target.sh" "$rootfs/usr/libexec/outpost/demo-target"
		cat "$ROOT/image/test-overlay/inittab.append" >>"$rootfs/etc/inittab"
	fi
	echo outpost >"$rootfs/etc/hostname.default"
	rm -f "$rootfs/etc/hostname"
	printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$rootfs/etc/hosts"
	: >"$rootfs/etc/resolv.conf"
	ln -sf /proc/self/mounts "$rootfs/etc/mtab"
	ln -sf /usr/share/zoneinfo/Etc/UTC "$rootfs/etc/localtime"
	echo "Etc/UTC" >"$rootfs/etc/timezone"
	# /usr/lib/os-release from base-files, with our identity
	cat >"$rootfs/etc/os-release" <<-EOF
		PRETTY_NAME="Outpost sensor ($BOARD)"
		NAME="Outpost"
		ID=outpost
		ID_LIKE=debian
		VARIANT_ID=$variant
		BUILD_ID=$BUILD_ID
	EOF

	# ca-certificates' postinst: the bundle of the Mozilla roots
	if [ -d "$rootfs/usr/share/ca-certificates/mozilla" ]; then
		mkdir -p "$rootfs/etc/ssl/certs"
		cat "$rootfs"/usr/share/ca-certificates/mozilla/*.crt >"$rootfs/etc/ssl/certs/ca-certificates.crt"
	fi

	# directories the packages' tmpfiles.d would create (/run again at boot);
	# the host's systemd-tmpfiles resolves names in the image's /etc/passwd
	systemd-tmpfiles --root="$rootfs" --create --exclude-prefix=/dev --exclude-prefix=/proc \
		--exclude-prefix=/sys --exclude-prefix=/run --exclude-prefix=/tmp >/dev/null 2>&1 ||
		log "note: systemd-tmpfiles reported errors (rechecked at boot)"
	# owners and modes that maintainer scripts set
	local path mode user group
	while read -r path mode user group; do
		[ -e "$rootfs$path" ] || continue
		chroot_chown "$rootfs" "$user:$group" "$path"
		chmod "$mode" "$rootfs$path"
	done < <(list_file "$ROOT/image/permissions.txt")
	# The scanner's OpenPGP home: openvas, ospd-openvas and notus-scanner accept a feed's
	# sha256sums only when a fully trusted key there signed them. Greenbone's key (pinned:
	# another key in Debian's file fails the build), the operator's (--feed-openpgp-key)
	# and, in test images, the lab key that signs the demo feed. One script for both
	# images (the Yocto layer's outpost-feed-keys runs it too).
	if [ -f "$rootfs/usr/share/openvas/GBCommunitySigningKey.asc" ]; then
		local gh="$rootfs/etc/openvas/gnupg"
		local extra=("${FEED_OPENPGP_KEYS[@]}")
		[ "$variant" = test ] && extra+=("$ROOT/image/lab-keys/lab-feed-key.asc")
		rm -rf "$gh"
		mkdir -p "$rootfs/etc/openvas"
		sh "$ROOT/image/lib/openvas-gnupg-home" --out "$gh" \
			--pinned "$GREENBONE_FEED_KEY_FPR" "$rootfs/usr/share/openvas/GBCommunitySigningKey.asc" \
			"${extra[@]}" || die "building the scanner's OpenPGP home (/etc/openvas/gnupg) failed"
		chroot_chown "$rootfs" "_gvm:_gvm" /etc/openvas/gnupg -R
	fi
	rm -rf "${rootfs:?}"/run/* "${rootfs:?}"/tmp/*

	# directories outpostd and init rely on
	mkdir -p "$rootfs/data" "$rootfs/boot" "$rootfs/usr/share/outpost" "$rootfs/var/log"
}

rootfs_trim() {
	local rootfs="$1" pattern
	# keep licence texts, drop the rest of /usr/share/doc
	if [ -d "$rootfs/usr/share/doc" ]; then
		find "$rootfs/usr/share/doc" -mindepth 1 \( -type f -o -type l \) ! -name copyright -delete
		find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
	fi
	while read -r pattern; do
		# shellcheck disable=SC2086 # the pattern is a glob on purpose
		rm -rf "${rootfs:?}"/$pattern
	done < <(list_file "$ROOT/image/trim.txt")
	find "$rootfs" -name __pycache__ -type d -prune -exec rm -rf {} +
}

# What ldconfig's trigger would have made: a SONAME link for every shared library that
# ships only its full version (e.g. libpicohttpparser.so.1 -> .so.1.2, which mosquitto
# needs). The host's readelf reads the arm64 headers.
soname_links() {
	local rootfs="$1" lib dir soname n=0
	while IFS= read -r -d '' lib; do
		soname=$(readelf -d "$lib" 2>/dev/null | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
		[ -n "$soname" ] || continue
		dir=$(dirname "$lib")
		if [ ! -e "$dir/$soname" ] && [ "$(basename "$lib")" != "$soname" ]; then
			ln -s "$(basename "$lib")" "$dir/$soname"
			n=$((n + 1))
		fi
	done < <(find "$rootfs/usr/lib" "$rootfs/lib" -type f -name '*.so.*' -print0 2>/dev/null)
	log "SONAME links made: $n"
}

rootfs_finalize() {
	local rootfs="$1"
	# ld.so cache by the target's ldconfig, when the image has one (libc-bin is
	# not in the set: Debian's loader searches the multiarch dirs by default)
	if [ -x "$rootfs/usr/sbin/ldconfig" ]; then
		run_target "$rootfs" /usr/sbin/ldconfig || die "ldconfig failed"
	else
		soname_links "$rootfs"
	fi
	# Python byte code by the target's interpreter (the host python3 is another
	# version). Under emulation this takes minutes, so the result is cached,
	# keyed by the pinned package set and the trim list (same inputs, same .py
	# files with the same mtimes, so the cached .pyc stay valid).
	local py=""
	local f
	for f in "$rootfs"/usr/bin/python3.*; do
		[[ "$(basename "$f")" =~ ^python3\.[0-9]+$ ]] && py=$(basename "$f")
	done
	[ -n "$py" ] || return 0
	local key pyc_cache
	key=$(cat "$WORK/packages.list" "$ROOT/image/trim.txt" | sha256sum | cut -c1-16)
	pyc_cache="$CACHE/pyc-$py-$key.tar"
	if [ -f "$pyc_cache" ]; then
		log "Python byte code from cache ($(basename "$pyc_cache"))"
		tar -xf "$pyc_cache" -C "$rootfs" || die "restoring $pyc_cache failed"
		return 0
	fi
	log "byte-compiling Python ($py, under qemu-aarch64-static; cached afterwards)"
	# two interpreters in parallel (compileall -j needs /dev/shm, absent in the chroot)
	run_target "$rootfs" "/usr/bin/$py" -m compileall -q "/usr/lib/$py" >/dev/null &
	local pid=$!
	run_target "$rootfs" "/usr/bin/$py" -m compileall -q /usr/lib/python3/dist-packages >/dev/null ||
		die "compileall of dist-packages failed"
	wait "$pid" || die "compileall of the standard library failed"
	(cd "$rootfs" && find usr/lib -type d -name __pycache__ -print0 |
		tar --null -T - -cf "$pyc_cache.tmp") && mv "$pyc_cache.tmp" "$pyc_cache"
}

# The scanner's only privileges, as file capabilities on the openvas binary (kept by
# squashfs as the security.capability xattr): raw sockets (CAP_NET_RAW) for alive
# detection by ICMP, TCP ping and ARP, and packet capture (CAP_NET_ADMIN) for the
# checks that listen for a target's callback. openvas runs as _gvm, started by
# ospd-openvas (also _gvm, no capabilities); nothing else in the stack gets one.
rootfs_capabilities() {
	local rootfs="$1" bin="$1/usr/sbin/openvas" caps
	[ -f "$bin" ] || return 0
	setcap cap_net_raw,cap_net_admin=ep "$bin" || die "setcap on usr/sbin/openvas failed"
	caps=$(getcap "$bin")
	case "$caps" in
	*cap_net_admin,cap_net_raw=ep*) log "capabilities: usr/sbin/openvas ${caps##* }" ;;
	*) die "usr/sbin/openvas carries the wrong capabilities: $caps" ;;
	esac
}

# Manifest of every package in the image: name version arch (plus kernel/boot).
rootfs_manifest() {
	local rootfs="$1" list="$2" bootlist="$3"
	mkdir -p "$rootfs/usr/share/outpost"
	{
		echo "# Outpost image $BUILD_ID ($BOARD, $VARIANT): Debian packages, name version arch"
		cat "$list"
		echo "# kernel and boot firmware (outside the package resolver)"
		cat "$bootlist"
	} >"$rootfs/usr/share/outpost/manifest.txt"
}
