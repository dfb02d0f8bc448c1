SUMMARY = "OSP server for the OpenVAS scanner"
DESCRIPTION = "Speaks the Open Scanner Protocol on a unix socket and runs openvas; \
outpostd drives it."
HOMEPAGE = "https://github.com/greenbone/ospd-openvas"
LICENSE = "AGPL-3.0-or-later"
LIC_FILES_CHKSUM = "file://COPYING;md5=5583b9b75bd9ffa2b42bf8f3d047eb7a"

# The sdist on PyPI has the normalised name (PEP 625).
PYPI_PACKAGE = "ospd_openvas"
SRC_URI[sha256sum] = "75c31b14462f71c6f4e14680991f30a80872670a79495940ec3febfd17ae1db0"

inherit pypi python_poetry_core useradd

# ospd-openvas and notus-scanner run as _gvm (Debian's account), in group redis to
# reach redis' unix socket.
USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--system _gvm"
USERADD_PARAM:${PN} = "--system --no-create-home --home-dir ${localstatedir}/lib/openvas \
                       --shell /bin/false -g _gvm -G redis _gvm"
USERADD_DEPENDS = "redis"

RDEPENDS:${PN} += "\
    openvas-scanner \
    python3-defusedxml \
    python3-deprecated \
    python3-gnupg \
    python3-lxml \
    python3-packaging \
    python3-paho-mqtt \
    python3-psutil \
    python3-redis \
"
