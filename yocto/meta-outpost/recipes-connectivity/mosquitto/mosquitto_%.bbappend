# The hardened broker config outpostd renders at every start (src/outpost-scanner,
# StackConfig::render_mosquitto/render_acl): loopback only, scanner topics only. The
# tests check that these files equal the rendered ones. Only with the outpost distro.
FILESEXTRAPATHS:prepend:outpost := "${THISDIR}/files:"
SRC_URI:append:outpost = " file://outpost-mosquitto.conf file://mosquitto.acl"

do_install:append:outpost() {
    install -m 0644 ${UNPACKDIR}/outpost-mosquitto.conf ${D}${sysconfdir}/mosquitto/mosquitto.conf
    install -m 0644 ${UNPACKDIR}/mosquitto.acl ${D}${sysconfdir}/mosquitto/mosquitto.acl
}
