import httpx

from waterfall_fakes import FakeProvider, FakeServer

fake = FakeProvider(script=["rate_limit:seconds=2", "ok"])  # the first request gets a 429

with FakeServer(fake) as server:  # a real HTTP server on a free 127.0.0.1 port
    print("serving on", server.url)  # http://127.0.0.1:PORT/v1 -- give this to any client
    request = {"model": "fake-small", "messages": [{"role": "user", "content": "Hi"}]}
    first = httpx.post(server.url + "/chat/completions", json=request)
    second = httpx.post(server.url + "/chat/completions", json=request)

assert (first.status_code, first.headers["retry-after"]) == (429, "2")
assert second.status_code == 200
assert [r.status for r in fake.requests] == [429, 200]  # the fake records what it received
