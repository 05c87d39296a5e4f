// Registered models: versions with their aliases, and the alias controls
// (promote = point an alias at a version; roll back = undo its last move).

import { getJson, request, segment, sendJson } from "./api.js";
import { button, drawListOr, element, formatNumber, showMessage } from "./dom.js";

// The alias the service serves by default; offered first when promoting.
const DEFAULT_ALIAS = "production";

function versionRow(model, summary, actions) {
  const aliases = summary.aliases.map((alias) => element("span", { className: "badge", text: alias }));
  return element("tr", { attributes: { "data-version": summary.version } }, [
    element("td", { text: `v${summary.version}` }),
    element("td", {}, aliases),
    element("td", { text: summary.architecture ?? "" }),
    element("td", { text: summary.dataset ?? "" }),
    element("td", { text: formatNumber(summary.test_accuracy) }),
    element("td", {}, [
      ...[
        ["Metrics", "metrics", () => actions.openMetrics(model.model_name, summary.version)],
        ["Report", "report", () => actions.openReport(model.model_name, summary.version)],
        ["Download", "download", () => actions.download(model.model_name, summary.version)],
      ].map(([text, action, onClick]) =>
        // Said as "Metrics of cifar10-custom v3": a row of "Metrics" buttons is not a choice.
        button(text, onClick, { "data-action": action, "aria-label": `${text} of ${model.model_name} v${summary.version}` }),
      ),
    ]),
  ]);
}

function aliasList(model, actions) {
  const entries = Object.entries(model.aliases);
  if (entries.length === 0) {
    return element("p", { className: "hint", text: "No aliases: the latest version is served." });
  }
  return element(
    "ul",
    { className: "aliases" },
    entries.map(([alias, version]) =>
      element("li", { attributes: { "data-alias": alias } }, [
        element("span", { className: "badge", text: alias }),
        element("span", { className: "alias-target", text: ` → v${version} ` }),
        button(
          "Roll back",
          () =>
            actions.change(() =>
              request(`/models/${segment(model.model_name)}/aliases/${segment(alias)}/rollback`, { method: "POST" }).then(
                (response) => response.json(),
              ),
            ),
          { "data-action": "rollback", "aria-label": `Roll back ${alias} of ${model.model_name}` },
        ),
      ]),
    ),
  );
}

function promoteForm(model, actions) {
  const names = [...new Set([DEFAULT_ALIAS, ...Object.keys(model.aliases)])];
  const listId = `aliases-${model.model_name}`;
  // Something other than spaces: the service's own message explains its alias rule.
  const alias = element("input", {
    attributes: { name: "alias", value: DEFAULT_ALIAS, list: listId, required: true, size: 12, pattern: ".*\\S.*" },
  });
  const version = element(
    "select",
    { attributes: { name: "version" } },
    // Newest first: the version just trained is the one usually promoted.
    [...model.versions].reverse().map((summary) => element("option", { text: `v${summary.version}`, attributes: { value: summary.version } })),
  );
  const form = element("form", { className: "promote" }, [
    element("label", { text: "Point alias " }, [alias]),
    element("datalist", { attributes: { id: listId } }, names.map((name) => element("option", { attributes: { value: name } }))),
    element("label", { text: " at " }, [version]),
    element("button", { text: "Promote", attributes: { type: "submit", "data-action": "promote" } }),
  ]);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const path = `/models/${segment(model.model_name)}/aliases/${segment(alias.value.trim())}`;
    actions.change(() => sendJson("PUT", path, { version: Number(version.value) }));
  });
  return form;
}

function modelCard(model, actions) {
  const versions = [...model.versions].reverse(); // newest first
  return element("article", { className: "card", attributes: { "data-model": model.model_name } }, [
    element("h3", { text: model.model_name }),
    element("table", { className: "data" }, [
      element("thead", {}, [
        element("tr", {}, ["version", "aliases", "architecture", "dataset", "test accuracy", "actions"].map((text) => element("th", { text }))),
      ]),
      element("tbody", {}, versions.map((summary) => versionRow(model, summary, actions))),
    ]),
    aliasList(model, actions),
    model.versions.length ? promoteForm(model, actions) : null,
  ]);
}

// Fetched, not linked: a plain link would not carry the API key the user typed in.
async function downloadModelFile(modelName, version) {
  const response = await request(`/models/${segment(modelName)}/versions/${version}/model.keras`, {
    accept: "application/octet-stream",
  });
  const disposition = response.headers.get("Content-Disposition") ?? "";
  const name = /filename="([^"]+)"/.exec(disposition)?.[1] ?? `${modelName}-v${version}.keras`;
  const url = URL.createObjectURL(await response.blob());
  const link = element("a", { attributes: { href: url, download: name } });
  document.body.append(link);
  link.click();
  link.remove();
  // Revoked later, not at once: the browser reads the file after the click returns.
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  return name;
}

export async function loadModels() {
  const summaries = await getJson("/models");
  return Promise.all(summaries.map((summary) => getJson(`/models/${segment(summary.model_name)}`)));
}

function describeChange(change) {
  const before = change.from_version ? `v${change.from_version}` : "unset";
  return `${change.model_name}: ${change.alias} now points at v${change.to_version} (was ${before}).`;
}

// actions: openMetrics(name, version), openReport(name, version), changed().
// Alias changes and downloads report in the section's message, which survives the re-render.
export function renderModels(container, models, actions, message, othersShown = false) {
  const withChange = {
    ...actions,
    async download(modelName, version) {
      try {
        const name = await downloadModelFile(modelName, version);
        showMessage(message, `Downloaded ${name}.`, "success");
      } catch (error) {
        showMessage(message, error.message);
      }
    },
    async change(call) {
      try {
        const change = await call();
        await actions.changed();
        showMessage(message, describeChange(change), "success");
      } catch (error) {
        showMessage(message, error.message);
      }
    },
  };
  // A card is drawn again only when its model changed: a half-filled promote form
  // of another model stays as the user left it.
  drawListOr(
    container,
    models,
    (model) => model.model_name,
    (model) => modelCard(model, withChange),
    () =>
      element("p", {
        className: "hint",
        text: othersShown ? "No models of your own yet: those of studies are below." : "No models registered yet: queue a training job above.",
      }),
  );
}
