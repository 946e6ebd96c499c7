"""Reads `cargo test --no-run --message-format=json` from stdin and prints one line per test
executable: lane, name, package folder, path (tab-separated). The trainer's binaries form the
`trainer` lane (CPU-bound, no cluster); the rest the `cluster` lane. Slowest known first within
a lane, so the lanes finish close together."""
import json
import os
import sys

# Measured slowest binaries go first (see scripts/test.sh's closing table); others keep cargo's order.
SLOW_FIRST = ["learning", "training_e2e", "local", "parallel", "observability_e2e", "lora"]

rows = []
for line in sys.stdin:
    if not line.startswith("{"):
        continue
    msg = json.loads(line)
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
        continue
    if not msg.get("profile", {}).get("test"):
        continue
    target = msg["target"]
    package_dir = os.path.dirname(msg["manifest_path"])
    crate = os.path.basename(package_dir)
    name = f"{crate}-{target['name']}" + ("-unit" if target["kind"] != ["test"] else "")
    lane = "trainer" if crate == "trainer-image" else "cluster"
    rank = SLOW_FIRST.index(target["name"]) if target["name"] in SLOW_FIRST else len(SLOW_FIRST)
    rows.append((lane, rank, len(rows), name, package_dir, msg["executable"]))

if not rows:
    sys.exit("test-binaries: cargo listed no test executable")
for lane, _, _, name, package_dir, exe in sorted(rows):
    print("\t".join([lane, name, package_dir, exe]))
