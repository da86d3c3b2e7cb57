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
local function is_terminal(s) return s == 'succeeded' or s == 'failed' or s == 'canceled' end
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

# Claim one delivery of a job. KEYS: job hash, queue zset, workers zset.
# ARGV[3]: max deliveries, ARGV[4]: worker_lost error json, ARGV[5]: this worker,
# ARGV[6]: heartbeats at or after this time mean "alive".
# Returns {"run", attempts} | {"skip", status} | {"duplicate", owner} | {"lost", attempts} | {"missing", ""}.
BEGIN_ATTEMPT = _MOVE + """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {'missing', ''} end
if is_terminal(cur) then return {'skip', cur} end
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
