SUMMARY = "Outpost initramfs /init"
DESCRIPTION = "The Debian-based image's initramfs init (image/initramfs/init, by \
reference): finds the slot's root, checks the boot FAT, grows and mounts data, sets up \
the /etc and /var overlays and switches root."
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

FILESEXTRAPATHS:prepend := "${OUTPOST_SRC_DIR}/image/initramfs:"
SRC_URI = "file://init"
S = "${UNPACKDIR}"

inherit allarch

do_install() {
    install -m 0755 ${S}/init ${D}/init
    install -d ${D}/dev ${D}/proc ${D}/sys ${D}/newroot
    # Drivers the init insmods: none here, the layer's kernels have them built in
    # (yocto/README.md); the Debian pipeline fills this list from its modules.
    install -d ${D}${sysconfdir}
    touch ${D}${sysconfdir}/initramfs-modules
}

FILES:${PN} += "/init /dev /proc /sys /newroot ${sysconfdir}/initramfs-modules"
RDEPENDS:${PN} = "busybox dosfstools e2fsprogs-e2fsck e2fsprogs-resize2fs"
