"""The fit table of GPU memory classes (layerq/memory_classes.py), the API's routing by it
(api/routing.py) and the worker's queues by its budget (worker/memory_budget.py): pure logic, no
processes. The end-to-end behaviour is in tests/test_memory_routing.py."""

from __future__ import annotations

import pytest

from api.routing import decompose_queue_for
from layerq import memory_classes as mc
from layerq.config import Settings
from layerq.errors import ExceedsGpuMemory
from layerq.params import DecomposeParams
from layerq.queues import DECOMPOSE_QUEUE, DECOMPOSE_QUEUES, GPU_QUEUES, TASK_OF_QUEUE, DECOMPOSE_TASK
from worker.memory_budget import WorkerMemory, resolve_queues


def test_the_formula_reproduces_the_measured_peaks_it_was_fitted_to():
    # Full residency: 53.8 GiB of weights plus the activation term is the measured peak, allocated.
    for resolution, peak in ((640, 60.3), (1024, 70.4)):
        act = mc.ACTIVATION_GIB_PER_KTOKEN * mc.tokens(resolution, 4) / 1000
        assert 53.8 + act == pytest.approx(peak, abs=0.05)
    # Everything streamed at 640/4 measured 10.0 GiB reserved: the formula must not claim less.
    assert mc.denoise_need_gib(640, 4) - mc.CONTEXT_GIB >= 10.0


def test_tokens_are_layers_plus_composite_times_the_latent_grid():
    assert mc.tokens(640, 4) == 5 * 40 * 40 == 8000
    assert mc.tokens(1024, 10) == 11 * 64 * 64


def test_need_grows_with_layers_and_resolution_and_an_auto_caption_never_lowers_it():
    for res in mc.RESOLUTIONS:
        needs = [mc.need_gib(res, n, False) for n in mc.LAYER_COUNTS]
        assert needs == sorted(needs) and len(set(needs)) == len(needs)
        for n in mc.LAYER_COUNTS:
            assert mc.need_gib(1024, n, False) > mc.need_gib(640, n, False)
            assert mc.need_gib(res, n, True) >= mc.need_gib(res, n, False)


def test_a_class_fits_everything_a_smaller_class_fits():
    for row in mc.fit_table():
        fitting = [c for c in mc.CLASSES if c.name in row["classes"]]
        assert fitting == list(mc.CLASSES[: len(fitting)]), row  # a prefix of largest-first


def test_fit_table_rows_that_matter():
    table = {(r["resolution"], r["layers"], r["auto_caption"]): r["classes"] for r in mc.fit_table()}
    assert len(table) == 2 * 9 * 2
    assert all("80" in classes for classes in table.values()), "an 80 GB card runs every job"
    assert table[(640, 4, False)] == ["80", "48", "24", "16"]  # the 14 GiB measurement
    assert table[(640, 4, True)] == ["80", "48", "24"]  # an auto-caption holds the 15.5 GiB text encoder
    assert table[(640, 10, True)] == ["80", "48"]
    assert table[(1024, 4, False)] == ["80", "48"]  # the 1024 bucket at 46 GiB
    assert table[(1024, 2, False)] == ["80", "48", "24"]
    assert table[(1024, 10, False)] == ["80"]


@pytest.mark.parametrize(("budget", "name"), [
    (None, "80"), (139.8, "80"), (79.2, "80"), (78.0, "80"), (77.9, "48"), (46, "48"), (45.0, "48"),
    (40.0, "24"), (23.99, "24"), (22, "24"), (22.49, "24"), (16.0, "16"), (14, "16"), (15.0, "16"),
])
def test_a_budget_gets_the_largest_class_whose_floor_it_reaches(budget, name):
    assert mc.class_of_budget(budget).name == name


def test_a_budget_below_every_class_runs_no_decompose_job():
    assert mc.class_of_budget(12.0) is None
    with pytest.raises(ValueError, match="below the smallest memory class"):
        resolve_queues(["decompose"], WorkerMemory(12.0, None), Settings())


def test_queues_by_class_keep_the_plain_decompose_queue_for_the_largest():
    assert DECOMPOSE_QUEUES == ("decompose", "decompose.48", "decompose.24", "decompose.16")
    assert set(DECOMPOSE_QUEUES) <= GPU_QUEUES
    assert all(TASK_OF_QUEUE[q] == DECOMPOSE_TASK for q in DECOMPOSE_QUEUES)


