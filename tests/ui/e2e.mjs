// End-to-end test of the memory inspector in Debian's headless Chromium, driven by playwright-core
// (no browser download: executablePath is the system chromium). Run by tests/test_ui_e2e.py, which
// starts `amber serve`, seeds two tenants and passes everything in the environment:
//   AMBER_UI_BASE, AMBER_UI_KEY_A, AMBER_UI_KEY_B, AMBER_UI_ADMIN, AMBER_UI_WRITER (JSON argv of a
//   command that appends one message from another process; the text is its last argument),
//   AMBER_UI_ARTIFACTS (screenshot folder), AMBER_UI_CHROMIUM (default /usr/bin/chromium).
// Prints one JSON line {"checks": [{name, ok, detail}], "screenshots": [...]} and exits 0 unless it crashed.
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const env = process.env;
const BASE = env.AMBER_UI_BASE;
const ART = env.AMBER_UI_ARTIFACTS;
const WRITER = JSON.parse(env.AMBER_UI_WRITER);
const SECRET_B = "TENANT-B-SECRET";
const checks = [];
const shots = [];
const T = 20_000;

function check(name, ok, detail = "") {
  checks.push({ name, ok: Boolean(ok), detail: String(detail).slice(0, 500) });
}

async function attempt(name, fn) {
  try { await fn(); } catch (e) { check(name, false, `${e.name}: ${e.message}`.split("\n")[0]); }
}

