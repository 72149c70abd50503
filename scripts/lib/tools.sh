# Shared by scripts/test and scripts/demo: installs the pinned local AWS emulator (and the
# template linter) into .venv/, idempotently. Source it; it defines functions only.

MOTO_VERSION="5.2.5"
CFN_LINT_VERSION="1.58.0"
# The Prometheus exposition parser the metrics tests read /metrics with.
PROMETHEUS_CLIENT_VERSION="0.26.0"
# The OpenAPI validator the API tests check the served document with.
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
  "$venv/bin/python" - "$MOTO_VERSION" "$CFN_LINT_VERSION" "$PROMETHEUS_CLIENT_VERSION" "$OPENAPI_VALIDATOR_VERSION" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
want_moto, want_lint, want_prom, want_oas = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
ok = version("moto") == want_moto and version("cfn-lint") == want_lint
ok = ok and version("prometheus-client") == want_prom
ok = ok and version("openapi-spec-validator") == want_oas
# moto's [server] extra: the HTTP front end needs flask and flask-cors.
version("flask"), version("flask-cors")
sys.exit(0 if ok else 1)
PY
}

# ensure_python_tools VENV: moto[server], cfn-lint, prometheus-client and
# openapi-spec-validator at the pinned versions in VENV.
ensure_python_tools() {
  local venv="$1"
  heading "python tools: moto[server]==$MOTO_VERSION, cfn-lint==$CFN_LINT_VERSION, prometheus-client==$PROMETHEUS_CLIENT_VERSION, openapi-spec-validator==$OPENAPI_VALIDATOR_VERSION"
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
      "prometheus-client==$PROMETHEUS_CLIENT_VERSION" \
      "openapi-spec-validator==$OPENAPI_VALIDATOR_VERSION"
  fi
}

AWSCLI_VERSION="1.46.2"

# ensure_aws_cli DIR: the AWS CLI (awscli==$AWSCLI_VERSION) in its own virtual environment DIR
# (its botocore pin differs from moto's): the example pipelines' command tests run it against
# moto. The tests find it at .cache/awscli/bin/aws or through TOLLGATE_AWS_CLI.
ensure_aws_cli() {
  local dir="$1"
  heading "AWS CLI: awscli==$AWSCLI_VERSION"
  if [[ -x "$dir/bin/aws" ]] && "$dir/bin/python" - "$AWSCLI_VERSION" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if version("awscli") == sys.argv[1] else 1)
PY
  then
    echo "already installed"
    return 0
  fi
  python3 -m venv "$dir"
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "awscli==$AWSCLI_VERSION"
}

# ensure_webhook_examples PREFIX VERSION: GitHub's example webhook payloads
# (@octokit/webhooks-examples@VERSION) under PREFIX/node_modules.
ensure_webhook_examples() {
  local prefix="$1" version="$2"
  local dir="$prefix/node_modules/@octokit/webhooks-examples"
  ensure_cmd npm nodejs npm
  heading "webhook payloads: @octokit/webhooks-examples@$version"
  local installed=""
  if [[ -f "$dir/package.json" ]]; then
    installed="$(node -p "require(process.argv[1]).version" "$dir/package.json")"
  fi
  if [[ "$installed" == "$version" ]]; then
    echo "already installed"
  else
    mkdir -p "$prefix"
    npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error \
      --save-exact "@octokit/webhooks-examples@$version"
  fi
}

# postgres_bindir: prints the directory of PostgreSQL's server programs (initdb, pg_ctl),
# installing Debian's `postgresql` package when none is found; fails when it cannot.
postgres_bindir() {
  local dir
  for dir in "$(pg_config --bindir 2>/dev/null || true)" /usr/lib/postgresql/*/bin; do
    if [[ -n "$dir" && -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then
      echo "$dir"
      return 0
    fi
  done
  apt_install postgresql >&2 || {
    echo "error: PostgreSQL's server is required: install Debian's 'postgresql' package" >&2
    return 1
  }
  for dir in /usr/lib/postgresql/*/bin; do
    [[ -x "$dir/initdb" ]] && { echo "$dir"; return 0; }
  done
  return 1
}

# start_test_postgres DIR: starts a throwaway PostgreSQL cluster in DIR (created) on a free
# loopback port, as an unprivileged user when run as root (PostgreSQL refuses root), with the
# superuser `tollgate` and no password (trust, loopback only). Prints the server's URL
# (postgres://tollgate@127.0.0.1:PORT/). Stop it with stop_test_postgres DIR.
start_test_postgres() {
  local dir="$1" bin port run=()
  bin="$(postgres_bindir)" || return 1
  mkdir -p "$dir"
  if [[ "$(id -u)" == 0 ]]; then
    local user=postgres
    id "$user" >/dev/null 2>&1 || user=nobody
    chown "$user" "$dir"
    run=(runuser -u "$user" --)
  fi
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  "${run[@]}" "$bin/initdb" -D "$dir/data" -U tollgate --auth=trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 || {
    cat "$dir/initdb.log" >&2
    return 1
  }
  "${run[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=400 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    >/dev/null || {
    cat "$dir/server.log" >&2
    return 1
  }
  echo "$bin" >"$dir/bindir"
  echo "postgres://tollgate@127.0.0.1:$port/"
}

# stop_test_postgres DIR: stops the cluster start_test_postgres started there (if running).
stop_test_postgres() {
  local dir="$1" run=()
  [[ -f "$dir/bindir" ]] || return 0
  [[ "$(id -u)" == 0 ]] && run=(runuser -u "$(stat -c %U "$dir")" --)
  "${run[@]}" "$(cat "$dir/bindir")/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
}
