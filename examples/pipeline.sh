#!/usr/bin/env bash
# A model-release pipeline as plain commands: optimize, roll out from a file, wait for the decision, report.
# Each step's exit code decides whether the pipeline goes on (see the README, "From a pipeline"):
#   optimize: 0 a candidate passes every gate, 5 none does, 1 the job failed, 2 bad usage (nothing queued)
#   rollout wait: 0 promoted, 1 rolled back / aborted / failed, 3 timed out, 4 waiting for approval
# Needs MODELROLL_TOKEN (operator) and a running controller (MODELROLL_CONTROLLER_URL, default 127.0.0.1:8081).
set -euo pipefail
MODEL=${MODEL:-digits}
RECIPE=${RECIPE:-prune:0.5,distill,int8}
SPEC=${SPEC:-examples/rollout.yaml}
URL=${MODELROLL_CONTROLLER_URL:-http://127.0.0.1:8081}
MR=${MODELROLL:-.venv/bin/modelroll}
REPORT=${REPORT:-modelroll-report.md}

# GATES (e.g. accuracy=0.05) loosens the offline gates only; the rollout's criteria come from the document.
"$MR" optimize "$MODEL" -t "$RECIPE" ${GATES:+--gates "$GATES"} --markdown > "$REPORT"   # exit 5: none passes
job=$("$MR" optimize list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
candidate=$("$MR" optimize list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["passing"][0])')
echo "job $job built $candidate" >&2

# The document names the rollout; point it at the candidate this run built (a new name per candidate).
sed -e "s/^  name: .*/  name: $MODEL-$candidate/" -e "s/^  candidate: .*/  candidate: $candidate/" "$SPEC" \
    > "$candidate.rollout.yaml"
rollout=$("$MR" apply -f "$candidate.rollout.yaml" --url "$URL" --json | python3 -c \
    'import json,sys; print(json.load(sys.stdin)["results"][0]["rollout"]["id"])')

status=0
"$MR" rollout wait "$rollout" --timeout "${WAIT_S:-3600}" --url "$URL" || status=$?
"$MR" rollout report "$rollout" --url "$URL" >> "$REPORT"           # the PR comment: offline and live
exit "$status"
