# rpi4: console on the mini UART (GPIO 14/15, ttyS1 with Debian's device
# tree), the slot's own device tree; load addresses with room for the
# ~38 MiB uncompressed Debian kernel below the initramfs.
setenv console ttyS1,115200
setenv outpost_fdt slot
setenv kernel_addr_r 0x00400000
setenv fdt_addr_r 0x05f00000
setenv ramdisk_addr_r 0x06000000
