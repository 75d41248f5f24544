#!/usr/bin/env bash
# Regenerates the generated parts of the docs from the code:
#   docs/manifests.md  field reference   (capstan schema --format markdown)
#   docs/capstan.schema.json             (capstan schema)
# A test (SchemaCommandTests) fails when docs/manifests.md is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build --product capstan >/dev/null
bin=$(swift build --show-bin-path)/capstan
python3 - "$bin" <<'PY'
import subprocess, sys
bin = sys.argv[1]
ref = subprocess.run([bin, "schema", "--format", "markdown"], check=True, capture_output=True, text=True).stdout
path = "docs/manifests.md"
text = open(path, encoding="utf-8").read()
begin = "<!-- BEGIN GENERATED: capstan schema --format markdown -->\n"
end = "<!-- END GENERATED -->"
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
open(path, "w", encoding="utf-8").write(head + begin + ref + end + tail)
print("updated", path)
PY
"$bin" schema > docs/capstan.schema.json
echo "updated docs/capstan.schema.json"
