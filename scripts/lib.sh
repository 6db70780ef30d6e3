# Sourced by test.sh, demo.sh and bench.sh: find cargo, bring the local services up, and stop at
# exit what this run started (servers already running are left alone).
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
command -v cargo >/dev/null || { [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"; }
command -v cargo >/dev/null || { echo "cargo is not installed (https://rustup.rs)" >&2; exit 1; }

with_services() {
  local started=no
  [ -f .services/env ] || started=yes
  scripts/services.sh up
  if [ "$started" = yes ]; then trap 'scripts/services.sh down' EXIT; fi
  set -a; . .services/env; set +a
}
