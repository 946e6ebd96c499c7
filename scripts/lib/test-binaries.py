"""Reads `cargo test --no-run --message-format=json` from stdin and prints one line per test
executable: lane, name, package folder, path (tab-separated). Binaries that train (the trainer's
own, and the end-to-end tests that run real trainers in pods) form the `cpu` lane, one at a
time: two of them at once on 2 cores only slow each other past their liveness timeouts. The rest,
which mostly wait on the API server, form the `api` lane beside it."""
import json
import os
import sys

# End-to-end tests of the tests crate whose pods run the real trainer.
TRAINING_E2E = {"training_e2e", "failure_policy_e2e", "observability_e2e"}

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
    trains = crate == "trainer-image" or target["name"] in TRAINING_E2E
    rows.append(("cpu" if trains else "api", len(rows), name, package_dir, msg["executable"]))

if not rows:
    sys.exit("test-binaries: cargo listed no test executable")
for lane, _, name, package_dir, exe in sorted(rows):
    print("\t".join([lane, name, package_dir, exe]))
