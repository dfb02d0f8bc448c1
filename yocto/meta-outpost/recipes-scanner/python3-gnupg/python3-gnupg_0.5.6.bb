SUMMARY = "Python wrapper for GnuPG"
DESCRIPTION = "python-gnupg 0.5.6, the release Debian ships: notus-scanner 23.0 \
needs >= 0.5.6 and meta-python has 0.5.5."
HOMEPAGE = "https://github.com/vsajip/python-gnupg"
LICENSE = "BSD-3-Clause"
LIC_FILES_CHKSUM = "file://LICENSE.txt;md5=5dabe659eadd6d97325b1582e41cfc11"

# The sdist's file name is normalised (python_gnupg), its top directory is not.
PYPI_PACKAGE = "python_gnupg"
SRC_URI[sha256sum] = "5743e96212d38923fc19083812dc127907e44dbd3bcf0db4d657e291d3c21eac"
S = "${UNPACKDIR}/python-gnupg-${PV}"

inherit pypi python_setuptools_build_meta

RDEPENDS:${PN} += "gnupg-gpg python3-logging"
