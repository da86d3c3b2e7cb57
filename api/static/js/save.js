// "Save arrangement": the live composite's visibility, order and positions as a `compose` job
// (`POST /v1/layersets/compose`) on the set being shown; the new set then replaces it in the page.

import { api, hideError, showError } from "./api.js";

const $ = (id) => document.getElementById(id);

/** The compose operations that turn the parent set into what the page shows. Operations name layers
 * by their index in the parent; a reorder puts a layer at a position in the stack as it is at that
 * point, so placing the layers bottom-up, one reorder each, yields the page's order. */
export function opsFor(stack) {
  const ops = [];
  const order = stack.layers.map((l) => l.index);
  const moved = order.some((index, pos) => index !== stack.original[pos].index);
  if (moved) order.forEach((index, position) => ops.push({ op: "reorder", index, position }));
  for (const l of stack.layers) {
    if (l.dx || l.dy) ops.push({ op: "move", index: l.index, dx: l.dx, dy: l.dy });
    if (!l.visible) ops.push({ op: "hide", index: l.index });
  }
  return ops;
}

export function initSave(stack, currentJob, onSubmitted) {
  $("save-arrangement").addEventListener("click", async () => {
    const parent = currentJob();
    const box = $("save-error");
    hideError(box);
    if (!parent || parent.status !== "succeeded") return;
    const ops = opsFor(stack);
    if (!ops.length) {
      $("save-status").textContent = "Nothing to save: the layers are as the set has them.";
      return;
    }
    $("save-arrangement").disabled = true;
    $("save-status").textContent = `Saving ${ops.length} operation${ops.length === 1 ? "" : "s"}…`;
    try {
      const job = await api("POST", "/v1/layersets/compose", { source: { job_id: parent.id }, params: { ops } });
      onSubmitted(job, `arrangement of ${parent.id.slice(0, 8)}`);
    } catch (err) {
      showError(box, err, "Could not save the arrangement");
      $("save-status").textContent = "";
    } finally {
      $("save-arrangement").disabled = false;
    }
  });
}
