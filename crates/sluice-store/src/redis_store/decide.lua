-- sluice decide, key and value format v1: applies requests' transitions to their counters,
-- each request all or nothing, at the Redis server's instant, and sets every written key's
-- expiry in the same step. One call decides a batch of requests, one after another, as if
-- each had been a call of its own; they share the server's instant, read once.
--
-- This is `sluice_core::decide`'s state machine, ported. The Rust side keeps the engine: it
-- sends what needs no stored state precomputed (window bounds, token-bucket steps), and builds
-- the reported decision by running `decide` on the states this script returns. The store
-- conformance suite holds the two to the nanosecond.
--
-- Lua here has only doubles (exact to 2^53), and instants are nanoseconds (~2^61): an instant
-- is a pair {seconds, nanoseconds}, and the sliding window's products go through base-10^7
-- limbs. Counts and capacities stay below 2^53.
--
-- ARGV, per request in turn, and KEYS, each request's keys in turn:
--   the instant in ns, or '' for the server's TIME;
--   'a' to apply, 'd' when the request is already denied (only limits that count rejected
--   requests change);
--   the number of keys;
--   then per key, in KEYS order, its 11 values, or '=' for the same 11 values as the last key
--   that sent its own (requests of one limit repeat them; Redis parses each value it gets):
--   algorithm ('f' fixed, 's' sliding, 'g' token bucket, 'c' concurrency),
--   op ('a' acquire, 'r' release, 'n' renew, 'x' reset), cost, capacity, counts rejected
--   and shadow mode ('0' neither, '1' counts rejected, 's' shadow, 'S' both),
--   and per algorithm:
--   f: window index, window start, window end, next window's index, next window's end,
--      the acquiring request's window index (release, renew)
--   s: window index, window start, span, the acquiring request's window index (release, renew)
--   g: weight whole, weight part, tolerance whole, tolerance part, denominator
--   c: as s, with the lease as the span
-- A stored value is 'window value aux expires_at' in decimal.
--
-- Reply: one text, a line per request in turn (one value for the client to read, however
-- many requests): 'STATUS,INSTANT,BEFORE,BEFORE,…' with STATUS 1 admitted, 0 denied or -1
-- the windows sent do not hold the instant (nothing changed, and no BEFORE follows), and
-- BEFORE each key's stored value before the request: '' when none or when it does not read as
-- a state (which both sides take as empty), so it holds only digits and spaces.

