# Outpost A/B boot script (RAUC convention), the same on every board.
# Contract: docs/boot-flow.md. Compiled to boot.scr by scripts/build-image,
# after the board's boot-preamble.cmd (which sets `console` and `outpost_fdt`;
# `console dt` leaves the console to the device tree's stdout-path).
#
# Boot state: /bootstate.0 and /bootstate.1 on the FAT partition, 4096 bytes
# each, `env export -c` format (CRC32 + NUL-separated name=value).
# Variables: BOOT_ORDER, BOOT_A_LEFT, BOOT_B_LEFT, BOOT_SEQ (all decimal), and
# BOOT_TRIAL: the slot made active by an update and not marked good since (A or
# B; "none" or missing otherwise). Booting that slot adds outpost.trial=1 to the
# kernel command line, which arms the trial watchdog in the root filesystem.
#
# U-Boot's setexpr and itest read numbers as hex, while the state is decimal,
# so numbers go through dec2num / num2dec below (base 10 arithmetic in hex).

echo "outpost-boot: boot script started"

if test -z "${devtype}"; then setenv devtype virtio; fi
if test -z "${devnum}"; then setenv devnum 0; fi
if test -z "${console}"; then setenv console ttyAMA0,115200; fi
setenv bootpart 1
setenv bs_size 0x1000

# ${dec} (decimal string) -> ${num} (setexpr number). Non-digits give dec_ok=0.
# (U-Boot's regex has no ranges: [0-9] would match only "0", "-" and "9".)
setenv dec2num 'setenv num 0; setenv dec_ok 0; if test -n "${dec}"; then setexpr dchk1 gsub "[0123456789]" "d" "${dec}"; setexpr dchk2 gsub "." "d" "${dec}"; if test "${dchk1}" = "${dchk2}"; then setenv dec_ok 1; setexpr digs gsub "(.)" "\\\\1 " "${dec}"; for dg in ${digs}; do setexpr num ${num} * a; setexpr num ${num} + ${dg}; done; fi; fi'
# ${num} -> ${dec} (decimal string)
setenv num2dec 'setenv dec; if itest ${num} == 0; then setenv dec 0; fi; while itest ${num} -gt 0; do setexpr dr ${num} % a; setexpr num ${num} / a; setenv dec "${dr}${dec}"; done'

# --- read both copies; the valid one with the higher BOOT_SEQ wins ----------
setenv bs_winner none
setenv bs_winseq 0
for i in 0 1; do
	setenv BOOT_ORDER
	setenv BOOT_A_LEFT
	setenv BOOT_B_LEFT
	setenv BOOT_SEQ
	setenv BOOT_TRIAL
	if fatload ${devtype} ${devnum}:${bootpart} ${loadaddr} bootstate.${i} && env import -c ${loadaddr} ${bs_size} BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT BOOT_SEQ BOOT_TRIAL; then
		setenv dec "${BOOT_SEQ}"
		run dec2num
		if test "${dec_ok}" = 0; then setenv num 0; fi
		if test "${bs_winner}" = none || itest ${num} -gt ${bs_winseq}; then
			setenv bs_winner ${i}
			setenv bs_winseq ${num}
			setenv bs_order "${BOOT_ORDER}"
			setenv bs_a "${BOOT_A_LEFT}"
			setenv bs_b "${BOOT_B_LEFT}"
			setenv bs_trial "${BOOT_TRIAL}"
		fi
	else
		echo "outpost-boot: bootstate.${i} missing or invalid, ignored"
	fi
done

if test "${bs_winner}" = none; then
	echo "outpost-boot: no valid boot state, using defaults"
	setenv BOOT_ORDER "A B"
	setenv BOOT_A_LEFT 3
	setenv BOOT_B_LEFT 3
	setenv BOOT_TRIAL none
	setenv bs_winseq 0
	setenv bs_target 0
else
	setenv BOOT_ORDER "${bs_order}"
	setenv BOOT_A_LEFT "${bs_a}"
	setenv BOOT_B_LEFT "${bs_b}"
	setenv BOOT_TRIAL "${bs_trial}"
	# writer rule: never overwrite the current winner
	if test "${bs_winner}" = 0; then setenv bs_target 1; else setenv bs_target 0; fi
fi
if test -z "${BOOT_ORDER}"; then setenv BOOT_ORDER "A B"; fi
# Copies written before BOOT_TRIAL existed: no trial (and the next write adds it).
if test -z "${BOOT_TRIAL}"; then setenv BOOT_TRIAL none; fi
setenv dec "${BOOT_A_LEFT}"; run dec2num; if test "${dec_ok}" = 0; then setenv BOOT_A_LEFT 3; fi
setenv dec "${BOOT_B_LEFT}"; run dec2num; if test "${dec_ok}" = 0; then setenv BOOT_B_LEFT 3; fi

# Writes the full state with BOOT_SEQ+1 into copy ${bs_target} (same size, in place).
setenv bs_write 'setexpr num ${bs_winseq} + 1; run num2dec; setenv BOOT_SEQ ${dec}; env export -c -s ${bs_size} ${loadaddr} BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT BOOT_SEQ BOOT_TRIAL; if fatwrite ${devtype} ${devnum}:${bootpart} ${loadaddr} bootstate.${bs_target} ${bs_size}; then echo "outpost-boot: state written to bootstate.${bs_target} (BOOT_SEQ=${BOOT_SEQ})"; else echo "outpost-boot: WARNING: could not write bootstate.${bs_target}"; fi'

