#!/usr/bin/env python3
"""Writes one boot-state copy in U-Boot `env export -c` format (docs/boot-flow.md).

4096 bytes: CRC32 (zlib, little endian) of the remaining 4092 bytes, then
NUL-terminated name=value entries (sorted, as U-Boot exports them), an extra
NUL, padded with NULs. `--invalid` writes 4096 zero bytes (a copy the reader
ignores), which preallocates the file so later writes happen in place.
"""
import argparse
import struct
import zlib

SIZE = 4096


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--invalid", action="store_true")
    ap.add_argument("--set", action="append", default=[], help="NAME=VALUE")
    args = ap.parse_args()
    if args.invalid:
        data = bytes(SIZE)
    else:
        pairs = sorted(s.split("=", 1) for s in args.set)
        body = b"".join(f"{k}={v}".encode() + b"\0" for k, v in pairs) + b"\0"
        body = body.ljust(SIZE - 4, b"\0")
        data = struct.pack("<I", zlib.crc32(body)) + body
    with open(args.out, "wb") as f:
        f.write(data)


if __name__ == "__main__":
    main()
