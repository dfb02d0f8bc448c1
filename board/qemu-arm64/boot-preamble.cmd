# qemu-arm64: console on the PL011, device tree from QEMU (U-Boot's control DT)
setenv console ttyAMA0,115200
setenv outpost_fdt control
