#!/usr/bin/env bash
# Starts `tollgate serve --demo`, runs the request the demo suggests (submit, start, complete),
# checks the balance moved by exactly the billed cost, signs in to the dashboard with the link
# it prints (once: used again, the link is refused), and stops the server.
set -euo pipefail
bin=$(realpath "$1")
work=$(mktemp -d)
out="$work/demo.out"
cleanup() {
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cd "$work"
"$bin" serve --demo --listen 127.0.0.1:0 >"$out" 2>"$work/demo.err" &
pid=$!
for _ in $(seq 1 100); do
  grep -q "Try it" "$out" 2>/dev/null && break
  sleep 0.1
done
grep -q "Try it" "$out" || { echo "the demo did not start"; cat "$out" "$work/demo.err"; exit 1; }

# The demo prints an `export TG=... OP=... DEMO=... REQ=...` line to paste: use it as printed.
eval "$(grep -m1 'export TG=' "$out")"
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

before=$(curl -sf "$TG/v1/admin/accounts/demo" -H "Authorization: $OP" | json "['balance_nano_usd']")
curl -sf -X POST "$TG/v1/requests" -H "Authorization: $OP" -H 'Content-Type: application/json' \
  -d "{\"request_id\": \"$REQ\", \"endpoint_id\": \"fal-ai/flux/dev\", \"caller_key\": \"$DEMO\"}" >/dev/null
curl -sf -X POST "$TG/v1/requests/$REQ/start" -H "Authorization: $OP" >/dev/null
cost=$(curl -sf -X POST "$TG/v1/requests/$REQ/complete" -H "Authorization: $OP" \
  -H 'Content-Type: application/json' \
  -d '{"status_code": 200, "output": {"images": [{"width": 1920, "height": 1080}]}}' \
  | json "['cost_estimate_nano_usd']")
after=$(curl -sf "$TG/v1/admin/accounts/demo" -H "Authorization: $OP" | json "['balance_nano_usd']")
clean=$(curl -sf "$TG/v1/admin/reconciliation" -H "Authorization: $OP" | json "['clean']")

# The customer's view, with the ADMIN key the demo prints: the billing event and the usage.
admin=$(grep -m1 'demo ADMIN key' "$out" | awk '{print $NF}')
event=$(curl -sf "$TG/v1/models/billing-events?request_id=$REQ" -H "Authorization: Key $admin" \
  | json "['billing_events'][0]['cost_estimate_nano_usd']")
usage=$(curl -sf "$TG/v1/models/usage?expand=summary" -H "Authorization: Key $admin" \
  | json "['summary'][0]['cost_total']")

echo "balance before $before, cost $cost, balance after $after, ledger clean: $clean"
echo "billing event $event nano-USD, usage summary $usage USD"
[ "$event" = "$cost" ] || { echo "the billing event does not carry the billed cost"; exit 1; }
[ "$usage" = "0.05" ] || { echo "the usage summary does not show the 0.05 USD billed"; exit 1; }
[ "$cost" = "50000000" ] || { echo "flux/dev 1920x1080 should cost 0.05 USD (50000000 nano-USD)"; exit 1; }
[ "$((before - cost))" = "$after" ] || { echo "the balance did not move by exactly the cost"; exit 1; }
[ "$clean" = "True" ] || { echo "the ledger does not reconcile"; exit 1; }

# The dashboard sign-in link the demo prints: opening it shows a page that posts it back
# (a GET never spends it); the POST signs in (a session cookie and a redirect to the dashboard,
# whose overview shows the balance), and works once.
link=$(grep -m1 '^  dashboard link' "$out" | awk '{print $NF}')
case "$link" in "$TG/dashboard/link/"*) ;; *) echo "no dashboard link printed: '$link'"; exit 1 ;; esac
jar="$work/cookies"
opened=$(curl -s -o /dev/null -w '%{http_code}' "$link")
[ "$opened" = "200" ] || { echo "opening the dashboard link answered $opened, not 200"; exit 1; }
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -c "$jar" "$link")
[ "$code" = "303" ] || { echo "posting the dashboard link answered $code, not 303"; exit 1; }
page=$(curl -s -w '\n%{http_code}' -b "$jar" "$TG/dashboard")
[ "${page##*$'\n'}" = "200" ] || { echo "GET /dashboard with the session: ${page##*$'\n'}"; exit 1; }
grep -q "data-nano-usd=\"$after\"" <<<"$page" \
  || { echo "the dashboard does not show the balance ($after nano-USD)"; exit 1; }
again=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$link")
[ "$again" = "410" ] || { echo "the used link answered $again, not 410"; exit 1; }
echo "dashboard link: opened (200), signed in (303), overview shows the balance, used again: $again"

kill -TERM "$pid"
wait "$pid" || { echo "the server did not stop cleanly"; exit 1; }
pid=
echo "demo smoke test passed"
