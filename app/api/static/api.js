// Renders /openapi.json: one collapsible entry per operation, grouped by tag. No dependencies.
"use strict";

const AUTH = {
  writeKeyBasic: "write key (HTTP Basic user name)",
  writeKeyHeader: "X-Write-Key",
  adminBearer: "admin key (Bearer)",
};

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function schemaBlock(title, schema) {
  return el("details", {}, el("summary", {}, title), el("pre", {}, JSON.stringify(schema, null, 2)));
}

function operationNode(path, method, op) {
  const auth = (op.security || []).map((s) => Object.keys(s).map((k) => AUTH[k] || k).join(" + "));
  const body = el("div");
  if (op.description) body.append(el("p", {}, op.description));
  if (op.parameters && op.parameters.length) {
    const table = el("table", {}, el("tr", {}, el("th", {}, "parameter"), el("th", {}, "in"),
      el("th", {}, "schema"), el("th", {}, "description")));
    for (const p of op.parameters) {
      table.append(el("tr", {}, el("td", {}, p.name + (p.required ? " *" : "")), el("td", {}, p.in),
        el("td", {}, JSON.stringify(p.schema)), el("td", {}, p.description || "")));
    }
    body.append(table);
  }
  if (op.requestBody) {
    const content = op.requestBody.content;
    for (const [ctype, media] of Object.entries(content)) {
      body.append(schemaBlock(`request body (${ctype})`, media.schema));
    }
  }
  for (const [status, resp] of Object.entries(op.responses || {})) {
    const media = resp.content ? Object.values(resp.content)[0] : null;
    if (media && media.schema) body.append(schemaBlock(`${status}: ${resp.description}`, media.schema));
    else body.append(el("div", {}, `${status}: ${resp.description}`));
  }
  return el("details", { class: "op" },
    el("summary", {}, el("span", { class: `method m-${method}` }, method.toUpperCase()),
      el("code", {}, path), " ", op.summary,
      el("span", { class: "auth" }, auth.length ? `auth: ${auth.join(" or ")}` : "")),
    body);
}

async function main() {
  const root = document.getElementById("api");
  const resp = await fetch("/openapi.json");
  const doc = await resp.json();
  root.replaceChildren(el("h1", {}, `${doc.info.title} ${doc.info.version}`),
    el("p", {}, doc.info.description), el("p", {}, `OpenAPI ${doc.openapi}`));
  const byTag = new Map();
  for (const [path, methods] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const tag = (op.tags && op.tags[0]) || "other";
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push(operationNode(path, method, op));
    }
  }
  for (const [tag, nodes] of byTag) root.append(el("h2", {}, tag), ...nodes);
}

main().catch((err) => {
  document.getElementById("api").replaceChildren(el("p", {}, `Could not load /openapi.json: ${err}`));
});
