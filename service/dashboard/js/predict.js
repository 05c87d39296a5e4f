// Upload an image to POST /predict and show the label with its top-k probabilities.

import { request, withQuery } from "./api.js";
import { clearMessage, element, sendingOnce, showMessage } from "./dom.js";

// The image shown beside the answer; released when the next one replaces it.
let previewUrl = null;

function probabilityBar({ label, probability }) {
  const fill = element("div", { className: "bar-fill" });
  fill.style.width = `${(probability * 100).toFixed(1)}%`;
  return element("li", { className: "probability", attributes: { "data-label": label } }, [
    element("span", { className: "probability-label", text: label }),
    element("div", { className: "bar" }, [fill]),
    element("span", { className: "probability-value", text: `${(probability * 100).toFixed(1)}%` }),
  ]);
}

function showResult(container, file, answer) {
  if (previewUrl) {
    URL.revokeObjectURL(previewUrl);
  }
  previewUrl = URL.createObjectURL(file);
  const prediction = answer.predictions[0];
  container.replaceChildren(
    element("div", { className: "prediction" }, [
      element("img", { className: "preview", attributes: { src: previewUrl, alt: file.name } }),
      element("div", {}, [
        element("p", {}, [
          element("span", { text: `${answer.model_name} v${answer.version} says ` }),
          element("strong", { className: "predicted-label", text: prediction.label }),
          element("span", { text: ` (${(prediction.confidence * 100).toFixed(1)}%)` }),
        ]),
        element("ol", { className: "top-k" }, prediction.top_k.map(probabilityBar)),
      ]),
    ]),
  );
}

export function fillModelChoices(form, models) {
  const select = form.elements.model_name;
  const previous = select.value;
  const names = models.map((model) => model.model_name);
  select.replaceChildren(...names.map((name) => element("option", { text: name, attributes: { value: name } })));
  if (names.includes(previous)) {
    select.value = previous;
  }
}

export function setUpPredictForm({ form, message, result }) {
  // The browser's own check stopped the submit: an older answer's message would mislead.
  form.addEventListener("invalid", () => clearMessage(message), true);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearMessage(message);
    const file = form.elements.file.files[0];
    if (!file) {
      showMessage(message, "Choose an image first.");
      return;
    }
    const body = new FormData();
    body.append("files", file, file.name);
    const path = withQuery("/predict", {
      model_name: form.elements.model_name.value,
      version: form.elements.version.value.trim(),
      top_k: form.elements.top_k.value,
    });
    await sendingOnce(form, async () => {
      // A version's first call loads it (seconds): say so rather than show nothing.
      showMessage(message, "Classifying…", "info");
      try {
        const answer = await (await request(path, { method: "POST", body })).json();
        clearMessage(message);
        showResult(result, file, answer);
      } catch (error) {
        result.replaceChildren();
        showMessage(message, error.message);
      }
    });
  });
}
