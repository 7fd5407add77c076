"""Checks what the crate registry and docs.rs show of each crate (`cargo metadata` on stdin):
description, license, links, readme (present), rust-version; for crates that are published,
keywords and categories, a documentation link (the CLI has no library docs) and a version on every
path dependency (the published package depends on that version)."""

import json
import os
import sys

failures = []
for p in json.load(sys.stdin)["packages"]:
    name = p["name"]
    where = os.path.dirname(p["manifest_path"])
    published = p["publish"] is None
    keys = ["description", "license", "repository", "homepage", "readme", "rust_version"]
    for key in keys + (["keywords", "categories"] if published else []):
        if not p.get(key):
            failures.append(f"{name}: no {key}")
    if p.get("readme") and not os.path.isfile(os.path.join(where, p["readme"])):
        failures.append(f"{name}: readme {p['readme']} missing")
    if len(p["keywords"]) > 5 or len(p["categories"]) > 5:
        failures.append(f"{name}: at most 5 keywords and 5 categories")
    if published:
        if not p.get("documentation") and p["targets"][0]["kind"] != ["bin"]:
            failures.append(f"{name}: no documentation link")
        for d in p["dependencies"]:
            if d.get("path") and d["req"] == "*":
                failures.append(f"{name}: path dependency {d['name']} without a version")
    print(f"{name}: {'published' if published else 'not published as a crate'}")
if failures:
    sys.exit("crate metadata:\n  " + "\n  ".join(failures))
