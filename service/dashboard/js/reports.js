// Reports: a version's report with its plots, and a study's report.
//
// Both are fetched with the key (an <iframe src> or <img src> could not send it)
// and shown from memory: the HTML in a sandboxed frame whose scripts (plotly) run
// in an opaque origin, so they cannot read the key from this page's storage; the
// SVG plots as images, which never run scripts.

import { getJson, request, segment } from "./api.js";
import { element } from "./dom.js";

// The stable plot URLs of a version: GET /models/{name}/versions/{v}/plots/{plot}.svg
const VERSION_PLOTS = [
  ["curves", "Loss and accuracy per epoch"],
  ["confusion", "Confusion matrix"],
  ["f1", "F1 per class"],
];

// Object URLs of the plots shown now, released when the panel shows something else.
let shownObjectUrls = [];

export function releasePlots() {
  for (const url of shownObjectUrls) {
    URL.revokeObjectURL(url);
  }
  shownObjectUrls = [];
}

function reportFrame(html, title) {
  return element("iframe", {
    className: "report-frame",
    attributes: { sandbox: "allow-scripts", srcdoc: html, title },
  });
}

async function plotFigure(basePath, [name, caption]) {
  const response = await request(`${basePath}/plots/${name}.svg`, { accept: "image/svg+xml" });
  const url = URL.createObjectURL(await response.blob());
  shownObjectUrls.push(url);
  return element("figure", { attributes: { "data-plot": name } }, [
    element("img", { attributes: { src: url, alt: caption } }),
    element("figcaption", { text: caption }),
  ]);
}

export async function renderVersionReport(container, modelName, version) {
  releasePlots();
  const basePath = `/models/${segment(modelName)}/versions/${segment(version)}`;
  const [html, ...figures] = await Promise.all([
    request(`${basePath}/report`, { accept: "text/html" }).then((response) => response.text()),
    ...VERSION_PLOTS.map((plot) => plotFigure(basePath, plot)),
  ]);
  container.replaceChildren(
    element("h3", { text: "Plots" }),
    element("div", { className: "plots" }, figures),
    element("h3", { text: "Interactive report" }),
    reportFrame(html, `${modelName} v${version} report`),
  );
}

export async function renderStudyReport(container, studyId) {
  releasePlots();
  // The study as it is now: the list the button came from may be a poll old.
  const study = await getJson(`/studies/${segment(studyId)}`);
  if (!study.report_url) {
    container.replaceChildren(element("p", { className: "hint", text: `The report of ${studyId} is not published yet (study ${study.status}).` }));
    return;
  }
  const html = await request(`${study.report_url}?format=html`, { accept: "text/html" }).then((response) => response.text());
  container.replaceChildren(reportFrame(html, `report of study ${study.name ?? studyId}`));
}