-- Everything but the common case, built on the first request that needs it: Lua 5.1 builds
-- every function of a script's body on every call, which costs more than the common case.
local function build()
  local B = 1000000000
  local L = 10000000
  local MAX = {18446744073, 709551615}
  local ZERO = {0, 0}

  -- q, r with a = q * d + r, 0 <= r < d, exact for integers below 2^53.
  local function divmod(a, d)
    local q = math.floor(a / d)
    local r = a - q * d
    if r < 0 then
      q = q - 1
      r = r + d
    elseif r >= d then
      q = q + 1
      r = r - d
    end
    return q, r
  end

  -- Instants and spans: {seconds, nanoseconds}.
  local function time(text)
    local len = #text
    if len <= 9 then
      return {0, tonumber(text)}
    end
    return {tonumber(string.sub(text, 1, len - 9)), tonumber(string.sub(text, len - 8))}
  end

  local function time_text(a)
    if a[1] == 0 then
      return string.format('%d', a[2])
    end
    return string.format('%d%09d', a[1], a[2])
  end

  local function cmp(a, b)
    if a[1] ~= b[1] then
      return a[1] < b[1] and -1 or 1
    end
    if a[2] ~= b[2] then
      return a[2] < b[2] and -1 or 1
    end
    return 0
  end

  local function add(a, b)
    local s, n = a[1] + b[1], a[2] + b[2]
    if n >= B then
      s = s + 1
      n = n - B
    end
    if s > MAX[1] or (s == MAX[1] and n > MAX[2]) then
      return MAX
    end
    return {s, n}
  end

  -- a - b, or zero when b is not smaller.
  local function sub(a, b)
    if cmp(a, b) <= 0 then
      return ZERO
    end
    local s, n = a[1] - b[1], a[2] - b[2]
    if n < 0 then
      s = s - 1
      n = n + B
    end
    return {s, n}
  end

  local function max_time(a, b)
    return cmp(a, b) < 0 and b or a
  end

  -- Exact products: base-10^7 limbs, least significant first.
  local function count_limbs(c)
    local q1, l0 = divmod(c, L)
    local l2, l1 = divmod(q1, L)
    return {l0, l1, l2}
  end

  local function time_limbs(a)
    local s_high, s_low = divmod(a[1], 100000)
    local n_high, l0 = divmod(a[2], L)
    return {l0, n_high + s_low * 100, s_high}
  end

  local function multiply(a, b)
    local r = {0, 0, 0, 0, 0, 0, 0}
    for i = 1, 3 do
      for j = 1, 3 do
        r[i + j - 1] = r[i + j - 1] + a[i] * b[j]
      end
    end
    local carry = 0
    for k = 1, 7 do
      carry, r[k] = divmod(r[k] + carry, L)
    end
    return r
  end

  local function compare_limbs(a, b)
    for k = 7, 1, -1 do
      if a[k] ~= b[k] then
        return a[k] < b[k] and -1 or 1
      end
    end
    return 0
  end

  local function limbs_time(r)
    for k = 5, 7 do
      if r[k] > 0 then
        return MAX
      end
    end
    local n_high, n_low = divmod(r[2], 100)
    local s = n_high + r[3] * 100000 + r[4] * 1000000000000
    local n = r[1] + n_low * L
    if s > MAX[1] or (s == MAX[1] and n > MAX[2]) then
      return MAX
    end
    return {s, n}
  end

  -- Token-bucket instants: {seconds, nanoseconds, part} with part in 1/denominator ns.
  local function fcmp(a, b)
    local c = cmp(a, b)
    if c ~= 0 then
      return c
    end
    if a[3] ~= b[3] then
      return a[3] < b[3] and -1 or 1
    end
    return 0
  end

  local function fmax(a, b)
    return fcmp(a, b) < 0 and b or a
  end

  local function fmin(a, b)
    return fcmp(a, b) > 0 and b or a
  end

  local function fadd(a, b, den)
    local part = a[3] + b[3]
    local whole = add(a, b)
    if part >= den then
      part = part - den
      whole = add(whole, {0, 1})
    end
    return {whole[1], whole[2], part}
  end

  local function fsub(a, b, den)
    if fcmp(a, b) <= 0 then
      return {0, 0, 0}
    end
    local whole = sub(a, b)
    local part = a[3] - b[3]
    if part < 0 then
      whole = sub(whole, {0, 1})
      part = part + den
    end
    return {whole[1], whole[2], part}
  end

  local function fceil(a)
    if a[3] > 0 then
      return add(a, {0, 1})
    end
    return {a[1], a[2]}
  end

  -- States: {window, value, aux, expires_at}; `value` is a count, or an instant for a bucket.
  local EMPTY = {0, 0, 0, ZERO}
  local EMPTY_BUCKET = {0, ZERO, 0, ZERO}

  local function parse(raw, bucket)
    if not raw then
      return bucket and EMPTY_BUCKET or EMPTY
    end
    local w, v, a, e = string.match(raw, '^(%d+) (%d+) (%d+) (%d+)$')
    if not w then
      return bucket and EMPTY_BUCKET or EMPTY
    end
    return {tonumber(w), bucket and time(v) or tonumber(v), tonumber(a), time(e)}
  end

  local function live(state, now, bucket)
    if cmp(state[4], now) > 0 then
      return state
    end
    return bucket and EMPTY_BUCKET or EMPTY
  end

  local function number_text(x)
    return string.format('%d', x)
  end

  -- Each algorithm returns {admits, admitted, rejected}; nil when the windows sent do not hold
  -- now. A next state of false leaves the stored value as it is.

  local function fixed_window(op, cost, capacity, rejected, state, now, b)
    local start0, end0, end1 = time(ARGV[b + 2]), time(ARGV[b + 3]), time(ARGV[b + 5])
    if cmp(now, start0) < 0 or cmp(now, end1) >= 0 then
      return nil
    end
    local index, window_end
    if cmp(now, end0) < 0 then
      index, window_end = tonumber(ARGV[b + 1]), end0
    else
      index, window_end = tonumber(ARGV[b + 4]), end1
    end
    local count = 0
    if state[1] > index then
      -- The clock stepped back: the stored window keeps counting until it catches up.
      index, window_end, count = state[1], state[4], state[2]
    elseif state[1] == index then
      count = state[2]
    end
    if op == 'a' then
      local total = count + cost
      local next = {index, total, 0, window_end}
      return {total <= capacity, next, rejected and next}
    end
    local next = {state[1], state[2], state[3], state[4]}
    if count > 0 and tonumber(ARGV[b + 6]) == index then
      next[2] = math.max(count - cost, 0)
    end
    return {true, next, false}
  end

  -- Two clock-aligned windows, the sliding window's or the concurrency limit's lease-long
  -- periods, as seen at now: the current window's index and start, the time elapsed in it, its
  -- count and the previous window's. nil when the windows sent do not hold now.
  local function windows(state, now, b)
    local index, start, span = tonumber(ARGV[b + 1]), time(ARGV[b + 2]), time(ARGV[b + 3])
    local start1 = add(start, span)
    if cmp(now, start) < 0 or cmp(now, add(start1, span)) >= 0 then
      return nil
    end
    if cmp(now, start1) >= 0 then
      index, start = index + 1, start1
    end
    local elapsed
    if state[1] > index then
      -- The clock stepped back: look from the start of the stored window.
      index = state[1]
      start = limbs_time(multiply(count_limbs(index), time_limbs(span)))
      elapsed = ZERO
    else
      elapsed = sub(now, start)
    end
    local current, previous = 0, 0
    if state[1] == index then
      current, previous = state[2], state[3]
    elseif state[1] + 1 == index then
      previous = state[2]
    end
    return {index = index, start = start, span = span, elapsed = elapsed, current = current,
      previous = previous, expires = add(add(start, span), span)}
  end

  -- The two counts once a release of cost, acquired in the window ARGV[b + 4], is given back.
  local function released(view, cost, b)
    local acquired = tonumber(ARGV[b + 4])
    local current, previous = view.current, view.previous
    if acquired == view.index then
      current = math.max(current - cost, 0)
    elseif acquired + 1 == view.index then
      previous = math.max(previous - cost, 0)
    end
    return current, previous
  end

  local function sliding_window(op, cost, capacity, rejected, state, now, b)
    local view = windows(state, now, b)
    if not view then
      return nil
    end
    local current, previous, span = view.current, view.previous, view.span
    if op == 'a' then
      current = current + cost
      local admits
      if current > capacity then
        admits = false
      elseif previous == 0 then
        admits = true
      else
        -- previous × (span − elapsed) ≤ (capacity − current) × span
        local weighted = multiply(count_limbs(previous), time_limbs(sub(span, view.elapsed)))
        local room = multiply(count_limbs(capacity - current), time_limbs(span))
        admits = compare_limbs(weighted, room) <= 0
      end
      local next = {view.index, current, previous, view.expires}
      return {admits, next, rejected and next}
    end
    current, previous = released(view, cost, b)
    return {true, {view.index, current, previous, view.expires}, false}
  end

  local function token_bucket(op, rejected, state, now, b)
    local den = tonumber(ARGV[b + 5])
    local weight = time(ARGV[b + 1])
    weight = {weight[1], weight[2], tonumber(ARGV[b + 2])}
    local tolerance = time(ARGV[b + 3])
    tolerance = {tolerance[1], tolerance[2], tonumber(ARGV[b + 4])}
    local tat = {state[2][1], state[2][2], math.min(state[3], den - 1)}
    local at = {now[1], now[2], 0}
    local function bucket(f)
      return {0, {f[1], f[2]}, f[3], fceil(f)}
    end
    if op == 'a' then
      local base = fmax(tat, at)
      local next = fadd(base, weight, den)
      local ceiling = fadd(at, tolerance, den)
      -- A counted denial adds debt, but never beyond a second full bucket.
      local counted = rejected and bucket(fmax(fmin(next, fadd(ceiling, tolerance, den)), base))
      return {fcmp(next, ceiling) <= 0, bucket(next), counted}
    end
    return {true, bucket(fmax(fsub(tat, weight, den), at)), false}
  end

  -- Holds count by the lease-long period they were taken in: in flight is what this period and
  -- the last took and did not give back.
  local function concurrency(op, cost, capacity, state, now, b)
    local view = windows(state, now, b)
    if not view then
      return nil
    end
    if op == 'a' then
      local current = view.current + cost
      return {current + view.previous <= capacity,
        {view.index, current, view.previous, view.expires}, false}
    end
    local current, previous = released(view, cost, b)
    if op == 'n' then
      -- Renewed: given back by the period it was counted in, taken again in this one.
      return {true, {view.index, current + cost, previous, view.expires}, false}
    end
    local expires = view.expires
    if current == 0 and previous == 0 then
      expires = now
    end
    return {true, {view.index, current, previous, expires}, false}
  end

  local function evaluate(raw, now, b)
    local algorithm, op = ARGV[b - 4], ARGV[b - 3]
    local cost, capacity = tonumber(ARGV[b - 2]), tonumber(ARGV[b - 1])
    local rejected = ARGV[b] == '1' or ARGV[b] == 'S'
    local bucket = algorithm == 'g'
    if capacity == 0 then
      -- Nothing is ever admitted and nothing is ever counted.
      return {op ~= 'a' or cost == 0, false, false}
    end
    if op == 'x' then
      return {true, EMPTY, false}
    end
    if op == 'n' and algorithm ~= 'c' then
      -- Only a concurrency limit holds units to renew; the stored value stays as it is.
      return {true, false, false}
    end
    local state = live(parse(raw, bucket), now, bucket)
    if algorithm == 'f' then
      return fixed_window(op, cost, capacity, rejected, state, now, b)
    elseif algorithm == 's' then
      return sliding_window(op, cost, capacity, rejected, state, now, b)
    elseif bucket then
      return token_bucket(op, rejected, state, now, b)
    end
    return concurrency(op, cost, capacity, state, now, b)
  end

  local function store(key, state, now)
    if cmp(state[4], now) <= 0 then
      redis.call('DEL', key)
      return
    end
    local value = state[2]
    if type(value) == 'table' then
      value = time_text(value)
    else
      value = number_text(value)
    end
    local text = number_text(state[1]) .. ' ' .. value .. ' ' .. number_text(state[3]) .. ' '
      .. time_text(state[4])
    -- Relative to the instant decided at, so that a test clock's keys live as long as they
    -- would have; Redis expires the key no earlier than its state does.
    local left = sub(state[4], now)
    local ms = left[1] * 1000 + math.ceil(left[2] / 1000000)
    redis.call('SET', key, text, 'PX', number_text(ms))
  end

  -- Decides one request whose keys start at KEYS[k], key i's values at ARGV[bases[i]];
  -- appends its reply.
  return function(k, count, bases, now, apply, reply)
    local allowed = apply
    local outcomes, line = {}, {}
    for i = 1, count do
      local raw = redis.call('GET', KEYS[k + i - 1])
      line[i + 2] = raw and string.find(raw, '^%d+ %d+ %d+ %d+$') and raw or ''
      -- ARGV[b - 4 .. b + 6] are this key's 11 values.
      local outcome = evaluate(raw, now, bases[i] + 4)
      if not outcome then
        reply[#reply + 1] = '-1,' .. time_text(now)
        return
      end
      outcomes[i] = outcome
      if not outcome[1] then
        local mode = ARGV[bases[i] + 4]
        if mode == 's' or mode == 'S' then
          -- A shadow limit that would deny moves as if it had, and the request goes on.
          outcomes[i] = {true, outcome[3], outcome[3]}
        else
          allowed = false
        end
      end
    end
    for i = 1, count do
      local next
      if allowed then
        next = outcomes[i][2]
      else
        next = outcomes[i][3]
      end
      if next then
        store(KEYS[k + i - 1], next, now)
      end
    end
    line[1], line[2] = allowed and '1' or '0', time_text(now)
    reply[#reply + 1] = table.concat(line, ',')
  end
end

local general
local server_s, server_ns
-- The last bucket's steps as numbers, and the texts they were read from: requests of one
-- limit send the same texts (one string each in Lua, so comparing them is cheap).
local w_text, wp_text, t_text, tp_text, den_text
local den, ws, wns, wp, ts, tns, tp
-- The last instant's text in the reply.
local said_s, said_ns, said
local reply = {}
local a, k = 1, 1
-- Where the last key that sent its own values has them.
local same
while a <= #ARGV do
  local s, ns
  local text = ARGV[a]
  if text == '' then
    if not server_s then
      local t = redis.call('TIME')
      server_s, server_ns = tonumber(t[1]), tonumber(t[2]) * 1000
    end
    s, ns = server_s, server_ns
  elseif #text > 9 then
    s, ns = tonumber(string.sub(text, 1, -10)), tonumber(string.sub(text, -9))
  else
    s, ns = 0, tonumber(text)
  end
  local apply, count = ARGV[a + 1] == 'a', tonumber(ARGV[a + 2])
  -- The first key's values are at ARGV[b]; ARGV[cursor] is the first not yet read.
  local cursor, b = a + 3, nil
  if count == 0 then
    b = cursor
  elseif ARGV[cursor] == '=' then
    b, cursor = same, cursor + 1
  else
    b, same, cursor = cursor, cursor, cursor + 11
  end
  local done = false
  -- The common case, on plain numbers and with no function or table: one token bucket
  -- acquiring, counting only what it admits, at instants and steps far below the arithmetic's
  -- saturation. The same steps as token_bucket: base = max(tat, now), next = base + weight;
  -- admitted when next <= now + tolerance.
  if count == 1 and apply and ARGV[b] == 'g' and ARGV[b + 1] == 'a' and ARGV[b + 4] == '0'
      and ARGV[b + 3] ~= '0' then
    if ARGV[b + 5] ~= w_text or ARGV[b + 6] ~= wp_text or ARGV[b + 7] ~= t_text
        or ARGV[b + 8] ~= tp_text or ARGV[b + 9] ~= den_text then
      w_text, wp_text, t_text, tp_text, den_text =
        ARGV[b + 5], ARGV[b + 6], ARGV[b + 7], ARGV[b + 8], ARGV[b + 9]
      den, wp, tp = tonumber(den_text), tonumber(wp_text), tonumber(tp_text)
      if #w_text > 9 then
        ws, wns = tonumber(string.sub(w_text, 1, -10)), tonumber(string.sub(w_text, -9))
      else
        ws, wns = 0, tonumber(w_text)
      end
      if #t_text > 9 then
        ts, tns = tonumber(string.sub(t_text, 1, -10)), tonumber(string.sub(t_text, -9))
      else
        ts, tns = 0, tonumber(t_text)
      end
    end
    local raw = redis.call('GET', KEYS[k])
    local bs, bns, bp = 0, 0, 0
    -- Seconds above zero keep the texts as time_text writes them (no leading zeros).
    local fits = s > 0 and s < 4e9 and ws < 4e9 and ts < 4e9 and tp < den
      and (ws > 0 or wns > 0 or wp > 0)
    if raw then
      -- 'window tat part expires_at'; a value that does not read this way takes the long path.
      local w, v, x, e = string.match(raw, '^(%d+) (%d+) (%d+) (%d+)$')
      fits = fits and w and #v > 9 and #e > 9
      if fits then
        local es, ens = tonumber(string.sub(e, 1, -10)), tonumber(string.sub(e, -9))
        if es > s or (es == s and ens > ns) then
          bs, bns = tonumber(string.sub(v, 1, -10)), tonumber(string.sub(v, -9))
          bp = math.min(tonumber(x), den - 1)
          fits = bs < 4e9
        end
      end
    end
    if fits then
      if bs < s or (bs == s and bns < ns) then
        bs, bns, bp = s, ns, 0
      end
      local xs, xns, xp = bs + ws, bns + wns, bp + wp
      if xp >= den then
        xp = xp - den
        xns = xns + 1
      end
      if xns >= 1000000000 then
        xs = xs + 1
        xns = xns - 1000000000
      end
      local cs, cns = s + ts, ns + tns
      if cns >= 1000000000 then
        cs = cs + 1
        cns = cns - 1000000000
      end
      local admits = xs < cs or (xs == cs and (xns < cns or (xns == cns and xp <= tp)))
      if admits then
        -- Expires at next rounded up to the nanosecond, after now since weight > 0.
        local es, ens = xs, xns
        if xp > 0 then
          ens = ens + 1
          if ens >= 1000000000 then
            es = es + 1
            ens = ens - 1000000000
          end
        end
        local ms = (es - s) * 1000 + math.ceil((ens - ns) / 1000000)
        redis.call('SET', KEYS[k], string.format('0 %d%09d %d %d%09d', xs, xns, xp, es, ens),
          'PX', string.format('%d', ms))
      end
      if s ~= said_s or ns ~= said_ns then
        said_s, said_ns, said = s, ns, string.format('%d%09d', s, ns)
      end
      -- A stored value read here matched the state's pattern.
      reply[#reply + 1] = (admits and '1,' or '0,') .. said .. ',' .. (raw or '')
      done = true
    end
  end
  if not done then
    local bases = {b}
    for i = 2, count do
      if ARGV[cursor] == '=' then
        bases[i], cursor = same, cursor + 1
      else
        bases[i], same, cursor = cursor, cursor, cursor + 11
      end
    end
    general = general or build()
    general(k, count, bases, {s, ns}, apply, reply)
  end
  a, k = cursor, k + count
end
return table.concat(reply, '\n')
