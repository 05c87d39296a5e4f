// The jobs table: status and a live progress bar per job, from GET /jobs.

import { getJson, request, segment } from "./api.js";
import { button, drawListOr, element, progressBar, showMessage } from "./dom.js";

const ACTIVE = new Set(["queued", "running"]);

// A succeeded job is done even if early stopping ended it before its last epoch.
export function jobFraction(job) {
  if (job.status === "succeeded") {
    return 1;
  }
  const progress = job.progress;
  return progress && progress.epochs ? progress.epoch / progress.epochs : 0;
}

function epochText(job) {
  const epochs = job.progress?.epochs ?? job.spec?.epochs;
  return `epoch ${job.progress?.epoch ?? 0}/${epochs ?? "?"}`;
}

function statusCell(job) {
  const cell = element("td", {}, [element("span", { className: `status status-${job.status}`, text: job.status })]);
  if (job.error) {
    cell.append(element("div", { className: "hint", text: `${job.error.type}: ${job.error.message}` }));
  }
  return cell;
}

// A study's jobs are "{study id}-{stage}-{index}": cut to 12 characters they all read
// alike, so the study's part is cut instead and the stage kept.
function shortJobId(jobId) {
  const cut = jobId.indexOf("-");
  return cut < 0 ? jobId.slice(0, 12) : `${jobId.slice(0, 8)}…${jobId.slice(cut)}`;
}

function jobRow(job, message, refresh) {
  const cancel = ACTIVE.has(job.status)
    ? button("Cancel", async () => {
        try {
          await request(`/jobs/${segment(job.job_id)}/cancel`, { method: "POST" });
          refresh();
        } catch (error) {
          showMessage(message, error.message);
        }
      })
    : null;
  const model = job.version ? `${job.model_name} v${job.version}` : job.model_name;
  return element("tr", { attributes: { "data-job-id": job.job_id } }, [
    element("td", { className: "mono", text: shortJobId(job.job_id), attributes: { title: job.job_id } }),
    element("td", { text: model }),
    element("td", { text: `${job.spec?.dataset ?? ""} · ${job.spec?.architecture ?? ""}` }),
    statusCell(job),
    element("td", {}, [progressBar(jobFraction(job), `progress of job ${job.job_id}`), element("div", { className: "hint", text: epochText(job) })]),
    element("td", {}, [cancel]),
  ]);
}

export async function refreshJobs({ table, message, refresh }) {
  const list = await getJson("/jobs?limit=50");
  drawListOr(
    table.tBodies[0],
    list.items,
    (job) => job.job_id,
    (job) => jobRow(job, message, refresh),
    () => element("tr", {}, [element("td", { text: "No jobs yet.", attributes: { colspan: 6 } })]),
  );
  return list.items;
}
