# shellcheck shell=bash
# Kernel, modules, device trees and initramfs (sourced by scripts/build-image).

KVER=""
KERNEL_DIR=""
KERNEL_DTB_DIR=""

# Unpacks the kernel packages to $WORK/kernel and sets KVER / KERNEL_DIR /
# KERNEL_DTB_DIR. Two packagings (KERNEL_LAYOUT in board.conf):
#   (default)        linux-image-<v>: /boot/vmlinuz-<v>, DTBs in /usr/lib/linux-image-<v>/
#   usr-lib-modules  linux-image-<v> is a metapackage; linux-binary-<v> has
#                    /usr/lib/modules/<v>/vmlinuz, linux-base-<v> the DTBs in
#                    /usr/lib/modules/<v>/dtb/, linux-modules-<v> the modules (7.x)
kernel_unpack() {
	local list="$1" name ver arch
	KERNEL_DIR="$WORK/kernel"
	rm -rf "$KERNEL_DIR"
	mkdir -p "$KERNEL_DIR"
	while read -r name ver arch; do
		case "$name" in linux-image-[0-9]* | linux-base-[0-9]* | linux-binary-[0-9]* | linux-modules-[0-9]*) ;; *) continue ;; esac
		dpkg-deb -x "$(deb_path "$name" "$ver" "$arch")" "$KERNEL_DIR"
	done <"$list"
	KVER=$(ls "$KERNEL_DIR/usr/lib/modules" | head -n1)
	[ -n "$KVER" ] || die "kernel package has no modules directory"
	local vmlinuz
	case "${KERNEL_LAYOUT:-}" in
	"")
		vmlinuz="$KERNEL_DIR/boot/vmlinuz-$KVER"
		KERNEL_DTB_DIR="$KERNEL_DIR/usr/lib/linux-image-$KVER"
		;;
	usr-lib-modules)
		vmlinuz="$KERNEL_DIR/usr/lib/modules/$KVER/vmlinuz"
		KERNEL_DTB_DIR="$KERNEL_DIR/usr/lib/modules/$KVER/dtb"
		;;
	*) die "unknown KERNEL_LAYOUT ${KERNEL_LAYOUT} in board/$BOARD/board.conf" ;;
	esac
	[ -f "$KERNEL_DIR/usr/lib/modules/$KVER/modules.order" ] || die "kernel $KVER: no modules in the kernel packages"
	# U-Boot's booti needs the plain Image: Debian ships it either uncompressed
	# or gzip-compressed (EFI zboot wraps gzip inside a PE file).
	[ -f "$vmlinuz" ] || die "no $vmlinuz in the kernel package"
	if gzip -t "$vmlinuz" 2>/dev/null; then
		zcat "$vmlinuz" >"$KERNEL_DIR/Image"
	elif [ "$(head -c 8 "$vmlinuz" | tail -c 4)" = zimg ]; then
		# (an uncompressed Image with an EFI stub starts with "MZ" too: the zboot
		# header names itself at bytes 4..7)
		# EFI zboot: payload offset/size at bytes 8..15 of the header
		local off size
		off=$(od -An -tu4 -j 8 -N 4 "$vmlinuz" | tr -d ' ')
		size=$(od -An -tu4 -j 12 -N 4 "$vmlinuz" | tr -d ' ')
		tail -c +$((off + 1)) "$vmlinuz" | head -c "$size" | zcat >"$KERNEL_DIR/Image" ||
			die "could not decompress the EFI zboot kernel"
	else
		cp "$vmlinuz" "$KERNEL_DIR/Image"
	fi
	# "ARMd" magic at offset 56 marks an arm64 Image
	[ "$(dd if="$KERNEL_DIR/Image" bs=1 skip=56 count=4 2>/dev/null)" = ARMd ] ||
		die "kernel $vmlinuz is not an arm64 Image after decompression"
	# The slot carries the Image gzip-compressed (booti inflates it, see
	# board/common/boot.cmd; the Pi 5 firmware recognises a gzip kernel by its magic
	# and inflates it too): about a third of the bytes on the card and in every
	# update bundle. -n keeps the output byte-identical across builds.
	gzip -9 -n -c "$KERNEL_DIR/Image" >"$KERNEL_DIR/Image.gz" || die "cannot compress the kernel"
	log "kernel $KVER: Image $(($(fsize "$KERNEL_DIR/Image") / 1048576)) MiB, $(($(fsize "$KERNEL_DIR/Image.gz") / 1048576)) MiB gzip-compressed"
}

