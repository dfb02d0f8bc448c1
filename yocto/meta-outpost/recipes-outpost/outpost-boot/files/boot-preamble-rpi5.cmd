# raspberrypi5 (meta-raspberrypi): console on the debug UART, the slot's own device
# tree. No Debian image exists for the Pi 5, so this preamble lives in the layer.
setenv console ttyAMA10,115200
setenv outpost_fdt slot
