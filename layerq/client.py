"""A small HTTP client for layerq; the CLI's `submit` is built on it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import requests

TERMINAL = {"succeeded", "failed", "canceled", "expired"}


class LayerqApiError(Exception):
    """Raised when the API answers with an error body."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.field = status, code, message, field


class LayerqClient:
    def __init__(
        self, base_url: str, *, timeout_s: float = 60.0, session: requests.Session | None = None,
        api_key: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.http = session or requests.Session()
        if api_key:
            self.http.headers["Authorization"] = f"Bearer {api_key}"

    def submit(
        self, image: bytes | str | Path, params: dict[str, Any] | None = None, filename: str = "image.png",
        *, cache: bool = True,
    ) -> dict:
        """Submit one decomposition; return the job as accepted (`queued`), or at once `succeeded`
        when an identical earlier job answers it (`cached_from`; `cache=False` opts out)."""
        if not isinstance(image, bytes):
            filename = Path(image).name
            image = Path(image).read_bytes()
        resp = self.http.post(
            f"{self.base_url}/v1/jobs",
            files={"image": (filename, image, "application/octet-stream")},
            data={"params": json.dumps(params or {}), **({} if cache else {"cache": "false"})},
            timeout=self.timeout_s,
        )
        return self._json(resp)

    def decompose_layer(self, job_id: str, layer: int, params: dict[str, Any] | None = None) -> dict:
        """Decompose layer `layer` of a finished job's set into sub-layers (a new job)."""
        return self._post("/v1/layersets/decompose", {"source": {"job_id": job_id, "layer": layer},
                                                      "params": params or {}})

    def compose(self, job_id: str, ops: list[dict[str, Any]]) -> dict:
        """Apply `ops` (hide, delete, reorder, move, scale, recolour, opacity) to a finished job's set."""
        return self._post("/v1/layersets/compose", {"source": {"job_id": job_id}, "params": {"ops": ops}})

    def combine(self, layers: list[bytes | str | Path], params: dict[str, Any] | None = None) -> dict:
        """Stack RGBA images (bottom first) into a layer set (a new job)."""
        files = [("layers", (f"layer{i}.png", data if isinstance(data, bytes) else Path(data).read_bytes(),
                             "application/octet-stream")) for i, data in enumerate(layers)]
        resp = self.http.post(f"{self.base_url}/v1/layersets/combine", files=files,
                              data={"params": json.dumps(params or {})}, timeout=self.timeout_s)
        return self._json(resp)

    def _post(self, path: str, body: dict[str, Any]) -> dict:
        return self._json(self.http.post(f"{self.base_url}{path}", json=body, timeout=self.timeout_s))

    def edit(
        self, job_id: str, layer: int, prompt: str, params: dict[str, Any] | None = None, *, cache: bool = True,
        webhook: dict[str, Any] | None = None,
    ) -> dict:
        """Edit layer `layer` of the finished job `job_id` from an instruction; return the edit job as
        accepted. Its result is a new layer set: the parent's stack with that layer replaced."""
        body: dict[str, Any] = {"source": {"job_id": job_id, "layer": layer},
                                "params": {**(params or {}), "prompt": prompt}, "cache": cache}
        if webhook:
            body["webhook"] = webhook
        return self._json(self.http.post(f"{self.base_url}/v1/edits", json=body, timeout=self.timeout_s))

    def edit_image(
        self, image: bytes | str | Path, prompt: str, params: dict[str, Any] | None = None, filename: str = "image.png",
    ) -> dict:
        """Edit an uploaded RGBA image (a one-layer set)."""
        if not isinstance(image, bytes):
            filename = Path(image).name
            image = Path(image).read_bytes()
        resp = self.http.post(f"{self.base_url}/v1/edits",
                              files={"image": (filename, image, "application/octet-stream")},
                              data={"params": json.dumps({**(params or {}), "prompt": prompt})}, timeout=self.timeout_s)
        return self._json(resp)

    def get(self, job_id: str) -> dict:
        return self._json(self.http.get(f"{self.base_url}/v1/jobs/{job_id}", timeout=self.timeout_s))

    def batches(self, state: str | None = None, page_size: int = 100) -> Iterator[dict]:
        """This key's batches, newest first (`GET /v1/batches`), every page; `state`: `active` or `done`."""
        cursor: str | None = "0"
        while cursor is not None:
            query = {"cursor": cursor, "limit": page_size, **({"state": state} if state else {})}
            page = self._json(self.http.get(f"{self.base_url}/v1/batches", params=query, timeout=self.timeout_s))
            yield from page["items"]
            cursor = page["next_cursor"]

    def health(self) -> dict:
        return self._json(self.http.get(f"{self.base_url}/healthz", timeout=self.timeout_s))

    def wait(
        self,
        job_id: str,
        *,
        timeout_s: float = 3600.0,
        poll_s: float = 0.25,
        on_update: Callable[[dict], None] | None = None,
    ) -> dict:
        """Poll until the job ends; return its final record (raise TimeoutError past `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.get(job_id)
            if on_update:
                on_update(job)
            if job["status"] in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s} s")
            time.sleep(poll_s)

    def events(self, path: str) -> Iterator[tuple[str, dict]]:
        """(event, data) from a Server-Sent Events stream (`/v1/jobs/<id>/events`), until it closes.
        The read timeout only has to outlast the server's heartbeat."""
        with self.http.get(f"{self.base_url}{path}", stream=True, timeout=(self.timeout_s, 120)) as resp:
            if resp.status_code >= 400:
                self._json(resp)
            event, data = "message", []
            for line in resp.iter_lines(decode_unicode=True):
                if line is None:
                    continue
                if line == "":
                    if data:
                        yield event, json.loads("\n".join(data))
                    event, data = "message", []
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())

    def follow(self, job_id: str, *, timeout_s: float = 3600.0,
               on_update: Callable[[dict], None] | None = None) -> dict:
        """Follow a job's event stream (reconnecting after the server's stream limit) until it ends;
        return its final record. Falls back to polling if the server has no event streams."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                for event, data in self.events(f"/v1/jobs/{job_id}/events"):
                    if event == "progress" and on_update:
                        on_update(data)
                    elif event == "done":
                        return data
                    elif event == "gone":
                        raise LayerqApiError(404, "not_found", f"job {job_id} expired while followed")
            except LayerqApiError as exc:
                if exc.status == 404 and exc.field is None:  # no such route: a server without streams
                    return self.wait(job_id, timeout_s=max(1.0, deadline - time.monotonic()), on_update=on_update)
                if exc.status in (429, 503):
                    time.sleep(2)
                    continue
                raise
            except (requests.ConnectionError, requests.Timeout):
                time.sleep(1)  # a restarted API process or proxy: reconnect
        raise TimeoutError(f"job {job_id} did not end within {timeout_s} s")

    def download(self, job: dict, out_dir: str | Path) -> list[Path]:
        """Download a succeeded job's layers, composite and exports into `out_dir`; return the paths."""
        result = job.get("result")
        if job.get("status") != "succeeded" or not result:
            raise ValueError(f"job {job.get('id')} has no result (status {job.get('status')})")
        out = Path(out_dir)
        (out / "layers").mkdir(parents=True, exist_ok=True)
        targets = [(layer["url"], out / "layers" / f"{layer['index']:02d}.png") for layer in result["layers"]]
        targets.append((result["composite"], out / "composite.png"))
        targets.append((result["manifest"], out / "manifest.json"))
        targets += [(url, out / f"layers.{fmt}") for fmt, url in result["exports"].items()]
        for url, path in targets:
            resp = self.http.get(url, timeout=self.timeout_s)
            resp.raise_for_status()
            path.write_bytes(resp.content)
        return [p for _, p in targets]

    def _json(self, resp: requests.Response) -> dict:
        try:
            body = resp.json()
        except ValueError:
            resp.raise_for_status()
            raise
        if resp.status_code >= 400:
            err = body.get("error", {}) if isinstance(body, dict) else {}
            raise LayerqApiError(resp.status_code, err.get("code", "error"), err.get("message", resp.text), err.get("field"))
        return body
