// The authors' advanced settings, as form fields. Limits and defaults come from the server's own
// OpenAPI document (the same pydantic model that validates jobs), so the page never offers a value
// the API would refuse; `auto` layers appear enabled only once the API's schema accepts "auto".

import { schemaProps } from "./openapi.js";

export function paramsSchema() {
  return schemaProps("DecomposeParams");
}

function acceptsAuto(prop) {
  const variants = [prop, ...(prop?.anyOf || []), ...(prop?.oneOf || [])];
  return variants.some((v) => v && (v.const === "auto" || (v.enum || []).includes("auto")));
}

export function range(prop, key, fallback) {
  for (const v of [prop, ...(prop?.anyOf || [])]) if (v && v[key] != null) return v[key];
  return fallback;
}

export function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === false || v == null) continue;
    if (k === "text") node.textContent = v; else node.setAttribute(k, v === true ? "" : v);
  }
  node.append(...children);
  return node;
}

/** Build the fields into `box`; returns `read()` giving DecomposeParams (seed omitted when randomized). */
export async function buildSettings(box, prefix) {
  const props = await paramsSchema();
  const id = (name) => `${prefix}-${name}`;
  const field = (label, input, hint) => {
    box.append(el("label", { for: input.id, text: label }), input);
    if (hint) box.append(el("span", { class: "hint", id: `${input.id}-hint`, text: hint }));
    if (hint) input.setAttribute("aria-describedby", `${input.id}-hint`);
  };

  const lmin = range(props.layers, "minimum", 2), lmax = range(props.layers, "maximum", 10);
  const layers = el("select", { id: id("layers") });
  const auto = acceptsAuto(props.layers);
  layers.append(el("option", { value: "auto", disabled: !auto, text: auto ? "auto" : "auto (not offered by this server yet)" }));
  for (let n = lmin; n <= lmax; n++) layers.append(el("option", { value: n, text: String(n), selected: n === (props.layers?.default ?? 4) }));
  field("Layers", layers);

  const resolution = el("select", { id: id("resolution") });
  for (const r of props.resolution?.enum || [640, 1024]) {
    resolution.append(el("option", { value: r, text: `${r}${r === 640 ? " (recommended)" : ""}`, selected: r === (props.resolution?.default ?? 640) }));
  }
  field("Resolution", resolution);

  const seed = el("input", { id: id("seed"), type: "number", min: 0, max: range(props.seed, "maximum", 4294967295), value: 777, disabled: true });
  const randomize = el("input", { id: id("randomize"), type: "checkbox", checked: true });
  randomize.addEventListener("change", () => { seed.disabled = randomize.checked; });
  field("Seed", seed);
  field("Randomize seed", randomize, "Unchecked: the seed above is used, so a result can be reproduced.");

  const prompt = el("textarea", { id: id("prompt"), maxlength: range(props.prompt, "maxLength", 2000), placeholder: "empty: the model writes its own caption" });
  field("Prompt", prompt);
  const negative = el("textarea", { id: id("negative"), maxlength: range(props.negative_prompt, "maxLength", 2000) });
  negative.value = props.negative_prompt?.default ?? " ";
  field("Negative prompt", negative, "A non-empty negative prompt turns CFG on.");

  const cfg = el("input", { id: id("cfg"), type: "number", step: 0.1, min: range(props.true_cfg_scale, "minimum", 1), max: range(props.true_cfg_scale, "maximum", 20), value: props.true_cfg_scale?.default ?? 4 });
  field("True CFG scale", cfg);
  const steps = el("input", { id: id("steps"), type: "number", step: 1, min: range(props.num_inference_steps, "minimum", 2), max: range(props.num_inference_steps, "maximum", 200), value: props.num_inference_steps?.default ?? 50 });
  field("Steps", steps);
  const normalize = el("input", { id: id("cfg-normalize"), type: "checkbox", checked: props.cfg_normalize?.default ?? true });
  field("CFG normalisation", normalize);
  const lang = el("select", { id: id("caption-lang") }, [el("option", { value: "en", text: "English" }), el("option", { value: "zh", text: "Chinese" })]);
  field("Caption language", lang, "Used when the prompt is empty.");

  return {
    read() {
      const p = {
        resolution: Number(resolution.value),
        num_inference_steps: Number(steps.value),
        true_cfg_scale: Number(cfg.value),
        negative_prompt: negative.value,
        prompt: prompt.value,
        cfg_normalize: normalize.checked,
        use_en_prompt: lang.value === "en",
      };
      p.layers = layers.value === "auto" ? "auto" : Number(layers.value);
      if (!randomize.checked) p.seed = Number(seed.value);
      return p;
    },
    /** Show the seed the server recorded, so "uncheck randomize" reproduces the last result. */
    showSeed(value) { if (value != null && randomize.checked) seed.value = value; },
  };
}
