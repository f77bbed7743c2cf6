#!/usr/bin/env bash
# A test suite in shell with curl only: start a fake, drive its control plane, judge a client.
# Each check prints "ok - ..." or stops the script with "not ok - ..." and exit status 1.
set -euo pipefail

workdir=$(mktemp -d)
waterfall-fakes serve --port 0 --seed 7 >"$workdir/url" &
fake_pid=$!
stop_fake() {
    kill -TERM "$fake_pid" 2>/dev/null || true
    wait "$fake_pid" 2>/dev/null || true
    rm -rf "$workdir"
}
trap stop_fake EXIT
for _ in $(seq 100); do # wait for the URL line, at most 10 s
    [ -s "$workdir/url" ] && break
    sleep 0.1
done
base=$(head -n 1 "$workdir/url") # http://127.0.0.1:PORT/v1
root=${base%/v1}                 # the control plane lives at $root/_fake

check() { # check DESCRIPTION COMMAND...: run the command, report ok or stop the suite
    local what=$1
    shift
    if "$@" >/dev/null; then echo "ok - $what"; else echo "not ok - $what" && exit 1; fi
}
has() { grep -q -- "$2" <<<"$1"; } # has TEXT PATTERN
count() { grep -o -- "$2" <<<"$1" | wc -l | tr -d ' '; }

chat='{"model": "fake-small", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}'
post() { # post [curl options...]: one chat completion; prints the status code
    curl --silent --max-time 5 -o /dev/null -w '%{http_code}' "$@" "$base/chat/completions" \
        -H 'content-type: application/json' -d "$chat"
}

echo "# the journal"
check "a fresh fake has an empty journal" has "$(curl -s "$root/_fake/journal")" '"count":0'
check "a 503 from the header" test "$(post -H 'x-fake-behaviour: status:code=503')" = 503
check "then a 200" test "$(post)" = 200
journal=$(curl -s "$root/_fake/journal")
check "the journal holds both requests" has "$journal" '"count":2'
check "in order, with their statuses" has "$journal" '"status":503.*"status":200'
check "and the usage sent with the second" has "$journal" '"usage":{"prompt_tokens"'
check "?since=1 skips the first" test "$(count "$(curl -s "$root/_fake/journal?since=1")" '"index":')" = 1
check "reset empties it" has "$(curl -s -X POST "$root/_fake/reset")" '"reset":true'
check "  (it is empty)" has "$(curl -s "$root/_fake/journal")" '"count":0'
check "the config, its key hidden" has "$(curl -s "$root/_fake/config")" '"seed":7'
check "an unknown control path is a 404" \
    test "$(curl -s -o /dev/null -w '%{http_code}' "$root/_fake/nothing")" = 404

echo "# the verdict on a bad client"
curl -s -X POST "$root/_fake/reset" >/dev/null
for _ in $(seq 12); do # a tight retry loop against 503s
    post -H 'x-fake-behaviour: status:code=503' >/dev/null
done
post -H 'x-fake-behaviour: rate_limit:dialect=retry-after-ms,seconds=5' >/dev/null
post >/dev/null # Retry-After ignored: the same body at once
post -H 'x-fake-behaviour: status:code=400' >/dev/null
post >/dev/null # a 400 sent again, unchanged
status=0
waterfall-fakes verdict "$base" >"$workdir/report" || status=$?
check "waterfall-fakes verdict exits 1" test "$status" = 1
grep -E '^  (pass|FAIL|----)  (retry_after|storm|no_retry_4xx)' "$workdir/report" | cut -c1-21
check "GET /_fake/verdict says the same" has "$(curl -s "$root/_fake/verdict")" '"passed":false'

echo "# the verdict on a good client"
curl -s -X POST "$root/_fake/reset" >/dev/null
code=$(post -H 'x-fake-behaviour: status:code=503')
sleep 0.1 # backoff after a failure with no hint
code=$(post -H 'x-fake-behaviour: status:code=503')
sleep 0.25 # longer the second time
code=$(post -H 'x-fake-behaviour: rate_limit:dialect=retry-after-ms,seconds=0.3' -D "$workdir/h")
wait_ms=$(tr -d '\r' <"$workdir/h" | grep -i '^retry-after-ms:' | cut -d' ' -f2)
sleep "$(printf '0.%03d' $((wait_ms + 20)))" # the hint, and a little more
code=$(post)
check "the last attempt succeeds" test "$code" = 200
waterfall-fakes verdict "$base" | grep -E '^conduct verdict|^  (pass|FAIL|----)  ' | cut -c1-21
