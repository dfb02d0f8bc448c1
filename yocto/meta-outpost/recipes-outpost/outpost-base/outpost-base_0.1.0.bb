SUMMARY = "Outpost system start: inittab entries' scripts, network, boot and data mounts"
DESCRIPTION = "The start scripts of the Debian-based image (image/rootfs-overlay), used \
by reference: busybox init runs rcS, respawns outpostd and the console status line."
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

# The same files as the Debian-based image, not copies (OUTPOST_SRC_DIR: layer.conf).
FILESEXTRAPATHS:prepend := "${OUTPOST_SRC_DIR}/image/rootfs-overlay/usr/libexec/outpost:"
FILESEXTRAPATHS:prepend := "${OUTPOST_SRC_DIR}/image/rootfs-overlay/usr/share/udhcpc:"
FILESEXTRAPATHS:prepend := "${OUTPOST_SRC_DIR}/image/rootfs-overlay/usr/bin:"
SRC_URI = " \
    file://rcS \
    file://run-outpostd \
    file://console-status \
    file://shutdown \
    file://trial-watchdog \
    file://default.script \
    file://nice \
"
S = "${UNPACKDIR}"

inherit allarch

do_install() {
    install -d ${D}${libexecdir}/outpost
    for f in rcS run-outpostd console-status shutdown trial-watchdog; do
        install -m 0755 ${S}/$f ${D}${libexecdir}/outpost/$f
    done
    install -D -m 0755 ${S}/default.script ${D}${datadir}/udhcpc/default.script
    # oe-core's busybox has no nice applet; ospd-openvas starts scans with nice.
    install -D -m 0755 ${S}/nice ${D}${bindir}/nice
    # Mount points on the read-only root: the initramfs mounts them.
    install -d ${D}/boot ${D}${OUTPOST_DATA_MOUNT}
}

FILES:${PN} += "${libexecdir}/outpost ${datadir}/udhcpc ${bindir}/nice /boot ${OUTPOST_DATA_MOUNT}"
RDEPENDS:${PN} = "busybox busybox-inittab"
RCONFLICTS:${PN} = "busybox-udhcpc"
