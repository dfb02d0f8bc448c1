SUMMARY = "Outpost device daemon"
DESCRIPTION = "Provisioning, registration, heartbeat, scan jobs and A/B updates of an \
Outpost sensor; supervises the OpenVAS scanner stack."

require outpost-src.inc

CARGO_SRC_DIR = "src/outpostd"

do_install:append() {
    # The Debian image and its init scripts start it as /usr/sbin/outpostd.
    install -d ${D}${sbindir}
    mv ${D}${bindir}/outpostd ${D}${sbindir}/outpostd
    rmdir --ignore-fail-on-non-empty ${D}${bindir}
}

RDEPENDS:${PN} += "outpost-base"
