// The server's own OpenAPI document, read once: the settings forms take limits and defaults from it,
// and the page asks it which optional routes (event streams) this server has, instead of probing
// them (a 404 would be an error line in the browser console).

let docPromise = null;

export function openapiDoc() {
  docPromise ||= fetch("/openapi.json").then((r) => r.json()).catch(() => ({}));
  return docPromise;
}

export async function schemaProps(name) {
  const doc = await openapiDoc();
  return doc?.components?.schemas?.[name]?.properties || {};
}

/** Whether the server documents `GET <prefix>/{id}/events` (server-sent events). */
export async function hasEvents(prefix) {
  const doc = await openapiDoc();
  return Object.keys(doc?.paths || {}).some((p) => p.startsWith(`${prefix}/{`) && p.endsWith("}/events") && doc.paths[p].get);
}
