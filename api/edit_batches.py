"""The items of an edit batch (`POST /v1/batches` with `kind: "edit"`): each edits a layer of a finished
job (`source`), an upload (`input_key`) or a file part (`file`), with `defaults` and per-item `params`
merged into EditParams: one instruction over many layers (a `prompt` in `defaults`), or one per item.
Every item is checked, its source included, before anything is written."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from api.bodies import parse_model
from api.edits import _checked, source_item
from api.submission import Item
from layerq.edits import KIND, EditJobParams, EditParams
from layerq.errors import ValidationFailed
from layerq.queues import EDIT_QUEUE
from layerq.requests import BatchRequest
from storage.services import Services


def edit_items(svc: Services, body: BatchRequest, read_file: Callable[[str, int], Any]) -> tuple[list, list[Item]]:
    params: list[EditJobParams] = []
    items: list[Item] = []
    for i, item in enumerate(body.items):
        field = f"items.{i}"
        if sum(x is not None for x in (item.source, item.input_key, item.file)) != 1:
            raise ValidationFailed("each edit item needs exactly one of source, input_key or file", field=field)
        merged = {**body.defaults, **item.params}
        p = _checked(parse_model(EditParams, merged, prefix=f"{field}.params"), svc)
        if item.source is not None:
            it = source_item(svc, item.source, p, f"{field}.source")
        elif item.file is not None:
            data, image = read_file(item.file, i)
            it = Item(params=EditJobParams(**p.model_dump()), field=f"{field}.file", data=data, image=image,
                      kind=KIND, queue=EDIT_QUEUE, model=svc.settings.edit_model)
        else:
            it = Item(params=EditJobParams(**p.model_dump()), field=f"{field}.input_key", input_key=item.input_key,
                      kind=KIND, queue=EDIT_QUEUE)
        params.append(it.params)
        items.append(it)
    return params, items
