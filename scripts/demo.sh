#!/usr/bin/env bash
# The main job. For now: bring up the local services and say where they are.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$repo/scripts/services.sh" up
echo "Local services are up:"
sed 's/^/  /' "$repo/.services/env"
echo "Stop them with: scripts/services.sh down"
