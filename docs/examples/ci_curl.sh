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
ask() { # ask TEXT: one chat completion saying TEXT; prints the status code
    curl --silent --max-time 5 -o /dev/null -w '%{http_code}' "$base/chat/completions" \
        -H 'content-type: application/json' \
        -d '{"model": "fake-small", "messages": [{"role": "user", "content": "'"$1"'"}]}'
}
control() { # control METHOD PATH [JSON]: one control plane request; prints the answer
    curl --silent --max-time 5 -X "$1" "$root/_fake$2" -H 'content-type: application/json' \
        ${3:+-d "$3"}
}

echo "# the journal"
check "a fresh fake has an empty journal" has "$(curl -s "$root/_fake/journal")" '"count":0'
check "a 503 from the header" test "$(post -H 'x-fake-behaviour: status:code=503')" = 503
check "then a 200" test "$(post)" = 200
journal=$(curl -s "$root/_fake/journal")
check "the journal holds both requests" has "$journal" '"count":2'
check "in order, with their statuses" has "$journal" '"status":503.*"status":200'
check "with what answered the first" has "$journal" '"answered_by":\["header"\]'
check "and the usage sent with the second" has "$journal" '"usage":{"prompt_tokens"'
check "?since=1 skips the first" test "$(count "$(curl -s "$root/_fake/journal?since=1")" '"index":')" = 1
check "reset empties it" has "$(curl -s -X POST "$root/_fake/reset")" '"reset":true'
check "  (it is empty)" has "$(curl -s "$root/_fake/journal")" '"count":0'
check "the config, its key hidden" has "$(curl -s "$root/_fake/config")" '"seed":7'
check "an unknown control path is a 404" \
    test "$(curl -s -o /dev/null -w '%{http_code}' "$root/_fake/nothing")" = 404

echo "# a new script, without a restart"
script='{"script": ["rate_limit", "status:code=502"], "cycle": true}'
check "a 429 then a 502, in a cycle" has "$(control PUT /script "$script")" '"cycle":true'
answers=$(for _ in 1 2 3; do printf '%s ' "$(post)"; done)
check "  played from its first step" test "$answers" = "429 502 429 "
check "  and back to no script" has "$(control PUT /script '{"script": []}')" '"script":\[\]'

echo "# queued faults"
control POST /reset >/dev/null
queued=$(control POST /queue '{"behaviours": "status:code=503", "count": 2, "model": "fake-*"}')
check "a 503 queued for the next 2 requests for fake-*" has "$queued" '"times":2'
check "  the 1st gets it" test "$(post)" = 503
check "  the 2nd gets it" test "$(post)" = 503
check "  the 3rd is answered normally" test "$(post)" = 200
check "  and the queue is empty" has "$(control GET /queue)" '"rules":\[\]'

echo "# rules"
rule='{"name": "boom", "messages": "(?i)boom", "behaviours": "status:code=500"}'
check "a rule for the requests that say boom" has "$(control POST /rules "$rule")" '"name":"boom"'
check "  a request that says BOOM gets a 500" test "$(ask 'BOOM')" = 500
check "  one that does not, a 200" test "$(ask 'hello')" = 200
check "  the journal names the rule" has "$(control GET '/journal?since=3')" \
    '"answered_by":\["rule:boom"\]'
check "  it is listed with its counts" has "$(control GET /rules)" '"matched":1,"applied":1'
check "  and removed by name" has "$(control DELETE /rules/boom)" '"removed":"boom"'

echo "# chaos: each request fails with chance 0.5, drawn from the seed"
chaos='{"name": "chaos", "p": 0.5, "behaviours": "status:code=503"}'
control POST /rules "$chaos" >/dev/null
first=$(for _ in $(seq 10); do printf '%s ' "$(ask "hi")"; done)
echo "$first"
check "the journal records each draw" test "$(count "$(control GET '/journal?since=5')" '"p":0.5')" = 10
control POST /reset >/dev/null # the rules added over HTTP go too
control POST /rules "$chaos" >/dev/null
again=$(for _ in $(seq 10); do printf '%s ' "$(ask "hi")"; done)
check "the same seed and requests give the same answers" test "$first" = "$again"
control DELETE /rules >/dev/null

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