echo "outpost-boot: BOOT_ORDER=${BOOT_ORDER} BOOT_A_LEFT=${BOOT_A_LEFT} BOOT_B_LEFT=${BOOT_B_LEFT} (from copy ${bs_winner})"

# --- choose the first slot in BOOT_ORDER with tries left ----------------------
# Only a slot on trial (BOOT_TRIAL) spends a try: a committed slot boots however
# often the board restarts (power cuts, a WAN outage that keeps the health check
# from passing), so it never drifts to the older slot. A slot whose trial used
# up its tries has 0 left and is skipped.
setenv slot none
for s in ${BOOT_ORDER}; do
	if test "${slot}" = none; then
		if test "${s}" = A; then
			if test ${BOOT_A_LEFT} -gt 0; then
				setenv slot A
			else
				echo "outpost-boot: slot A has no tries left, skipped"
			fi
		fi
		if test "${s}" = B; then
			if test ${BOOT_B_LEFT} -gt 0; then
				setenv slot B
			else
				echo "outpost-boot: slot B has no tries left, skipped"
			fi
		fi
	fi
done

if test "${slot}" = none; then
	# Never brick: give both slots their tries back and start over.
	echo "outpost-boot: no slot has tries left; resetting both to 3 and rebooting"
	setenv BOOT_A_LEFT 3
	setenv BOOT_B_LEFT 3
	run bs_write
	reset
fi

# A trial boot spends its try and writes the counter back BEFORE booting, so a
# slot that hangs or panics uses a try. Other boots write nothing (no FAT write
# on an ordinary boot), unless no copy was valid: then the defaults are written.
setenv bs_dirty 0
if test "${bs_winner}" = none; then setenv bs_dirty 1; fi
if test "${BOOT_TRIAL}" = "${slot}"; then
	setenv bs_dirty 1
	if test "${slot}" = A; then
		setenv dec "${BOOT_A_LEFT}"; run dec2num; setexpr num ${num} - 1; run num2dec
		setenv BOOT_A_LEFT ${dec}
	else
		setenv dec "${BOOT_B_LEFT}"; run dec2num; setexpr num ${num} - 1; run num2dec
		setenv BOOT_B_LEFT ${dec}
	fi
fi
if test "${bs_dirty}" = 1; then run bs_write; fi

if test "${slot}" = A; then
	setenv slotdir slot-a
	setenv rootpart 2
else
	setenv slotdir slot-b
	setenv rootpart 3
fi
echo "outpost-boot: booting slot ${slot} (BOOT_A_LEFT=${BOOT_A_LEFT} BOOT_B_LEFT=${BOOT_B_LEFT})"

part uuid ${devtype} ${devnum}:${rootpart} rootuuid
if test -z "${rootuuid}"; then
	echo "outpost-boot: partition ${rootpart} not found; resetting"
	reset
fi

setenv outpost_extra
if test -e ${devtype} ${devnum}:${bootpart} /outpost-debug; then
	echo "outpost-boot: /outpost-debug present: initramfs rescue shell enabled"
	setenv outpost_extra outpost.debug
fi
# A slot on trial must prove itself: the watchdog reboots it (using up a try) unless
# its daemon marks it good in time, even if that daemon never starts.
setenv outpost_trial
if test "${BOOT_TRIAL}" = "${slot}"; then
	echo "outpost-boot: slot ${slot} is on trial (not marked good yet): outpost.trial=1"
	setenv outpost_trial outpost.trial=1
fi
# console=dt: no console= at all; Linux uses the device tree's stdout-path.
setenv bootcon "console=${console} "
if test "${console}" = dt; then setenv bootcon; fi
setenv bootargs "${bootcon}root=PARTUUID=${rootuuid} ro rootwait panic=10 outpost.slot=${slot} ${outpost_trial} ${outpost_extra}"

# Device tree: the one handed to U-Boot (QEMU's, or the Pi firmware's with its
# fixups: U-Boot's control DT), or on boards that say so the slot's own copy, so
# kernel and device tree are updated together.
setenv fdt ${fdtcontroladdr}
setenv fdt_from_slot 0
if test "${outpost_fdt}" = slot; then
	if test -n "${fdtfile}"; then setenv fdt_from_slot 1; fi
fi
if test "${fdt_from_slot}" = 1; then
	if fatload ${devtype} ${devnum}:${bootpart} ${fdt_addr_r} ${slotdir}/dtbs/${fdtfile}; then
		setenv fdt ${fdt_addr_r}
	else
		echo "outpost-boot: ${slotdir}/dtbs/${fdtfile} missing; using the device tree from U-Boot"
	fi
fi

# The slot's kernel is Debian's arm64 Image, gzip-compressed (a third of the bytes
# to read and to download in an update); booti inflates it into kernel_comp_addr_r
# and moves it to kernel_addr_r, so kernel_addr_r needs room for the whole Image
# below the initramfs. An uncompressed Image boots as before.
if fatload ${devtype} ${devnum}:${bootpart} ${kernel_addr_r} ${slotdir}/Image; then
	setenv kernel_comp_size ${filesize}
	if fatload ${devtype} ${devnum}:${bootpart} ${ramdisk_addr_r} ${slotdir}/initrd.img; then
		setenv rd_size ${filesize}
		booti ${kernel_addr_r} ${ramdisk_addr_r}:${rd_size} ${fdt}
	fi
fi
# Only reached if loading or booting failed: the decremented counter stands,
# so the next reset tries again and eventually falls back to the other slot.
echo "outpost-boot: could not boot slot ${slot}; resetting"
reset
