SUMMARY = "Outpost sensor image"
DESCRIPTION = "outpostd, the OpenVAS scanner stack and busybox init on a read-only \
squashfs root, in the four-partition A/B card layout of docs/disk-layout.md."
LICENSE = "MIT"

IMAGE_INSTALL = " \
    packagegroup-core-boot \
    outpost-base \
    outpostd \
    outpost-feed-keys \
    openvas-scanner \
    ospd-openvas \
    notus-scanner \
    redis \
    mosquitto \
    ca-certificates \
    gnupg \
    e2fsprogs-e2fsck \
    e2fsprogs-resize2fs \
    dosfstools \
    iproute2 \
"
IMAGE_LINGUAS = ""
# busybox-udhcpc's default.script would clash with the image's own (outpost-base).
BAD_RECOMMENDATIONS += "busybox-udhcpc"

inherit core-image

IMAGE_FSTYPES = "squashfs-zst wic"
WKS_FILE = "outpost-ab.wks.in"
# Each slot: the squashfs plus half of it, as scripts/build-image does (docs/disk-layout.md).
# nooelint: oelint.vars.mispell.unknown - read by the kickstart, outpost-ab.wks.in
OUTPOST_SLOT_SIZE ?= "512M"
# nooelint: oelint.vars.mispell.unknown - image_types_wic.bbclass's task
do_image_wic[depends] += " \
    outpost-boot-script:do_deploy \
    outpost-initramfs:do_image_complete \
    virtual/kernel:do_deploy \
"

# The boot FAT: the A/B script and state, each slot's kernel, initramfs and device
# trees (the names board/common/boot.cmd loads), plus the board's own files.
OUTPOST_INITRD = "outpost-initramfs-${MACHINE}.cpio.zst"
OUTPOST_SLOT_DTBS ?= ""
OUTPOST_SLOT_DTBS:raspberrypi4-64 = "bcm2711-rpi-4-b.dtb;broadcom/bcm2711-rpi-4-b.dtb"
OUTPOST_SLOT_DTBS:raspberrypi5 = "bcm2712-rpi-5-b.dtb;broadcom/bcm2712-rpi-5-b.dtb"
def outpost_slot_files(d):
    files = []
    for slot in ("slot-a", "slot-b"):
        files.append("%s;%s/Image" % (d.getVar("KERNEL_IMAGETYPE"), slot))
        files.append("%s;%s/initrd.img" % (d.getVar("OUTPOST_INITRD"), slot))
        for dtb in (d.getVar("OUTPOST_SLOT_DTBS") or "").split():
            src, dest = dtb.split(";")
            files.append("%s;%s/dtbs/%s" % (src, slot, dest))
    return " ".join(files)
# meta-raspberrypi already puts boot.scr (u-boot-default-script, ours) on the FAT.
OUTPOST_BOOT_SCR = "boot.scr"
OUTPOST_BOOT_SCR:rpi = ""
IMAGE_BOOT_FILES:append = " ${OUTPOST_BOOT_SCR} bootstate.0 bootstate.1 ${@outpost_slot_files(d)}"
# QEMU starts U-Boot with -bios, from next to the image (as scripts/run-qemu does).
EXTRA_IMAGEDEPENDS:append:qemuarm64 = " u-boot"
