// Amber REST client. ESM, no dependencies: only fetch (Node >= 20, Deno, Bun, browsers).
// Types: src/index.d.ts, with the request/response shapes generated from docs/openapi.json.

export class AmberError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "AmberError";
    this.status = status;
    this.code = code;
  }
}

const enc = encodeURIComponent;

export class AmberClient {
  /** @param {{baseUrl: string, apiKey: string, fetch?: typeof fetch, retries?: number}} options */
  constructor({ baseUrl, apiKey, fetch: fetchImpl = globalThis.fetch, retries = 2 }) {
    if (!baseUrl || !apiKey) throw new TypeError("baseUrl and apiKey are required");
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.apiKey = apiKey;
    this.fetch = fetchImpl;
    this.retries = retries;
  }

  async request(method, path, { query, body, headers = {}, raw = false, retry = false } = {}) {
    const url = new URL(this.baseUrl + path);
    for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined && v !== null) url.searchParams.set(k, String(v));
    const init = { method, headers: { Authorization: `Bearer ${this.apiKey}`, ...headers } };
    if (body !== undefined) {
      if (typeof body === "string") init.body = body;
      else { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
    }
    // Only requests that are safe to repeat are retried: reads, and appends that carry an Idempotency-Key.
    for (let attempt = 0; ; attempt++) {
      let res;
      try {
        res = await this.fetch(url, init);
      } catch (err) {
        if (retry && attempt < this.retries) { await sleep(100 * 2 ** attempt); continue; }
        throw err;
      }
      if (res.status === 503 && retry && attempt < this.retries) { await sleep(100 * 2 ** attempt); continue; }
      if (!res.ok) {
        let err = { code: "http_error", message: res.statusText };
        try { err = (await res.json()).error ?? err; } catch { /* not JSON */ }
        throw new AmberError(res.status, err.code, err.message);
      }
      if (res.status === 204) return undefined;
      return raw ? res : res.json();
    }
  }

  /** A conversation addressed by a stable user and thread id (never a per-request random id). */
  session(user, thread) { return new AmberSession(this, user, thread); }

  sessions({ user, limit, offset } = {}) { return this.request("GET", "/v1/sessions", { query: { user, limit, offset }, retry: true }); }
  users({ limit, offset } = {}) { return this.request("GET", "/v1/users", { query: { limit, offset }, retry: true }); }
  facts(user, { attribute, includeSuperseded, limit } = {}) {
    return this.request("GET", `/v1/users/${enc(user)}/facts`, { query: { attribute, include_superseded: includeSuperseded, limit }, retry: true }).then((r) => r.items);
  }
  recordFact(user, fact) { return this.request("POST", `/v1/users/${enc(user)}/facts`, { body: fact }); }
  fact(user, id) { return this.request("GET", `/v1/users/${enc(user)}/facts/${enc(id)}`, { retry: true }); }
  deleteFact(user, id) { return this.request("DELETE", `/v1/users/${enc(user)}/facts/${enc(id)}`); }
  recall(user, query, { limit, kinds } = {}) {
    return this.request("POST", `/v1/users/${enc(user)}/recall`, { body: { query, limit, kinds }, retry: true }).then((r) => r.items);
  }
  forgetUser(user) { return this.request("DELETE", `/v1/users/${enc(user)}`); }
  async exportJsonl({ user, thread } = {}) {
    const res = await this.request("GET", "/v1/export", { query: { user, thread }, raw: true, retry: true });
    return res.text();
  }
  importJsonl(text) { return this.request("POST", "/v1/import", { body: text, headers: { "Content-Type": "application/x-ndjson" } }); }
  audit({ user, operation, afterId, limit } = {}) {
    return this.request("GET", "/v1/audit", { query: { user, operation, after_id: afterId, limit }, retry: true });
  }
}

export class AmberSession {
  constructor(client, user, thread) {
    this.client = client;
    this.user = user;
    this.thread = thread;
    this.path = `/v1/users/${enc(user)}/sessions/${enc(thread)}`;
  }

  /** Append messages. One Idempotency-Key per call (yours, or a fresh UUID) is reused on retries, so a
   * retried request stores each message once. */
  append(messages, { idempotencyKey = crypto.randomUUID() } = {}) {
    const list = Array.isArray(messages) ? messages : [messages];
    return this.client.request("POST", this.path + "/messages", {
      body: { messages: list }, headers: { "Idempotency-Key": idempotencyKey }, retry: true,
    });
  }

  /** The most recent messages, oldest first; an unknown session is an empty window. */
  async window({ last, maxTokens } = {}) {
    try {
      const r = await this.client.request("GET", this.path + "/window", { query: { last, max_tokens: maxTokens }, retry: true });
      return r.items;
    } catch (err) {
      if (err instanceof AmberError && err.status === 404) return [];
      throw err;
    }
  }

  /** Every message after afterSeq, following pagination. */
  async since(afterSeq = 0, { pageSize = 500 } = {}) {
    const out = [];
    let after = afterSeq;
    for (;;) {
      let page;
      try {
        page = await this.client.request("GET", this.path + "/messages", { query: { after_seq: after, limit: pageSize }, retry: true });
      } catch (err) {
        if (err instanceof AmberError && err.status === 404) return out;
        throw err;
      }
      out.push(...page.items);
      if (page.next_after_seq === null) return out;
      after = page.next_after_seq;
    }
  }

  info() { return this.client.request("GET", this.path, { retry: true }); }
  forget() { return this.client.request("DELETE", this.path); }

  /** Replace one message's content (same id and seq); the server records corrected_at and the reason. */
  correctMessage(id, content, { reason } = {}) {
    return this.client.request("PATCH", `${this.path}/messages/${enc(id)}`, { body: { content, reason } });
  }

  /** Delete one message; the others keep their seqs. A 404 AmberError if the session has no such message. */
  deleteMessage(id) { return this.client.request("DELETE", `${this.path}/messages/${enc(id)}`); }

  /** Read a state blob: {name, version, data, updated_at, etag}, or null. */
  async getState(name) {
    try {
      const res = await this.client.request("GET", `${this.path}/state/${enc(name)}`, { raw: true, retry: true });
      return { ...(await res.json()), etag: res.headers.get("ETag") };
    } catch (err) {
      if (err instanceof AmberError && err.status === 404) return null;
      throw err;
    }
  }

  /** Write a state blob. ifMatch: an ETag from getState (compare-and-set); ifNoneMatch: "*" to create only.
   * A lost race throws AmberError with status 412 and code "version_conflict". */
  async putState(name, data, { ifMatch, ifNoneMatch } = {}) {
    const headers = {};
    if (ifMatch !== undefined) headers["If-Match"] = ifMatch;
    if (ifNoneMatch !== undefined) headers["If-None-Match"] = ifNoneMatch;
    const res = await this.client.request("PUT", `${this.path}/state/${enc(name)}`, { body: { data }, headers, raw: true });
    return { ...(await res.json()), etag: res.headers.get("ETag") };
  }
}

function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }
