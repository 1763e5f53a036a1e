"""The Lua scripts behind :class:`amber.store.redis.RedisCachedStore`.

Each script touches the keys of ONE user only (a session hash and the user hash share the hash tag
``{tenant/user}``), so every step of the protocol is atomic on the Redis server. The protocol and
why it is safe are written down in ``docs/storage-redis.md``; the short version:

* ``g`` (per session) and ``e`` (per user) are random nonces, replaced on every write and every
  deletion. A cached entry carries the tag ``run_id:e:g`` current when it was filled and is valid
  only while that tag is still current. Nonces never repeat, so a flush, an eviction or an expiry
  can make an entry disappear but never make an old entry look valid again. ``run_id`` is the
  Redis server's boot id: an entry restored from an older snapshot after a restart never matches.
* ``p`` holds the tokens (``token=deadline_ms,``) of writes in flight. While one is live nobody
  fills the cache, so a writer that crashes between its durable commit and its END cannot leave a
  pre-commit window behind that looks fresh.
"""

from __future__ import annotations

_PRELUDE = r"""
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function pending(key, now)
  local s = redis.call('HGET', key, 'p')
  local live, n = {}, 0
  if s then
    for tok, dl in string.gmatch(s, '(%w+)=(%d+),') do
      if tonumber(dl) > now then live[tok] = dl; n = n + 1 end
    end
  end
  return live, n
end

local function save_pending(key, live)
  local parts = {}
  for tok, dl in pairs(live) do parts[#parts + 1] = tok .. '=' .. dl .. ',' end
  if #parts == 0 then redis.call('HDEL', key, 'p') else redis.call('HSET', key, 'p', table.concat(parts)) end
end

-- The current nonce of a hash; created if absent, so "absent" is never observed twice.
local function nonce_of(key, field, fresh, ttl)
  local v = redis.call('HGET', key, field)
  if not v then
    redis.call('HSET', key, field, fresh)
    redis.call('PEXPIRE', key, ttl)
    v = fresh
  end
  return v
end

local function window_meta(key)
  local w = redis.call('HGET', key, 'w')
  if not w then return nil end
  local first, last, tag = string.match(w, '^(%d+):(%d+):(.*)$')
  return tonumber(first), tonumber(last), tag, w
end

local function hdel_range(key, a, b)
  local batch = {}
  for s = a, b do
    batch[#batch + 1] = 'm:' .. s
    if #batch >= 500 then redis.call('HDEL', key, unpack(batch)); batch = {} end
  end
  if #batch > 0 then redis.call('HDEL', key, unpack(batch)) end
end

local function drop_window(key)
  local first, last = window_meta(key)
  if first then hdel_range(key, first, last) end
  redis.call('HDEL', key, 'w')
end

local function touch(h, u, ttl, thread)
  redis.call('PEXPIRE', h, ttl)
  redis.call('HSET', u, 't:' .. thread, '1')
  redis.call('PEXPIRE', u, ttl)
end

-- Empty a session hash but keep the tokens of writes still in flight; install a fresh nonce.
local function drop_tokens(live, list)  -- list: comma-separated tokens
  for tok in string.gmatch(list, '(%w+)') do live[tok] = nil end
end

local function wipe_session(h, fresh, drop, now, ttl)
  local live = pending(h, now)
  drop_tokens(live, drop)
  redis.call('DEL', h)
  redis.call('HSET', h, 'g', fresh)
  save_pending(h, live)
  redis.call('PEXPIRE', h, ttl)
end
"""

# KEYS: session hash, user hash. ARGV: run, fresh nonce, ttl_ms, mode ('tail'|'since'), n, after, limit,
#   known window ('' or the exact 'w' value the caller holds decoded from seq known_a on), known_a.
# -> {3, first, last, a, b} hit, and the caller's copy (same 'w', covering a..b) is current: no items sent
#    | {1, first, last, w, a, item...} hit (items a..) | {2} valid but does not cover the range
#    | {0, tag} miss, fillable | {0} miss, a write is in flight.
# A 'w' value names one immutable window: its tag holds nonces that never repeat, and every change
# to the window's content (write-through, refill, wipe) installs a new tag. So "same 'w' and still
# current" proves the caller's copy equals what this script would have sent.
READ_WINDOW = _PRELUDE + r"""
local run = ARGV[1]
local e = nonce_of(KEYS[2], 'e', ARGV[2], ARGV[3])
local g = nonce_of(KEYS[1], 'g', ARGV[2], ARGV[3])
local cur = run .. ':' .. e .. ':' .. g
local first, last, tag, w = window_meta(KEYS[1])
if first and tag == cur then
  local a, b
  if ARGV[4] == 'tail' then
    local n = tonumber(ARGV[5])
    if n < 0 then a = first else a = last - n + 1 end
    b = last
  else
    a = tonumber(ARGV[6]) + 1
    b = last
    local lim = tonumber(ARGV[7])
    if lim >= 0 then b = math.min(last, a + lim - 1) end
  end
  if a < first then
    if first > 1 then return {2} end
    a = first
  end
  if ARGV[8] ~= '' and ARGV[8] == w and a >= tonumber(ARGV[9]) then return {3, first, last, a, b} end
  local out = {1, first, last, w, a}
  if b >= a then
    local fields = {}
    for s = a, b do fields[#fields + 1] = 'm:' .. s end
    local vals = redis.call('HMGET', KEYS[1], unpack(fields))
    for i = 1, #vals do
      if not vals[i] then return {2} end
      out[#out + 1] = vals[i]
    end
  end
  return out
end
local now = now_ms()
local _, n1 = pending(KEYS[1], now)
local _, n2 = pending(KEYS[2], now)
if n1 + n2 > 0 then return {0} end
return {0, cur}
"""

