#!/usr/bin/env python3
"""Kernel module helpers for scripts/build-image (Python standard library only).

  modules.py closure MODDIR NAME...
      Module file paths (relative to MODDIR) for the names given, dependencies first,
      each once; built-in modules are skipped. Exit 1 naming a module that is neither,
      unless its name ends in `?` (optional: skipped when this kernel does not have it).

  modules.py check-dtb --dtb FILE --moddir MODDIR --kernel IMAGE --node N [--node N]
                       NAME...
      Walks the supplier chain of each device node N (a path such as /soc/mmc@7e340000
      or an alias such as mmc1 or ethernet0) in the board's device tree: its parents,
      and every node it references by phandle (clocks, *-supply, pinctrl-*, resets,
      power-domains, interrupt parents, gpios, dmas, mboxes, phys, phy-handle,
      mmc-pwrseq, ...), recursively. For each node with a `compatible`, a driver must be
      built into the kernel (its compatible string is in the kernel image, where the
      of_device_id tables of built-in drivers live: modules.builtin names modules but
      not their device tables) or be one of the modules shipped (NAME... closed over
      modules.dep) that modules.alias matches against the node's modalias. Exit 1
      naming each missing driver and the chain that needs it.

  modules.py modaliases --dtb FILE --node N [--node N]
      The modalias of each enabled node in those supplier chains, as the kernel shows
      them under /sys/devices (for tests of the initramfs' coldplug).

MODDIR must have been through depmod (modules.dep, modules.alias).
"""

import argparse
import fnmatch
import gzip
import os
import struct
import sys
import zlib


def norm(name):
    return name.replace("-", "_")


def module_name(path):
    return norm(os.path.basename(path).split(".ko")[0])


class ModuleIndex:
    def __init__(self, moddir):
        self.moddir = moddir
        self.deps, self.byname = {}, {}
        with open(self._file("modules.dep")) as f:
            for line in f:
                path, _, rest = line.partition(":")
                if not path.strip():
                    continue
                self.deps[path] = rest.split()
                self.byname[module_name(path)] = path
        self.builtin = set()
        with open(self._file("modules.builtin")) as f:
            for line in f:
                if line.strip():
                    self.builtin.add(module_name(line.strip()))

    def _file(self, name):
        path = os.path.join(self.moddir, name)
        if not os.path.isfile(path):
            sys.exit(f"modules.py: {path} is missing (has depmod run on {self.moddir}?)")
        return path

    def closure(self, wanted):
        """Paths in load order (dependencies first); raises KeyError for an unknown name."""
        order, seen = [], set()

        def visit(path):
            if path in seen:
                return
            seen.add(path)
            # modules.dep lists the full closure; load deepest first
            for d in reversed(self.deps.get(path, [])):
                visit(d)
            order.append(path)

        for name in wanted:
            # "name?": only where this kernel has it (a module one kernel series needs
            # and the next folded into the core, e.g. crc32c_generic in 6.x)
            optional = name.endswith("?")
            n = norm(name.rstrip("?"))
            if n in self.byname:
                visit(self.byname[n])
            elif n not in self.builtin and not optional:
                raise KeyError(name)
        return order

    def of_aliases(self):
        """(pattern, module name) for every device-tree alias of a loadable module."""
        out = []
        with open(self._file("modules.alias")) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[0] == "alias" and parts[1].startswith("of:"):
                    out.append((parts[1], norm(parts[2])))
        return out


# --- flattened device tree --------------------------------------------------------

FDT_MAGIC = 0xD00DFEED
FDT_BEGIN_NODE, FDT_END_NODE, FDT_PROP, FDT_NOP, FDT_END = 1, 2, 3, 4, 9


class DtbError(Exception):
    pass


