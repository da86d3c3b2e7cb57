// Wiring: tabs (arrow keys move between them), the API key form, and the four views.

import { apiKey, setApiKey } from "./api.js";
import { follow as followBatch, initBatch } from "./batch.js";
import { follow as showSet, initDecompose, onSet, open as openJobView } from "./decompose.js";
import { initEdit, setSource } from "./edit.js";
import { initJobs, refresh as refreshJobs } from "./jobs.js";

const $ = (id) => document.getElementById(id);
const tabs = [...document.querySelectorAll("[role=tab]")];

function show(tab) {
  for (const t of tabs) {
    const on = t === tab;
    t.setAttribute("aria-selected", String(on));
    t.tabIndex = on ? 0 : -1;
    $(t.getAttribute("aria-controls")).hidden = !on;
  }
  history.replaceState(null, "", `#${tab.id.replace("tab-", "")}`);
  if (tab.id === "tab-jobs") refreshJobs();
}

tabs.forEach((t, i) => {
  t.addEventListener("click", () => show(t));
  t.addEventListener("keydown", (e) => {
    const j = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[e.key];
    if (j === undefined) return;
    e.preventDefault();
    const next = tabs[(j + tabs.length) % tabs.length];
    next.focus();
    show(next);
  });
});

function showKeyState() {
  $("key-state").textContent = apiKey() ? "key saved in this browser" : "no key: public jobs";
}

$("api-key").value = apiKey();
$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  setApiKey($("api-key").value.trim());
  showKeyState();
  if ($("tab-jobs").getAttribute("aria-selected") === "true") refreshJobs();
});
showKeyState();

const openJob = (job) => { show($("tab-decompose")); openJobView(job); };
const openBatch = (id, names) => { show($("tab-batch")); followBatch(id, names); };

// The set the page works on: shown in the Decompose view, offered in the Edit view.
const editLayer = (job, layer) => { setSource(job, layer); show($("tab-edit")); $("edit-prompt").focus(); };
const acceptEdit = (job) => { show($("tab-decompose")); showSet(job); };
await Promise.all([initDecompose({ editLayer }), initBatch(openJob), initEdit({ onAccept: acceptEdit })]);
onSet((job) => setSource(job));
initJobs({ openJob, openBatch });
const start = $(`tab-${location.hash.slice(1)}`);
if (start) show(start);
document.body.dataset.ready = "true"; // for the browser tests: every view is wired