# KEYS: session hash, user hash. ARGV: run, expected tag, ttl_ms, thread, first, last, item...
FILL_WINDOW = _PRELUDE + r"""
local e = redis.call('HGET', KEYS[2], 'e')
local g = redis.call('HGET', KEYS[1], 'g')
if not e or not g or (ARGV[1] .. ':' .. e .. ':' .. g) ~= ARGV[2] then return 0 end
local now = now_ms()
local _, n1 = pending(KEYS[1], now)
local _, n2 = pending(KEYS[2], now)
if n1 + n2 > 0 then return 0 end
drop_window(KEYS[1])
local first = tonumber(ARGV[5])
local batch = {}
for i = 7, #ARGV do
  batch[#batch + 1] = 'm:' .. (first + i - 7)
  batch[#batch + 1] = ARGV[i]
end
if #batch > 0 then redis.call('HSET', KEYS[1], unpack(batch)) end
redis.call('HSET', KEYS[1], 'w', ARGV[5] .. ':' .. ARGV[6] .. ':' .. ARGV[2])
touch(KEYS[1], KEYS[2], ARGV[3], ARGV[4])
return 1
"""

# KEYS: session hash, user hash. ARGV: run, fresh nonce, ttl_ms, name.
# -> {1, value} hit ('' means "no such state") | {0, tag} miss, fillable | {0} miss, write in flight.
READ_STATE = _PRELUDE + r"""
local e = nonce_of(KEYS[2], 'e', ARGV[2], ARGV[3])
local g = nonce_of(KEYS[1], 'g', ARGV[2], ARGV[3])
local cur = ARGV[1] .. ':' .. e .. ':' .. g
local v = redis.call('HMGET', KEYS[1], 'st:' .. ARGV[4], 'sv:' .. ARGV[4])
if v[1] == cur and v[2] then return {1, v[2]} end
local now = now_ms()
local _, n1 = pending(KEYS[1], now)
local _, n2 = pending(KEYS[2], now)
if n1 + n2 > 0 then return {0} end
return {0, cur}
"""

# KEYS: session hash, user hash. ARGV: run, expected tag, ttl_ms, thread, name, value.
FILL_STATE = _PRELUDE + r"""
local e = redis.call('HGET', KEYS[2], 'e')
local g = redis.call('HGET', KEYS[1], 'g')
if not e or not g or (ARGV[1] .. ':' .. e .. ':' .. g) ~= ARGV[2] then return 0 end
local now = now_ms()
local _, n1 = pending(KEYS[1], now)
local _, n2 = pending(KEYS[2], now)
if n1 + n2 > 0 then return 0 end
local name = ARGV[5]
redis.call('HSET', KEYS[1], 'st:' .. name, ARGV[2], 'sv:' .. name, ARGV[6])
local names = redis.call('HGET', KEYS[1], 'sn') or ''
if not string.find(',' .. names, ',' .. name .. ',', 1, true) then
  redis.call('HSET', KEYS[1], 'sn', names .. name .. ',')
end
touch(KEYS[1], KEYS[2], ARGV[3], ARGV[4])
return 1
"""

# Before the durable write. KEYS: session hash, user hash. ARGV: fresh nonce, pending_ttl_ms, ttl_ms, token.
# -> {previous g, e}: what the END needs to prove nobody else wrote in between.
BEGIN = _PRELUDE + r"""
local now = now_ms()
local e = nonce_of(KEYS[2], 'e', ARGV[1], ARGV[3])
local prev = redis.call('HGET', KEYS[1], 'g') or ''
redis.call('HSET', KEYS[1], 'g', ARGV[1])
local live = pending(KEYS[1], now)
live[ARGV[4]] = string.format('%.0f', now + tonumber(ARGV[2]))
save_pending(KEYS[1], live)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return {prev, e}
"""

