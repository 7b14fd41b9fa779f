#!/usr/bin/env bash
# Set up everything clinflow needs on a fresh machine: Debian packages, uv, and the two
# locked Python environments (.venvs/platform on 3.11, .venvs/tfx on 3.10). Idempotent:
# a second run checks lock hashes and says one line.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "setup: $*"; }

# Debian packages: redis-server (Feast online store tests), tesseract-ocr (OCR of scanned PDF
# pages and of DICOM pixel data for burned-in text); kubectl is in the base image.
need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v tesseract >/dev/null 2>&1 || need_apt+=(tesseract-ocr)
if [ "${#need_apt[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing ${need_apt[*]} (apt)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    say "optional Debian packages missing (${need_apt[*]}); tests that need them will be skipped"
  fi
fi

# uv (from PyPI).
if ! command -v uv >/dev/null 2>&1; then
  say "installing uv"
  python3 -m pip install -q --disable-pip-version-check uv 2>/dev/null || python3 -m pip install -q --user uv
  export PATH="$HOME/.local/bin:$PATH"
fi

find_python() {  # $1 = version like 3.10
  local v="$1" candidate
  for candidate in "python$v" "$HOME/.pyenv/versions/$v"*/bin/python"$v" /usr/bin/python"$v" /usr/local/bin/python"$v"; do
    if command -v "$candidate" >/dev/null 2>&1 || [ -x "$candidate" ]; then
      if "$candidate" -c "import sys; sys.exit(0 if sys.version.startswith('$v') else 1)" 2>/dev/null; then
        command -v "$candidate" 2>/dev/null || echo "$candidate"; return 0
      fi
    fi
  done
  return 1
}

make_env() {  # $1 = env name, $2 = python version
  local name="$1" version="$2" env=".venvs/$1" lock="locks/$1.txt" stamp want python
  want="$(sha256sum "$lock" pyproject.toml | sha256sum | cut -c1-16)"
  stamp="$env/.clinflow-lock"
  if [ -x "$env/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  python="$(find_python "$version")" || { echo "setup: error: Python $version not found (needed for .venvs/$name); install it (e.g. pyenv install $version)" >&2; exit 1; }
  say "building $env (Python $version) from $lock"
  [ -x "$env/bin/python" ] || uv venv -q --python "$python" "$env"
  VIRTUAL_ENV="$env" uv pip sync -q "$lock"
  VIRTUAL_ENV="$env" uv pip install -q --no-deps -e .
  echo "$want" > "$stamp"
  UPDATED=1
}

UPDATED=0
make_env platform 3.11
make_env tfx 3.10
if [ "$UPDATED" = 0 ]; then say "environments up to date"; fi
