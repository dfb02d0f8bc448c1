SUMMARY = "SMB and WMI client library for OpenVAS"
DESCRIPTION = "The WMI client used by openvas-scanner for credentialed checks of \
Windows hosts (openvas-scanner's PACKAGECONFIG smb)."
HOMEPAGE = "https://github.com/greenbone/openvas-smb"
LICENSE = "GPL-2.0-or-later"
LIC_FILES_CHKSUM = "file://COPYING;md5=8ca43cbc842c2336e835926c2166c28b"

DEPENDS = "glib-2.0 gnutls heimdal perl-native popt"

# The tag v22.5.10.
SRC_URI = "git://github.com/greenbone/openvas-smb.git;protocol=https;branch=main"
SRCREV = "d29beb14813749e0a402f2deaf7f954d2f460ae4"

# heimdal (its GSSAPI) comes from no layer of oe-core or meta-openembedded: add a
# layer providing it before enabling openvas-scanner's PACKAGECONFIG smb.

inherit cmake pkgconfig
