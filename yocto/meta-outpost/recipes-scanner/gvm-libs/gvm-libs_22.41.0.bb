SUMMARY = "Greenbone Vulnerability Management libraries"
DESCRIPTION = "Base, boreas (host alive detection), util and osp libraries used by \
openvas-scanner."
HOMEPAGE = "https://github.com/greenbone/gvm-libs"
LICENSE = "GPL-2.0-or-later"
LIC_FILES_CHKSUM = "file://COPYING;md5=570a9b3749dd0463a1778803b12a6dce"

DEPENDS = "cjson curl glib-2.0 gnutls gpgme hiredis libgcrypt libnet libpcap libssh \
           libxml2 paho-mqtt-c util-linux zlib"

# The tag v22.41.0 (the version of Debian's libgvm22t64 in image/packages.lock).
SRC_URI = "git://github.com/greenbone/gvm-libs.git;protocol=https;branch=main"
SRCREV = "d7c8ceee00756f1ee0a1f5bbcca9a1499901bed2"

inherit cmake pkgconfig

# Debian also builds RADIUS (radcli), which no layer here provides.
PACKAGECONFIG ??= "ldap"
PACKAGECONFIG[ldap] = "-DBUILD_WITH_LDAP=ON,-DBUILD_WITH_LDAP=OFF,openldap"
PACKAGECONFIG[radius] = "-DBUILD_WITH_RADIUS=ON,-DBUILD_WITH_RADIUS=OFF,radcli"

EXTRA_OECMAKE = "-DBUILD_TESTS=OFF -DENABLE_COVERAGE=OFF \
                 -DSYSCONFDIR=${sysconfdir} -DLOCALSTATEDIR=${localstatedir} \
                 -DGVM_RUN_DIR=/run/gvm"

FILES:${PN} += "${datadir}/gvm"