# After the durable write. KEYS: session hash, user hash.
# ARGV: run, fresh nonce, ttl_ms, token, prev g, begin g, begin e, op, thread, cache_messages, then
#   op 'append': first seq, last seq, item...   op 'state': name, value ('' = too large to cache)
#   op 'none': nothing was written              op 'fail': the write's outcome is unknown
# Always installs a fresh g (invalidating everything). Only when the script can prove that this
# write was the only change since the entries were valid does it re-tag them (write-through).
# -> 0 | 1 | {new w, replaced w}: the window now cached is the replaced one ('' = none: it starts at
#    this append's first seq) plus this append's messages, trimmed to 'w''s first seq.
END = _PRELUDE + r"""
local now = now_ms()
local live = pending(KEYS[1], now)
live[ARGV[4]] = nil
local others = 0
for _ in pairs(live) do others = others + 1 end
save_pending(KEYS[1], live)
local g = redis.call('HGET', KEYS[1], 'g')
redis.call('HSET', KEYS[1], 'g', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local e = redis.call('HGET', KEYS[2], 'e')
local _, nu = pending(KEYS[2], now)
local op = ARGV[8]
if op == 'fail' or g ~= ARGV[6] or others > 0 or nu > 0 or not e or e ~= ARGV[7] then return 0 end
local old = ARGV[1] .. ':' .. ARGV[7] .. ':' .. ARGV[5]
local new = ARGV[1] .. ':' .. e .. ':' .. ARGV[2]
local first, last, tag, w = window_meta(KEYS[1])
local new_w, from_w = nil, ''
if op == 'append' then
  local a, b = tonumber(ARGV[11]), tonumber(ARGV[12])
  local base = nil
  if first and tag == old and a == last + 1 then
    base = first
    from_w = w
  elseif a == 1 then
    drop_window(KEYS[1])
    base = 1
  end
  if base then
    local batch = {}
    for i = 13, #ARGV do
      batch[#batch + 1] = 'm:' .. (a + i - 13)
      batch[#batch + 1] = ARGV[i]
    end
    redis.call('HSET', KEYS[1], unpack(batch))
    local nf = math.max(base, b - tonumber(ARGV[10]) + 1)
    if nf > base then hdel_range(KEYS[1], base, nf - 1) end
    new_w = nf .. ':' .. b .. ':' .. new
    redis.call('HSET', KEYS[1], 'w', new_w)
  end
elseif first and tag == old then
  new_w = first .. ':' .. last .. ':' .. new
  from_w = w
  redis.call('HSET', KEYS[1], 'w', new_w)
end
local keep = {}
local written = nil
if op == 'state' then written = ARGV[11] end
for name in string.gmatch(redis.call('HGET', KEYS[1], 'sn') or '', '([^,]+),') do
  if name ~= written then
    if redis.call('HGET', KEYS[1], 'st:' .. name) == old then
      redis.call('HSET', KEYS[1], 'st:' .. name, new)
      keep[#keep + 1] = name
    else
      redis.call('HDEL', KEYS[1], 'st:' .. name, 'sv:' .. name)
    end
  end
end
if written then
  if ARGV[12] ~= '' then
    redis.call('HSET', KEYS[1], 'st:' .. written, new, 'sv:' .. written, ARGV[12])
    keep[#keep + 1] = written
  else
    redis.call('HDEL', KEYS[1], 'st:' .. written, 'sv:' .. written)
  end
end
if #keep > 0 then redis.call('HSET', KEYS[1], 'sn', table.concat(keep, ',') .. ',')
else redis.call('HDEL', KEYS[1], 'sn') end
touch(KEYS[1], KEYS[2], ARGV[3], ARGV[9])
if new_w then return {new_w, from_w} end
return 1
"""

# After deleting a session, or to pay an invalidation owed while Redis was unreachable.
# KEYS: session hash, user hash. ARGV: fresh nonce, ttl_ms, tokens to drop (comma-separated), thread.
WIPE_SESSION = _PRELUDE + r"""
wipe_session(KEYS[1], ARGV[1], ARGV[3], now_ms(), ARGV[2])
redis.call('HDEL', KEYS[2], 't:' .. ARGV[4])
return 1
"""

# Before deleting a user. KEYS: user hash. ARGV: fresh nonce, pending_ttl_ms, ttl_ms, token.
BEGIN_USER = _PRELUDE + r"""
local now = now_ms()
redis.call('HSET', KEYS[1], 'e', ARGV[1])
local live = pending(KEYS[1], now)
live[ARGV[4]] = string.format('%.0f', now + tonumber(ARGV[2]))
save_pending(KEYS[1], live)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# After deleting a user (or to pay an owed invalidation): fresh e, and every cached session of the
# user physically removed (their keys share the user's hash tag, so one slot).
# KEYS: user hash. ARGV: fresh nonce, ttl_ms, tokens to drop (comma-separated), session key prefix.
WIPE_USER = _PRELUDE + r"""
local now = now_ms()
redis.call('HSET', KEYS[1], 'e', ARGV[1])
local live = pending(KEYS[1], now)
drop_tokens(live, ARGV[3])
save_pending(KEYS[1], live)
local n = 0
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, 2) == 't:' then
    local thread = string.sub(field, 3)
    wipe_session(ARGV[4] .. thread, ARGV[1] .. thread, '', now, ARGV[2])
    redis.call('HDEL', KEYS[1], field)
    n = n + 1
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return n
"""
