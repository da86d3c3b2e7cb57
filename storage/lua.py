"""Lua scripts behind JobStore: every status change of a job is one of these, so it is atomic.

Each script that moves a job calls `move`, which also appends to the job's transition log (the
tests count terminal transitions with it) and keeps its batch's per-status counters, so a batch's
counts are one HGETALL however many jobs it has. Batch keys are derived inside the scripts: layerq
targets one Redis (or one hash slot), not Redis Cluster.
"""

# ARGV conventions shared by every script: ARGV[1] = now (unix seconds), ARGV[2] = batch key prefix.
_MOVE = """
local function move(job, cur, new)
  redis.call('HSET', job, 'status', new)
  redis.call('RPUSH', job .. ':log', cur .. '>' .. new .. '@' .. ARGV[1])
  local ttl = redis.call('TTL', job)
  if ttl > 0 then redis.call('EXPIRE', job .. ':log', ttl) end
  local batch = redis.call('HGET', job, 'batch_id')
  if batch and batch ~= '' then
    redis.call('HINCRBY', ARGV[2] .. batch, 'n_' .. cur, -1)
    redis.call('HINCRBY', ARGV[2] .. batch, 'n_' .. new, 1)
  end
end
local function is_terminal(s)
  return s == 'succeeded' or s == 'failed' or s == 'canceled' or s == 'expired'
end
"""

# KEYS: job hash, queue zset. ARGV[3]: allowed current statuses (",a,b,"), ARGV[4]: new status,
# then field/value pairs. Returns {"ok"|"refused"|"missing", current status}.
TRANSITION = _MOVE + """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {'missing', ''} end
if not string.find(ARGV[3], ',' .. cur .. ',', 1, true) then return {'refused', cur} end
move(KEYS[1], cur, ARGV[4])
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[4] ~= 'queued' then redis.call('ZREM', KEYS[2], redis.call('HGET', KEYS[1], 'id')) end
return {'ok', cur}
"""

# Claim one delivery of a job. KEYS: job hash, queue zset, workers zset, admitted zset (fair
# queues: jobs on the broker not yet started; a message taken leaves it whatever becomes of it).
# ARGV[3]: max deliveries, ARGV[4]: worker_lost error json, ARGV[5]: this worker,
# ARGV[6]: heartbeats at or after this time mean "alive", ARGV[7]: the `expired` error json.
# Returns {"run", attempts} | {"skip", status} | {"duplicate", owner} | {"lost", attempts} | {"missing", ""}.
BEGIN_ATTEMPT = _MOVE + """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {'missing', ''} end
redis.call('ZREM', KEYS[4], redis.call('HGET', KEYS[1], 'id'))
if is_terminal(cur) then return {'skip', cur} end
-- A deadline (`cancel_after_s`) passed while queued: the job ends without touching a GPU.
local deadline = tonumber(redis.call('HGET', KEYS[1], 'deadline') or '0') or 0
if cur == 'queued' and deadline > 0 and tonumber(ARGV[1]) > deadline then
  redis.call('ZREM', KEYS[2], redis.call('HGET', KEYS[1], 'id'))
  move(KEYS[1], cur, 'expired')
  redis.call('HSET', KEYS[1], 'finished_at', ARGV[1], 'error', ARGV[7])
  return {'skip', 'expired'}
end
if cur == 'running' then
  -- Another delivery of a job that is running: take it over only if its worker is dead; a live
  -- owner means this message is a duplicate (restored early, or re-sent) and must not run twice.
  local owner = redis.call('HGET', KEYS[1], 'worker')
  if owner and owner ~= ARGV[5] then
    local beat = redis.call('ZSCORE', KEYS[3], owner)
    if beat and tonumber(beat) >= tonumber(ARGV[6]) then return {'duplicate', owner} end
  end
end
redis.call('ZREM', KEYS[2], redis.call('HGET', KEYS[1], 'id'))
if cur == 'canceling' then
  move(KEYS[1], cur, 'canceled')
  redis.call('HSET', KEYS[1], 'finished_at', ARGV[1])
  return {'skip', 'canceled'}
end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if attempts > tonumber(ARGV[3]) then
  move(KEYS[1], cur, 'failed')
  redis.call('HSET', KEYS[1], 'finished_at', ARGV[1], 'error', ARGV[4])
  return {'lost', tostring(attempts)}
end
move(KEYS[1], cur, 'running')
redis.call('HSET', KEYS[1], 'started_at', ARGV[1], 'worker', ARGV[5])
return {'run', tostring(attempts)}
"""

# A worker hands a running job back for a later retry (a transient fault): it stops owning it, so
# any worker may claim the retry's delivery (BEGIN_ATTEMPT refuses deliveries of a job whose owner
# is alive). KEYS: job hash. ARGV[1]: this worker. Returns 1 when it owned the job, else 0.
UNCLAIM = """
if redis.call('HGET', KEYS[1], 'status') == 'running' and redis.call('HGET', KEYS[1], 'worker') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'worker')
  return 1
end
return 0
"""

