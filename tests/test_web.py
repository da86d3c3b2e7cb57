"""The web page in a real browser (Debian's chromium through chromedriver and Selenium) against the
real stack with the tiny model: upload → progress → gallery → download → live composite → a rejected
upload → a batch → the jobs list, with no errors in the browser console.

Screenshots of each view go to $LAYERQ_SCREENSHOT_DIR (docs/screenshots/ holds the committed ones)
or the test's temporary directory."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
import zipfile
from pathlib import Path

import pytest
import requests
from PIL import Image

from layerq.sample import make_sample_image

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,1000"]
JOB_WAIT_S = 300  # the tiny model takes seconds a job, but this machine is shared and slow


def test_page_and_sample_are_served(local_stack):
    page = requests.get(local_stack.url + "/", timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assert '<script type="module" src="/web/js/main.js">' in page.text
    for asset in ("/web/js/main.js", "/web/app.css"):
        assert requests.get(local_stack.url + asset, timeout=30).status_code == 200
    sample = requests.get(local_stack.url + "/sample.png", timeout=30)
    assert sample.headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(sample.content)).size == (768, 512)


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads, tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium and chromium-driver are not installed (scripts/bootstrap.sh installs them as root)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(120)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = Path(os.environ.get("LAYERQ_SCREENSHOT_DIR") or tmp_path_factory.mktemp("screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def screenshot(driver, shots: Path, name: str) -> None:
    """A full-page screenshot, shrunk to a small palette PNG (they are committed under docs/)."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(max(height + 140, 700), 2400))
    img = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    img = img.resize((img.width * 3 // 4, img.height * 3 // 4), Image.LANCZOS)
    img.quantize(colors=128).save(shots / f"{name}.png", optimize=True)
    driver.set_window_size(1280, 1000)


def wait(driver, condition, timeout_s: float = 60, message: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s, poll_frequency=0.25).until(condition, message)


def by_id(driver, id_: str):
    return driver.find_element("id", id_)


def fill(driver, id_: str, value: str) -> None:
    el = by_id(driver, id_)
    el.clear()
    el.send_keys(value)


def composite_signature(driver) -> list[int]:
    """Sums of each channel of the live composite, read from the canvas pixels."""
    return driver.execute_script("""
        const c = document.getElementById('composite');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const s = [0, 0, 0, 0];
        for (let i = 0; i < d.length; i++) s[i % 4] += d[i];
        return s;""")


def wait_for_file(folder: Path, prefix: str, suffix: str, timeout_s: float = 60) -> Path:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = [p for p in folder.iterdir() if p.name.startswith(prefix) and p.name.endswith(suffix)]
        if done:
            time.sleep(0.5)  # chromium renames .crdownload when the file is complete
            return done[0]
        time.sleep(0.25)
    raise AssertionError(f"no {prefix}*{suffix} downloaded into {folder}: {sorted(p.name for p in folder.iterdir())}")


def progress_path(base: str) -> str:
    """How the page must follow jobs on this server: server-sent events where its OpenAPI document lists
    `/v1/jobs/{id}/events`, else polling (and no probe of a missing route, which the console would log)."""
    paths = requests.get(base + "/openapi.json", timeout=30).json()["paths"]
    return "events" if "/v1/jobs/{id}/events" in paths else "polling"


def png_bytes(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    make_sample_image(width, height).save(buf, "PNG")
    return buf.getvalue()


def wait_for_job(base: str, job_id: str, headers: dict, timeout_s: float = JOB_WAIT_S) -> None:
    """The stack is shared by the module: leave no work queued behind."""
    deadline = time.monotonic() + timeout_s
    while requests.get(f"{base}/v1/jobs/{job_id}", headers=headers, timeout=10).json()["status"] in (
            "queued", "running", "canceling"):
        assert time.monotonic() < deadline, f"job {job_id} never ended"
        time.sleep(0.5)


def failing_job(base: str) -> str:
    """A job on an uploaded input that is not an image: accepted (the API never reads uploads), then
    failed by the worker with `invalid_image`."""
    up = requests.post(base + "/v1/uploads", json={"content_type": "image/png", "filename": "broken.png"}, timeout=30).json()
    requests.put(up["url"], data=b"not an image", headers=up["headers"], timeout=30).raise_for_status()
    job = requests.post(base + "/v1/jobs", json={"input_key": up["input_key"], "params": {"num_inference_steps": 2,
                        "prompt": "x"}}, timeout=30)
    assert job.status_code == 202, job.text
    return job.json()["id"]


def test_decompose_batch_and_jobs_in_a_browser(browser, local_stack, downloads, shots, tmp_path):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    d = browser
    d.get(local_stack.url + "/")
    wait(d, lambda d: d.find_element("tag name", "body").get_attribute("data-ready") == "true", message="page never wired")

    # Decompose the sample: 3 layers, few steps, a prompt (an empty one makes the tiny model caption).
    by_id(d, "advanced").find_element("tag name", "summary").click()
    Select(by_id(d, "d-layers")).select_by_value("3")
    # The API accepts `layers: "auto"` (issue 10), and the page reads that from /openapi.json.
    assert by_id(d, "d-layers").find_element("css selector", "option[value=auto]").is_enabled()
    fill(d, "d-steps", "3")
    fill(d, "d-prompt", "a poster with shapes")
    by_id(d, "use-sample").click()
    wait(d, lambda d: by_id(d, "preview").is_displayed(), message="the sample never showed")
    by_id(d, "submit").click()
    wait(d, lambda d: "Job " in by_id(d, "progress-text").text, message="no progress line")
    if not by_id(d, "result").is_displayed():
        screenshot(d, shots, "decompose-progress")  # when the job is still queued or running
    wait(d, lambda d: by_id(d, "result").is_displayed(), JOB_WAIT_S, "the job never finished: " + by_id(d, "progress-text").text)
    assert "succeeded" in by_id(d, "progress-text").text
    assert d.execute_script("return document.documentElement.dataset.progress") == progress_path(local_stack.url)
    assert len(d.find_elements("css selector", "#gallery li")) == 3
    assert by_id(d, "result-meta").text.startswith("3 layers")
    assert not by_id(d, "result-caption").is_displayed()  # a prompt was given: no caption

    # A download works: the ZIP export holds the three layers.
    d.find_element("css selector", "#exports a[data-format=zip]").click()
    with zipfile.ZipFile(wait_for_file(downloads, "", ".zip")) as z:
        assert sorted(n for n in z.namelist() if n.endswith(".png")) == [f"layer_{i:02d}.png" for i in range(3)]
    assert {a.get_attribute("data-format") for a in d.find_elements("css selector", "#exports a")} >= {"psd", "pptx", "zip"}

    # Hiding layers changes the live composite; with every layer hidden it is empty.
    signatures = [composite_signature(d)]
    assert signatures[0][3] > 0
    for i in reversed(range(3)):
        by_id(d, f"vis-{i}").send_keys(Keys.SPACE)  # the keyboard toggles it, as a user would
        signatures.append(composite_signature(d))
    assert signatures[-1] == [0, 0, 0, 0] and len({tuple(s) for s in signatures}) > 1
    by_id(d, "reset-layers").click()
    assert composite_signature(d) == signatures[0]

    # Reordering and moving (the keyboard way) change it too; reset brings the original back.
    by_id(d, "up-0").click()
    assert composite_signature(d) != signatures[0]
    by_id(d, "reset-layers").click()
    by_id(d, "composite").send_keys(Keys.SHIFT, Keys.ARROW_RIGHT)  # moves the selected (top) layer 10 px
    assert composite_signature(d) != signatures[0]
    by_id(d, "reset-layers").click()
    screenshot(d, shots, "decompose")

    # A rejected upload shows the server's message and the field it concerns.
    stripe = tmp_path / "stripe.png"
    Image.new("RGB", (1200, 20), (200, 30, 30)).save(stripe)
    by_id(d, "file").send_keys(str(stripe))
    by_id(d, "submit").click()
    wait(d, lambda d: by_id(d, "decompose-error").is_displayed(), message="no error shown for a rejected upload")
    err = by_id(d, "decompose-error").text
    assert "Rejected (400)" in err and "aspect ratio" in err and "field image" in err
    screenshot(d, shots, "rejected-upload")

    # Batch: two images, each item's status, then everything in one ZIP.
    paths = []
    for i, size in enumerate([(320, 240), (256, 256)]):
        p = tmp_path / f"item{i}.png"
        make_sample_image(*size).save(p)
        paths.append(str(p))
    by_id(d, "tab-batch").click()
    by_id(d, "batch-files").send_keys("\n".join(paths))
    d.find_element("css selector", "#view-batch details summary").click()
    fill(d, "b-steps", "3")
    fill(d, "b-prompt", "a poster with shapes")
    Select(by_id(d, "b-layers")).select_by_value("2")
    by_id(d, "batch-submit").click()
    wait(d, lambda d: "2 of 2 done" in by_id(d, "batch-text").text, JOB_WAIT_S, "the batch never finished")
    statuses = [s.text for s in d.find_elements("css selector", "#batch-table tbody .status")]
    assert statuses == ["succeeded", "succeeded"]
    by_id(d, "batch-download").click()
    with zipfile.ZipFile(wait_for_file(downloads, "batch_", ".zip", 120)) as z:
        names = z.namelist()
    assert {"item0/layers.zip", "item1/layers.zip", "item0/layers.psd"} <= set(names)
    screenshot(d, shots, "batch")

    # My jobs: the job and the batch this browser submitted (the rejected upload never became a job).
    by_id(d, "tab-jobs").click()
    wait(d, lambda d: len(d.find_elements("css selector", "#jobs-table tbody tr")) == 2, 60, "jobs list incomplete")
    rows = [r.text for r in d.find_elements("css selector", "#jobs-table tbody tr")]
    assert "batch: 2/2 done" in rows[0] and "sample.png" in rows[1] and "succeeded" in rows[1]
    screenshot(d, shots, "jobs")

    # Another key has its own (empty) list; going back to no key brings these back.
    fill(d, "api-key", "another-key")
    d.find_element("css selector", "#key-form button").click()
    wait(d, lambda d: by_id(d, "jobs-empty").is_displayed(), 30, "another key still lists these jobs")
    assert d.execute_script("return localStorage.getItem('layerq.apiKey')") == "another-key"
    by_id(d, "api-key").clear()
    d.find_element("css selector", "#key-form button").click()
    wait(d, lambda d: len(d.find_elements("css selector", "#jobs-table tbody tr")) == 2, 60, "jobs list not restored")

    # A job that fails (its uploaded input is not an image: the worker rejects it) reads as failed in
    # the list, and opening it shows the job's error.
    failed_id = failing_job(local_stack.url)
    d.execute_script("const k = 'layerq.jobs.public', l = JSON.parse(localStorage.getItem(k) || '[]');"
                     "l.unshift({id: arguments[0], kind: 'job', name: 'broken.png', at: new Date().toISOString()});"
                     "localStorage.setItem(k, JSON.stringify(l));", failed_id)
    first_row = "return document.querySelector('#jobs-table tbody tr')?.textContent || ''"
    deadline = time.monotonic() + JOB_WAIT_S
    while "failed" not in d.execute_script(first_row):  # the list re-reads every job on Refresh
        assert time.monotonic() < deadline, "the broken job never failed: " + d.execute_script(first_row)
        by_id(d, "jobs-refresh").click()
        time.sleep(1)
    assert "broken.png" in d.execute_script(first_row)
    d.find_element("css selector", "#jobs-table tbody tr button").click()  # Open
    wait(d, lambda d: by_id(d, "decompose-error").is_displayed(), message="no error shown for a failed job")
    assert "The job failed" in by_id(d, "decompose-error").text and "invalid_image" in by_id(d, "decompose-error").text
    screenshot(d, shots, "failed-job")

    # No errors in the console, except the network line for the upload the server rightly refused.
    problems = [e for e in d.get_log("browser") if e["level"] == "SEVERE"
                and not (e.get("source") == "network" and "/v1/jobs" in e["message"] and "400" in e["message"])]
    assert problems == []


@pytest.fixture(scope="module")
def edit_stack(make_stack):
    """A stack with an edit worker (tiny edit model) and every export format, for the edit and save views."""
    return make_stack(storage="local", edit_workers=1, export_formats="psd,pptx,zip,ora")


def new_file(folder: Path, before: set[str], suffix: str, timeout_s: float = 60) -> Path:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = [p for p in folder.iterdir() if p.name not in before and p.name.endswith(suffix)]
        if done:
            time.sleep(0.5)  # chromium renames .crdownload when the file is complete
            return done[0]
        time.sleep(0.25)
    raise AssertionError(f"no new *{suffix} in {folder}: {sorted(p.name for p in folder.iterdir())}")


def unlabelled_controls(driver, root_id: str) -> list[str]:
    """Form controls under `root_id` that a screen reader could not name (no <label>, no aria-label)."""
    return driver.execute_script("""
        return [...document.getElementById(arguments[0]).querySelectorAll('input, select, textarea, button')]
          .filter((c) => !(c.labels && c.labels.length) && !c.getAttribute('aria-label') && !c.textContent.trim())
          .map((c) => c.id || c.outerHTML.slice(0, 80));""", root_id)


def test_edit_a_layer_accept_it_then_save_an_arrangement(browser, edit_stack, downloads, shots):
    """With an API key: decompose → "Edit…" a layer → the edited layer beside the original → accept
    (the edit's set becomes the page's) → hide, reorder and move layers → save the arrangement as a
    compose job → the new set and its downloads; the key's jobs listed by the server; no console errors."""
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    d = browser
    d.get(edit_stack.url + "/")
    d.execute_script("localStorage.clear()")
    d.get(edit_stack.url + "/")
    wait(d, lambda d: d.find_element("tag name", "body").get_attribute("data-ready") == "true", message="page never wired")
    d.get_log("browser")  # start the console check from here
    fill(d, "api-key", "web-edit-test-key")
    by_id(d, "api-key").send_keys(Keys.ENTER)
    wait(d, lambda d: "key saved" in by_id(d, "key-state").text, message="key not saved")

    # The Edit view before any set: it says what to do first.
    by_id(d, "tab-edit").click()
    assert by_id(d, "edit-empty").is_displayed() and not by_id(d, "edit-form").is_displayed()
    by_id(d, "tab-decompose").click()

    by_id(d, "advanced").find_element("tag name", "summary").click()
    Select(by_id(d, "d-layers")).select_by_value("3")
    fill(d, "d-steps", "2")
    fill(d, "d-prompt", "")  # the model captions the image first, and the page shows that caption
    by_id(d, "use-sample").click()
    wait(d, lambda d: by_id(d, "preview").is_displayed(), message="the sample never showed")
    by_id(d, "submit").click()
    wait(d, lambda d: by_id(d, "result").is_displayed(), JOB_WAIT_S, "the job never finished: " + by_id(d, "progress-text").text)
    parent_id = d.execute_script("return document.getElementById('progress-text').textContent").split()[1].rstrip(":")
    own = requests.get(f"{edit_stack.url}/v1/jobs", headers={"Authorization": "Bearer web-edit-test-key"}, timeout=10)
    decomposition = own.json()["items"][0]  # the key's only job so far
    assert decomposition["id"].startswith(parent_id)
    caption = decomposition["result"]["caption"]
    assert caption and by_id(d, "result-caption").is_displayed()
    by_id(d, "result-caption").find_element("tag name", "summary").click()  # folded until asked for
    assert d.execute_script("return document.getElementById('result-caption-text').textContent") == caption
    screenshot(d, shots, "decompose-captioned")
    by_id(d, "result-caption").find_element("tag name", "summary").click()

    # "Edit…" on the middle layer opens the Edit view with that layer chosen and the instruction focused.
    by_id(d, "edit-1").send_keys(Keys.ENTER)
    wait(d, lambda d: by_id(d, "edit-form").is_displayed(), message="the edit view never opened")
    assert by_id(d, "edit-layer-1").is_selected()
    assert d.switch_to.active_element.get_attribute("id") == "edit-prompt"
    assert {o.get_attribute("value") for o in Select(by_id(d, "edit-matte")).options} >= {"keep", "chroma"}
    assert unlabelled_controls(d, "view-edit") == []

    # An empty instruction is refused in the page, naming the field.
    by_id(d, "edit-submit").click()
    assert "params.prompt" in by_id(d, "edit-error").text

    by_id(d, "edit-prompt").send_keys("make it red")
    Select(by_id(d, "edit-matte")).select_by_value("keep")
    d.find_element("css selector", "#edit-form details summary").click()
    fill(d, "edit-steps", "2")
    by_id(d, "edit-submit").click()
    wait(d, lambda d: "Edit " in by_id(d, "edit-text").text, message="no edit progress line")
    wait(d, lambda d: by_id(d, "edit-result").is_displayed(), JOB_WAIT_S, "the edit never finished: " + by_id(d, "edit-text").text)
    loaded = "return [...document.querySelectorAll('#edit-result img')].map((i) => i.complete && i.naturalWidth)"
    wait(d, lambda d: all(d.execute_script(loaded)), message="before/after images never loaded")
    before, after = (by_id(d, i).get_attribute("src") for i in ("edit-before", "edit-after"))
    assert parent_id in before and parent_id not in after
    assert "make it red" in by_id(d, "edit-after-caption").text and "keep" in by_id(d, "edit-after-caption").text
    screenshot(d, shots, "edit")

    # Accept (from the keyboard): the edit's set is now the page's: gallery, downloads, further edits.
    by_id(d, "edit-accept").send_keys(Keys.ENTER)
    wait(d, lambda d: by_id(d, "result").is_displayed() and "Edit of layer 2" in by_id(d, "result-meta").text,
         60, "the accepted set never showed")
    edit_id = by_id(d, "progress-text").text.split()[1].rstrip(":")
    assert len(d.find_elements("css selector", "#gallery li")) == 3
    assert edit_id in d.find_element("css selector", "#exports a[data-format=ora]").get_attribute("href")
    by_id(d, "tab-edit").click()
    assert edit_id[:8] in by_id(d, "edit-set").text  # a further edit chains on the accepted set
    by_id(d, "tab-decompose").click()

    # Arrange: hide the bottom layer, move the top one down a place and nudge it 10 px right.
    shown = composite_signature(d)
    by_id(d, "vis-0").send_keys(Keys.SPACE)
    by_id(d, "down-2").click()
    by_id(d, "sel-2").click()
    by_id(d, "composite").send_keys(Keys.SHIFT, Keys.ARROW_RIGHT)
    arranged = composite_signature(d)
    assert arranged != shown
    by_id(d, "save-arrangement").send_keys(Keys.ENTER)
    wait(d, lambda d: by_id(d, "result").is_displayed() and "Arrangement of" in by_id(d, "result-meta").text,
         JOB_WAIT_S, "the saved arrangement never showed: " + by_id(d, "progress-text").text)
    # Three reorders (one per layer, bottom up), one move, one hide.
    assert f"Arrangement of {edit_id[:8]} (5 operations)" in by_id(d, "result-meta").text
    assert len(d.find_elements("css selector", "#gallery li")) == 2  # the hidden layer is not in the new set
    # The server's new set, drawn as it is, is pixel for pixel what the page showed before saving: the
    # ops carry the order, the direction of the move and the hidden layer right.
    assert composite_signature(d) == arranged
    formats = {a.get_attribute("data-format") for a in d.find_elements("css selector", "#exports a")}
    assert formats == {"psd", "pptx", "zip", "ora"}
    already = {p.name for p in downloads.iterdir()}
    d.find_element("css selector", "#exports a[data-format=zip]").click()
    with zipfile.ZipFile(new_file(downloads, already, ".zip")) as z:
        assert sorted(n for n in z.namelist() if n.endswith(".png")) == ["layer_00.png", "layer_01.png"]
    single = d.find_element("css selector", "#gallery li a[download]").get_attribute("href")
    assert requests.get(single, timeout=30).headers["Content-Type"] == "image/png"
    screenshot(d, shots, "arrangement-saved")

    # A batch the same key submitted elsewhere (here through the API): the server lists it too.
    batch = requests.post(edit_stack.url + "/v1/batches", headers={"Authorization": "Bearer web-edit-test-key"},
                          data={"batch": json.dumps({"defaults": {"layers": 2, "num_inference_steps": 2, "prompt": "x"},
                                                     "items": [{"file": "one"}]})},
                          files={"one": ("one.png", png_bytes(64, 64), "image/png")}, timeout=30)
    assert batch.status_code == 202, batch.text

    # My jobs, with a key: the server's lists, newest first — the batch, then the arrangement, the edit
    # and the decomposition.
    by_id(d, "tab-jobs").click()
    wait(d, lambda d: len(d.find_elements("css selector", "#jobs-table tbody tr")) == 4, 60, "jobs list incomplete")
    rows = [r.text for r in d.find_elements("css selector", "#jobs-table tbody tr")]
    assert "batch: " in rows[0] and "1 image" in rows[0] and "Forget" not in rows[0], rows
    assert "operations" in rows[1] and "make it red" in rows[2] and "sample.png" in rows[3], rows
    screenshot(d, shots, "jobs-with-key")

    problems = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
    assert problems == []
    assert d.execute_script("return document.documentElement.dataset.progress") == progress_path(edit_stack.url)
    wait_for_job(edit_stack.url, batch.json()["job_ids"][0], {"Authorization": "Bearer web-edit-test-key"})
