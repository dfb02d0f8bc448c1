# shellcheck shell=bash
# Boot partition, data partition and the MBR disk image (sourced by
# scripts/build-image). Every partition is built as a file and copied into the
# image at its offset: no loop devices, no mounts. Layout: docs/disk-layout.md.

MIB=1048576
BOOT_MIB=${BOOT_MIB:-256}
DATA_MIB=${DATA_MIB:-64}

# Builds the FAT32 boot partition file $2 from the staging directory $1.
boot_partition() {
	local staging="$1" out="$2"
	rm -f "$out"
	truncate -s $((BOOT_MIB * MIB)) "$out"
	mkfs.vfat -F 32 -n OUTPOSTBOOT -S 512 -i "${DISK_ID}" "$out" >/dev/null || die "mkfs.vfat failed"
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

# Assembles the MBR image $1 from boot.vfat, rootfs.squashfs (into both slots)
# and data.ext4, all in $WORK.
disk_image() {
	local img="$1"
	local sq="$WORK/rootfs.squashfs"
	local sq_mib slot_mib
	sq_mib=$((($(fsize "$sq") + MIB - 1) / MIB))
	# slot = squashfs + 50 % headroom for updates, in 64 MiB steps, at least 512 MiB
	slot_mib=$(round_up $((sq_mib * 3 / 2)) 64)
	[ "$slot_mib" -lt 512 ] && slot_mib=512
	[ -n "${SLOT_MIB:-}" ] && slot_mib=$SLOT_MIB
	[ "$sq_mib" -le "$slot_mib" ] || die "rootfs ($sq_mib MiB) does not fit a $slot_mib MiB slot"
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