# Copies the trimmed module tree into the rootfs and runs depmod.
kernel_modules_install() {
	local rootfs="$1" sub
	local src="$KERNEL_DIR/usr/lib/modules/$KVER"
	local dst="$rootfs/usr/lib/modules/$KVER"
	rm -rf "$dst"
	mkdir -p "$(dirname "$dst")"
	cp -a "$src" "$dst"
	# usr-lib-modules: the kernel image, DTBs and build files are not modules (the
	# slot's boot files carry the kernel and the DTB)
	rm -rf "${dst:?}/vmlinuz" "$dst/dtb" "$dst/System.map" "$dst/config"
	while read -r sub; do
		rm -rf "${dst:?}/kernel/$sub"
	done < <(list_file "$ROOT/image/modules-trim.txt")
	depmod -b "$rootfs" "$KVER" || die "depmod failed"
	log "modules: $(du -sm "$dst" | cut -f1) MiB after trimming"
}

# Module file paths (relative to lib/modules/$KVER) for the names given, with
# their dependencies first, each once. Built-in modules are skipped.
module_closure() {
	python3 "$ROOT/image/lib/modules.py" closure "$@"
}

# Boards with a device tree: every driver in the supplier chains of the root
# device and the network (DRIVER_CHECK_NODES in board.conf) must be built in or
# shipped in the initramfs, or the board could not find its card (docs/boot-flow.md).
initramfs_driver_check() {
	local moddir="$1" dtb
	shift
	[ -n "${DRIVER_CHECK_NODES:-}" ] || return 0
	local node_args=() n
	for n in $DRIVER_CHECK_NODES; do node_args+=(--node "$n"); done
	for dtb in ${DTBS:-}; do
		python3 "$ROOT/image/lib/modules.py" check-dtb --dtb "$KERNEL_DTB_DIR/$dtb" \
			--moddir "$moddir" --kernel "$KERNEL_DIR/Image" "${node_args[@]}" "$@" >&2 ||
			die "driver check of $dtb failed: add the missing modules to INITRAMFS_MODULES in board/$BOARD/board.conf"
	done
}

