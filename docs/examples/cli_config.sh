#!/usr/bin/env bash
# The same fake from a TOML file, a JSON file and command-line flags: four requests each.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

run_fake() { # run_fake LABEL MODEL SERVE-OPTIONS...: start a fake, send 4 requests, stop it
    local label=$1 model=$2 workdir pid url codes=()
    shift 2
    workdir=$(mktemp -d)
    waterfall-fakes serve --port 0 "$@" >"$workdir/url" &
    pid=$!
    for _ in $(seq 100); do
        [ -s "$workdir/url" ] && break
        sleep 0.1
    done
    url=$(head -n 1 "$workdir/url")
    for _ in 1 2 3 4; do
        codes+=("$(curl --silent --max-time 5 -o /dev/null -w '%{http_code}' \
            -H 'authorization: Bearer sk-fake' -H 'content-type: application/json' \
            -d '{"model": "'"$model"'", "messages": [{"role": "user", "content": "Hi"}]}' \
            "$url/chat/completions")")
    done
    echo "$label: ${codes[*]}"
    kill -TERM "$pid"
    wait "$pid" # exits 0 after SIGTERM; with set -e a failure would stop the script
    rm -rf "$workdir"
}

run_fake "fake.toml" llama-fake --config "$here/fake.toml"
run_fake "fake.json" llama-fake --config "$here/fake.json"
# Flags alone (default models, no key), and a flag overriding the file's script.
run_fake "flags" fake-small --script 'rate_limit' --script 'status:code=503' --script ok --cycle
run_fake "file + flag" llama-fake --config "$here/fake.toml" --script 'status:code=500'
