# Shared environment for scripts: cross-compilation settings for the device binary.
# shellcheck shell=bash
OUTPOST_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export OUTPOST_ROOT
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld
export CC_aarch64_unknown_linux_musl=clang
export AR_aarch64_unknown_linux_musl=llvm-ar
DEVICE_TARGET=aarch64-unknown-linux-musl

# Builds the static device daemon and prints its path.
build_outpostd() {
    (cd "$OUTPOST_ROOT" && cargo build --quiet --release --target "$DEVICE_TARGET" -p outpostd) >&2
    echo "$OUTPOST_ROOT/target/$DEVICE_TARGET/release/outpostd"
}
