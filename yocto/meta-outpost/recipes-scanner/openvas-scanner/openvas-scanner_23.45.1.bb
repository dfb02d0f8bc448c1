SUMMARY = "OpenVAS vulnerability scanner"
DESCRIPTION = "The scan engine (openvas) that runs NASL vulnerability tests; driven \
by ospd-openvas."
HOMEPAGE = "https://github.com/greenbone/openvas-scanner"
LICENSE = "GPL-2.0-only & GPL-2.0-or-later"
LIC_FILES_CHKSUM = "file://COPYING;md5=570a9b3749dd0463a1778803b12a6dce"

DEPENDS = "bison-native curl file glib-2.0 gnutls gpgme gvm-libs json-glib krb5 \
           libbsd libgcrypt libksba libpcap libssh net-snmp"

# The tag v23.45.1 (Debian's openvas-scanner in image/packages.lock).
SRC_URI = "git://github.com/greenbone/openvas-scanner.git;protocol=https;branch=main"
SRCREV = "d3f21ab91fc96f11193b47f0e2aa9a01508cc62d"

inherit cmake pkgconfig

# openvas-smb adds the WMI/SMB checks of Windows hosts; off by default as on most
# appliances, where credentialed Windows scans are not run from the sensor.
PACKAGECONFIG ??= ""
PACKAGECONFIG[smb] = ",,openvas-smb,openvas-smb"

EXTRA_OECMAKE = "-DSYSCONFDIR=${sysconfdir} -DLOCALSTATEDIR=${localstatedir} \
                 -DOPENVAS_RUN_DIR=/run/ospd"

# Greenbone's Community Feed key, which signs the feeds openvas checks: in the source
# (rust/examples, for upstream's verification tests) but not installed by its build.
# Installed where Debian's package has it; outpost-feed-keys trusts it in
# /etc/openvas/gnupg, after checking its fingerprint.
do_install:append() {
    install -D -m 0644 ${S}/rust/examples/GBCommunitySigningKey.asc \
        ${D}${datadir}/openvas/GBCommunitySigningKey.asc
}

FILES:${PN} += "${datadir}/openvas"

# openvas runs ping, nmap-like probes and raw sockets; redis holds its VT cache and
# per-scan knowledge bases (the hardened config is in redis_%.bbappend).
RDEPENDS:${PN} += "redis"

# The scanner's only privileges, as in the Debian image (docs/operating.md): raw and
# packet sockets for alive detection and callback checks, as file capabilities on the
# openvas binary, set when the root file system is assembled. It runs as _gvm.
PACKAGE_WRITE_DEPS += "libcap-native"
pkg_postinst:${PN}() {
    setcap cap_net_raw,cap_net_admin=ep $D${sbindir}/openvas
}
