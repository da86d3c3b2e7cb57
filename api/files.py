"""Downloads for the local-disk backend: the API serves the files behind the URLs it signed, after
checking signature, expiry and that the signature was made for this very key."""

from __future__ import annotations

from flask import Blueprint, abort, request, send_file

from api.context import services
from storage.local import LocalDiskStore

bp = Blueprint("files", __name__)


@bp.get("/files/<path:key>")
def download(key: str):
    store = services().store
    if not isinstance(store, LocalDiskStore):
        abort(404)
    store.verify_url("GET", key, request.args)  # raises SignatureInvalid → 403
    path = store.open_path(key)  # raises ObjectNotFound → 404
    download_name = request.args.get("download")
    return send_file(
        path,
        as_attachment=bool(download_name),
        download_name=download_name or path.name,
        conditional=True,
        max_age=0,
    )


@bp.put("/files/<path:key>")
def upload(key: str):
    """The local backend's equivalent of a presigned S3 PUT (only under uploads/)."""
    store = services().store
    if not isinstance(store, LocalDiskStore) or not key.startswith("uploads/"):
        abort(404)
    store.verify_url("PUT", key, request.args, content_type=request.headers.get("Content-Type"))
    data = request.get_data(cache=False)  # bounded by MAX_CONTENT_LENGTH (413 above it)
    store.put(key, data, request.mimetype or "application/octet-stream")
    return "", 200
