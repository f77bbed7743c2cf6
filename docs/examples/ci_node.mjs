// The same suite in Node (20+) with fetch: start a fake, drive its control plane, judge a client.
// Run: node ci_node.mjs (waterfall-fakes on the PATH). Exits 1 on the first failed check.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";

const fake = spawn("waterfall-fakes", ["serve", "--port", "0", "--seed", "7"], {
  stdio: ["ignore", "pipe", "inherit"],
});
try {
  const [line] = await Promise.race([
    once(createInterface({ input: fake.stdout }), "line"), // the first line: the base URL
    sleep(10_000).then(() => { throw new Error("no URL within 10 s"); }),
  ]);
  await suite(line, line.replace(/\/v1$/, ""));
} finally {
  fake.kill("SIGTERM"); // a graceful stop
  await once(fake, "exit");
}

async function suite(base, root) {
  const control = async (path, method = "GET", body = undefined) => {
    const init = { method, headers: { "content-type": "application/json" } };
    if (body !== undefined) init.body = JSON.stringify(body);
    return (await fetch(`${root}/_fake${path}`, init)).json();
  };
  const chat = { model: "fake-small", messages: [{ role: "user", content: "Hi" }], max_tokens: 2 };
  const post = async (behaviour, text) => {
    const headers = { "content-type": "application/json" };
    if (behaviour) headers["x-fake-behaviour"] = behaviour;
    const body = text ? { ...chat, messages: [{ role: "user", content: text }] } : chat;
    const answer = await fetch(`${base}/chat/completions`, {
      method: "POST", headers, body: JSON.stringify(body),
    });
    await answer.arrayBuffer();
    return answer;
  };
  const statuses = async (n, text) => {
    const out = [];
    for (let i = 0; i < n; i++) out.push((await post(undefined, text)).status);
    return out;
  };
  const ok = (what) => console.log(`ok - ${what}`);

  console.log("# the journal");
  assert.equal((await post("status:code=503")).status, 503);
  assert.equal((await post()).status, 200);
  let journal = await control("/journal");
  assert.equal(journal.version, 1);
  assert.deepEqual(journal.entries.map((e) => e.status), [503, 200]);
  assert.deepEqual(JSON.parse(journal.entries[1].body), chat);
  assert.equal(journal.entries[1].usage.completion_tokens, 2);
  assert.equal(journal.entries[0].behaviours_text, "status:code=503");
  assert.deepEqual(journal.entries[0].answered_by, ["header"]);
  ok("the journal holds what was sent and what was answered");
  assert.deepEqual(await control("/reset", "POST"), { version: 1, reset: true });
  assert.equal((await control("/journal")).count, 0);
  ok("reset empties it");
  assert.equal((await control("/config")).config.seed, 7);
  ok("the config");

  console.log("# queued faults and rules");
  await control("/reset", "POST");
  await control("/queue", "POST", { behaviours: "status:code=503", count: 2, model: "fake-*" });
  assert.deepEqual(await statuses(3), [503, 503, 200]);
  assert.deepEqual((await control("/queue")).rules, []);
  ok("a fault queued for the next 2 matching requests, and for those only");
  await control("/rules", "POST", { name: "boom", messages: "(?i)boom", behaviours: "status:code=500" });
  assert.deepEqual([...await statuses(1, "BOOM"), ...await statuses(1, "hello")], [500, 200]);
  journal = await control("/journal?since=3");
  assert.deepEqual(journal.entries.map((e) => e.answered_by), [["rule:boom"], []]);
  assert.deepEqual(await control("/rules/boom", "DELETE"), { version: 1, removed: "boom" });
  ok("a rule that matches the messages, named in the journal");
  await control("/rules", "POST", { name: "chaos", p: 0.5, behaviours: "status:code=503" });
  console.log(`  chaos at seed 7: ${(await statuses(10, "hi")).join(" ")}`);
  journal = await control("/journal?since=5");
  assert.ok(journal.entries.every((e) => e.draws.length === 1 && e.draws[0].p === 0.5));
  await control("/rules", "DELETE");

  console.log("# the verdict on a bad client");
  await control("/reset", "POST");
  for (let i = 0; i < 12; i++) await post("status:code=503"); // a tight retry loop
  await post("rate_limit:dialect=retry-after-ms,seconds=5");
  await post(); // Retry-After ignored
  await post("status:code=400");
  await post(); // a 400 sent again, unchanged
  let verdict = await control("/verdict");
  assert.equal(verdict.passed, false);
  for (const check of verdict.checks.filter((c) => c.name !== "backoff" && c.name !== "stop")) {
    console.log(`  ${check.status.padEnd(10)} ${check.name}`);
  }

  console.log("# the verdict on a good client");
  await control("/reset", "POST");
  await post("status:code=503");
  await sleep(100); // backoff after a failure with no hint
  await post("status:code=503");
  await sleep(250); // longer the second time
  const limited = await post("rate_limit:dialect=retry-after-ms,seconds=0.3");
  await sleep(Number(limited.headers.get("retry-after-ms")) + 20); // the hint, and a little more
  assert.equal((await post()).status, 200);
  verdict = await control("/verdict");
  assert.equal(verdict.passed, true, JSON.stringify(verdict.checks));
  ok("the verdict passes");
}
