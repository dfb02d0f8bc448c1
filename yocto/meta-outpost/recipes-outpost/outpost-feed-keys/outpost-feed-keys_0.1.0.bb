SUMMARY = "Outpost feed keys: the portal's feed key and the scanner's OpenPGP home"
DESCRIPTION = "The keys the Debian image carries (scripts/build-image, docs/feeds.md): \
the portal's ed25519 feed key as /usr/share/outpost/feed-keys.pub, which outpostd \
syncs feed releases with, and /etc/openvas/gnupg, where Greenbone's Community Feed \
key and the operator's own OpenPGP keys are ultimately trusted for the scanner's \
signature checks."
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

# Operator-specific, set in local.conf (or kas), absolute paths:
# - OUTPOST_FEED_KEY: the .pub of the portal's feed key (outpost-portal feed keygen),
#   never the secret key: the image only verifies.
# - OUTPOST_FEED_OPENPGP_KEYS: OpenPGP public key files besides Greenbone's whose feed
#   signatures the scanner accepts (the operator's own scripts), space-separated.
# - OUTPOST_FEED_LAB_KEY = "1": lab images only; also trust image/lab-keys/lab-feed-key.asc,
#   whose secret is public on purpose (it signs the demo feed and the test feeds).
OUTPOST_FEED_KEY ??= ""
OUTPOST_FEED_OPENPGP_KEYS ??= ""
OUTPOST_FEED_LAB_KEY ??= "0"
# Greenbone's Community Feed integrity key, pinned: a changed file upstream fails the
# build instead of trusting another key.
OUTPOST_GREENBONE_KEY_FPR = "8AE4BE429B60A59B311C2E739823FAA60ED1E580"

# Without the feed key an image syncs no feed, and openvas refuses every script: such
# an image is useless. The recipe is skipped, not a parse error, so that `bitbake -p`
# and builds of other targets work without it, while any build that includes it stops
# before running a task, with this reason in the message.
# nooelint: oelint.task.noanonpython - only a parse-time check can skip the recipe
python __anonymous() {
    key = d.getVar("OUTPOST_FEED_KEY")
    if not key:
        raise bb.parse.SkipRecipe("OUTPOST_FEED_KEY is not set: set it in local.conf to the "
                                  "absolute path of the portal's feed key .pub (outpost-portal "
                                  "feed keygen; yocto/README.md)")
    if len(key.split()) != 1:
        raise bb.parse.SkipRecipe("OUTPOST_FEED_KEY must name one file (it may hold several keys)")
    for var in ("OUTPOST_FEED_KEY", "OUTPOST_FEED_OPENPGP_KEYS"):
        for path in (d.getVar(var) or "").split():
            if not os.path.isabs(path):
                raise bb.parse.SkipRecipe("%s: %s is not an absolute path" % (var, path))
}

# The operator's files by their absolute paths (unpacked under UNPACKDIR with the same
# path): the fetcher reports a missing one, and a changed key rebuilds the package.
def outpost_feed_key_uris(d):
    paths = (d.getVar("OUTPOST_FEED_KEY") or "").split()
    paths += (d.getVar("OUTPOST_FEED_OPENPGP_KEYS") or "").split()
    uris = ["file://%s" % p for p in paths]
    if bb.utils.to_boolean(d.getVar("OUTPOST_FEED_LAB_KEY")):
        uris.append("file://lab-feed-key.asc")
    return " ".join(uris)

# gnupg-native is the same gnupg recipe as the image's gpg, so the keybox and trust
# database are in the format the target's gpg reads. openvas-scanner installs
# Greenbone's key from its source (Debian's path, /usr/share/openvas).
DEPENDS = "gnupg-native openvas-scanner"

# The lab key and the home-building script the Debian image uses too, by reference, not
# copies (OUTPOST_SRC_DIR: layer.conf).
FILESEXTRAPATHS:prepend := "${OUTPOST_SRC_DIR}/image/lab-keys:${OUTPOST_SRC_DIR}/image/lib:"
SRC_URI = " \
    file://openvas-gnupg-home \
    file://check-feed-key \
    ${@outpost_feed_key_uris(d)} \
"
S = "${UNPACKDIR}"
# The home is built apart from the operator's unpacked files.
B = "${WORKDIR}/build"

# The home is _gvm's, the account ospd-openvas creates (useradd there).
inherit useradd
USERADD_DEPENDS = "ospd-openvas"

OUTPOST_GREENBONE_KEY = "${STAGING_DATADIR}/openvas/GBCommunitySigningKey.asc"

# The OpenPGP key files besides Greenbone's, as unpacked.
def outpost_feed_trusted(d):
    s = d.getVar("S")
    files = [s + p for p in (d.getVar("OUTPOST_FEED_OPENPGP_KEYS") or "").split()]
    if bb.utils.to_boolean(d.getVar("OUTPOST_FEED_LAB_KEY")):
        files.append(s + "/lab-feed-key.asc")
    return " ".join(files)
OUTPOST_FEED_TRUSTED = "${@outpost_feed_trusted(d)}"

# Not under pseudo: gpg runs as the build user on a home in ${B}; do_install sets the owner.
do_compile() {
    sh ${S}/check-feed-key ${S}${OUTPOST_FEED_KEY} ||
        bbfatal "OUTPOST_FEED_KEY = ${OUTPOST_FEED_KEY} is not a feed key .pub (outpost-portal feed keygen)"
    rm -rf ${B}/gnupg
    TMPDIR=${T} sh ${S}/openvas-gnupg-home --out ${B}/gnupg \
        --pinned ${OUTPOST_GREENBONE_KEY_FPR} ${OUTPOST_GREENBONE_KEY} ${OUTPOST_FEED_TRUSTED} ||
        bbfatal "building the scanner's OpenPGP home from Greenbone's key, OUTPOST_FEED_OPENPGP_KEYS and the lab key (OUTPOST_FEED_LAB_KEY) failed: see the log"
}

do_install() {
    # Path, mode and owner as on the Debian image (scripts/build-image).
    install -D -m 0644 ${S}${OUTPOST_FEED_KEY} ${D}${datadir}/outpost/feed-keys.pub
    install -d ${D}${sysconfdir}/openvas
    install -d -m 0700 ${D}${sysconfdir}/openvas/gnupg
    for f in pubring.kbx trustdb.gpg gpg.conf; do
        install -m 0600 ${B}/gnupg/$f ${D}${sysconfdir}/openvas/gnupg/$f
    done
    chown -R _gvm:_gvm ${D}${sysconfdir}/openvas/gnupg
}

FILES:${PN} += "${datadir}/outpost"
# Read by openvas, ospd-openvas and notus-scanner as _gvm (ospd-openvas' account).
RDEPENDS:${PN} = "ospd-openvas"
