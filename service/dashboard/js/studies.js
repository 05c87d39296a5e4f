// The studies list: each study with its stages and live progress (GET /studies),
// and a button that opens the study's report once it is published.

import { getJson } from "./api.js";
import { button, drawListOr, element, progressBar } from "./dom.js";

function stageRow(stage) {
  // A stage of one training has no choice to report; a selection always has one.
  const chose = stage.kind === "select" || stage.jobs.length > 1;
  const winner = stage.winner && chose ? `winner: ${stage.winner.label}` : "";
  return element("tr", { attributes: { "data-stage": stage.name } }, [
    element("td", { text: stage.name }),
    element("td", {}, [element("span", { className: `status status-${stage.status}`, text: stage.status })]),
    element("td", {}, [progressBar(stage.progress, `progress of stage ${stage.name}`)]),
    element("td", { className: "hint", text: stage.error ?? winner }),
  ]);
}

function studyCard(study, openReport) {
  const title = study.name ? `${study.name} (${study.study_id.slice(0, 12)})` : study.study_id;
  const report = study.report_url
    ? button("Open report", () => openReport(study), { "data-study-report": study.study_id })
    : element("span", { className: "hint", text: "report not published yet" });
  return element("article", { className: "card", attributes: { "data-study-id": study.study_id } }, [
    element("h3", {}, [
      element("span", { text: title }),
      element("span", { className: `status status-${study.status}`, text: study.status }),
    ]),
    progressBar(study.progress, `progress of study ${study.study_id}`),
    element("table", { className: "data" }, [element("tbody", {}, study.stages.map(stageRow))]),
    report,
  ]);
}

export async function refreshStudies({ container, openReport }) {
  const list = await getJson("/studies?limit=20");
  drawListOr(
    container,
    list.items,
    (study) => study.study_id,
    (study) => studyCard(study, openReport),
    () => element("p", { className: "hint", text: "No studies yet: POST /studies starts one (see /docs)." }),
  );
  return list.items;
}
