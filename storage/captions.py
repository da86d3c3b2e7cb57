"""Auto-captions written ahead for queued jobs (issue 12 item 4; worker/caption_ahead.py writes them).

A decompose worker about to caption a job captions a few other waiting auto-caption jobs with it and
leaves each caption here, next to the job's record, for whichever worker runs that job. This store
only reads the job records (their `status`); it never moves a job, so looking ahead can never take,
reorder, lose or duplicate one. Two keys per job (storage/keys.py):

- `<p>:caption:<id>`: the caption (JSON: `key`, `text`, `flavour`, `by`, `with`, `at`), written only
  while the job is still queued, living as long as the job's record. `key` names everything the
  caption depends on (model, how this worker captions, the input's bytes, language, resolution), so
  a reader uses it only where it would have written the very same caption itself.
- `<p>:caption-claim:<id>`: a short lock, so two workers looking ahead at once do not caption the
  same waiting job twice. It never stops the job itself from running (and captioning alone).
"""

from __future__ import annotations

import json
from typing import Any

import redis

from storage.keys import Keys

# KEYS: (job hash, claim key) pairs. ARGV[1]: worker, ARGV[2]: claim lifetime (ms), ARGV[3]: most to
# claim. Returns the 1-based pair numbers claimed: queued jobs nobody else is captioning ahead.
_CLAIM = """
local out = {}
for i = 1, #KEYS, 2 do
  if #out >= tonumber(ARGV[3]) then break end
  if redis.call('HGET', KEYS[i], 'status') == 'queued'
      and redis.call('SET', KEYS[i + 1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    table.insert(out, (i + 1) / 2)
  end
end
return out
"""

# KEYS: job hash, claim key, caption key. ARGV[1]: worker, ARGV[2]: the caption (JSON).
# Written only while the job is queued and not claimed by another worker; lives as long as the record.
_OFFER = """
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
local owner = redis.call('GET', KEYS[2])
if owner and owner ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[3], ARGV[2])
local ttl = redis.call('TTL', KEYS[1])
if ttl > 0 then redis.call('EXPIRE', KEYS[3], ttl) end
redis.call('DEL', KEYS[2])
return 1
"""

# KEYS: claim keys. ARGV[1]: worker. Drops this worker's claims only.
_RELEASE = """
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
return 0
"""


class CaptionStore:
    def __init__(self, client: redis.Redis, *, key_prefix: str = "layerq") -> None:
        self._r = client
        self.keys = Keys(key_prefix)
        self._claim = client.register_script(_CLAIM)
        self._offer = client.register_script(_OFFER)
        self._release = client.register_script(_RELEASE)

    def get(self, job_id: str) -> dict[str, Any] | None:
        """The caption written ahead for a job, if any."""
        return self.get_many([job_id])[0]

    def get_many(self, job_ids: list[str]) -> list[dict[str, Any] | None]:
        if not job_ids:
            return []
        raw = self._r.mget([self.keys.caption(j) for j in job_ids])
        return [json.loads(v) if v else None for v in raw]

    def claim(self, job_ids: list[str], worker: str, ttl_s: float, limit: int) -> list[str]:
        """Claim up to `limit` of `job_ids` (in order) that are still queued and that no other worker
        is captioning ahead; the claims lapse after `ttl_s` whatever becomes of this worker."""
        if not job_ids or limit <= 0:
            return []
        keys: list[str] = []
        for job_id in job_ids:
            keys += [self.keys.job(job_id), self.keys.caption_claim(job_id)]
        picked = self._claim(keys=keys, args=[worker, max(1, int(ttl_s * 1000)), limit])
        return [job_ids[int(n) - 1] for n in picked]

    def offer(self, job_id: str, entry: dict[str, Any], worker: str) -> bool:
        """Leave a caption for a job: True if written (the job was still queued), False otherwise."""
        keys = [self.keys.job(job_id), self.keys.caption_claim(job_id), self.keys.caption(job_id)]
        return bool(self._offer(keys=keys, args=[worker, json.dumps(entry)]))

    def release(self, job_ids: list[str], worker: str) -> None:
        """Drop this worker's claims on jobs it did not caption after all."""
        if job_ids:
            self._release(keys=[self.keys.caption_claim(j) for j in job_ids], args=[worker])
