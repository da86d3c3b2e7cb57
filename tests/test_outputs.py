"""`store_layer_set`, the one path every job kind stores its layer set by: every object before the
manifest, and no manifest when any write failed (the job's failure path then clears its prefix)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from PIL import Image

from layerq import objects as keys
from layerq.config import Settings
from storage.base import StorageUnavailable
from storage.local import LocalDiskStore
from worker.layersets.tree import Decomposition
from worker.outputs import manifest_for, store_layer_set

FORMATS = "psd,pptx,zip,ora"


class RecordingStore(LocalDiskStore):
    """A local store that remembers the order of writes and can refuse one key."""

    def __init__(self, root, refuse: str | None = None) -> None:
        super().__init__(root, "secret")
        self.written: list[str] = []
        self.refuse = refuse

    def put(self, key, data, content_type="application/octet-stream"):
        if self.refuse and key.endswith(self.refuse):
            raise StorageUnavailable(f"cannot write {key}")
        super().put(key, data, content_type)
        self.written.append(key)


def runtime(store: RecordingStore) -> SimpleNamespace:
    return SimpleNamespace(store=store, settings=Settings(export_formats=FORMATS))


def stack() -> list[Image.Image]:
    return [Image.new("RGBA", (32, 24), (200, 10, 10, 255)), Image.new("RGBA", (32, 24), (0, 0, 250, 128))]


def test_every_object_is_stored_before_the_manifest(tmp_path):
    store = RecordingStore(tmp_path)
    layers = stack()
    manifest = manifest_for("j1", "compose", [im.size for im in layers], FORMATS.split(","), {})
    encoded = []
    result = store_layer_set(runtime(store), "j1", layers, manifest, on_encoded=lambda: encoded.append(True))

    assert encoded == [True]
    assert store.written[-1] == keys.manifest_key("j1")
    expected = {ref["key"] for ref in manifest["layers"]} | {manifest["composite"], *manifest["exports"].values()}
    assert set(store.written[:-1]) == expected
    assert json.loads(store.get(keys.manifest_key("j1"))) == manifest
    assert result["manifest"] == keys.manifest_key("j1") and result["exports"] == manifest["exports"]


def test_a_tree_is_stored_the_same_way(tmp_path):
    store = RecordingStore(tmp_path)
    parent = stack()
    tree = Decomposition(parent, {1: Decomposition(stack())})
    manifest = manifest_for("j2", "decompose", [im.size for im in parent + parent[:1]], FORMATS.split(","), {})
    store_layer_set(runtime(store), "j2", tree, manifest)
    assert store.written[-1] == keys.manifest_key("j2")
    assert keys.export_key("j2", "psd") in store.written and keys.layer_key("j2", 2) in store.written


@pytest.mark.parametrize("refused", ["layers/01.png", "composite.png", "exports/layers.psd", "exports/layers.ora"])
def test_a_failed_write_leaves_no_manifest(tmp_path, refused):
    store = RecordingStore(tmp_path, refuse=refused)
    layers = stack()
    manifest = manifest_for("j3", "combine", [im.size for im in layers], FORMATS.split(","), {})
    with pytest.raises(StorageUnavailable):
        store_layer_set(runtime(store), "j3", layers, manifest)
    assert keys.manifest_key("j3") not in store.written
    assert not store.exists(keys.manifest_key("j3"))
