// The "queue a training job" form. Its choices come from the service's own
// OpenAPI document (the schema POST /jobs validates against), so a new
// architecture or dataset appears here without touching the dashboard.

import { getJson, newIdempotencyKey, sendJson } from "./api.js";
import { clearMessage, element, sendingOnce, showMessage } from "./dom.js";

function resolve(document, schema) {
  if (schema && schema.$ref) {
    const name = schema.$ref.split("/").pop();
    return document.components.schemas[name];
  }
  return schema;
}

// One entry per architecture: its name, description, and field schemas.
export function trainingChoices(openapi) {
  const body = openapi.paths["/jobs"].post.requestBody.content["application/json"].schema;
  const variants = body.oneOf ?? body.anyOf ?? [body];
  return variants.map((variant) => {
    const spec = resolve(openapi, variant);
    const properties = spec.properties;
    const architecture = properties.architecture.const ?? properties.architecture.default;
    return {
      architecture,
      description: spec.description ?? "",
      properties,
      hyperparameters: resolve(openapi, properties.hyperparameters?.anyOf?.[0] ?? properties.hyperparameters),
    };
  });
}

function fillSelect(select, values) {
  const previous = select.value;
  select.replaceChildren(...values.map((value) => element("option", { text: value, attributes: { value } })));
  if (values.includes(previous)) {
    select.value = previous;
  }
}

function numberHints(input, property) {
  for (const [attribute, key] of [["min", "minimum"], ["max", "maximum"]]) {
    if (property && property[key] !== undefined) {
      input.setAttribute(attribute, property[key]);
    } else {
      input.removeAttribute(attribute);
    }
  }
  input.placeholder = property && property.default !== undefined ? `default ${property.default}` : "";
}

function showArchitecture(form, choice, descriptionNode) {
  const properties = choice.properties;
  fillSelect(form.elements.dataset, properties.dataset.enum);
  for (const name of ["epochs", "sample_fraction", "batch_size"]) {
    numberHints(form.elements[name], properties[name]);
  }
  const defaults = Object.fromEntries(
    Object.entries(choice.hyperparameters?.properties ?? {}).map(([name, field]) => [name, field.default]),
  );
  form.elements.hyperparameters.placeholder = `defaults: ${JSON.stringify(defaults)}`;
  descriptionNode.textContent = choice.description;
}

// Only what the user filled in is sent: the architecture's own recipe supplies
// the rest, exactly as POST /jobs does for any client.
export function specFromForm(form) {
  const spec = { architecture: form.elements.architecture.value, dataset: form.elements.dataset.value };
  for (const name of ["epochs", "batch_size"]) {
    if (form.elements[name].value !== "") {
      spec[name] = Number.parseInt(form.elements[name].value, 10);
    }
  }
  if (form.elements.sample_fraction.value !== "") {
    spec.sample_fraction = Number.parseFloat(form.elements.sample_fraction.value);
  }
  if (form.elements.model_name.value.trim() !== "") {
    spec.model_name = form.elements.model_name.value.trim();
  }
  const hyperparameters = form.elements.hyperparameters.value.trim();
  if (hyperparameters !== "") {
    spec.hyperparameters = JSON.parse(hyperparameters);
  }
  return spec;
}

export async function setUpTrainingForm({ form, message, description, onSubmitted }) {
  const choices = trainingChoices(await getJson("/openapi.json"));
  const byName = new Map(choices.map((choice) => [choice.architecture, choice]));
  fillSelect(form.elements.architecture, [...byName.keys()]);
  showArchitecture(form, byName.get(form.elements.architecture.value), description);
  form.elements.architecture.addEventListener("change", () =>
    showArchitecture(form, byName.get(form.elements.architecture.value), description),
  );
  form.addEventListener("invalid", () => clearMessage(message), true);
  let pending = null; // the spec being sent and its Idempotency-Key
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearMessage(message);
    let spec;
    try {
      spec = specFromForm(form);
    } catch (error) {
      showMessage(message, `The hyperparameters are not valid JSON: ${error.message}`);
      return;
    }
    // One key per spec until the service answers: sending the same spec again after it
    // did not answer returns the job it may have queued, rather than a second one.
    const text = JSON.stringify(spec);
    if (pending?.text !== text) {
      pending = { text, key: newIdempotencyKey() };
    }
    const key = pending.key;
    // A double click queues one job.
    await sendingOnce(form, async () => {
      try {
        const job = await sendJson("POST", "/jobs", spec, { "Idempotency-Key": key });
        pending = null;
        showMessage(message, `Queued job ${job.job_id} for ${job.model_name}.`, "success");
        onSubmitted(job);
      } catch (error) {
        // No answer, or a gateway's or the request timeout's (the job may exist): the
        // same spec is sent again with the same key. The service's own refusals are final.
        if (![0, 502, 504].includes(error.status)) {
          pending = null;
        }
        showMessage(message, error.message);
      }
    });
  });
}
