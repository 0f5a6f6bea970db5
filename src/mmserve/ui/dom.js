// Small helpers shared by the views: building elements and formatting numbers.

/** An element: el("td", {class: "num", title: "x"}, "text", child, ...). Text is never HTML;
 * null, undefined and false children are left out, arrays are flattened. */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...kept(children));
  return node;
}

/** Replace `node`'s children, as el() takes them. */
export function put(node, ...children) {
  node.replaceChildren(...kept(children));
  return node;
}

const kept = (children) =>
  children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false);

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

export function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value < 10 && unit > 0 ? 1 : 0)} ${units[unit]}`;
}

/** A number for a chart's axis or legend: 3 significant digits at most, no exponent. */
export function short(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  if (value === 0) return "0";
  const abs = Math.abs(value);
  if (abs >= 1000) return `${(value / 1000).toFixed(abs >= 10000 ? 0 : 1)}k`;
  if (abs >= 100) return value.toFixed(0);
  if (abs >= 10) return value.toFixed(1).replace(/\.0$/, "");
  return value.toFixed(2).replace(/\.?0+$/, "");
}

export function seconds(s) {
  if (s === null || s === undefined) return "—";
  return s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(s < 10 ? 2 : 1)} s`;
}

export function clock(epochSeconds) {
  const d = new Date(epochSeconds * 1000);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** Keep a <select>'s options equal to `names`, keeping the choice when it is still there. */
export function fillSelect(select, names) {
  const current = select.value;
  const have = [...select.options].map((o) => o.value);
  if (have.join("\n") === names.join("\n")) return;
  select.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
  if (names.includes(current)) select.value = current;
  if (select.value !== current) select.dispatchEvent(new Event("change"));
}
