# Shared by scripts/test and scripts/demo: installs the pinned local AWS emulator (and the
# template linter) into .venv/, idempotently. Source it; it defines functions only.

MOTO_VERSION="5.2.5"
CFN_LINT_VERSION="1.58.0"
OPENAPI_VALIDATOR_VERSION="0.9.0"

heading() { printf '\n==> %s\n' "$*"; }

# require_cmd NAME HINT: fail with a clear message when a command is missing.
require_cmd() {
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "error: '$1' is required: $2" >&2
    exit 2
  fi
}

# apt_install PACKAGES...: installs Debian/Ubuntu packages as root, or through sudo when it
# needs no password; returns 1 when neither is possible.
apt_install() {
  local sudo=""
  if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null || return 1
    sudo="sudo"
  fi
  command -v apt-get >/dev/null 2>&1 || return 1
  heading "installing $*"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"
}

# ensure_cmd NAME APT_PACKAGES...: installs the packages when the command NAME is missing, or
# says what to install.
ensure_cmd() {
  local name="$1"
  shift
  command -v "$name" >/dev/null 2>&1 && return 0
  apt_install "$@" || true
  require_cmd "$name" "install the package(s) $* and re-run"
}

# python_tools_current VENV: are the pinned versions installed there?
python_tools_current() {
  local venv="$1"
  [[ -x "$venv/bin/moto_server" && -x "$venv/bin/cfn-lint" ]] || return 1
  [[ -x "$venv/bin/openapi-spec-validator" ]] || return 1
  "$venv/bin/python" - "$MOTO_VERSION" "$CFN_LINT_VERSION" "$OPENAPI_VALIDATOR_VERSION" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
want_moto, want_lint, want_oas = sys.argv[1], sys.argv[2], sys.argv[3]
ok = version("moto") == want_moto and version("cfn-lint") == want_lint
ok = ok and version("openapi-spec-validator") == want_oas
# moto's [server] extra: the HTTP front end needs flask and flask-cors.
version("flask"), version("flask-cors")
sys.exit(0 if ok else 1)
PY
}

# ensure_python_tools VENV: moto[server], cfn-lint and openapi-spec-validator at the pinned
# versions in VENV.
ensure_python_tools() {
  local venv="$1"
  heading "python tools: moto[server]==$MOTO_VERSION, cfn-lint==$CFN_LINT_VERSION, openapi-spec-validator==$OPENAPI_VALIDATOR_VERSION"
  ensure_cmd python3 python3 python3-venv
  if [[ ! -x "$venv/bin/python" ]]; then
    if ! python3 -m venv "$venv"; then
      rm -rf "$venv"
      apt_install python3-venv || true
      if ! python3 -m venv "$venv"; then
        echo "error: python3 cannot create a virtual environment; install python3-venv" >&2
        exit 2
      fi
    fi
  fi
  if python_tools_current "$venv"; then
    echo "already installed"
  else
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      "moto[server]==$MOTO_VERSION" "cfn-lint==$CFN_LINT_VERSION" \
      "openapi-spec-validator==$OPENAPI_VALIDATOR_VERSION"
  fi
}
