// Charts drawn with Chart.js from data the page carries: a <canvas data-chart="ID">
// is drawn from the JSON in <script type="application/json" id="ID"> (Django's
// json_script: data, not code, so the Content-Security-Policy allows it). Every chart
// sits over a table that says the same, so nothing is lost without JavaScript.
// The JSON: {"type": "bar", "labels": [...], "unit": "USD", "stacked": bool,
//            "datasets": [{"label": "...", "data": [numbers]}]}
"use strict";

(function () {
  var PALETTE = ["--chart-1", "--chart-2", "--chart-3", "--chart-4"];

  function cssColor(name, fallback) {
    var value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return value || fallback;
  }

  function draw(canvas) {
    var source = document.getElementById(canvas.getAttribute("data-chart"));
    if (!source || typeof window.Chart !== "function") {
      return;
    }
    var spec = JSON.parse(source.textContent);
    var text = cssColor("--text", "#222");
    var grid = cssColor("--border", "#ccc");
    var still = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    var datasets = spec.datasets.map(function (dataset, index) {
      var colour = cssColor(PALETTE[index % PALETTE.length], "#4c72b0");
      return {
        label: dataset.label,
        data: dataset.data,
        backgroundColor: colour,
        borderColor: colour,
      };
    });
    var chart = new window.Chart(canvas, {
      type: spec.type || "bar",
      data: { labels: spec.labels, datasets: datasets },
      options: {
        animation: still ? false : undefined,
        maintainAspectRatio: false,
        plugins: {
          legend: { labels: { color: text } },
          tooltip: {
            callbacks: {
              label: function (item) {
                return item.dataset.label + ": " + item.formattedValue + " " + (spec.unit || "");
              },
            },
          },
        },
        scales: {
          x: { stacked: !!spec.stacked, ticks: { color: text }, grid: { color: grid } },
          y: {
            stacked: !!spec.stacked,
            beginAtZero: true,
            ticks: { color: text },
            grid: { color: grid },
            title: { display: !!spec.unit, text: spec.unit || "", color: text },
          },
        },
      },
    });
    canvas.chart = chart;
    canvas.setAttribute("data-chart-drawn", "true");
  }

  function drawAll() {
    document.querySelectorAll("canvas[data-chart]").forEach(draw);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", drawAll);
  } else {
    drawAll();
  }
})();
