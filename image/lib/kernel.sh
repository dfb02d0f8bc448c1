# shellcheck shell=bash
# Kernel, modules, device trees and initramfs (sourced by scripts/build-image).

KVER=""
KERNEL_DIR=""

# Unpacks the kernel package to $WORK/kernel and sets KVER / KERNEL_DIR.
kernel_unpack() {
	local list="$1" name ver arch
	KERNEL_DIR="$WORK/kernel"
	rm -rf "$KERNEL_DIR"
	mkdir -p "$KERNEL_DIR"
	while read -r name ver arch; do
		case "$name" in linux-image-[0-9]*) ;; *) continue ;; esac
		dpkg-deb -x "$(deb_path "$name" "$ver" "$arch")" "$KERNEL_DIR"
	done <"$list"
	KVER=$(ls "$KERNEL_DIR/usr/lib/modules" | head -n1)
	[ -n "$KVER" ] || die "kernel package has no modules directory"
	# U-Boot's booti needs the plain Image: Debian ships it either uncompressed
	# or gzip-compressed (EFI zboot wraps gzip inside a PE file).
	local vmlinuz="$KERNEL_DIR/boot/vmlinuz-$KVER"
	[ -f "$vmlinuz" ] || die "no $vmlinuz in the kernel package"
	if gzip -t "$vmlinuz" 2>/dev/null; then
		zcat "$vmlinuz" >"$KERNEL_DIR/Image"
	elif [ "$(head -c 2 "$vmlinuz" | od -An -tx1 | tr -d ' ')" = 4d5a ] && grep -qa zimg "$vmlinuz"; then
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
	log "kernel $KVER: Image $(($(fsize "$KERNEL_DIR/Image") / 1048576)) MiB"
}

# Copies the trimmed module tree into the rootfs and runs depmod.
kernel_modules_install() {
	local rootfs="$1" sub
	local src="$KERNEL_DIR/usr/lib/modules/$KVER"
	local dst="$rootfs/usr/lib/modules/$KVER"
	rm -rf "$dst"
	mkdir -p "$(dirname "$dst")"
	cp -a "$src" "$dst"
	while read -r sub; do
		rm -rf "${dst:?}/kernel/$sub"
	done < <(list_file "$ROOT/image/modules-trim.txt")
	depmod -b "$rootfs" "$KVER" || die "depmod failed"
	log "modules: $(du -sm "$dst" | cut -f1) MiB after trimming"
}

# Module file paths (relative to lib/modules/$KVER) for the names given, with
# their dependencies first, each once. Built-in modules are skipped.
module_closure() {
	local moddir="$1"
	shift
	python3 - "$moddir" "$@" <<'EOF'
import os, sys
moddir, wanted = sys.argv[1], sys.argv[2:]
norm = lambda n: n.replace("-", "_")
deps, byname = {}, {}
with open(os.path.join(moddir, "modules.dep")) as f:
    for line in f:
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        base = os.path.basename(path).split(".ko")[0]
        byname[norm(base)] = path
builtin = set()
with open(os.path.join(moddir, "modules.builtin")) as f:
    for line in f:
        builtin.add(norm(os.path.basename(line.strip()).split(".ko")[0]))
order, seen = [], set()
def visit(path):
    if path in seen:
        return
    seen.add(path)
    # modules.dep lists the full closure; load deepest first
    for d in reversed(deps.get(path, [])):
        visit(d)
    order.append(path)
for name in wanted:
    n = norm(name)
    if n in byname:
        visit(byname[n])
    elif n in builtin:
        continue
    else:
        sys.exit(f"module {name} is neither a module nor built in")
print("\n".join(order))
EOF
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
	for applet in sh mount umount switch_root insmod sleep cat dd od tr sed basename mkdir reboot \
		blockdev sync setsid cttyhack echo ls mdev printf; do
		ln -s busybox "$ir/usr/bin/$applet"
	done
	# e2fsck, resize2fs, dumpe2fs, fsck.fat with their libraries and the loader
	local tool
	for tool in usr/sbin/e2fsck usr/sbin/resize2fs usr/sbin/dumpe2fs usr/sbin/fsck.fat; do
		copy_with_libs "$rootfs" "$ir" "$tool"
	done
	cp -L "$rootfs/usr/lib/ld-linux-aarch64.so.1" "$ir/usr/lib/ld-linux-aarch64.so.1"

	# modules: decompressed (the initramfs is compressed as a whole), in order
	local moddir="$rootfs/usr/lib/modules/$KVER" m names
	names=$(list_file "$ROOT/image/initramfs/modules.txt" | tr '\n' ' ')
	names="$names ${INITRAMFS_MODULES:-}"
	# shellcheck disable=SC2086
	module_closure "$moddir" $names >"$WORK/initramfs-modules.txt" || die "initramfs module list"
	: >"$ir/etc/initramfs-modules"
	while read -r m; do
		mkdir -p "$ir/lib/modules/$(dirname "$m")"
		case "$m" in
		*.xz) xz -dc "$moddir/$m" >"$ir/lib/modules/${m%.xz}" ;;
		*.zst) zstd -qdc "$moddir/$m" >"$ir/lib/modules/${m%.zst}" ;;
		*) cp "$moddir/$m" "$ir/lib/modules/$m" ;;
		esac
		echo "$m" | sed 's/\.ko\.\(xz\|zst\)$/.ko/' >>"$ir/etc/initramfs-modules"
	done <"$WORK/initramfs-modules.txt"

	install -m 0755 "$ROOT/image/initramfs/init" "$ir/init"
	(cd "$ir" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --owner=0:0 --quiet) |
		zstd -q -19 -T0 >"$out" || die "initramfs archive failed"
	log "initramfs: $(($(fsize "$out") / 1024)) KiB, $(wc -l <"$ir/etc/initramfs-modules") modules"
}
