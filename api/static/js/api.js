// The page's only way to reach the server: the public REST API, with the API key (if any) as a
// bearer token. Errors come back as ApiError carrying the server's {code, message, field}.

const KEY_STORAGE = "layerq.apiKey";

export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field || null;
  }
}

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

/** A short, stable, non-secret name for the key in use, to keep each key's job list apart. */
export function keyTag(key = apiKey()) {
  let h = 0x811c9dc5; // FNV-1a: crypto.subtle is missing on plain-http origins other than localhost
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193) >>> 0;
  return key ? h.toString(16) : "public";
}

export async function api(method, path, body) {
  const headers = {};
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  let payload = body;
  if (body && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: payload });
  } catch (err) {
    throw new ApiError(0, "network", `the server could not be reached (${err.message})`);
  }
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { /* not JSON: handled below */ }
  if (!resp.ok) {
    const e = (data && data.error) || {};
    throw new ApiError(resp.status, e.code || `http_${resp.status}`, e.message || text.slice(0, 200) || resp.statusText, e.field);
  }
  return data;
}

/** Render an error (ApiError or anything else) into an alert box, naming the field it concerns. */
export function showError(box, err, prefix = "") {
  box.replaceChildren();
  const strong = document.createElement("strong");
  strong.textContent = prefix || (err.status ? `Rejected (${err.status})` : "Error");
  box.append(strong, ": ", err.message || String(err));
  if (err.field) {
    const f = document.createElement("span");
    f.className = "field";
    f.append(" — field ");
    const code = document.createElement("code");
    code.textContent = err.field;
    f.append(code);
    box.append(f);
  }
  box.hidden = false;
}

export function hideError(box) {
  box.hidden = true;
  box.replaceChildren();
}
