#!/usr/bin/env bash
# The one test command:
#
#   bash scripts/test.sh [--sqlite-only] [PYTEST ARGS...]
#
# 1. scripts/setup.sh (system packages, .venv, node_modules; a no-op when current),
# 2. starts a throwaway PostgreSQL (tests/pg.py) on a free 127.0.0.1 port,
# 3. runs the whole pytest suite twice, passing PYTEST ARGS to both runs:
#      - "sqlite":   the default database (BERTH_TEST_PG_URL unset),
#      - "postgres": BERTH_TEST_PG_URL=<superuser URL of that server>; tests
#                    create their own databases from it (tests/pg.py
#                    create_database / drop_database); the browser tests
#                    (marker "browser", tests/browser) are deselected there:
#                    they test pages, whose SQL the HTTP-level web tests
#                    cover on both databases (the summary counts them as
#                    deselected); so are the worker-side tests (marker
#                    "worker", listed in tests/conftest.py): agent, supervisor,
#                    servers, desktops and containers, which the database only
#                    records,
# 4. stops PostgreSQL (also on failure / Ctrl-C) and prints one summary line per
#    run, then a total line. Exits non-zero if either run failed; pytest's exit 5
#    ("no tests collected") counts as a failure.
#
# --sqlite-only (must be the first argument): skip steps 2 and the postgres run,
# for quick local iterations. CI always runs both.
#
# Behaves the same locally and in CI: CI=true is exported for both runs (so
# pytest and hypothesis use their CI behaviour, e.g. hypothesis's derandomized
# "ci" profile without deadlines), and an inherited BERTH_TEST_PG_URL is ignored.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

sqlite_only=0
if [[ ${1:-} == --sqlite-only ]]; then
  sqlite_only=1
  shift
fi

bash scripts/setup.sh

export CI=true
export PYTHONDONTWRITEBYTECODE=1
unset BERTH_TEST_PG_URL
PY=.venv/bin/python

WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/berth-test.XXXXXX")
PG_DIR=""
cleanup() {
  local rc=$?
  if [[ -n $PG_DIR ]]; then
    "$PY" tests/pg.py stop "$PG_DIR" || echo "test.sh: warning: could not stop PostgreSQL in $PG_DIR" >&2
  fi
  rm -rf "$WORK_DIR"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ((!sqlite_only)); then
  # Under /var/tmp (world-traversable) so that the postgres system user can reach it.
  PG_DIR=$(mktemp -d "${BERTH_TEST_PG_PARENT:-/var/tmp}/berth-test-pg.XXXXXX")
  pg_t0=${EPOCHREALTIME/./}
  if ! PG_ADMIN_URL=$("$PY" tests/pg.py start "$PG_DIR"); then
    echo "test.sh: ERROR: could not start PostgreSQL (see above)" >&2
    exit 1
  fi
  pg_ms=$(( (${EPOCHREALTIME/./} - pg_t0) / 1000 ))
  echo "test.sh: PostgreSQL started on ${PG_ADMIN_URL##*@} in ${pg_ms} ms"
fi

summaries=()
totals=(0 0 0 0)   # passed failed skipped deselected
failed_runs=()

# run_suite LABEL [env assignments...] -- PYTEST ARGS...
run_suite() {
  local label=$1; shift
  local envs=()
  while [[ $1 != -- ]]; do envs+=("$1"); shift; done
  shift
  local junit="$WORK_DIR/$label.xml" out="$WORK_DIR/$label.out" rc t0 t1 counts deselected
  echo "test.sh: ===== $label run ====="
  t0=$(date +%s)
  set +e
  env "${envs[@]}" "$PY" -m pytest -p no:cacheprovider -q --durations=15 --junitxml="$junit" "$@" 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  set -e
  # Deselected tests are not in the JUnit report: pytest's last line says how many ("N deselected").
  deselected=$(tail -n 5 "$out" | grep -oE '[0-9]+ deselected' | tail -n 1 | cut -d' ' -f1 || true)
  deselected=${deselected:-0}
  t1=$(date +%s)
  # "passed failed skipped" from the JUnit report (errors count as failed).
  counts=$("$PY" - "$junit" <<'EOF' 2>/dev/null || echo "? ? ?"
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
n = lambda k: sum(int(s.get(k, 0)) for s in suites)
failed = n("failures") + n("errors")
skipped = n("skipped")
print(n("tests") - failed - skipped, failed, skipped)
EOF
)
  read -r p f s <<<"$counts"
  local verdict=PASS
  if ((rc == 5 && deselected > 0)) && [[ $label == postgres ]]; then
    verdict="PASS (all were browser/worker)"  # e.g. `test.sh tests/browser`: the sqlite run still fails on exit 5
    rc=0
  elif ((rc == 5)); then
    verdict="FAIL (no tests collected)"
  elif ((rc != 0)); then
    verdict=FAIL
  fi
  [[ $verdict == PASS* ]] || failed_runs+=("$label")
  if [[ $p != "?" ]]; then
    totals[0]=$((totals[0] + p)) totals[1]=$((totals[1] + f)) totals[2]=$((totals[2] + s))
  fi
  totals[3]=$((totals[3] + deselected))
  summaries+=("$(printf '%-10s %-26s %s passed, %s failed, %s skipped, %s deselected in %ss (pytest exit %s)' \
    "$label:" "$verdict" "$p" "$f" "$s" "$deselected" "$((t1 - t0))" "$rc")")
}

run_suite sqlite -- "$@"
if ((!sqlite_only)); then
  run_suite postgres BERTH_TEST_PG_URL="$PG_ADMIN_URL" -- -m "not browser and not worker" "$@"
fi

echo
echo "test.sh: ===== summary ====="
for line in "${summaries[@]}"; do echo "test.sh: $line"; done
if ((${#failed_runs[@]})); then
  echo "test.sh: FAILED: ${failed_runs[*]}"
  status=1
else
  status=0
fi
echo "total: ${totals[0]} passed, ${totals[1]} failed, ${totals[2]} skipped, ${totals[3]} deselected"
exit "$status"
