// The per-day consumption chart: SVG bars from the JSON the server put in the page.
// Amounts only set bar heights (display); every figure shown is the server's exact text.
(function () {
  "use strict";
  var fig = document.getElementById("usage-chart");
  var data = document.getElementById("usage-data");
  if (!fig || !data) { return; }
  var points = JSON.parse(data.textContent);
  var ns = "http://www.w3.org/2000/svg";
  var w = 720, h = 200, pad = 24, gap = 4;
  var max = 0;
  points.forEach(function (p) { max = Math.max(max, parseFloat(p.amount)); });
  var svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "-24 0 " + (w + 48) + " " + (h + pad));
  svg.setAttribute("class", "bars");
  var bw = (w - gap * points.length) / points.length;
  points.forEach(function (p, i) {
    var v = parseFloat(p.amount);
    var bh = max > 0 ? Math.max(v > 0 ? 2 : 0, (v / max) * (h - 10)) : 0;
    var x = i * (bw + gap);
    var rect = document.createElementNS(ns, "rect");
    rect.setAttribute("x", x.toFixed(1));
    rect.setAttribute("y", (h - bh).toFixed(1));
    rect.setAttribute("width", bw.toFixed(1));
    rect.setAttribute("height", bh.toFixed(1));
    rect.setAttribute("data-day", p.day);
    var title = document.createElementNS(ns, "title");
    title.textContent = p.label + ": " + p.text;
    rect.appendChild(title);
    svg.appendChild(rect);
    if (i % 5 === 0 || i === points.length - 1) {
      var label = document.createElementNS(ns, "text");
      label.setAttribute("x", (x + bw / 2).toFixed(1));
      label.setAttribute("y", h + 16);
      label.setAttribute("text-anchor", "middle");
      label.textContent = p.label;
      svg.appendChild(label);
    }
  });
  var base = document.createElementNS(ns, "line");
  base.setAttribute("x1", 0); base.setAttribute("x2", w);
  base.setAttribute("y1", h); base.setAttribute("y2", h);
  svg.appendChild(base);
  fig.appendChild(svg);
  fig.setAttribute("data-ready", "true");
})();
