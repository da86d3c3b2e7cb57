"""Every Redis key layerq writes, in one place (rq's `keys.py` is the model).

Only `storage/` speaks Redis; its stores take their key names from here, so a record's keys, its
lifetime and its owner can be read off one module (the README's state table lists them). Every key
starts with `Settings.key_prefix`, so several deployments can share one Redis. Object-store keys
(inputs, layers, exports) are not here: they live in `layerq/objects.py`.
"""

from __future__ import annotations


class Keys:
    """Key names under one deployment's prefix. Pure: builds strings, never talks to Redis."""

    def __init__(self, prefix: str = "layerq") -> None:
        self.prefix = prefix

    # --- jobs (storage/jobs.py) ---------------------------------------------------------------
    def job(self, job_id: str) -> str:
        """Hash: the job record (status, params, result, ...)."""
        return f"{self.prefix}:job:{job_id}"

    def job_log(self, job_id: str) -> str:
        """List: the job's status transitions, `old>new@time`."""
        return f"{self.prefix}:job:{job_id}:log"

    def queued(self, queue: str) -> str:
        """Sorted set: queued job ids by enqueue time (queue positions)."""
        return f"{self.prefix}:queued:{queue}"

    def unsent(self, queue: str) -> str:
        """Sorted set: jobs recorded but not yet confirmed on the broker."""
        return f"{self.prefix}:unsent:{queue}"

    # --- captions written ahead (storage/captions.py) -----------------------------------------
    def caption(self, job_id: str) -> str:
        """String (JSON): the auto-caption a worker wrote ahead for a queued job (key, text, by whom)."""
        return f"{self.prefix}:caption:{job_id}"

    def caption_claim(self, job_id: str) -> str:
        """String (lock, one look-ahead): which worker is captioning this queued job ahead now."""
        return f"{self.prefix}:caption-claim:{job_id}"

    # --- fair admission (storage/admission.py) ------------------------------------------------
    def backlog_prefix(self, queue: str) -> str:
        """What the admission script appends `<priority>:<tenant>` to."""
        return f"{self.prefix}:backlog:{queue}:"

    def backlog(self, queue: str, priority: str, tenant: str) -> str:
        """List: one tenant's job ids of one priority not yet admitted to the broker, in order."""
        return f"{self.backlog_prefix(queue)}{priority}:{tenant}"

    def backlog_tenants(self, queue: str, priority: str) -> str:
        """Sorted set: tenants with a backlog of this priority, by their turn (lowest served next)."""
        return f"{self.prefix}:backlog-tenants:{queue}:{priority}"

    def admitted(self, queue: str) -> str:
        """Sorted set: jobs admitted to the broker and not yet taken by a worker, by admission time."""
        return f"{self.prefix}:admitted:{queue}"

    def admit_turn(self, queue: str) -> str:
        """Counter: admissions so far (every Nth prefers bulk, so bulk is never starved)."""
        return f"{self.prefix}:admit-turn:{queue}"

    def deadlines(self, queue: str) -> str:
        """Sorted set: queued jobs with a `cancel_after_s`, by the time they expire."""
        return f"{self.prefix}:deadlines:{queue}"

    # --- batches (storage/batches.py) ---------------------------------------------------------
    @property
    def batch_prefix(self) -> str:
        """What the Lua scripts prepend to a job's batch id to reach the batch's counters."""
        return f"{self.prefix}:batch:"

    def batch(self, batch_id: str) -> str:
        """Hash: batch settings and per-status counters."""
        return f"{self.batch_prefix}{batch_id}"

    def batch_jobs(self, batch_id: str) -> str:
        """List: the batch's job ids in item order."""
        return f"{self.batch_prefix}{batch_id}:jobs"

    def tenant_jobs(self, tenant: str) -> str:
        """Sorted set: a tenant's jobs outside batches, by creation time (`GET /v1/jobs`, newest first)."""
        return f"{self.prefix}:tenant:{tenant}:jobs"

    def tenant_batches(self, tenant: str) -> str:
        """Sorted set: a tenant's batches, by creation time (`GET /v1/batches`, newest first)."""
        return f"{self.prefix}:tenant:{tenant}:batches"

    # --- result cache, idempotency, uploads ---------------------------------------------------
    def cache(self, tenant: str, digest: str) -> str:
        """String: id of the finished job that answers (tenant, input bytes, params, model)."""
        return f"{self.prefix}:cache:{tenant}:{digest}"

    def idempotency(self, tenant: str, key_digest: str) -> str:
        """String (JSON): a submission's fingerprint and, once answered, its response."""
        return f"{self.prefix}:idem:{tenant}:{key_digest}"

    def upload(self, upload_id: str) -> str:
        """String: the tenant that asked for upload `uploads/<upload_id>/...`."""
        return f"{self.prefix}:upload:{upload_id}"

    # --- lineage (storage/lineage.py) ---------------------------------------------------------
    def parent(self, job_id: str) -> str:
        """String (JSON): the job and layer a job was made from (`{"job_id", "layer"}`)."""
        return f"{self.prefix}:job:{job_id}:parent"

    def children(self, job_id: str) -> str:
        """List: ids of the jobs made from a job's layer set, in submission order."""
        return f"{self.prefix}:job:{job_id}:children"

    def readers(self, job_id: str) -> str:
        """List: ids of the jobs made from a *cached copy* of this job's layer set: they read this
        job's objects (a cached job owns none), so the reaper must wait for them too."""
        return f"{self.prefix}:job:{job_id}:readers"

    # --- webhooks (storage/deliveries.py) -----------------------------------------------------
    def webhook(self, delivery_id: str) -> str:
        """Hash: one (job, event) delivery: job_id, event, url, state, attempts, last_*."""
        return f"{self.prefix}:webhook:{delivery_id}"

    def webhook_attempts(self, delivery_id: str) -> str:
        """List (JSON entries): every attempt of one delivery."""
        return f"{self.prefix}:webhook:{delivery_id}:attempts"

    # --- workers (storage/workers.py) ---------------------------------------------------------
    def workers(self, queue: str) -> str:
        """Sorted set: worker name → last heartbeat (unix seconds)."""
        return f"{self.prefix}:workers:{queue}"

    def holding(self, queue: str, worker: str) -> str:
        """Hash: the job and broker delivery tag a worker is running."""
        return f"{self.prefix}:holding:{queue}:{worker}"

    def reaping(self, worker: str) -> str:
        """String (lock, 60 s): which live worker is putting a dead worker's job back."""
        return f"{self.prefix}:reaping:{worker}"

    def sending_unsent(self, queue: str = "") -> str:
        """String (lock, one heartbeat): which worker sweeps the unsent jobs (of `queue`) now."""
        return f"{self.prefix}:sending-unsent" + (f":{queue}" if queue else "")

    def worker_info(self, worker: str) -> str:
        """String (JSON, lives 3 beats): what a live worker says about itself (kind, queues, memory
        class and budget, memory plan), renewed with each heartbeat; for /healthz."""
        return f"{self.prefix}:worker:{worker}"

    # --- service times (storage/stats.py) -----------------------------------------------------
    def stats(self, kind: str) -> str:
        """Hash: median stage times per bucket (`640x4:step_s`, ...)."""
        return f"{self.prefix}:stats:{kind}"

    def stats_samples(self, kind: str) -> str:
        """Hash (JSON lists): the last samples behind each median."""
        return f"{self.prefix}:stats:{kind}:samples"

    # --- retention (storage/retention.py) -----------------------------------------------------
    def retention(self) -> str:
        """Sorted set: job id → when its objects may be deleted (unix seconds). Outlives the job
        records it indexes, so the reaper still knows a job's prefix after its record expired."""
        return f"{self.prefix}:retention"

    def reaping_results(self) -> str:
        """String (lock, one reaper pass): which CPU worker is deleting expired results now."""
        return f"{self.prefix}:reaping-results"

    # --- API keys (storage/apikeys.py) --------------------------------------------------------
    def api_key(self, key_id: str) -> str:
        """Hash: one API key: tenant, sha256 of the secret, created_at, revoked_at. No expiry."""
        return f"{self.prefix}:apikey:{key_id}"

    def api_keys(self) -> str:
        """Set: every API key id ever issued (for `layerq keys list`)."""
        return f"{self.prefix}:apikeys"

    @property
    def rate_limit_prefix(self) -> str:
        """What flask-limiter prepends to its counters (it writes them itself, through `limits`)."""
        return f"{self.prefix}:ratelimit"
    # --- durable submissions (storage/jobs.py `replicated`) ------------------------------------
    def replication_barrier(self) -> str:
        """String: written just before `WAIT`, so the wait covers every earlier write (docs/redis-ha.md)."""
        return f"{self.prefix}:replication-barrier"
