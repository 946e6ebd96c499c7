#!/usr/bin/env python3
"""Offline `helm template` and `helm lint` through Helm v4's engine (helm-python-sdk's
libhelm_c.so); no helm binary is installable here. Run it with the python of the
environment scripts/install-helm-sdk.sh prints (<path>/bin/python; make exports it as
RLHF_HELM_PYTHON).

  helm.py render CHART [--values FILE]... [--namespace NS] [--release NAME] [--include-crds]
      prints the rendered manifests as one YAML stream (each document headed by its template)
  helm.py lint CHART [--values FILE]... [--namespace NS] [--kube-version vX.Y.Z]
      prints the findings; exits 1 on any error or warning
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import helm_python as helm

SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}


def merged_values(files: list[str]) -> dict[str, Any]:
    """The --values files merged in order, later keys winning (maps merge, the rest is replaced)."""
    values: dict[str, Any] = {}
    for file in files:
        merge(values, helm.values_from_yaml(Path(file).read_text()) or {})
    return values


def merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value


def render(args: argparse.Namespace) -> int:
    values = merged_values(args.values)
    with helm.Chart.load(args.chart) as chart:
        chart.validate_schema(values)
        manifests = chart.render(values, name=args.release, namespace=args.namespace, is_install=True)
        crds = chart.crds if args.include_crds else []
    documents = [(f"crds/{c['filename'].rsplit('/', 1)[-1]}", c["data"]) for c in crds]
    # Templates in path order; partials (_*.tpl) and NOTES.txt render to nothing worth printing.
    for path in sorted(manifests):
        if Path(path).name.startswith("_") or path.endswith("NOTES.txt"):
            continue
        documents.append((path, manifests[path]))
    out = []
    for path, text in documents:
        for doc in split_documents(text):
            out.append(f"---\n# Source: {path}\n{doc}\n")
    sys.stdout.write("".join(out))
    return 0


def split_documents(text: str) -> list[str]:
    """The non-empty YAML documents of a rendered template."""
    docs, current = [], []
    for line in text.splitlines():
        if line.rstrip() == "---":
            docs.append("\n".join(current))
            current = []
        else:
            current.append(line)
    docs.append("\n".join(current))
    return [d.strip("\n") for d in docs if any(l.strip() and not l.lstrip().startswith("#") for l in d.splitlines())]


def lint(args: argparse.Namespace) -> int:
    values = merged_values(args.values)
    report = helm.lint(args.chart, values, strict=True, namespace=args.namespace, kube_version=args.kube_version)
    findings = 0
    for message in report.get("messages") or []:
        severity = message.get("severity", 0)
        print(f"[{SEVERITY.get(severity, severity)}] {message.get('path', '')}: {message.get('error', '')}")
        findings += severity >= 2
    for error in report.get("errors") or []:
        print(f"[ERROR] {error}")
        findings += 1
    linted = report.get("total_charts_linted", 0)
    print(f"{linted} chart(s) linted, {findings} error(s)/warning(s)")
    return 1 if findings or linted == 0 else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="render the chart's manifests (like helm template)")
    r.add_argument("chart")
    r.add_argument("--values", "-f", action="append", default=[], help="values file (repeatable)")
    r.add_argument("--namespace", "-n", default="default")
    r.add_argument("--release", default="rlhf")
    r.add_argument("--include-crds", action="store_true", help="also print the chart's crds/")
    r.set_defaults(run=render)
    lint_parser = sub.add_parser("lint", help="lint the chart (strict: warnings fail)")
    lint_parser.add_argument("chart")
    lint_parser.add_argument("--values", "-f", action="append", default=[], help="values file (repeatable)")
    lint_parser.add_argument("--namespace", "-n", default="default")
    lint_parser.add_argument("--kube-version", default=None, help="e.g. v1.20.2 (default: Helm's)")
    lint_parser.set_defaults(run=lint)
    args = parser.parse_args()
    try:
        return args.run(args)
    except helm.HelmError as e:
        print(f"helm.py {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
