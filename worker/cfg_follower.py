"""The two ends of a CFG-parallel pair as processes (worker/accel/cfg_parallel.py has the protocol).

Rank 0 is an ordinary `layerq worker` whose settings name the pair's rendezvous
(`LAYERQ_CFG_PARALLEL_PEER`); `connect_leader` is called from `worker.runtime.start` once its model
has loaded. Rank 1 is this module run as a program, `python -m worker.cfg_follower`, with the same
settings: it loads the same model on the pair's second device and serves uncond passes until rank 0
goes away or it gets SIGTERM. `layerq worker --cfg-parallel --gpus 0,1` (worker/supervisor.py) starts
both and restarts the pair when either exits.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any

from layerq.config import Settings

log = logging.getLogger("layerq.cfg_follower")

EXIT_PEER_LOST = 75  # EX_TEMPFAIL: the pair is restarted by its supervisor


def exit_on_peer_lost(lost: Exception) -> None:
    """Rank 0's reaction to a lost peer, in the middle of a job: leave at once, as a worker that died.

    The job's message is unacknowledged and its holding record stays, so the liveness reaper hands it
    back (attempt 2) once the supervisor has restarted the pair, or to any other worker; nothing of
    the job was written yet (results are stored after the pipeline returns). Failing the job instead
    would punish a user for a process crash, and the process group cannot be mended in place."""
    log.error("CFG-parallel peer lost (%s): exiting so the pair restarts", lost)
    logging.shutdown()
    os._exit(EXIT_PEER_LOST)


def connect_leader(settings: Settings, pipeline: Any) -> Any:
    """Rank 0: join the pair and return the `CfgParallel` hook that `DecomposePipeline.run` uses."""
    from worker.accel.cfg_parallel import CfgLink, CfgParallel

    link = CfgLink.connect(settings.cfg_parallel_peer, 0, str(pipeline.device),
                           timeout_s=settings.cfg_parallel_timeout_s,
                           connect_timeout_s=settings.cfg_parallel_connect_timeout_s)
    cfg = CfgParallel(link, on_lost=exit_on_peer_lost)
    runner = getattr(pipeline, "runner", None)
    if runner is not None and settings.warmup_bucket_list:
        # Rank 1 compiles its transformer on the shapes it first sees: warm it on the configured
        # buckets now (rank 0's own blocks are warm already, so this costs rank 0 little).
        import torch

        with torch.inference_mode(), cfg.active(pipeline.pipe):
            runner.warmup(list(settings.warmup_bucket_list), captions=False)
    return cfg


def main() -> int:
    from layerq.logs import setup_logging

    setup_logging(os.environ.get("LAYERQ_LOG_FORMAT", "text"))
    settings = Settings.from_env()
    if not settings.cfg_parallel_peer:
        print("LAYERQ_CFG_PARALLEL_PEER is not set: nothing to follow", file=sys.stderr)
        return 2
    # SIGTERM (a drain, or the supervisor's death) does not stop rank 1 by itself: rank 0 may be
    # finishing a job (Celery's warm shutdown) that needs it. Rank 1 leaves when rank 0 has left,
    # which it sees as the store, hosted by rank 0, going away.
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _frame: stopping.append(signum))

    import torch

    from worker.accel.cfg_parallel import CfgLink, PeerLost, pair_device, serve
    from worker.pipeline import DecomposePipeline

    device = pair_device(settings.device, 1)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)  # the speed-ups' probes and compilation allocate on the current device
    # The same load as rank 0 (same dtype, same speed-ups, so the same kernels), without warm-up:
    # rank 0 warms this rank through the link once both are up.
    pipeline = DecomposePipeline.load(settings.model, device=device, cache_dir=settings.model_cache_dir,
                                      speedups=settings.gpu_speedups, fast_captions=False)
    if pipeline.device.type == "cuda":
        # Only the transformer runs here: give the text encoder's and the VAE's memory back (~17 GB).
        for name in ("text_encoder", "vae"):
            getattr(pipeline.pipe, name).to("meta")
        torch.cuda.empty_cache()
    link = CfgLink.connect(settings.cfg_parallel_peer, 1, str(pipeline.device),
                           timeout_s=settings.cfg_parallel_timeout_s,
                           connect_timeout_s=settings.cfg_parallel_connect_timeout_s)
    log.info("CFG-parallel follower ready on %s", pipeline.device)
    try:
        served = serve(pipeline.pipe.transformer, link)
        log.info("CFG-parallel follower leaving after %d jobs: rank 0 closed the pair", served)
    except PeerLost as lost:
        if stopping:
            log.info("CFG-parallel follower stopping: rank 0 has left")
            return 0
        log.error("%s: exiting so the pair restarts", lost)
        return EXIT_PEER_LOST
    return 0


if __name__ == "__main__":
    sys.exit(main())
