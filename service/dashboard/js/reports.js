// Reports: a version's report with its plots, and a study's report.
//
// Both are fetched with the key (an <iframe src> or <img src> could not send it)
// and shown from memory: the HTML in a sandboxed frame whose scripts (plotly) run
// in an opaque origin, so they cannot read the key from this page's storage; the
// SVG plots as images, which never run scripts.

import { getJson, request, segment } from "./api.js";
import { element } from "./dom.js";

// A version's plots are named by its report, one <div id="plot-{name}"> each, and
// served at GET /models/{name}/versions/{v}/plots/{name}.svg: reading the names
// from the report keeps one list of plots, the service's. DOMParser runs no script.
function plotNames(html) {
  const report = new DOMParser().parseFromString(html, "text/html");
  return [...report.querySelectorAll('div.plot[id^="plot-"]')].map((node) => node.id.slice("plot-".length));
}

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

// What each of a version's plots shows, for its caption and its alternative text.
const PLOT_TITLES = {
  curves: "Loss and accuracy per epoch, training and validation",
  confusion: "Confusion matrix of the test split",
  f1: "F1 per class on the test split",
};

async function plotFigure(basePath, name, subject) {
  const response = await request(`${basePath}/plots/${segment(name)}.svg`, { accept: "image/svg+xml" });
  const url = URL.createObjectURL(await response.blob());
  shownObjectUrls.push(url);
  const title = PLOT_TITLES[name] ?? name;
  return element("figure", { attributes: { "data-plot": name } }, [
    element("img", { attributes: { src: url, alt: `${title} of ${subject}; the interactive report below has the figures` } }),
    element("figcaption", { text: title }),
  ]);
}

export async function renderVersionReport(container, modelName, version) {
  releasePlots();
  const basePath = `/models/${segment(modelName)}/versions/${segment(version)}`;
  const html = await request(`${basePath}/report`, { accept: "text/html" }).then((response) => response.text());
  const subject = `${modelName} v${version}`;
  const figures = await Promise.all(plotNames(html).map((name) => plotFigure(basePath, name, subject)));
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
