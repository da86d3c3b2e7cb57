"""The OpenAPI paths of the layer-set routes (api/layersets.py), merged into the document by
`api.openapi.build_document`. Their bodies are the pydantic models of `layerq.layersets`."""

from __future__ import annotations

from typing import Any

from api.form import RETAIN_PATTERN
from layerq.layer_ops import CombineParams
from layerq.layersets import MAX_COMBINE_LAYERS, CombineRequest, ComposeRequest, LayerDecomposeRequest
from layerq.webhooks import WebhookSpec

# 404: the source job (or an upload) is not the caller's; 409: the source has not finished yet.
LAYERSET_SUBMIT = (400, 404, 409, 413, 503)


def paths(*, ref, json, errors, idempotency, job_view, job_links, upload_key, image_types) -> dict[str, Any]:
    """Build with the helpers of api/openapi.py (passed in, so neither module imports the other)."""

    def submission(summary: str, operation_id: str, content: dict[str, Any], description: str) -> dict[str, Any]:
        return {"post": {
            "summary": summary, "operationId": operation_id, "description": description,
            "parameters": [idempotency],
            "requestBody": {"required": True, "content": content},
            "responses": {
                "202": {**json(job_view, "Accepted; poll the Location"),
                        "headers": {"Location": {"schema": {"type": "string"}}}, "links": job_links},
                **errors(*LAYERSET_SUBMIT),
            },
        }}

    return {
        "/v1/layersets/decompose": submission(
            "Decompose one layer of a finished layer set into sub-layers (a `decompose` job)",
            "decomposeLayer", {"application/json": {"schema": ref(LayerDecomposeRequest)}},
            "The new job's layers are the source set's with `source.layer` replaced by its sub-layers; its "
            "PSD groups them under the layer's name and its ORA nests a stack. 404: no such job of the "
            "caller; 409: the source has not finished; 400: it failed, or `source.layer` is out of range."),
        "/v1/layersets/compose": submission(
            "Apply operations to a finished layer set (a `compose` job on the CPU queue)",
            "composeLayers", {"application/json": {"schema": ref(ComposeRequest)}},
            "Operations address layers by their index in the source set; one that does not fit the set "
            "(index out of range or deleted earlier, a move past 4x the canvas) is a 400 naming "
            "`params.ops.N.field`, and nothing is enqueued. Compose and combine jobs are short CPU work: "
            "they are sent at once, with no `priority` or `cancel_after_s`."),
        "/v1/layersets/combine": submission(
            "Stack RGBA layers, bottom first, into a layer set (a `combine` job on the CPU queue)",
            "combineLayers", {
                "application/json": {"schema": ref(CombineRequest)},
                "multipart/form-data": {
                    "schema": {"type": "object", "required": ["layers"], "additionalProperties": False,
                               "properties": {
                                   "layers": {"type": "array", "minItems": 1, "maxItems": MAX_COMBINE_LAYERS,
                                              "items": {"type": "string", "format": "binary"},
                                              "description": "The layers, bottom first (PNG with alpha, ...)"},
                                   "params": ref(CombineParams),
                                   "webhook": ref(WebhookSpec),
                                   "retain_s": {"type": "string", "pattern": RETAIN_PATTERN,
                                                "description": "Seconds results are kept once the job ends"}}},
                    "encoding": {"layers": {"contentType": image_types},
                                 "params": {"contentType": "application/json"},
                                 "webhook": {"contentType": "application/json"}},
                },
            },
            "JSON names uploads (`input_keys`); multipart sends the layers as repeated `layers` file parts. "
            "`params.placements[i]` places layer i (default: at the origin); at most one placement per layer."),
    }


def tighten(schemas: dict[str, Any], upload_key: dict[str, Any]) -> None:
    """What the routes check beyond the models' own types."""
    schemas["CombineRequest"]["properties"]["input_keys"]["items"] = upload_key
    recolour = schemas.get("Recolour")
    if recolour is not None:  # exactly one of hue_shift and tint (null counts as absent)
        recolour["oneOf"] = [
            {"required": ["hue_shift"], "properties": {"hue_shift": {"type": "number"}, "tint": {"type": "null"}}},
            {"required": ["tint"], "properties": {"tint": {"type": "string"}, "hue_shift": {"type": "null"}}},
        ]