def test_a_worker_consumes_its_class_queue_and_every_smaller_one():
    s = Settings(memory_classes="80,48,24,16")
    for budget, expected in ((None, list(DECOMPOSE_QUEUES)), (46.0, ["decompose.48", "decompose.24", "decompose.16"]),
                             (22.0, ["decompose.24", "decompose.16"]), (14.0, ["decompose.16"])):
        memory = WorkerMemory(budget, mc.class_of_budget(budget))
        assert resolve_queues([DECOMPOSE_QUEUE], memory, s) == expected
        assert resolve_queues([DECOMPOSE_QUEUE, "cpu"], memory, s) == [*expected, "cpu"]
    assert resolve_queues(["cpu"], WorkerMemory(14.0, mc.class_of_budget(14.0)), s) == ["cpu"]


def test_a_worker_refuses_a_queue_named_by_hand_that_its_class_cannot_serve():
    small = WorkerMemory(22.0, mc.class_of_budget(22.0))
    assert resolve_queues(["decompose.16"], small, Settings()) == ["decompose.16"]
    with pytest.raises(ValueError, match="decompose.48"):
        resolve_queues(["decompose.48"], small, Settings())


def test_api_routes_each_job_to_the_smallest_configured_class_that_fits():
    fleet = Settings(memory_classes="80,48,24")
    route = lambda **p: decompose_queue_for(DecomposeParams(**p), fleet)  # noqa: E731
    assert route(prompt="a poster") == "decompose.24"  # would fit 16, but no 16 GB workers here
    assert route() == "decompose.24"
    assert route(resolution=1024, layers=4) == "decompose.48"
    assert route(resolution=1024, layers=10) == "decompose"
    assert route(layers="auto", max_layers=10) == "decompose.48"
    # The default fleet (80 GB-class only): every job on `decompose`, as before memory classes.
    assert decompose_queue_for(DecomposeParams(resolution=1024, layers=10), Settings()) == DECOMPOSE_QUEUE


@pytest.mark.parametrize(("params", "fleet", "field", "words"), [
    ({"resolution": 1024, "layers": 10}, "48,24", "params.layers", "at most 7 layers at resolution 1024"),
    ({"resolution": 640, "layers": 10, "prompt": "x"}, "24", "params.layers", "at most 8 layers"),
    ({"layers": "auto", "max_layers": 10, "resolution": 1024}, "48", "params.max_layers", "at most 7"),
    ({"layers": 4}, "16", "params.prompt", "give a `prompt`"),
    ({"resolution": 1024, "layers": 2, "prompt": "x"}, "16", "params.resolution", "resolution 640 fits up to 4"),
])
def test_a_job_no_configured_class_fits_is_refused_naming_the_field(params, fleet, field, words):
    with pytest.raises(ExceedsGpuMemory) as err:
        decompose_queue_for(DecomposeParams(**params), Settings(memory_classes=fleet))
    assert err.value.field == field and words in err.value.message, err.value.message
    assert f"LAYERQ_MEMORY_CLASSES={fleet}" in err.value.message and err.value.code == "exceeds_gpu_memory"


def test_memory_classes_setting_is_checked():
    assert [c.name for c in Settings(memory_classes="24, 80GB").fleet_memory_classes] == ["80", "24"]
    with pytest.raises(ValueError, match="LAYERQ_MEMORY_CLASSES"):
        Settings(memory_classes="80,40").fleet_memory_classes


def test_the_worker_refuses_a_job_its_class_does_not_fit_before_it_touches_the_gpu():
    from types import SimpleNamespace

    from worker.decompose import _check_fits

    small = SimpleNamespace(memory=WorkerMemory(14.0, mc.class_of_budget(14.0)))
    _check_fits(small, DecomposeParams(prompt="a poster"))  # 640/4 with a prompt: 13.0 GiB fits
    with pytest.raises(ExceedsGpuMemory, match="16 GB-class"):
        _check_fits(small, DecomposeParams())  # the auto-caption needs the text encoder on the GPU
    _check_fits(SimpleNamespace(memory=None), DecomposeParams(resolution=1024, layers=10))  # not limited
