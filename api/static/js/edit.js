// The Edit view: pick a layer of the set the page is working on (a decomposition, an arrangement or
// an earlier edit), write an instruction, choose a matte, submit `POST /v1/edits`, follow the job,
// then show the edited layer beside the original. "Accept into the set" makes the edit job's result
// (a whole new layer set) the set the page works on: gallery, downloads, further edits.

import { api, hideError, showError } from "./api.js";
import { remember } from "./history.js";
import { schemaProps } from "./openapi.js";
import { el, range } from "./settings.js";
import { describeJob, fraction, watchJob } from "./watch.js";

const $ = (id) => document.getElementById(id);
const MATTES = { chroma: "chroma (key out green)", keep: "keep (layer's own alpha)", model: "model (segmentation)" };

let source = null; // the set edited: a succeeded job
let editJob = null;
let watcher = null;
let accept = () => {};

export async function initEdit({ onAccept }) {
  accept = onAccept;
  const props = await schemaProps("EditParams");
  const matte = $("edit-matte");
  for (const name of props.matte?.enum || Object.keys(MATTES)) {
    matte.append(el("option", { value: name, text: MATTES[name] || name, selected: name === (props.matte?.default ?? "chroma") }));
  }
  const steps = $("edit-steps");
  steps.min = range(props.num_inference_steps, "minimum", 2);
  steps.max = range(props.num_inference_steps, "maximum", 200);
  steps.value = props.num_inference_steps?.default ?? 50;
  $("edit-cfg").value = props.true_cfg_scale?.default ?? 4;
  $("edit-negative").value = props.negative_prompt?.default ?? " ";
  $("edit-prompt").maxLength = range(props.prompt, "maxLength", 2000);
  $("edit-randomize").addEventListener("change", (e) => { $("edit-seed").disabled = e.target.checked; });
  $("edit-form").addEventListener("submit", (e) => { e.preventDefault(); submit(); });
  $("edit-cancel").addEventListener("click", async () => {
    try { $("edit-text").textContent = (await api("POST", `/v1/jobs/${editJob.id}/cancel`)).message; } catch (err) { showError($("edit-error"), err); }
  });
  $("edit-accept").addEventListener("click", () => { if (editJob) accept(editJob); });
  $("edit-discard").addEventListener("click", () => { $("edit-result").hidden = true; editJob = null; });
}

/** The page now works on `job` (a succeeded set): offer its layers. `layer` preselects one. */
export function setSource(job, layer = null) {
  if (!job?.result) return;
  const changed = source?.id !== job.id;
  source = job;
  const layers = job.result.layers;
  $("edit-empty").hidden = true;
  $("edit-form").hidden = false;
  $("edit-set").textContent = `Editing set ${job.id.slice(0, 8)} (${layers.length} layers)`;
  const picked = layer ?? (changed ? null : Number(document.querySelector("input[name=edit-layer]:checked")?.value ?? NaN));
  const list = $("edit-layers");
  list.replaceChildren();
  layers.forEach((l, i) => {
    const id = `edit-layer-${i}`;
    const input = el("input", { type: "radio", name: "edit-layer", id, value: i });
    input.checked = i === (Number.isInteger(picked) ? picked : layers.length - 1);
    const label = el("label", { for: id }, [
      el("img", { src: l.url, alt: "", class: "checker" }),
      el("span", { text: `Layer ${i + 1}${i === 0 ? " (bottom)" : i === layers.length - 1 ? " (top)" : ""}` }),
    ]);
    list.append(el("li", {}, [input, label]));
  });
  if (changed) $("edit-result").hidden = true;
}

function chosenLayer() {
  return Number(document.querySelector("input[name=edit-layer]:checked")?.value ?? -1);
}

async function submit() {
  const box = $("edit-error");
  hideError(box);
  if (!source) return;
  const params = {
    prompt: $("edit-prompt").value,
    matte: $("edit-matte").value,
    num_inference_steps: Number($("edit-steps").value),
    true_cfg_scale: Number($("edit-cfg").value),
    negative_prompt: $("edit-negative").value,
  };
  if (!$("edit-randomize").checked) params.seed = Number($("edit-seed").value);
  if (!params.prompt.trim()) {
    showError(box, { message: "write what to change in the layer", field: "params.prompt" }, "Missing instruction");
    $("edit-prompt").focus();
    return;
  }
  const layer = chosenLayer();
  $("edit-submit").disabled = true;
  $("edit-result").hidden = true;
  try {
    const job = await api("POST", "/v1/edits", { source: { job_id: source.id, layer }, params });
    remember({ id: job.id, kind: "job", name: `edit of layer ${layer + 1}` });
    follow(job, source, layer);
  } catch (err) {
    showError(box, err);
    $("edit-submit").disabled = false;
  }
}

function follow(job, parent, layer) {
  watcher?.stop();
  $("edit-progress").hidden = false;
  const update = (rec) => {
    editJob = rec;
    $("edit-bar").value = fraction(rec);
    $("edit-text").textContent = `Edit ${rec.id.slice(0, 8)}: ${describeJob(rec)}`;
    const running = !["succeeded", "failed", "canceled", "expired"].includes(rec.status);
    $("edit-cancel").hidden = !running;
    $("edit-submit").disabled = running;
    if (rec.status === "succeeded") showEdited(rec, parent, layer);
    if (rec.status === "failed") {
      const e = rec.error || {};
      showError($("edit-error"), { message: `${e.message || "the edit failed"}${e.code ? ` (${e.code})` : ""}` }, "The edit failed");
    }
  };
  update(job);
  watcher = watchJob(job.id, {
    onUpdate: update,
    onError: (err) => { showError($("edit-error"), err, "Lost the edit job"); $("edit-submit").disabled = false; },
  });
}

function showEdited(job, parent, layer) {
  const before = parent.result.layers[layer], after = job.result.layers[layer];
  Object.assign($("edit-before"), { src: before.url, alt: `Layer ${layer + 1} before the edit` });
  Object.assign($("edit-after"), { src: after.url, alt: `Layer ${layer + 1} after the edit: ${job.params.prompt}` });
  $("edit-before-caption").textContent = `Original layer ${layer + 1}`;
  $("edit-after-caption").textContent = `Edited: “${job.params.prompt}” (matte ${job.params.matte}, seed ${job.params.seed})`;
  const dl = $("edit-download");
  dl.href = after.url;
  dl.setAttribute("download", `layer_${String(layer).padStart(2, "0")}_edited.png`);
  $("edit-result").hidden = false;
}
