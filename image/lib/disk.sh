# shellcheck shell=bash
# Boot partitions, data partition and the MBR disk image (sourced by
# scripts/build-image). Every partition is built as a file and copied into the
# image at its offset: no loop devices, no mounts. Layout: docs/disk-layout.md.

MIB=1048576
BOOT_MIB=${BOOT_MIB:-256}
DATA_MIB=${DATA_MIB:-64}
# tryboot layout: the first FAT holds only autoboot.txt and outpost.toml (64 MiB is
# the smallest clean FAT32 with 512-byte clusters); each slot's FAT its kernel,
# initramfs and device tree, with room for an update's larger ones.
AUTOBOOT_MIB=${AUTOBOOT_MIB:-64}
SLOT_BOOT_MIB=${SLOT_BOOT_MIB:-128}

# Partition numbers of each DISK_LAYOUT (board.conf), for the initramfs and cmdline.txt:
#   uboot    1 boot FAT, 2/3 roots A/B, 4 data (four primary partitions)
#   tryboot  1 autoboot FAT, 2/3 boot FATs A/B, 4 extended: 5/6 roots A/B, 7 data
disk_partitions() {
	case "${DISK_LAYOUT:-uboot}" in
	uboot) PART_ROOT_A=2 PART_ROOT_B=3 PART_DATA=4 PART_EXT="" ;;
	tryboot) PART_ROOT_A=5 PART_ROOT_B=6 PART_DATA=7 PART_EXT=4 ;;
	*) die "unknown DISK_LAYOUT ${DISK_LAYOUT} in board/$BOARD/board.conf" ;;
	esac
}

# Builds the FAT32 boot partition file $2 from the staging directory $1; optional:
# size in MiB (BOOT_MIB), label (OUTPOSTBOOT), volume id (the disk id).
boot_partition() {
	local staging="$1" out="$2" mib="${3:-$BOOT_MIB}" label="${4:-OUTPOSTBOOT}" volid="${5:-$DISK_ID}"
	rm -f "$out"
	truncate -s $((mib * MIB)) "$out"
	mkfs.vfat -F 32 -n "$label" -S 512 -i "$volid" "$out" >/dev/null || die "mkfs.vfat failed"
	# mtools copies the tree: directories first, then files
	local d f
	(cd "$staging" && find . -mindepth 1 -type d | LC_ALL=C sort) | while read -r d; do
		mmd -i "$out" "::${d#.}" || die "mmd $d"
	done
	(cd "$staging" && find . -type f | LC_ALL=C sort) | while read -r f; do
		mcopy -i "$out" -o "$staging/$f" "::${f#.}" || die "mcopy $f"
	done
}

# Builds the ext4 data partition file $1 with the directories the system expects.
data_partition() {
	local out="$1" tree="$WORK/data-tree"
	rm -rf "$tree" "$out"
	mkdir -p "$tree"/overlay/{etc,var}/{upper,work} "$tree/outpost" "$tree/feeds"
	chmod 0700 "$tree/outpost"
	# The demo feed this project writes (image/feed-demo), so a fresh card can reach
	# `ready`; production sensors sync the Greenbone community feed or a mirror instead.
	cp -r "$ROOT/image/feed-demo/plugins" "$ROOT/image/feed-demo/notus" "$tree/feeds/"
	chmod -R a+rX "$tree/feeds"
	mke2fs -q -t ext4 -L outpost-data -d "$tree" -E root_owner=0:0 -U random \
		-O ^metadata_csum_seed "$out" "${DATA_MIB}M" || die "mke2fs failed"
}

# Size in MiB of a root partition for the squashfs $1: squashfs + 50 % headroom for
# updates, in 64 MiB steps, at least 512 MiB (SLOT_MIB overrides).
slot_size_mib() {
	local sq_mib slot_mib
	sq_mib=$((($(fsize "$1") + MIB - 1) / MIB))
	slot_mib=$(round_up $((sq_mib * 3 / 2)) 64)
	[ "$slot_mib" -lt 512 ] && slot_mib=512
	[ -n "${SLOT_MIB:-}" ] && slot_mib=$SLOT_MIB
	[ "$sq_mib" -le "$slot_mib" ] || die "rootfs ($sq_mib MiB) does not fit a $slot_mib MiB slot"
	echo "$slot_mib"
}

