// Shipyard dashboard: draws every chart on the page with the bundled plotly.js.
// Figures come from <script type="application/json"> elements (no inline scripts: strict CSP).
"use strict";
(function () {
  function draw() {
    if (typeof window.Plotly === "undefined") { return; }
    document.querySelectorAll("div.plot[data-figure]").forEach(function (el) {
      var source = document.getElementById(el.getAttribute("data-figure"));
      if (!source) { return; }
      var figure = JSON.parse(source.textContent);
      window.Plotly.newPlot(el, figure.data, figure.layout,
        {displaylogo: false, responsive: true, modeBarButtonsToRemove: ["sendDataToCloud"]})
        .then(function () { el.setAttribute("data-rendered", "true"); });
    });
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", draw);
  } else {
    draw();
  }
})();
