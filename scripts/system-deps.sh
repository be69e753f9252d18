#!/usr/bin/env bash
# Make sure the real servers the tests run are installed: install them when root, else say how.
# Arguments: binary:debian-package pairs.
set -euo pipefail
missing_pkgs=()
for pair in "$@"; do
  bin=${pair%%:*}; pkg=${pair##*:}
  if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/bin/$bin" ]; then
    case " ${missing_pkgs[*]-} " in *" $pkg "*) ;; *) missing_pkgs+=("$pkg");; esac
  fi
done
[ ${#missing_pkgs[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: installing ${missing_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing_pkgs[@]}" >/dev/null
  exit 0
fi
echo "system-deps: missing ${missing_pkgs[*]}." >&2
echo "  Install them with: sudo apt-get install -y ${missing_pkgs[*]}" >&2
if [ "${CI:-}" = "true" ]; then exit 1; fi
echo "  (tests that need them will fail outside CI too; nothing is skipped silently)" >&2
exit 1
