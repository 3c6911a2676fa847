# Shared by scripts/serve and scripts/test: a virtual environment in .venv, and Debian packages
# installed when missing (with sudo when not root).

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  echo "relay: installing $* (Debian packages)" >&2
  export DEBIAN_FRONTEND=noninteractive
  local log=/tmp/relay-apt.log
  as_root apt-get install -y -qq "$@" >"$log" 2>&1 || {
    as_root apt-get update -qq >>"$log" 2>&1 && as_root apt-get install -y -qq "$@" >>"$log" 2>&1
  } || {
    tail -20 "$log" >&2
    echo "relay: could not install $*" >&2
    return 1
  }
}

ensure_venv() {
  local python="${PYTHON:-python3}"
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "relay: needs Python 3.11 or newer; $python is $("$python" --version 2>&1)" >&2
    exit 1
  }
  if [ ! -x "$VENV/bin/python" ]; then
    "$python" -m venv "$VENV" 2>/dev/null || {
      rm -rf "$VENV"
      apt_install "python3-venv"
      "$python" -m venv "$VENV"
    }
  fi
}

pip_install() {
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@"
}
