# nooelint: oelint.var.mandatoryvar.SRC_URI - it packs what other recipes deployed
SUMMARY = "Outpost signed update bundle"
DESCRIPTION = "The slot contents of outpost-image (kernel, initramfs, device trees, \
squashfs root) as the project's signed A/B update bundle (docs/updates.md), made \
with outpostctl bundle build and sign."
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

# The ed25519 secret key (outpostctl bundle keygen); kept out of the layer and of
# sstate's inputs, set it in local.conf. Without it the build stops at do_compile.
OUTPOST_BUNDLE_KEY ??= ""
OUTPOST_BUNDLE_VERSION ?= "${DISTRO_VERSION}"
OUTPOST_BUNDLE_MIN_VERSION ?= ""

INHIBIT_DEFAULT_DEPS = "1"
DEPENDS = "outpostctl-native"
do_compile[depends] += " \
    outpost-image:do_image_complete \
    outpost-initramfs:do_image_complete \
    virtual/kernel:do_deploy \
"
do_compile[vardepsexclude] += "OUTPOST_BUNDLE_KEY"
do_compile[nostamp] = "1"

inherit deploy nopackages

OUTPOST_BUNDLE = "outpost-${MACHINE}-${OUTPOST_BUNDLE_VERSION}.bundle"
OUTPOST_BUNDLE_DTBS ?= ""
OUTPOST_BUNDLE_DTBS:raspberrypi4-64 = "broadcom/bcm2711-rpi-4-b.dtb=bcm2711-rpi-4-b.dtb"
OUTPOST_BUNDLE_DTBS:raspberrypi5 = "broadcom/bcm2712-rpi-5-b.dtb=bcm2712-rpi-5-b.dtb"

do_compile() {
    if [ -z "${OUTPOST_BUNDLE_KEY}" ] || [ ! -f "${OUTPOST_BUNDLE_KEY}" ]; then
        bbfatal "OUTPOST_BUNDLE_KEY must name the bundle signing key (outpostctl bundle keygen)"
    fi
    dtb_args=""
    for dtb in ${OUTPOST_BUNDLE_DTBS}; do
        dtb_args="$dtb_args --dtb ${dtb%%=*}=${DEPLOY_DIR_IMAGE}/${dtb#*=}"
    done
    min_args=""
    if [ -n "${OUTPOST_BUNDLE_MIN_VERSION}" ]; then
        min_args="--min-version ${OUTPOST_BUNDLE_MIN_VERSION}"
    fi
    rm -f ${B}/${OUTPOST_BUNDLE}
    outpostctl bundle build --board "${OUTPOST_COMPATIBLE}" --version "${OUTPOST_BUNDLE_VERSION}" $min_args \
        --rootfs ${DEPLOY_DIR_IMAGE}/outpost-image-${MACHINE}.rootfs.squashfs-zst \
        --kernel ${DEPLOY_DIR_IMAGE}/${KERNEL_IMAGETYPE} \
        --initrd ${DEPLOY_DIR_IMAGE}/outpost-initramfs-${MACHINE}.cpio.zst \
        $dtb_args --out ${B}/${OUTPOST_BUNDLE}
    outpostctl bundle sign ${B}/${OUTPOST_BUNDLE} --key "${OUTPOST_BUNDLE_KEY}"
}

do_deploy() {
    install -d ${DEPLOYDIR}
    install -m 0644 ${B}/${OUTPOST_BUNDLE} ${DEPLOYDIR}/
}
addtask deploy after do_compile before do_build
