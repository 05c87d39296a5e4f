// Wires the page together: the key field, the sections, and the polling that
// keeps jobs and studies live.

import { keyIsRemembered, storedKey, storeKey } from "./api.js";
import { clearMessage, showMessage } from "./dom.js";
import { refreshJobs } from "./jobs.js";
import { renderMetrics } from "./metrics.js";
import { loadModels, renderModels } from "./models.js";
import { fillModelChoices, setUpPredictForm } from "./predict.js";
import { releasePlots, renderStudyReport, renderVersionReport } from "./reports.js";
import { refreshStudies } from "./studies.js";
import { setUpTrainingForm } from "./training_form.js";

const POLL_MILLISECONDS = 2000;

const byId = (id) => document.getElementById(id);

// Jobs seen succeeded: a new one means a new version, so the models are reloaded.
const succeededJobs = new Set();

async function openDetails(title, render) {
  const section = byId("details");
  const message = byId("details-message");
  byId("details-title").textContent = title;
  clearMessage(message);
  releasePlots();
  byId("details-body").replaceChildren();
  section.hidden = false;
  section.scrollIntoView({ block: "start" });
  // Keyboard users land where the content appeared, not back on the button.
  byId("details-title").focus({ preventScroll: true });
  try {
    await render(byId("details-body"));
  } catch (error) {
    showMessage(message, error.message);
  }
}

const modelActions = {
  openMetrics: (modelName, version) =>
    openDetails(`Metrics of ${modelName} v${version}`, (body) => renderMetrics(body, modelName, version)),
  openReport: (modelName, version) =>
    openDetails(`Report of ${modelName} v${version}`, (body) => renderVersionReport(body, modelName, version)),
  changed: () => refreshModels(),
};

// A section's message may answer a click (a promotion, a cancel): a refresh clears
// only a message it showed itself, when the next refresh succeeds.
const loadFailed = new Set();

function loaded(message) {
  if (loadFailed.delete(message)) {
    clearMessage(message);
  }
}

function loadFailure(message, error) {
  loadFailed.add(message);
  showMessage(message, error.message);
}

async function refreshModels() {
  const message = byId("models-message");
  try {
    const models = await loadModels();
    // A study registers a model per training (study-{id}-{stage}-{n}): folded away, so
    // the models people train and promote stay in view.
    const fromStudies = models.filter((model) => model.model_name.startsWith("study-"));
    const own = models.filter((model) => !model.model_name.startsWith("study-"));
    renderModels(byId("models-list"), own, modelActions, message, fromStudies.length > 0);
    renderModels(byId("study-models-list"), fromStudies, modelActions, message);
    byId("study-models").hidden = fromStudies.length === 0;
    byId("study-models-count").textContent = String(fromStudies.length);
    fillModelChoices(byId("predict-form"), models);
    loaded(message);
  } catch (error) {
    loadFailure(message, error);
  }
}

async function pollJobs() {
  const message = byId("jobs-message");
  try {
    const jobs = await refreshJobs({ table: byId("jobs-table"), message, refresh: pollJobs });
    loaded(message);
    const newlySucceeded = jobs.filter((job) => job.status === "succeeded" && !succeededJobs.has(job.job_id));
    for (const job of newlySucceeded) {
      succeededJobs.add(job.job_id);
    }
    return newlySucceeded.length > 0;
  } catch (error) {
    loadFailure(message, error);
    return false;
  }
}

async function pollStudies() {
  const message = byId("studies-message");
  const openReport = (study) =>
    openDetails(`Report of study ${study.name ?? study.study_id}`, (body) => renderStudyReport(body, study.study_id));
  try {
    await refreshStudies({ container: byId("studies-list"), openReport });
    loaded(message);
  } catch (error) {
    loadFailure(message, error);
  }
}

async function pollForever() {
  // A tab in the background is not polled: nobody is watching it.
  if (!document.hidden) {
    const [newVersions] = await Promise.all([pollJobs(), pollStudies()]);
    if (newVersions) {
      await refreshModels();
    }
  }
  // After the answer, not on a fixed interval: a slow server is never asked twice at once.
  setTimeout(pollForever, POLL_MILLISECONDS);
}

function describeKey() {
  const key = storedKey();
  if (!key) {
    return "no key entered (a server with keys will ask for one)";
  }
  return keyIsRemembered() ? "key in use (remembered on this device)" : "key in use (until this tab closes)";
}

function setUpKeyForm(reload) {
  const form = byId("key-form");
  const input = byId("api-key");
  const status = byId("key-status");
  status.textContent = describeKey();
  byId("remember-key").checked = keyIsRemembered();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    storeKey(input.value.trim(), byId("remember-key").checked);
    input.value = "";
    status.textContent = describeKey();
    reload();
  });
  byId("forget-key").addEventListener("click", () => {
    storeKey("", false);
    status.textContent = describeKey();
    reload();
  });
}

async function setUpTraining() {
  const message = byId("train-message");
  try {
    await setUpTrainingForm({
      form: byId("train-form"),
      message,
      description: byId("architecture-description"),
      onSubmitted: () => pollJobs(),
    });
  } catch (error) {
    showMessage(message, `The training form could not load its choices: ${error.message}`);
  }
}

function start() {
  const reloadAll = () => Promise.all([pollJobs(), pollStudies(), refreshModels()]);
  setUpKeyForm(reloadAll);
  setUpPredictForm({ form: byId("predict-form"), message: byId("predict-message"), result: byId("predict-result") });
  byId("refresh-models").addEventListener("click", refreshModels);
  setUpTraining();
  refreshModels();
  pollForever();
}

start();
