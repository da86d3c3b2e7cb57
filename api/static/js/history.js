// The jobs and batches this browser submitted, per API key: the whole list without a key (the API
// lists no keyless caller's jobs); with one, the names of a batch's images (the API lists the key's
// jobs and batches, not the files they came from). Newest first, capped so localStorage stays small.

import { keyTag } from "./api.js";

const MAX_ENTRIES = 200;
const storageKey = () => `layerq.jobs.${keyTag()}`;

export function remembered() {
  try { return JSON.parse(localStorage.getItem(storageKey()) || "[]"); } catch { return []; }
}

/** entry: {id, kind: "job"|"batch", name, at} */
export function remember(entry) {
  const list = remembered().filter((e) => e.id !== entry.id);
  list.unshift({ at: new Date().toISOString(), ...entry });
  localStorage.setItem(storageKey(), JSON.stringify(list.slice(0, MAX_ENTRIES)));
}

export function forget(id) {
  localStorage.setItem(storageKey(), JSON.stringify(remembered().filter((e) => e.id !== id)));
}

export function forgetAll() {
  localStorage.removeItem(storageKey());
}
