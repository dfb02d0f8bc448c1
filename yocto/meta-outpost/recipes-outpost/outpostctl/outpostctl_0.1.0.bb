SUMMARY = "Outpost operator CLI"
DESCRIPTION = "Enrollment tokens, scans, sensors and update bundles; the native \
variant builds and signs the update bundle of an image."

require recipes-outpost/outpostd/outpost-src.inc

CARGO_SRC_DIR = "src/outpostctl"

BBCLASSEXTEND = "native"
