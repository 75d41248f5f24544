#!/usr/bin/env python3
"""Checks Capstan's JSON Schema with a real JSON Schema validator (python-jsonschema, the library
behind check-jsonschema; check-jsonschema itself reads only one YAML document per file).

    python3 scripts/check-schema.py SCHEMA.json

1. The schema is a valid draft 2020-12 schema.
2. Every example manifest in the repository (examples/**, the valid test fixtures) passes it.
3. Invalid fixtures whose expected diagnostics are schema-level problems (unknown field, wrong
   type, missing field, invalid enum, bad duration, bad name) are rejected by it too, so the
   schema is known to catch what editors should flag.
"""
import glob
import json
import os
import sys

import jsonschema
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA_LEVEL = {"unknown-field", "wrong-type", "missing-field", "invalid-enum", "invalid-duration", "invalid-name",
                "unknown-kind", "unknown-api-version"}


def documents(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def errors(validator, path):
    found = []
    for i, doc in enumerate(documents(path)):
        for e in validator.iter_errors(doc):
            found.append(f"{os.path.relpath(path, ROOT)} document {i + 1}: {'/'.join(map(str, e.absolute_path))}: {e.message}")
    return found


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        schema = json.load(f)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)

    valid_files = sorted(glob.glob(os.path.join(ROOT, "examples", "**", "*.y*ml"), recursive=True))
    valid_files += sorted(glob.glob(os.path.join(ROOT, "Tests", "CapstanManifestsTests", "Fixtures", "valid", "**", "*.y*ml"), recursive=True))
    failures = []
    checked = 0
    for path in valid_files:
        # YAML files that are not Capstan manifests (workflows, compose files: excluded in the
        # fixtures' capstan.yaml) are not checked.
        if not any(isinstance(d, dict) and str(d.get("apiVersion", "")).startswith("capstan/") for d in documents(path)):
            continue
        checked += 1
        failures += errors(validator, path)

    rejected = 0
    invalid_dirs = sorted(glob.glob(os.path.join(ROOT, "Tests", "CapstanManifestsTests", "Fixtures", "invalid", "*")))
    for case in invalid_dirs:
        expected = os.path.join(case, "expected.txt")
        if not os.path.exists(expected):
            continue
        text = open(expected, encoding="utf-8").read()
        if "# schema: cross-document" in text:
            continue  # a rule across documents: no per-document schema can express it
        lines = [l.split() for l in text.splitlines() if l.strip() and not l.startswith("#")]
        codes = {l[1] for l in lines if len(l) == 3}
        files = {l[2].rsplit(":", 2)[0] for l in lines if len(l) == 3}
        if not codes or not codes <= SCHEMA_LEVEL or len(files) != 1:
            continue
        path = os.path.join(case, files.pop())
        try:
            found = errors(validator, path)
        except (yaml.YAMLError, UnicodeDecodeError):
            continue
        if not found:
            failures.append(f"{os.path.relpath(path, ROOT)}: capstan reports {sorted(codes)} but the JSON Schema accepts it")
        else:
            rejected += 1

    for failure in failures:
        print(f"error: {failure}")
    print(f"check-schema: {checked} example files valid, {rejected} invalid fixtures rejected, {len(failures)} problems")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
