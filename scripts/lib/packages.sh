# Sourced by scripts/quickstart.sh and scripts/test.sh: makes sure Debian packages are installed.
# As root it installs what is missing with apt-get; otherwise it prints the one command to run
# and stops, so a new user never meets a build or test failure that a package would have fixed.

# need_packages WHY ITEM... : installs the missing ones (root) or prints the command and exits 1.
# An ITEM is a package name, or PACKAGE:COMMAND when any COMMAND on PATH will do (python3 from
# pyenv, git built by hand).
need_packages() {
  local why="$1"; shift
  local missing=() item pkg cmd
  for item in "$@"; do
    pkg="${item%%:*}"; cmd=""
    [[ "$item" == *:* ]] && cmd="${item#*:}"
    if [[ -n "$cmd" ]] && command -v "$cmd" >/dev/null 2>&1; then continue; fi
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  if [[ "$(id -u)" -eq 0 ]]; then
    echo "==> installing what $why needs: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "$why needs Debian packages that are not installed. Run:" >&2
    echo "  sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    echo "then run $0 again." >&2
    exit 1
  fi
}

# need_swift: Swift itself is not a Debian package; say where to get it.
need_swift() {
  command -v swift >/dev/null 2>&1 && return 0
  echo "Swift 6 is not on PATH. Install a Swift 6 toolchain for Debian 12 (https://www.swift.org/install/linux/)" >&2
  echo "and put its usr/bin on PATH, then run $0 again." >&2
  exit 1
}
