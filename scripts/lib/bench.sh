# Shared by the benchmark scripts; sourced, not run.

# bench_binary WORK: sets `bin` to the capstan to measure. CAPSTAN_BIN when set (not rebuilt);
# otherwise a release build, copied into WORK (the shared build folder may be relinked by another
# build while the benchmark runs). Prints which binary and tree it is. Needs `die`.
bench_binary() {
  local work=$1 built
  if [ -n "${CAPSTAN_BIN:-}" ]; then
    bin=$CAPSTAN_BIN
    [ -x "$bin" ] || die "CAPSTAN_BIN=$bin is not an executable"
    echo "capstan: $bin (CAPSTAN_BIN, not rebuilt)"
    return
  fi
  if ! swift build -c release --product capstan >"$work/build.log" 2>&1; then
    grep -E "error:" "$work/build.log" | head -5 >&2
    die "swift build -c release --product capstan failed (set CAPSTAN_BIN to use a built binary)"
  fi
  tail -1 "$work/build.log"
  built=$(swift build -c release --show-bin-path)/capstan
  cp "$built" "$work/capstan"
  bin=$work/capstan
  echo "capstan: $built (copied), tree $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- Sources Package.swift 2>/dev/null || echo " + uncommitted changes")"
}
