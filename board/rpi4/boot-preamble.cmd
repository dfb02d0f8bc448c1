# rpi4: console and device tree are the ones the Pi firmware hands to U-Boot
# (config.txt: enable_uart=1, device_tree=...). Linux takes its console from the
# device tree's stdout-path (the mini UART, ttyS1, on the Pi 4) and gets the
# firmware's fixups (memory, serial number, MAC address). Load addresses with room
# for the ~38 MiB uncompressed Debian kernel below the initramfs.
setenv console dt
setenv outpost_fdt control
setenv kernel_addr_r 0x00400000
setenv fdt_addr_r 0x05f00000
setenv ramdisk_addr_r 0x06000000
# scratch area where booti inflates the gzip kernel, above the initramfs
setenv kernel_comp_addr_r 0x10000000
