# qemu-arm64: console on the PL011, device tree from QEMU (U-Boot's control DT)
setenv console ttyAMA0,115200
setenv outpost_fdt control
# scratch area where booti inflates the gzip kernel (1 GiB of RAM from 0x40000000;
# clear of the kernel at 0x40400000 and the initramfs at 0x44000000)
setenv kernel_comp_addr_r 0x50000000
