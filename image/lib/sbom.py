#!/usr/bin/env python3
"""Writes an SPDX 2.3 JSON SBOM for an Outpost image.

Input: the image manifest (`name version arch` lines, `#` comments) and extra
`name version` components (our own binaries). Output: SPDX JSON on stdout.
"""
import argparse
import datetime
import json
import re
import urllib.parse
import uuid


def spdx_id(name: str, version: str) -> str:
    return "SPDXRef-" + re.sub(r"[^A-Za-z0-9.-]", "-", f"{name}-{version}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--component", action="append", default=[],
                    help="extra component as name=version")
    args = ap.parse_args()

    packages = []
    with open(args.manifest) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            name, version, arch = line.split()[:3]
            purl = "pkg:deb/debian/{}@{}?arch={}".format(
                name, urllib.parse.quote(version, safe=""), arch)
            packages.append({
                "SPDXID": spdx_id(name, version),
                "name": name,
                "versionInfo": version,
                "supplier": "Organization: Debian",
                "downloadLocation": "NOASSERTION",
                "filesAnalyzed": False,
                "licenseConcluded": "NOASSERTION",
                "licenseDeclared": "NOASSERTION",
                "copyrightText": "NOASSERTION",
                "externalRefs": [{
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": purl,
                }],
            })
    for comp in args.component:
        name, _, version = comp.partition("=")
        packages.append({
            "SPDXID": spdx_id(name, version or "unknown"),
            "name": name,
            "versionInfo": version or "unknown",
            "supplier": "Organization: Outpost",
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "Apache-2.0",
            "copyrightText": "NOASSERTION",
        })
    root = "SPDXRef-DOCUMENT"
    doc = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": root,
        "name": args.name,
        "documentNamespace": f"https://spdx.org/spdxdocs/{args.name}-{uuid.uuid4()}",
        "creationInfo": {
            "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "creators": ["Tool: outpost-build-image"],
        },
        "packages": packages,
        "relationships": [
            {"spdxElementId": root, "relationshipType": "DESCRIBES", "relatedSpdxElement": p["SPDXID"]}
            for p in packages
        ],
    }
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