# Copies a dynamically linked binary and its libraries (by the ELF NEEDED
# closure, resolved inside the rootfs) into the initramfs tree.
copy_with_libs() {
	local rootfs="$1" dest="$2" bin="$3"
	local queue=("$bin") seen=" " f lib p
	while [ ${#queue[@]} -gt 0 ]; do
		f="${queue[0]}"
		queue=("${queue[@]:1}")
		case "$seen" in *" $f "*) continue ;; esac
		seen="$seen$f "
		mkdir -p "$dest/$(dirname "$f")"
		cp -L "$rootfs/$f" "$dest/$f"
		for lib in $(readelf -d "$rootfs/$f" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
			p=""
			for d in usr/lib/aarch64-linux-gnu usr/lib; do
				[ -e "$rootfs/$d/$lib" ] && { p="$d/$lib"; break; }
			done
			[ -n "$p" ] || die "library $lib of $f not found in the rootfs"
			queue+=("$p")
		done
	done
}

# Puts the modules NAME... (closed over modules.dep) into the initramfs tree $1 under
# lib/modules/$KVER, decompressed (the initramfs is compressed as a whole), with
# depmod's index files for them: /init coldplugs by modalias with busybox modprobe
# (modules.alias, modules.dep) and falls back to insmod in the order of
# etc/initramfs-modules. $2 is the depmod'ed module tree of the kernel.
initramfs_modules() {
	local ir="$1" moddir="$2" m list
	shift 2
	local dst="$ir/usr/lib/modules/$KVER"
	list=$(module_closure "$moddir" "$@") || die "initramfs module list"
	mkdir -p "$dst" "$ir/etc"
	: >"$ir/etc/initramfs-modules"
	while read -r m; do
		[ -n "$m" ] || continue
		mkdir -p "$dst/$(dirname "$m")"
		case "$m" in
		*.xz) xz -dc "$moddir/$m" >"$dst/${m%.xz}" ;;
		*.zst) zstd -qdc "$moddir/$m" >"$dst/${m%.zst}" ;;
		*) cp "$moddir/$m" "$dst/$m" ;;
		esac
		echo "$m" | sed 's/\.ko\.\(xz\|zst\)$/.ko/' >>"$ir/etc/initramfs-modules"
	done <<<"$list"
	# modules.builtin lets modprobe treat a built-in driver's name as loaded;
	# modules.order keeps depmod's alias order the kernel's.
	for m in modules.builtin modules.builtin.modinfo modules.order; do
		[ -f "$moddir/$m" ] && cp "$moddir/$m" "$dst/$m"
	done
	depmod -b "$ir" "$KVER" || die "depmod for the initramfs failed"
	# busybox reads the text indexes only
	rm -f "$dst"/*.bin
	[ -s "$dst/modules.alias" ] || die "initramfs modules.alias is empty"
}

initramfs_build() {
	local rootfs="$1" out="$2"
	local ir="$WORK/initramfs"
	rm -rf "$ir"
	mkdir -p "$ir"/{dev,proc,sys,run,tmp,newroot,etc,usr/bin,usr/sbin,usr/lib}
	ln -s usr/bin "$ir/bin"
	ln -s usr/sbin "$ir/sbin"
	ln -s usr/lib "$ir/lib"
	cp "$rootfs/usr/bin/busybox" "$ir/usr/bin/busybox"
	local applet
	for applet in sh mount umount switch_root insmod modprobe uname find xargs sort sleep cat dd od tr \
		sed basename mkdir reboot blockdev sync setsid cttyhack echo ls mdev printf; do
		ln -s busybox "$ir/usr/bin/$applet"
	done
	# e2fsck, resize2fs, dumpe2fs, fsck.fat with their libraries and the loader
	local tool
	for tool in usr/sbin/e2fsck usr/sbin/resize2fs usr/sbin/dumpe2fs usr/sbin/fsck.fat usr/sbin/mke2fs; do
		copy_with_libs "$rootfs" "$ir" "$tool"
	done
	cp -L "$rootfs/usr/lib/ld-linux-aarch64.so.1" "$ir/usr/lib/ld-linux-aarch64.so.1"
	# A board without a battery-backed clock boots in 1970: e2fsck must not take the
	# file system's times for a fault (or refuse to preen) when they look "in the future".
	printf '[options]\n\tbroken_system_clock = 1\n' >"$ir/etc/e2fsck.conf"
	# mke2fs recreates a data partition damaged beyond repair with the rootfs' defaults
	[ -f "$rootfs/etc/mke2fs.conf" ] && cp "$rootfs/etc/mke2fs.conf" "$ir/etc/mke2fs.conf"

	local moddir="$rootfs/usr/lib/modules/$KVER" names
	names=$(list_file "$ROOT/image/initramfs/modules.txt" | tr '\n' ' ')
	names="$names ${INITRAMFS_MODULES:-}"
	# shellcheck disable=SC2086
	initramfs_modules "$ir" "$moddir" $names
	# shellcheck disable=SC2086
	initramfs_driver_check "$moddir" $names

	# the card's partition numbers for /init (DISK_LAYOUT, image/lib/disk.sh)
	disk_partitions
	printf 'PART_ROOT_A=%s\nPART_ROOT_B=%s\nPART_DATA=%s\nPART_EXT=%s\n' \
		"$PART_ROOT_A" "$PART_ROOT_B" "$PART_DATA" "$PART_EXT" >"$ir/etc/outpost-disk.conf"
	install -m 0755 "$ROOT/image/initramfs/init" "$ir/init"
	(cd "$ir" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --owner=0:0 --quiet) |
		zstd -q -19 -T0 >"$out" || die "initramfs archive failed"
	log "initramfs: $(($(fsize "$out") / 1024)) KiB, $(wc -l <"$ir/etc/initramfs-modules") modules"
}
