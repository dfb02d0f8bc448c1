# The Debian-based image's inittab (rcS, outpostd respawned, status line, no login),
# used by reference instead of oe-core's getty one (outpost distro only).
FILESEXTRAPATHS:prepend:outpost := "${OUTPOST_SRC_DIR}/image/rootfs-overlay/etc:"

do_install:outpost() {
    install -D -m 0644 ${UNPACKDIR}/inittab ${D}${sysconfdir}/inittab
}