class Node:
    def __init__(self, name, parent):
        self.name = name
        self.parent = parent
        self.props = {}
        self.children = []

    @property
    def path(self):
        if self.parent is None:
            return "/"
        base = self.parent.path
        return (base if base != "/" else "") + "/" + self.name

    def u32s(self, prop):
        raw = self.props.get(prop, b"")
        return list(struct.unpack(f">{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))

    def strings(self, prop):
        raw = self.props.get(prop)
        if raw is None:
            return []
        return [s.decode("ascii", "replace") for s in raw.split(b"\0") if s]

    def string(self, prop):
        s = self.strings(prop)
        return s[0] if s else None

    def cells(self, prop, default):
        v = self.u32s(prop)
        return v[0] if v else default


def parse_dtb(path):
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise DtbError(f"cannot read {path}: {e}") from e
    if len(blob) < 40:
        raise DtbError(f"{path}: too short for a device tree blob")
    magic, total, off_struct, off_strings = struct.unpack(">IIII", blob[:16])
    if magic != FDT_MAGIC:
        raise DtbError(f"{path}: not a device tree blob (magic {magic:#x})")
    if total > len(blob):
        raise DtbError(f"{path}: truncated ({len(blob)} of {total} bytes)")

    def string_at(off):
        start = off_strings + off
        end = blob.index(b"\0", start)
        return blob[start:end].decode("ascii", "replace")

    pos, root, cur = off_struct, None, None
    try:
        while True:
            (token,) = struct.unpack_from(">I", blob, pos)
            pos += 4
            if token == FDT_BEGIN_NODE:
                end = blob.index(b"\0", pos)
                name = blob[pos:end].decode("ascii", "replace")
                pos = (end + 1 + 3) & ~3
                node = Node(name, cur)
                if cur is None:
                    root = node
                else:
                    cur.children.append(node)
                cur = node
            elif token == FDT_END_NODE:
                if cur is None:
                    raise DtbError(f"{path}: unbalanced node end")
                cur = cur.parent
            elif token == FDT_PROP:
                length, nameoff = struct.unpack_from(">II", blob, pos)
                pos += 8
                if cur is None:
                    raise DtbError(f"{path}: property outside a node")
                cur.props[string_at(nameoff)] = blob[pos : pos + length]
                pos = (pos + length + 3) & ~3
            elif token == FDT_NOP:
                continue
            elif token == FDT_END:
                break
            else:
                raise DtbError(f"{path}: bad token {token:#x} at offset {pos - 4}")
    except (struct.error, ValueError) as e:
        raise DtbError(f"{path}: malformed structure block ({e})") from e
    if root is None:
        raise DtbError(f"{path}: no root node")
    return root


def walk(node):
    yield node
    for c in node.children:
        yield from walk(c)


class Tree:
    def __init__(self, root):
        self.root = root
        self.by_phandle = {}
        for n in walk(root):
            for p in ("phandle", "linux,phandle"):
                v = n.u32s(p)
                if v:
                    self.by_phandle[v[0]] = n

    def find(self, spec):
        """A node by path, or by an alias name from /aliases."""
        if not spec.startswith("/"):
            aliases = next((c for c in self.root.children if c.name == "aliases"), None)
            target = aliases.string(spec) if aliases else None
            if target is None:
                return None
            spec = target
        node = self.root
        for part in [p for p in spec.split("/") if p]:
            node = next((c for c in node.children if c.name == part), None)
            if node is None:
                return None
        return node


# Properties that are a list of (phandle, args...) with the args count taken from a
# #...-cells property of the referenced node (None: no args).
CELL_LISTS = {
    "clocks": "#clock-cells",
    "assigned-clocks": "#clock-cells",
    "resets": "#reset-cells",
    "power-domains": "#power-domain-cells",
    "dmas": "#dma-cells",
    "mboxes": "#mbox-cells",
    "phys": "#phy-cells",
    "iommus": "#iommu-cells",
    "interrupts-extended": "#interrupt-cells",
    "nvmem-cells": None,
    "interconnects": "#interconnect-cells",
    "thermal-sensors": "#thermal-sensor-cells",
}
SINGLE = {"interrupt-parent", "phy-handle", "mmc-pwrseq", "firmware", "syscon", "iommu-map-mask"}


def interrupt_parent(node):
    n = node
    while n is not None:
        if "interrupt-parent" in n.props:
            return n.u32s("interrupt-parent")[:1]
        n = n.parent
    return []


def references(tree, node):
    """(property, referenced node) for each supplier reference of `node`."""
    out = []

    def add(prop, ph):
        target = tree.by_phandle.get(ph)
        if target is not None:
            out.append((prop, target))

    for prop in node.props:
        cells = node.u32s(prop)
        if prop in SINGLE or prop.endswith("-supply"):
            if cells:
                add(prop, cells[0])
        elif prop.startswith("pinctrl-") and prop[8:].isdigit():
            for ph in cells:
                add(prop, ph)
        elif prop in CELL_LISTS or prop in ("gpios", "gpio") or prop.endswith("-gpios") or prop.endswith("-gpio"):
            cells_prop = CELL_LISTS.get(prop, "#gpio-cells")
            i = 0
            while i < len(cells):
                ph = cells[i]
                target = tree.by_phandle.get(ph)
                if target is None:
                    break  # not a phandle list after all, or a dangling one
                add(prop, ph)
                i += 1 + (target.cells(cells_prop, 0) if cells_prop else 0)
    if "interrupts" in node.props and "interrupt-parent" not in node.props:
        for ph in interrupt_parent(node.parent) if node.parent else []:
            add("interrupt-parent (inherited)", ph)
    return out


def device_of(node):
    """The nearest node (itself or an ancestor) with a compatible: who binds a driver
    for a referenced pin group or sub-node."""
    n = node
    while n is not None and "compatible" not in n.props:
        n = n.parent
    return n


def supplier_chain(tree, start):
    """{node: why} for start, its ancestors and everything they reference, recursively."""
    why = {start: start.path}
    queue = [start]
    while queue:
        node = queue.pop(0)
        edges = []
        if node.parent is not None and node.parent.parent is not None:
            edges.append(("parent", node.parent))
        edges += references(tree, node)
        for prop, target in edges:
            for t in (target, device_of(target)):
                if t is not None and t is not tree.root and t not in why:
                    why[t] = f"{why[node]} -> {prop} -> {t.path}"
                    queue.append(t)
    return why


def modalias(node):
    name = node.name.split("@")[0]
    dtype = node.string("device_type") or "<NULL>"
    return f"of:N{name}T{dtype}" + "".join(f"C{c}" for c in node.strings("compatible"))


def kernel_image_bytes(path):
    """The uncompressed arm64 Image: plain, gzip, or EFI zboot (gzip payload)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:2] == b"MZ" and data[4:8] == b"zimg":
        off, size = struct.unpack_from("<II", data, 8)
        payload = data[off : off + size]
        return zlib.decompress(payload, 16 + zlib.MAX_WBITS)
    return data


def in_match_table(image, compatible):
    """Whether `compatible` sits in an of_device_id entry of the kernel image: the
    compatible field is 128 bytes at offset 64 of an 8-byte aligned struct, NUL padded.
    (A bare string search also finds property quirk lists, e.g. gpiolib's.)"""
    needle = compatible.encode()
    if len(needle) >= 128:
        return False
    start = image.find(b"\0" + needle + b"\0")
    while start != -1:
        at = start + 1
        if at % 8 == 0 and not any(image[at + len(needle) : at + 128]):
            return True
        start = image.find(b"\0" + needle + b"\0", start + 1)
    return False


def check_dtb(args):
    try:
        tree = Tree(parse_dtb(args.dtb))
    except DtbError as e:
        sys.exit(f"driver check: {e}")
    index = ModuleIndex(args.moddir)
    try:
        shipped = {module_name(p) for p in index.closure(args.modules)}
    except KeyError as e:
        sys.exit(f"driver check: module {e.args[0]} is neither a module nor built in")
    aliases = index.of_aliases()
    image = kernel_image_bytes(args.kernel)

    problems, unknown, report = [], [], []
    seen_nodes = set()
    for spec in args.node:
        start = tree.find(spec)
        if start is None:
            sys.exit(f"driver check: {args.dtb} has no node or alias {spec!r}")
        for node, why in supplier_chain(tree, start).items():
            if node in seen_nodes or "compatible" not in node.props:
                continue
            seen_nodes.add(node)
            compats = node.strings("compatible")
            if node.string("status") not in (None, "okay", "ok"):
                report.append(f"  {node.path}: status {node.string('status')}, skipped")
                continue
            alias = modalias(node)
            mods = sorted({m for pat, m in aliases if fnmatch.fnmatchcase(alias, pat)})
            have = [m for m in mods if m in shipped]
            # A loadable module that matches decides (Debian builds a driver one way or
            # the other); the image is asked only when none does.
            builtin = [] if mods else [c for c in compats if in_match_table(image, c)]
            if have:
                report.append(f"  {node.path}: module {', '.join(have)} (shipped)")
            elif mods:
                problems.append(
                    f"{node.path} ({compats[0]}) needs module {' or '.join(mods)}, "
                    f"which is neither built in nor in the initramfs; needed by: {why}"
                )
            elif builtin:
                report.append(f"  {node.path}: built in ({builtin[0]})")
            else:
                unknown.append(f"  {node.path} ({', '.join(compats)}): no driver matches by compatible (bound by its parent or bus)")
    print(f"driver check: {len(seen_nodes)} device nodes in the supplier chains of {', '.join(args.node)}")
    if args.verbose:
        print("\n".join(report + unknown))
    elif unknown:
        print("\n".join(unknown))
    if problems:
        for p in problems:
            print(f"driver check: MISSING: {p}", file=sys.stderr)
        sys.exit(1)


def print_modaliases(args):
    try:
        tree = Tree(parse_dtb(args.dtb))
    except DtbError as e:
        sys.exit(f"modaliases: {e}")
    out = set()
    for spec in args.node:
        start = tree.find(spec)
        if start is None:
            sys.exit(f"modaliases: {args.dtb} has no node or alias {spec!r}")
        for node in supplier_chain(tree, start):
            if "compatible" in node.props and node.string("status") in (None, "okay", "ok"):
                out.add(modalias(node))
    print("\n".join(sorted(out)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("closure")
    c.add_argument("moddir")
    c.add_argument("modules", nargs="*")
    d = sub.add_parser("check-dtb")
    d.add_argument("--dtb", required=True)
    d.add_argument("--moddir", required=True)
    d.add_argument("--kernel", required=True, help="vmlinuz or Image (for the built-in drivers)")
    d.add_argument("--node", action="append", required=True)
    d.add_argument("--verbose", action="store_true")
    d.add_argument("modules", nargs="*", help="module names shipped in the initramfs")
    a = sub.add_parser("modaliases")
    a.add_argument("--dtb", required=True)
    a.add_argument("--node", action="append", required=True)
    args = ap.parse_args()
    if args.cmd == "modaliases":
        print_modaliases(args)
    elif args.cmd == "closure":
        try:
            print("\n".join(ModuleIndex(args.moddir).closure(args.modules)))
        except KeyError as e:
            sys.exit(f"module {e.args[0]} is neither a module nor built in")
    else:
        check_dtb(args)


if __name__ == "__main__":
    main()