# Cancel many jobs. KEYS: the queue zsets the jobs may wait in (a batch's decompose jobs span the
# memory classes' queues). ARGV[3..]: job keys. queued → canceled at once (the worker
# will skip its message), running → canceling (the worker stops at its next step).
# Returns {canceled, canceling, already_finished, missing}.
CANCEL = _MOVE + """
local out = {0, 0, 0, 0}
for i = 3, #ARGV do
  local job = ARGV[i]
  local cur = redis.call('HGET', job, 'status')
  if not cur then out[4] = out[4] + 1
  elseif cur == 'queued' then
    move(job, cur, 'canceled')
    redis.call('HSET', job, 'finished_at', ARGV[1])
    local id = redis.call('HGET', job, 'id')
    for k = 1, #KEYS do redis.call('ZREM', KEYS[k], id) end
    out[1] = out[1] + 1
  elseif cur == 'running' then
    move(job, cur, 'canceling')
    out[2] = out[2] + 1
  elseif cur == 'canceling' then out[2] = out[2] + 1
  else out[3] = out[3] + 1 end
end
return out
"""

# Progress is written only while the job runs; the answer tells the worker whether to stop.
PROGRESS = """
local cur = redis.call('HGET', KEYS[1], 'status')
if cur == 'running' then redis.call('HSET', KEYS[1], 'progress', ARGV[1]) end
return cur or ''
"""

# Fair admission (storage/admission.py). KEYS: admitted zset, workers zset, interactive tenants
# zset, bulk tenants zset, turn counter, unsent zset, queued zset. ARGV[3]: backlog key prefix
# (`…:backlog:<queue>:`), ARGV[4]: heartbeats since this time count as live workers, ARGV[5]: jobs
# allowed on the broker beyond one per live worker, ARGV[6]: every Nth admission prefers bulk (0:
# never), ARGV[7]: job key prefix, ARGV[8]: the `expired` error json.
# Moves jobs from the per-tenant backlogs to `admitted` (and `unsent`, until the caller confirms
# sending them) while fewer than workers + ahead are admitted: interactive first except on every Nth
# turn, round robin across tenants (the tenant served longest ago first). Jobs canceled or past
# their deadline in a backlog are dropped / expired here. Returns the ids to send.
ADMIT = _MOVE + """
local now = tonumber(ARGV[1])
local workers = redis.call('ZCOUNT', KEYS[2], ARGV[4], '+inf')
if workers < 1 then workers = 1 end
local room = workers + tonumber(ARGV[5]) - redis.call('ZCARD', KEYS[1])
local out = {}
local function pop_from(tenants, prio)
  while true do
    local head = redis.call('ZRANGE', tenants, 0, 0)
    if #head == 0 then return nil end
    local tenant = head[1]
    local backlog = ARGV[3] .. prio .. ':' .. tenant
    local id = redis.call('LPOP', backlog)
    if redis.call('LLEN', backlog) == 0 then redis.call('ZREM', tenants, tenant)
    else
      -- Served now: to the back of the round.
      local last = redis.call('ZRANGE', tenants, -1, -1, 'WITHSCORES')
      redis.call('ZADD', tenants, tonumber(last[2]) + 1, tenant)
    end
    if id then
      local job = ARGV[7] .. id
      local cur = redis.call('HGET', job, 'status')
      if cur == 'queued' then
        local deadline = tonumber(redis.call('HGET', job, 'deadline') or '0') or 0
        if deadline > 0 and now > deadline then
          redis.call('ZREM', KEYS[7], id)
          move(job, cur, 'expired')
          redis.call('HSET', job, 'finished_at', ARGV[1], 'error', ARGV[8])
          table.insert(out, '!' .. id)
        else
          return id
        end
      end
    end
  end
end
while room > 0 do
  local turn = redis.call('INCR', KEYS[5])
  local first, second = {KEYS[3], 'interactive'}, {KEYS[4], 'bulk'}
  if tonumber(ARGV[6]) > 0 and turn % tonumber(ARGV[6]) == 0 then first, second = second, first end
  local id = pop_from(first[1], first[2]) or pop_from(second[1], second[2])
  if not id then break end
  redis.call('ZADD', KEYS[1], now, id)
  redis.call('ZADD', KEYS[6], now, id)
  table.insert(out, id)
  room = room - 1
end
return out
"""

# Expire the queued jobs whose deadline passed (now, ARGV[1], is the cutoff). KEYS: deadlines zset,
# queued zset. ARGV[3]: job key prefix, ARGV[4]: the `expired` error json, ARGV[5]: limit.
# Returns the ids expired (jobs no longer queued just leave the set).
EXPIRE = _MOVE + """
local out = {}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], 0, ARGV[1], 'LIMIT', 0, tonumber(ARGV[5]))
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  local job = ARGV[3] .. id
  if redis.call('HGET', job, 'status') == 'queued' then
    redis.call('ZREM', KEYS[2], id)
    move(job, 'queued', 'expired')
    redis.call('HSET', job, 'finished_at', ARGV[1], 'error', ARGV[4])
    table.insert(out, id)
  end
end
return out
"""

# Queued jobs of one queue by priority (metrics, read at scrape time). KEYS: queued zset.
# ARGV[1]: job key prefix, ARGV[2]: most jobs looked at (the oldest first).
# Returns {total, counted, priority1, n1, priority2, n2, ...}; a job without a priority counts as ''.
QUEUED_BY_PRIORITY = """
local total = redis.call('ZCARD', KEYS[1])
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
local counts = {}
for _, id in ipairs(ids) do
  local p = redis.call('HGET', ARGV[1] .. id, 'priority') or ''
  counts[p] = (counts[p] or 0) + 1
end
local out = {total, #ids}
for p, n in pairs(counts) do
  table.insert(out, p)
  table.insert(out, n)
end
return out
"""
