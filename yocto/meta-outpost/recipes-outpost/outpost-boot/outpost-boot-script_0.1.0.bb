SUMMARY = "Outpost A/B U-Boot script and initial boot state"
DESCRIPTION = "boot.scr from the board preamble and the project's one boot script, \
board/common/boot.cmd (used by reference, not copied), plus bootstate.0/1."
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

# boot.cmd and the QEMU preamble come from the repository's board/ (OUTPOST_SRC_DIR,
# layer.conf); the Pi preambles from this recipe's files/.
FILESEXTRAPATHS:prepend := "${OUTPOST_SRC_DIR}/board/common:${OUTPOST_SRC_DIR}/board/qemu-arm64:${OUTPOST_SRC_DIR}/image/lib:"

OUTPOST_BOOT_PREAMBLE ?= "boot-preamble.cmd"
OUTPOST_BOOT_PREAMBLE:raspberrypi4-64 = "boot-preamble-rpi4.cmd"
OUTPOST_BOOT_PREAMBLE:raspberrypi5 = "boot-preamble-rpi5.cmd"

DEPENDS = "python3-native u-boot-mkimage-native"
# Replaces meta-raspberrypi's rpi-u-boot-scr (PREFERRED_PROVIDER in the distro).
PROVIDES += "u-boot-default-script"

SRC_URI = "file://boot.cmd file://${OUTPOST_BOOT_PREAMBLE} file://bootstate.py"
S = "${UNPACKDIR}"

INHIBIT_DEFAULT_DEPS = "1"

inherit deploy nopackages python3native

PACKAGE_ARCH = "${MACHINE_ARCH}"

do_compile() {
    cat ${S}/${OUTPOST_BOOT_PREAMBLE} ${S}/boot.cmd > ${B}/boot.cmd
    mkimage -A arm64 -O linux -T script -C none -n "outpost boot" -d ${B}/boot.cmd ${B}/boot.scr
    # A fresh card: slot A first, three tries each; copy 1 preallocated and invalid.
    ${PYTHON} ${S}/bootstate.py ${B}/bootstate.0 --set "BOOT_ORDER=A B" \
        --set BOOT_A_LEFT=3 --set BOOT_B_LEFT=3 --set BOOT_TRIAL=none --set BOOT_SEQ=1
    ${PYTHON} ${S}/bootstate.py ${B}/bootstate.1 --invalid
}

do_deploy() {
    install -d ${DEPLOYDIR}
    install -m 0644 ${B}/boot.scr ${B}/boot.cmd ${B}/bootstate.0 ${B}/bootstate.1 ${DEPLOYDIR}/
}
addtask deploy after do_compile before do_build
