# The hardened redis.conf outpostd renders at every start (src/outpost-scanner,
# StackConfig::render_redis): unix socket only, no TCP, VT cache on /data. The tests
# check that this file equals the rendered one. Only with the outpost distro.
FILESEXTRAPATHS:prepend:outpost := "${THISDIR}/files:"
SRC_URI:append:outpost = " file://redis-openvas.conf"

do_install:append:outpost() {
    install -m 0644 ${UNPACKDIR}/redis-openvas.conf ${D}${sysconfdir}/redis/redis.conf
}
