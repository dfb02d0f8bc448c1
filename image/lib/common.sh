# shellcheck shell=bash
# Shared helpers for scripts/build-image (sourced, bash).

log() { printf '[build-image %5ss] %s\n' "$SECONDS" "$*" >&2; }
die() {
	printf 'build-image: error: %s\n' "$*" >&2
	exit 1
}

# Lines of a list file without comments and blanks.
list_file() {
	sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^$/d' "$1"
}

# Host tools the pipeline needs, by Debian package. Installed with apt-get when
# missing (we run as root on the build machines; CI machines start fresh).
HOST_TOOLS=(
	"apt-get:apt"
	"dpkg-deb:dpkg"
	"mksquashfs:squashfs-tools"
	"sfdisk:fdisk"
	"mkfs.vfat:dosfstools"
	"mcopy:mtools"
	"mke2fs:e2fsprogs"
	"mkimage:u-boot-tools"
	"setcap:libcap2-bin"
	"zstd:zstd"
	"xz:xz-utils"
	"cpio:cpio"
	"depmod:kmod"
	"systemd-sysusers:systemd"
	"qemu-aarch64-static:qemu-user-static"
	"qemu-system-aarch64:qemu-system-arm"
	"qemu-img:qemu-utils"
	"python3:python3"
)

ensure_host_tools() {
	local missing=() t
	for t in "${HOST_TOOLS[@]}"; do
		command -v "${t%%:*}" >/dev/null 2>&1 || missing+=("${t##*:}")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	log "installing host tools: ${missing[*]}"
	[ "$(id -u)" = 0 ] || die "missing host tools (${missing[*]}); install them or run as root"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2 ||
		{ apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2; } ||
		die "could not install host tools: ${missing[*]}"
}

# Size of a file in bytes.
fsize() { stat -c %s "$1"; }

# Round $1 up to a multiple of $2.
round_up() { echo $(((($1) + ($2) - 1) / ($2) * ($2))); }
