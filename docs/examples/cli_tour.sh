#!/usr/bin/env bash
# Start a fake provider on a free port, provoke faults with curl, stop it. Needs bash and curl.
set -euo pipefail

workdir=$(mktemp -d)
waterfall-fakes serve --port 0 --seed 42 >"$workdir/url" &
fake_pid=$!
stop_fake() {
    kill -TERM "$fake_pid" 2>/dev/null || true # SIGTERM: a graceful stop
    wait "$fake_pid" 2>/dev/null || true
    rm -rf "$workdir"
}
trap stop_fake EXIT

# The first line the fake prints is its base URL. Wait for it, at most 10 s.
for _ in $(seq 100); do
    [ -s "$workdir/url" ] && break
    sleep 0.1
done
url=$(head -n 1 "$workdir/url")
echo "fake provider at $url"

chat='{"model": "fake-small", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2'
post() { # post BEHAVIOUR JSON-TAIL [curl options...]: one chat completion
    local behaviour=$1 tail=$2
    shift 2
    curl --silent --show-error --max-time 5 "$@" "$url/chat/completions" \
        -H 'content-type: application/json' -H "x-fake-behaviour: $behaviour" -d "$chat$tail"
}

echo "--- 429: -i shows the headers that say when to come back"
post 'rate_limit:seconds=2' '}' -i
echo

echo "--- the same in OpenAI's dialect (headers only)"
post 'rate_limit:dialect=openai,seconds=2.5' '}' -o /dev/null -D - | grep -i '^x-ratelimit'

echo "--- a normal stream: -N prints each event as it arrives"
post 'ok' ', "stream": true}' -N

echo "--- truncate: two events, then the body ends cleanly without [DONE]"
post 'truncate:events=2' ', "stream": true}' -N
echo "curl exit status: $?"

echo "--- cut: the connection drops after 60 bytes"
status=0
post 'cut:bytes=60' ', "stream": true}' -N 2>/dev/null || status=$?
echo
echo "curl exit status: $status"

echo "--- hang: no headers ever; curl's own timeout (--max-time 0.5) gives up"
status=0
post 'hang' '}' --max-time 0.5 2>/dev/null || status=$?
echo "curl exit status: $status"

echo "--- status:code=503 and a 402, status codes only"
post 'status:code=503' '}' -o /dev/null -w '%{http_code}\n'
post 'insufficient_balance' '}' -o /dev/null -w '%{http_code}\n'
