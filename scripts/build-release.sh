#!/usr/bin/env bash
# Builds the release binary we ship (the container image, the figures in docs/benchmarks.md):
#   - the Swift runtime and Foundation linked statically (--static-swift-stdlib);
#   - every function in its own section, linked by lld in the order of scripts/capstan.order:
#     the functions the controller runs are packed together at the front of the code, so the
#     pages the process touches (and keeps resident) are few instead of one in every stretch of
#     the 40 MB of code (idle RSS of `capstan run` about 56 → 40 MiB, docs/benchmarks.md);
#   - packed relative relocations (DT_RELR, glibc ≥ 2.36) and no exported dynamic symbols,
#     so the loader reads and writes less at start-up.
# A stale order file costs memory, never correctness: functions it does not name are laid out
# after the ones it does. Regenerate it with scripts/gen-order-file.sh.
#
# It reports how many of the order file's functions the binary still has; with ORDER_MIN=N (CI
# sets it) it fails below N percent, when the file has gone stale.
#
#   scripts/build-release.sh            # prints the binary's path on stdout
#   SCRATCH=.build-x scripts/build-release.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scratch="${SCRATCH:-.build-release}"
order="$PWD/scripts/capstan.order"
flags=(
  -c release --product capstan --scratch-path "$scratch" --static-swift-stdlib
  -Xswiftc -Xfrontend -Xswiftc -function-sections -Xcc -ffunction-sections
  -Xswiftc -use-ld=lld
  -Xlinker -z -Xlinker pack-relative-relocs
  -Xlinker --no-export-dynamic
  -Xlinker "--symbol-ordering-file=$order" -Xlinker --no-warn-symbol-ordering
)
bin="$(swift build "${flags[@]}" --show-bin-path)/capstan"
# SwiftPM does not know the order file is an input of the link: relink when it changed.
if [[ -f "$bin" && "$order" -nt "$bin" ]]; then rm -f "$bin"; fi
swift build "${flags[@]}" >&2
python3 - "$bin" "$order" "${ORDER_MIN:-0}" >&2 <<'PY'
import subprocess, sys
binary, order, minimum = sys.argv[1], sys.argv[2], float(sys.argv[3])
wanted = {line.strip() for line in open(order) if line.strip()}
defined = set(subprocess.run(["nm", "--defined-only", "--format=just-symbols", binary],
                             capture_output=True, text=True, check=True).stdout.split())
found = len(wanted & defined)
percent = 100 * found / max(len(wanted), 1)
print(f"scripts/capstan.order: {found} of {len(wanted)} functions are in the binary ({percent:.0f}%)")
if percent < minimum:
    sys.exit(f"scripts/capstan.order is stale (under {minimum:.0f}%): run scripts/gen-order-file.sh and commit it")
PY
echo "$bin"