async function shot(page, name) {
  const path = join(ART, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  shots.push(path);
}

function runWriter(text) {
  return new Promise((resolve, reject) => {
    const p = spawn(WRITER[0], [...WRITER.slice(1), text], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    p.stdout.on("data", (d) => { out += d; });
    p.stderr.on("data", (d) => { out += d; });
    p.on("exit", (code) => (code === 0 ? resolve({ pid: p.pid, out }) : reject(new Error(`writer exited ${code}: ${out}`))));
  });
}

mkdirSync(ART, { recursive: true });
const profile = mkdtempSync(join(tmpdir(), "amber-ui-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: env.AMBER_UI_CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  viewport: { width: 1280, height: 860 },
  locale: "en-GB",
  timezoneId: "UTC",
});

const outside = [];
const pageErrors = [];
context.on("request", (req) => { if (!req.url().startsWith(BASE)) outside.push(req.url()); });

async function newPage() {
  const page = await context.newPage();
  page.setDefaultTimeout(T);
  page.on("pageerror", (e) => pageErrors.push(e.message));
  page.on("console", (m) => {
    // API refusals (404, 401) are expected in the isolation checks and show up as resource errors.
    if (m.type() === "error" && !/Failed to load resource/.test(m.text())) pageErrors.push(m.text());
  });
  return page;
}

async function signIn(page, key) {
  await page.goto(`${BASE}/ui`);
  await page.getByLabel("API key").fill(key);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.locator("#view-h").waitFor();
}

const visibleText = (page) => page.evaluate(() => document.body.innerText);

try {
  // -- tenant A: sign in, sessions, flagged keys --------------------------------------------------------
  const a = await newPage();
  const seenByA = [];
  await attempt("login", async () => {
    await a.goto(`${BASE}/ui`);
    await a.getByLabel("API key").waitFor();
    const signOutShown = await a.getByRole("button", { name: "Sign out" }).isVisible();
    await shot(a, "01-login");
    await a.getByLabel("API key").fill(`amb_${"0".repeat(16)}_${"x".repeat(43)}`);
    await a.getByRole("button", { name: "Sign in" }).click();
    const refused = await a.locator("#login-error").filter({ hasText: "not valid" }).waitFor().then(() => true, () => false);
    check("login_refuses_a_wrong_key", refused && !signOutShown, `refused=${refused} sign-out shown before sign-in=${signOutShown}`);
    await a.getByLabel("API key").fill(env.AMBER_UI_KEY_A);
    await a.getByRole("button", { name: "Sign in" }).click();
    await a.getByRole("heading", { name: "Sessions", level: 1 }).waitFor();
    const url = a.url();
    const stored = await a.evaluate(() => sessionStorage.getItem("amber.inspector.key"));
    check("login", url.endsWith("#/sessions") && !url.includes(env.AMBER_UI_KEY_A) && stored === env.AMBER_UI_KEY_A,
      `url=${url} key in sessionStorage=${stored === env.AMBER_UI_KEY_A}`);
  });

  await attempt("sessions", async () => {
    await a.locator("table tbody tr").first().waitFor();
    const rows = await a.locator("table tbody tr").count();
    const claim = a.locator("tr", { has: a.getByRole("link", { name: "claim-7788" }) });
    const claimCount = (await claim.locator("td").nth(2).innerText()).trim();
    const flagged = await a.locator("tr.flagged").count();
    const callout = await a.locator(".callout").innerText();
    check("sessions", rows >= 8 && claimCount === "4" && flagged >= 5 && callout.includes("anon"),
      `rows=${rows} claim-7788 messages=${claimCount} flagged=${flagged}`);
    seenByA.push(await visibleText(a));
    await shot(a, "02-sessions");
  });

  // -- a transcript that follows writes from another process ---------------------------------------------
  await attempt("live_follow", async () => {
    await a.getByRole("link", { name: "claim-7788" }).click();
    await a.getByRole("heading", { name: "Session u-42 / claim-7788" }).waitFor();
    await a.locator("#transcript li").nth(3).waitFor();
    await a.evaluate(() => { window.__sameDocument = true; });
    const text = `Live note from another process ${Date.now()}`;
    const w = await runWriter(text);
    await a.locator("#transcript li", { hasText: text }).waitFor({ timeout: T });
    const same = await a.evaluate(() => window.__sameDocument === true);
    const count = (await a.locator("#msg-count").innerText()).trim();
    check("live_follow", same && count === "5", `writer pid=${w.pid} same document=${same} count=${count}`);
    seenByA.push(await visibleText(a));
    await shot(a, "03-transcript-live");
  });

  // -- facts: superseded history on a timeline, provenance to the source message -------------------------
  await attempt("fact_provenance", async () => {
    await a.goto(`${BASE}/ui#/facts/u-42`);
    await a.getByRole("heading", { name: "Facts of u-42" }).waitFor();
    await a.locator("table tbody tr").first().waitFor();
    const superseded = await a.locator("tr.superseded").count();
    const oldSegs = await a.locator(".tl-seg.old").count();
    const learn = await a.locator("#learn-counts").innerText();
    check("facts_timeline", superseded >= 1 && oldSegs >= 1 && /pending/i.test(learn),
      `superseded rows=${superseded} hatched segments=${oldSegs}`);
    seenByA.push(await visibleText(a));
    await shot(a, "04-facts");
    const current = a.locator("tr:not(.superseded)", { hasText: "P-9999" }).first();
    await current.locator("a.source-link").first().click();
    await a.locator("li.focus").waitFor();
    const focused = await a.locator("li.focus").innerText();
    const isActive = await a.evaluate(() => document.activeElement?.classList.contains("focus"));
    check("fact_provenance", focused.includes("P-9999") && isActive && a.url().includes("#/session/u-42/claim-7788?focus="),
      `url=${a.url()} source=${focused.slice(0, 120)}`);
    await shot(a, "05-fact-source");
  });

  // -- recall playground ---------------------------------------------------------------------------------
  await attempt("recall_block", async () => {
    await a.goto(`${BASE}/ui#/recall?user=u-42`);
    await a.getByLabel("Query (what the user just said)").fill("what is my policy number");
    await a.getByRole("button", { name: "Recall" }).click();
    await a.locator("#memory-block").waitFor();
    const block = await a.locator("#memory-block").innerText();
    const heading = await a.locator("#block-h").innerText();
    const headers = await a.locator("table.hits thead").innerText();
    const vectorScores = await a.locator("table.hits tbody tr td:nth-child(6)").allInnerTexts();
    const withVector = vectorScores.filter((s) => /\d\.\d{3}/.test(s)).length;
    check("recall_block", block.startsWith("<amber-memory>") && block.includes("P-9999") && /\d+ tokens \(budget 600\)/.test(heading)
      && /lexical/i.test(headers) && /vector/i.test(headers) && /fused/i.test(headers) && withVector >= 1,
      `heading=${heading} vector-scored hits=${withVector}`);
    seenByA.push(await visibleText(a));
    await shot(a, "06-recall");
  });

  await attempt("audit_tenant", async () => {
    await a.goto(`${BASE}/ui#/audit`);
    await a.locator("table.audit tbody tr").first().waitFor();
    const text = await a.locator("table.audit").innerText();
    check("audit_tenant", text.includes("message.append"), `rows=${await a.locator("table.audit tbody tr").count()}`);
    seenByA.push(await visibleText(a));
    await shot(a, "07-audit");
  });

  // -- tenant isolation: A's key shows nothing of B -------------------------------------------------------
  await attempt("tenant_isolation", async () => {
    await a.goto(`${BASE}/ui#/session/bob/vault`);
    await a.locator("[role=alert]", { hasText: "Not found" }).waitFor();
    seenByA.push(await visibleText(a));
    await shot(a, "08-isolation-session");
    await a.goto(`${BASE}/ui#/facts/bob`);
    await a.locator("[role=alert]", { hasText: "Not found" }).waitFor();
    seenByA.push(await visibleText(a));
    await a.goto(`${BASE}/ui#/recall?user=bob`);
    await a.getByLabel("Query (what the user just said)").fill("vault code");
    await a.getByRole("button", { name: "Recall" }).click();
    await a.locator("[role=alert]", { hasText: "No user bob" }).waitFor();
    seenByA.push(await visibleText(a));
    await a.getByLabel("As user").fill("u-42");
    await a.getByLabel("Query (what the user just said)").fill(`vault code ${SECRET_B}`);
    await a.getByRole("button", { name: "Recall" }).click();
    await a.locator("#block-h").waitFor();
    seenByA.push(await visibleText(a));
    await a.goto(`${BASE}/ui#/sessions`);
    await a.locator("table tbody tr").first().waitFor();
    seenByA.push(await visibleText(a));
    const all = seenByA.join("\n");
    // The query A typed holds the string, but inputs are not in innerText: only a hit or a listing would be.
    const leaked = all.includes(SECRET_B);
    const hits = await a.evaluate(async (k) => (await (await fetch("/v1/users", { headers: { Authorization: `Bearer ${k}` } })).json()).items, env.AMBER_UI_KEY_A);
    // A's own audit trail rightly records that A asked for a user "bob" in A's tenant (0 records):
    // that row names the request, not B's data, so audit rows are left out of the listing check.
    const shown = seenByA.filter((t) => !t.includes("No user bob") && !t.includes("Not found")).join("\n")
      .split("\n").filter((line) => !line.includes("apikey:")).join("\n");
    const bobAt = shown.search(/\bbob\b/);
    const bobListed = bobAt >= 0;
    const blockText = await a.locator("#memory-block").innerText().catch(() => "");
    check("tenant_isolation", !leaked && !bobListed && !hits.includes("bob") && !blockText.includes("7731"),
      `users via A=${JSON.stringify(hits)} bob listed=${bobListed}` +
      (bobListed ? ` in: ${JSON.stringify(shown.slice(Math.max(0, bobAt - 300), bobAt + 100))}` : ""));
  });

  // Positive control: B's own key does see B's data, so the absence above means something.
  await attempt("tenant_b_control", async () => {
    await a.evaluate(() => sessionStorage.clear());
    const pb = await newPage();
    await signIn(pb, env.AMBER_UI_KEY_B);
    await pb.getByRole("link", { name: "vault" }).click();
    await pb.locator("#transcript li").first().waitFor();
    const text = await pb.locator("#transcript").innerText();
    check("tenant_b_control", text.includes(SECRET_B), "B's key sees B's session");
    await shot(pb, "09-tenant-b");
    await pb.close();
  });

  // -- admin: tenants, audit, learning queue, doctor -----------------------------------------------------
  await attempt("admin", async () => {
    const ad = await newPage();
    await signIn(ad, env.AMBER_UI_ADMIN);
    await ad.getByRole("heading", { name: "Tenants", level: 1 }).waitFor();
    await ad.locator("table tbody tr").first().waitFor();
    const tenants = await ad.locator("table").innerText();
    await shot(ad, "10-admin-tenants");
    await ad.goto(`${BASE}/ui#/audit?tenant=amber-admin`);
    await ad.locator("table.audit tbody tr").first().waitFor();
    const audit = await ad.locator("table.audit").innerText();
    await ad.getByRole("button", { name: "Verify the hash chain of amber-admin" }).click();
    // Whatever the API answers is shown: a verdict, or why this store cannot verify (501).
    const chain = await ad.locator("#chain-result .callout").innerText();
    const chainShown = /^Chain (intact|broken)|^Not available for this store: .*audit chain/.test(chain);
    await shot(ad, "11-admin-audit");
    await ad.goto(`${BASE}/ui#/learning`);
    await ad.locator("table tbody tr").first().waitFor();
    await shot(ad, "12-admin-learning");
    await ad.goto(`${BASE}/ui#/doctor?tenant=acme`);
    await ad.locator("#doctor-verdict").waitFor({ timeout: 60_000 });
    const findings = await ad.locator(".findings").innerText();
    await shot(ad, "13-admin-doctor");
    check("admin", tenants.includes("acme") && tenants.includes("globex") && audit.includes("state.put")
      && chainShown && findings.includes("random_session_keys") && findings.includes("ephemeral_location"),
      `chain: ${chain.slice(0, 120)} findings: ${findings.replace(/\s+/g, " ").slice(0, 200)}`);
    await ad.close();
  });

  // -- keyboard only: sign in, reach a session by Tab, open it with Enter, go on to its facts ------------
  await attempt("keyboard", async () => {
    const kb = await newPage();
    await kb.evaluate(() => sessionStorage.clear()).catch(() => {});
    await kb.goto(`${BASE}/ui`);
    await kb.getByLabel("API key").waitFor();
    const startFocus = await kb.evaluate(() => document.activeElement?.id);
    await kb.keyboard.type(env.AMBER_UI_KEY_A);
    await kb.keyboard.press("Enter");
    await kb.getByRole("heading", { name: "Sessions", level: 1 }).waitFor();
    await kb.locator("table tbody tr").first().waitFor();
    const invisible = [];
    const tabTo = async (text, max = 80) => {
      for (let i = 0; i < max; i++) {
        await kb.keyboard.press("Tab");
        const f = await kb.evaluate(() => {
          const el = document.activeElement;
          const cs = getComputedStyle(el);
          return { text: (el.innerText || el.value || "").trim(), tag: el.tagName, outline: cs.outlineStyle !== "none" && parseFloat(cs.outlineWidth) > 0 };
        });
        if (!f.outline) invisible.push(`${f.tag}:${f.text.slice(0, 20)}`);
        if (f.text === text) return i + 1;
      }
      throw new Error(`Tab never reached ${text}`);
    };
    const presses = await tabTo("claim-7788");
    await shot(kb, "14-keyboard-focus");
    await kb.keyboard.press("Enter");
    await kb.getByRole("heading", { name: "Session u-42 / claim-7788" }).waitFor();
    // The view moves focus to its heading once loaded, so a keyboard user starts reading there.
    const headingFocused = await kb.waitForFunction(() => document.activeElement?.id === "view-h", null, { timeout: 5000 })
      .then(() => true, () => false);
    await tabTo("Facts of u-42");
    await kb.keyboard.press("Enter");
    await kb.getByRole("heading", { name: "Facts of u-42" }).waitFor();
    check("keyboard", startFocus === "api-key" && headingFocused && invisible.length === 0,
      `start focus=${startFocus} tabs to session=${presses} focus without outline=${invisible.join(",")}`);
    await shot(kb, "15-keyboard-facts");
    await kb.close();
  });

  check("no_outside_requests", outside.length === 0, outside.slice(0, 5).join(" "));
  check("no_page_errors", pageErrors.length === 0, pageErrors.slice(0, 5).join(" | "));
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}

console.log(JSON.stringify({ checks, screenshots: shots }));
