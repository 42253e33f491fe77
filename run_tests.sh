#!/usr/bin/env bash
# Sets up everything from nothing and runs the test suite under JAX,
# TensorFlow and PyTorch. Usage: bash run_tests.sh [extra pytest args]
set -uo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv || exit 1
fi
.venv/bin/python -m pip install -q --upgrade pip || exit 1
.venv/bin/python -m pip install -q -r requirements-test.txt || exit 1

export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
status=0
summary=()
for backend in jax tensorflow torch; do
  echo "=== KERAS_BACKEND=$backend"
  start=$SECONDS
  KERAS_BACKEND=$backend .venv/bin/python -m pytest -q -n 2 "$@" 2>&1 \
    | tee ".venv/pytest-$backend.log"
  rc=${PIPESTATUS[0]}
  [ "$rc" -ne 0 ] && status=1
  summary+=("$backend: exit $rc in $((SECONDS - start)) s")
done
# The notebooks choose their backends themselves: run them once, not per
# backend (KERAS_BACKEND=jax only spares pytest itself importing TensorFlow).
echo "=== notebooks"
start=$SECONDS
KERAS_BACKEND=jax KERAS_GEMMA_RUN_NOTEBOOKS=1 .venv/bin/python -m pytest -q -n 2 tests/test_notebooks.py 2>&1 \
  | tee .venv/pytest-notebooks.log
rc=${PIPESTATUS[0]}
[ "$rc" -ne 0 ] && status=1
summary+=("notebooks: exit $rc in $((SECONDS - start)) s")
echo "=== summary"
printf '%s\n' "${summary[@]}"
passed=0; failed=0
for log in jax tensorflow torch notebooks; do
  line=$(grep -E '^[0-9]+ (passed|failed)|[0-9]+ passed' ".venv/pytest-$log.log" | tail -1)
  p=$(grep -oE '[0-9]+ passed' <<<"$line" | grep -oE '[0-9]+' || true)
  f=$(grep -oE '[0-9]+ failed' <<<"$line" | grep -oE '[0-9]+' || true)
  e=$(grep -oE '[0-9]+ error' <<<"$line" | grep -oE '[0-9]+' || true)
  passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0} + ${e:-0}))
done
echo "$passed passed, $failed failed"
exit $status
