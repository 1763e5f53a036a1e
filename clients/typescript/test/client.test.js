// Runs the client against a live `amber serve` (started here on a free loopback port over a SQLite file).
// AMBER_BIN names the amber command (default: `amber` on PATH).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AmberClient, AmberError } from "../src/index.js";
import { generate } from "../scripts/generate-types.mjs";

const ADMIN = "admin-" + crypto.randomUUID();
let proc, base, dir, a, b;

const freePort = () => new Promise((resolve) => {
  const s = createServer().listen(0, "127.0.0.1", () => { const { port } = s.address(); s.close(() => resolve(port)); });
});

async function admin(method, path, body) {
  const res = await fetch(base + path, {
    method, headers: { Authorization: `Bearer ${ADMIN}`, "Content-Type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  assert.ok(res.ok, `${method} ${path}: ${res.status}`);
  return res.json();
}

async function keyFor(tenant) {
  await admin("POST", "/v1/admin/tenants", { tenant });
  return (await admin("POST", `/v1/admin/tenants/${tenant}/keys`, { label: "node-test" })).api_key;
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "amber-ts-"));
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  proc = spawn(process.env.AMBER_BIN ?? "amber", ["serve", "--port", String(port)], {
    env: { ...process.env, AMBER_STORE: `sqlite:///${join(dir, "amber.db")}`, AMBER_ADMIN_KEY: ADMIN },
    stdio: "ignore",
  });
  for (let i = 0; ; i++) {
    try { if ((await fetch(base + "/healthz")).ok) break; } catch { /* not up yet */ }
    if (i > 300) throw new Error("amber serve did not start");
    await new Promise((r) => setTimeout(r, 100));
  }
  a = new AmberClient({ baseUrl: base, apiKey: await keyFor("ts-a") });
  b = new AmberClient({ baseUrl: base, apiKey: await keyFor("ts-b") });
});

after(() => { proc?.kill(); rmSync(dir, { recursive: true, force: true }); });

test("the committed types are what the generator makes of docs/openapi.json", () => {
  const spec = JSON.parse(readFileSync(new URL("../../../docs/openapi.json", import.meta.url)));
  assert.equal(readFileSync(new URL("../src/api-types.d.ts", import.meta.url), "utf8"), generate(spec));
});

test("a conversation keyed by a stable id survives a new client (a new process)", async () => {
  const s = a.session("customer-42", "claim-7788");
  assert.deepEqual(await s.window(), []);
  await s.append({ role: "user", content: "my policy number is P-12345" });
  await s.append([{ role: "assistant", content: "Thanks, noted." }, { role: "user", content: "and my email is z@x.io" }]);
  const again = new AmberClient({ baseUrl: base, apiKey: a.apiKey }).session("customer-42", "claim-7788");
  const win = await again.window({ last: 10 });
  assert.deepEqual(win.map((m) => [m.seq, m.role, m.content]), [
    [1, "user", "my policy number is P-12345"], [2, "assistant", "Thanks, noted."], [3, "user", "and my email is z@x.io"]]);
  assert.deepEqual((await again.since(2)).map((m) => m.seq), [3]);
  assert.equal((await again.info()).message_count, 3);
});

test("a retried append with the same idempotency key stores one message", async () => {
  const s = a.session("customer-42", "retry");
  const first = await s.append({ role: "user", content: "once" }, { idempotencyKey: "turn-1" });
  const retry = await s.append({ role: "user", content: "once" }, { idempotencyKey: "turn-1" });
  assert.equal(first.replayed, false);
  assert.equal(retry.replayed, true);
  assert.equal(retry.messages[0].id, first.messages[0].id);
  assert.equal((await s.since()).length, 1);
});

test("state compare-and-set with ETags", async () => {
  const s = a.session("customer-42", "claim-7788");
  assert.equal(await s.getState("team"), null);
  const v1 = await s.putState("team", { turn: 1 }, { ifNoneMatch: "*" });
  assert.equal(v1.version, 1);
  const v2 = await s.putState("team", { turn: 2 }, { ifMatch: v1.etag });
  assert.equal(v2.version, 2);
  await assert.rejects(s.putState("team", { turn: 3 }, { ifMatch: v1.etag }),
    (e) => e instanceof AmberError && e.status === 412 && e.code === "version_conflict");
  assert.deepEqual((await s.getState("team")).data, { turn: 2 });
});

test("facts, recall, export, forget and import", async () => {
  const f = await a.recordFact("customer-42", { attribute: "policy_number", value: "P-12345", text: "policy number P-12345" });
  assert.equal((await a.fact("customer-42", f.id)).value, "P-12345");
  const hits = await a.recall("customer-42", "policy number");
  assert.ok(hits.length > 0 && hits.every((h) => h.score >= 0 && h.score <= 1));
  const dump = await a.exportJsonl({ user: "customer-42" });
  const receipt = await a.forgetUser("customer-42");
  assert.equal(receipt.operation, "user.delete");
  assert.deepEqual(await a.session("customer-42", "claim-7788").window(), []);
  const report = await a.importJsonl(dump);
  assert.equal(report.counts.messages, 4);
  assert.equal((await a.session("customer-42", "claim-7788").window()).length, 3);
  assert.equal((await a.facts("customer-42")).length, 1);
  assert.ok((await a.audit({ user: "customer-42" })).items.some((e) => e.operation === "user.delete"));
});

test("one message is corrected or deleted singly; another tenant gets 404", async () => {
  const s = a.session("customer-9", "edits");
  const { messages } = await s.append([{ role: "user", content: "policy P-1" }, { role: "user", content: "oops" }]);
  const fixed = await s.correctMessage(messages[0].id, "policy P-2", { reason: "typo" });
  assert.equal(fixed.id, messages[0].id);
  assert.equal(fixed.seq, 1);
  assert.equal(fixed.metadata.correction_reason, "typo");
  await assert.rejects(b.session("customer-9", "edits").deleteMessage(messages[1].id), (e) => e.status === 404);
  await assert.rejects(b.session("customer-9", "edits").correctMessage(messages[1].id, "x"), (e) => e.status === 404);
  assert.equal(await s.deleteMessage(messages[1].id), undefined);
  await assert.rejects(s.deleteMessage(messages[1].id), (e) => e instanceof AmberError && e.code === "not_found");
  assert.deepEqual((await s.since()).map((m) => [m.seq, m.content]), [[1, "policy P-2"]]);
});

test("another tenant's key sees nothing and its writes land in its own tenant", async () => {
  const s = b.session("customer-42", "claim-7788");
  assert.deepEqual(await s.window(), []);
  await assert.rejects(b.facts("customer-42"), (e) => e.status === 404);
  await s.append({ role: "user", content: "tenant b" });
  assert.equal((await s.window()).length, 1);
  assert.equal((await a.session("customer-42", "claim-7788").window()).length, 3);
});

test("a wrong key is refused with the error envelope", async () => {
  const bad = new AmberClient({ baseUrl: base, apiKey: "amb_0000000000000000_" + "A".repeat(43) });
  await assert.rejects(bad.sessions(), (e) => e instanceof AmberError && e.status === 401 && e.code === "unauthorized");
});
