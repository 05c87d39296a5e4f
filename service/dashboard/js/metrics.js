// The per-class report of one version (GET /metrics): headline figures, a table
// per class, and the confusion matrix as a heat map with the class names.

import { getJson, withQuery } from "./api.js";
import { element, formatNumber } from "./dom.js";

function headline(report) {
  const facts = [
    ["test accuracy", formatNumber(report.accuracy)],
    ["test loss", formatNumber(report.loss)],
    ["validation accuracy", formatNumber(report.validation_accuracy)],
    ["generalization gap", formatNumber(report.generalization_gap)],
    ["test images", report.test_samples],
    ["parameters", report.parameter_count.toLocaleString()],
    ["training", `${report.training_seconds.toFixed(1)} s, ${report.epochs_run} epochs`],
  ];
  return element("dl", { className: "facts" }, facts.flatMap(([name, value]) => [element("dt", { text: name }), element("dd", { text: value })]));
}

function perClassTable(report) {
  const weak = new Set(report.weak_classes.map((entry) => entry.class_name));
  const row = (name, figures, className) =>
    element("tr", { className }, [
      element("th", { text: name, attributes: { scope: "row" } }),
      ...["precision", "recall", "f1"].map((key) => element("td", { text: formatNumber(figures[key], 3) })),
      element("td", { text: figures.support }),
    ]);
  return element("table", { className: "data per-class" }, [
    element("thead", {}, [element("tr", {}, ["class", "precision", "recall", "F1", "support"].map((text) => element("th", { text })))]),
    element("tbody", {}, [
      ...report.per_class.map((entry) => row(entry.class_name, entry, weak.has(entry.class_name) ? "weak" : "")),
      row("macro avg", report.macro_avg, "average"),
      row("weighted avg", report.weighted_avg, "average"),
    ]),
  ]);
}

// Each cell is shaded by its share of the true class's row, so classes with
// fewer test images are as readable as the rest; the diagonal is shaded apart.
export function confusionMatrixTable(confusion) {
  const { labels, matrix } = confusion;
  const head = element("tr", {}, [
    element("th", { className: "corner", text: "true ↓ / predicted →" }),
    ...labels.map((label) => element("th", { text: label, attributes: { scope: "col" } })),
  ]);
  const rows = matrix.map((counts, rowIndex) => {
    const total = counts.reduce((sum, count) => sum + count, 0) || 1;
    return element("tr", {}, [
      element("th", { text: labels[rowIndex], attributes: { scope: "row" } }),
      ...counts.map((count, columnIndex) => {
        const share = count / total;
        const cell = element("td", {
          className: rowIndex === columnIndex ? "diagonal" : "off-diagonal",
          text: count,
          attributes: { title: `true ${labels[rowIndex]}, predicted ${labels[columnIndex]}: ${count} (${(share * 100).toFixed(1)}%)` },
        });
        cell.style.setProperty("--share", share.toFixed(3));
        return cell;
      }),
    ]);
  });
  return element("table", { className: "confusion" }, [element("thead", {}, [head]), element("tbody", {}, rows)]);
}

export async function renderMetrics(container, modelName, version) {
  const report = await getJson(withQuery("/metrics", { model_name: modelName, version }));
  const weak = report.weak_classes.map((entry) => entry.class_name).join(", ") || "none";
  container.replaceChildren(
    headline(report),
    element("h3", { text: "Per class" }),
    perClassTable(report),
    element("p", { className: "hint", text: `Weak classes (${report.weak_class_rule}): ${weak}` }),
    element("h3", { text: "Confusion matrix" }),
    element("div", { className: "scroll" }, [confusionMatrixTable(report.confusion_matrix)]),
  );
  return report;
}
