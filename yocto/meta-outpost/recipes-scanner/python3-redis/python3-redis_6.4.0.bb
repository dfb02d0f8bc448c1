SUMMARY = "Python client for Redis"
DESCRIPTION = "redis-py 6.4, the release Debian ships: ospd-openvas 22.10 needs \
redis-py < 7.2 and meta-python has 7.4."
HOMEPAGE = "https://github.com/redis/redis-py"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://LICENSE;md5=609ded3add9111c4c6e102f1d421d3f8"

# Apart from the redis server's own tarball in DL_DIR.
PYPI_ARCHIVE_NAME_PREFIX = "pypi-"
SRC_URI[sha256sum] = "b01bc7282b8444e28ec36b261df5375183bb47a07eb9c603f284e89cbc5ef010"

inherit pypi python_hatchling

RDEPENDS:${PN} += "\
    python3-asyncio \
    python3-datetime \
    python3-json \
    python3-packaging \
"
