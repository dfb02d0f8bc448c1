SUMMARY = "Outpost initramfs"
DESCRIPTION = "Busybox, the file system tools and the Outpost /init; each slot's \
initrd.img."
LICENSE = "MIT"

PACKAGE_INSTALL = "outpost-initramfs-init busybox dosfstools e2fsprogs-e2fsck e2fsprogs-resize2fs"
IMAGE_FEATURES = ""
IMAGE_LINGUAS = ""
IMAGE_FSTYPES = "cpio.zst"
IMAGE_NAME_SUFFIX = ""
# Nothing of the root image's read-only hooks applies to an initramfs.
IMAGE_FEATURES:remove = "read-only-rootfs"

inherit image