# Assembles the MBR image $1 from boot.vfat, rootfs.squashfs (into both slots)
# and data.ext4, all in $WORK.
disk_image() {
	local img="$1"
	local sq="$WORK/rootfs.squashfs"
	local sq_mib slot_mib
	sq_mib=$((($(fsize "$sq") + MIB - 1) / MIB))
	slot_mib=$(slot_size_mib "$sq")
	local p1=1 p2 p3 p4 end
	p2=$((p1 + BOOT_MIB))
	p3=$((p2 + slot_mib))
	p4=$((p3 + slot_mib))
	end=$((p4 + DATA_MIB))
	rm -f "$img"
	truncate -s $((end * MIB)) "$img"
	sfdisk -q "$img" <<-EOF || die "sfdisk failed"
		label: dos
		label-id: 0x${DISK_ID}
		unit: sectors

		start=$((p1 * 2048)), size=$((BOOT_MIB * 2048)), type=c, bootable
		start=$((p2 * 2048)), size=$((slot_mib * 2048)), type=83
		start=$((p3 * 2048)), size=$((slot_mib * 2048)), type=83
		start=$((p4 * 2048)), size=$((DATA_MIB * 2048)), type=83
	EOF
	dd if="$WORK/boot.vfat" of="$img" bs=1M seek="$p1" conv=notrunc,sparse status=none
	dd if="$sq" of="$img" bs=1M seek="$p2" conv=notrunc,sparse status=none
	dd if="$sq" of="$img" bs=1M seek="$p3" conv=notrunc,sparse status=none
	dd if="$WORK/data.ext4" of="$img" bs=1M seek="$p4" conv=notrunc,sparse status=none
	log "disk: boot ${BOOT_MIB} MiB, 2 x slot ${slot_mib} MiB (rootfs ${sq_mib} MiB), data ${DATA_MIB} MiB; disk id ${DISK_ID}"
}

# Assembles the tryboot-layout MBR image $1 from autoboot.vfat, boot-a.vfat,
# boot-b.vfat, rootfs.squashfs (into both slots) and data.ext4, all in $WORK.
# Partitions 1-3 are primary (the firmware's boot_partition numbers); the roots and
# data are logical partitions 5-7 in the extended partition 4, data last so the
# initramfs can grow it (and the extended partition) to the end of the card. Each
# logical partition is preceded by its EBR, in the 1 MiB gap before it.
disk_image_tryboot() {
	local img="$1"
	local sq="$WORK/rootfs.squashfs"
	local sq_mib slot_mib
	sq_mib=$((($(fsize "$sq") + MIB - 1) / MIB))
	slot_mib=$(slot_size_mib "$sq")
	local p1=1 p2 p3 p4 p5 p6 p7 end
	p2=$((p1 + AUTOBOOT_MIB))
	p3=$((p2 + SLOT_BOOT_MIB))
	p4=$((p3 + SLOT_BOOT_MIB))
	p5=$((p4 + 1))
	p6=$((p5 + slot_mib + 1))
	p7=$((p6 + slot_mib + 1))
	end=$((p7 + DATA_MIB))
	rm -f "$img"
	truncate -s $((end * MIB)) "$img"
	sfdisk -q "$img" <<-EOF || die "sfdisk failed"
		label: dos
		label-id: 0x${DISK_ID}
		unit: sectors

		start=$((p1 * 2048)), size=$((AUTOBOOT_MIB * 2048)), type=c, bootable
		start=$((p2 * 2048)), size=$((SLOT_BOOT_MIB * 2048)), type=c
		start=$((p3 * 2048)), size=$((SLOT_BOOT_MIB * 2048)), type=c
		start=$((p4 * 2048)), size=$(((end - p4) * 2048)), type=5
		start=$((p5 * 2048)), size=$((slot_mib * 2048)), type=83
		start=$((p6 * 2048)), size=$((slot_mib * 2048)), type=83
		start=$((p7 * 2048)), size=$((DATA_MIB * 2048)), type=83
	EOF
	dd if="$WORK/autoboot.vfat" of="$img" bs=1M seek="$p1" conv=notrunc,sparse status=none
	dd if="$WORK/boot-a.vfat" of="$img" bs=1M seek="$p2" conv=notrunc,sparse status=none
	dd if="$WORK/boot-b.vfat" of="$img" bs=1M seek="$p3" conv=notrunc,sparse status=none
	dd if="$sq" of="$img" bs=1M seek="$p5" conv=notrunc,sparse status=none
	dd if="$sq" of="$img" bs=1M seek="$p6" conv=notrunc,sparse status=none
	dd if="$WORK/data.ext4" of="$img" bs=1M seek="$p7" conv=notrunc,sparse status=none
	log "disk (tryboot): autoboot ${AUTOBOOT_MIB} MiB, 2 x boot ${SLOT_BOOT_MIB} MiB, 2 x slot ${slot_mib} MiB (rootfs ${sq_mib} MiB), data ${DATA_MIB} MiB; disk id ${DISK_ID}"
}
