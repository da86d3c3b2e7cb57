"""schemathesis hooks (loaded through SCHEMATHESIS_HOOKS by tests/fuzzing.py).

They touch *positive* cases only, and only where a request's validity depends on something no
JSON Schema can state, so that "schema-valid request rejected" keeps meaning a real contract bug:

- a webhook URL must resolve to an address the server accepts (DNS and the deployment's allow-list
  at request time): positive cases point theirs at the fuzz stack's allow-listed loopback target;
- a multipart batch item's `file` must name a *file* part (one with a filename) of the same
  request, and schemathesis sends parts the schema does not name (`additionalProperties`) without
  a filename: positive multipart batches name an uploaded input instead (multipart batches with
  files are covered by tests/test_e2e.py);
- an `image` part must be a decodable image: positive cases draw real ones (PNG, JPEG, WebP);
- a combine's `layers` are file parts, but schemathesis sends the items of an array of binaries
  without a filename (form fields, not files): positive multipart combines name an upload in JSON
  instead (multipart combines with files are covered by tests/test_layerset_jobs.py), its
  `retain_s` form field becoming the JSON number.
- an edit's `matte: "model"` needs a matte model the server is configured with: positive cases use
  `chroma` instead; an edit batch's dry run needs a measured edit job (the fuzz stack has no edit
  worker): positive edit batches are submitted instead (their sources and uploads do not exist: 404).
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode

from layerq.sample import sample_png

_PNG = sample_png(64, 64)


def _encoded(fmt: str) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(_PNG)).convert("RGB").save(buf, format=fmt)
    return buf.getvalue()


for _media_type, _data in (("image/png", _PNG), ("image/jpeg", _encoded("JPEG")), ("image/webp", _encoded("WEBP"))):
    schemathesis.openapi.media_type(_media_type, st.just(_data))


def _point_webhook(holder: Any) -> None:
    hook = holder.get("webhook") if isinstance(holder, dict) else None
    if isinstance(hook, dict) and "url" in hook:
        hook["url"] = os.environ.get("LAYERQ_FUZZ_WEBHOOK_URL", "http://127.0.0.1:9/")


def _use_uploads(body: dict[str, Any]) -> None:
    batch = body.get("batch")
    if not isinstance(batch, dict) or not isinstance(batch.get("items"), list):
        return
    for item in batch["items"]:
        if isinstance(item, dict) and isinstance(item.get("file"), str):
            item.pop("file")
            item["input_key"] = "uploads/fuzz/input.png"


@schemathesis.hook
def map_case(ctx, case):
    if case.meta is None or case.meta.generation.mode is not GenerationMode.POSITIVE:
        return case
    if case.operation.path.endswith("/events"):
        # An event stream of a live job lasts until the job ends; the fuzzer needs only its first events.
        case.query = {**(case.query or {}), "max_s": 2}
        return case
    body = case.body
    if not isinstance(body, dict):
        return case
    if case.operation.path == "/v1/edits" and not isinstance(body.get("params"), dict):
        # schemathesis' coverage phase sends the JSON part `params` as "" in a case it marks positive;
        # an edit's params are required (its instruction), so that case is given a real object.
        body["params"] = {"prompt": "fuzz"}
    _point_webhook(body)
    _point_webhook(body.get("batch"))
    if case.operation.path == "/v1/batches" and case.media_type == "multipart/form-data":
        _use_uploads(body)
    if case.operation.path == "/v1/layersets/combine" and case.media_type == "multipart/form-data":
        case.media_type = "application/json"
        case.multipart_content_types = None
        case.body = {"input_keys": ["uploads/fuzz/input.png"],
                     **{k: v for k, v in body.items() if k in ("params", "webhook")}}
        if isinstance(body.get("retain_s"), str) and body["retain_s"].isdigit():
            case.body["retain_s"] = int(body["retain_s"])  # a form field's digits; JSON's is a number
    # `matte: "model"` needs a server-configured matte model.
    batch = body.get("batch") if isinstance(body.get("batch"), dict) else body
    holders = [body.get("params"), batch.get("defaults"),
               *[i.get("params") for i in batch.get("items") or [] if isinstance(i, dict)]]
    for holder in holders:
        if isinstance(holder, dict) and holder.get("matte") == "model":
            holder["matte"] = "chroma"
    if batch.get("kind") == "edit" and batch.get("dry_run"):
        batch["dry_run"] = False  # an edit dry run needs a measured edit job; the fuzz stack runs no edit worker
    return case
