# raspberrypi4-64 (meta-raspberrypi): the Raspberry Pi kernel names the mini UART
# ttyS0 (Debian's kernel: ttyS1, board/rpi4/boot-preamble.cmd); the slot's own
# device tree.
setenv console ttyS0,115200
setenv outpost_fdt slot
