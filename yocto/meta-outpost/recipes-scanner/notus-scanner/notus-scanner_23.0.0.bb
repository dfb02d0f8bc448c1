SUMMARY = "Notus scanner: local security checks from package lists"
DESCRIPTION = "Matches the installed packages that openvas reports against the Notus \
advisories of the feed."
HOMEPAGE = "https://github.com/greenbone/notus-scanner"
LICENSE = "AGPL-3.0-or-later"
LIC_FILES_CHKSUM = "file://LICENSE;md5=4ae09d45eac4aa08d013b5f2e01c67f6"

PYPI_PACKAGE = "notus_scanner"
SRC_URI[sha256sum] = "058dd8e9be1b64931f6e5795bd5df995a1453980ac0ad515dbeaf9bcf0be320d"

inherit pypi python_poetry_core

RDEPENDS:${PN} += "\
    python3-gnupg \
    python3-packaging \
    python3-paho-mqtt \
    python3-psutil \
    python3-tomllib \
"
