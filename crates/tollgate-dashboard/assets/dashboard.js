// tollgate's dashboard script. Everything here is an enhancement: every page works without
// it, charts then show their table. No inline script is needed (the pages' CSP forbids it).
(function () {
  "use strict";

  var COLORS = ["#0b5cad", "#e8710a", "#1a7f37", "#8250df", "#bf3989", "#0a7ea4", "#9a6700", "#6e7781"];

  // A chart's data, read from its table: x values (seconds) from the row headers' data-x and
  // their labels from the headers' text, one series per column header with data-series,
  // values from the cells' data-value.
  function readTable(table) {
    var heads = Array.prototype.slice.call(table.querySelectorAll("thead th[data-series]"));
    var names = heads.map(function (th) { return th.textContent.trim(); });
    var cols = heads.map(function (th) { return th.cellIndex; });
    var xs = [], labels = [], values = names.map(function () { return []; }), texts = names.map(function () { return []; });
    table.querySelectorAll("tbody tr").forEach(function (tr) {
      var x = tr.cells[0] && tr.cells[0].getAttribute("data-x");
      if (x === null) { return; }
      xs.push(Number(x));
      labels.push(tr.cells[0].textContent.trim());
      cols.forEach(function (c, i) {
        var cell = tr.cells[c];
        values[i].push(cell ? Number(cell.getAttribute("data-value") || "0") : 0);
        texts[i].push(cell ? cell.textContent.trim() : "");
      });
    });
    return { names: names, xs: xs, labels: labels, values: values, texts: texts };
  }

  // The chart of a figure, drawn by uPlot from its table. Stacked bars (amounts): the first
  // series is drawn on top of the stack, so each series is drawn as the sum of itself and
  // every series after it, largest first (uPlot paints in order). Lines (counts): one stepped
  // line per series, as read.
  function draw(figure) {
    var kind = figure.getAttribute("data-chart");
    var table = figure.querySelector("table");
    var plot = figure.querySelector(".plot");
    if (!table || !plot || typeof uPlot === "undefined") { return; }
    var d = readTable(table);
    if (d.xs.length === 0 || d.names.length === 0) { return; }
    var n = d.names.length;
    var stacked = kind === "stacked-bars";
    var data = [];
    if (stacked) {
      for (var i = n - 1; i >= 0; i--) {
        data[i] = d.values[i].map(function (v, j) { return v + (i + 1 < n ? data[i + 1][j] : 0); });
      }
    } else {
      data = d.values;
    }
    // A step holds a bucket's count over the whole bucket, the last one to the plot's edge.
    var paths = stacked ? uPlot.paths.bars({ size: [0.7, 48], align: 0 }) : uPlot.paths.stepped({ align: 1, extend: true });
    var xName = (table.querySelector("thead th") || {}).textContent || "Day";
    var series = [{ label: xName.trim(), value: function (u, v, si, di) { return di == null ? "" : d.labels[di]; } }];
    d.names.forEach(function (name, i) {
      var color = COLORS[i % COLORS.length];
      series.push({
        label: name,
        stroke: color,
        fill: stacked ? color : undefined,
        width: stacked ? 0 : 2,
        paths: paths,
        points: { show: false },
        value: function (u, v, si, di) { return di == null ? "" : d.texts[i][di]; }
      });
    });
    var yValues = stacked
      ? function (u, ticks) { return ticks.map(function (t) { return "$" + t.toFixed(t < 10 ? 2 : 0); }); }
      : function (u, ticks) { return ticks.map(function (t) { return String(Math.round(t * 100) / 100); }); };
    var opts = {
      width: Math.max(280, plot.clientWidth || figure.clientWidth - 32),
      height: 260,
      // Bars: half a bucket of room at each end, so the first and last bars are drawn whole.
      // Steps: from the first bucket's start to the last one's end.
      scales: { x: { time: true, range: function (u, min, max) {
        var step = d.xs.length > 1 ? d.xs[1] - d.xs[0] : 86400;
        return stacked ? [min - step / 2, max + step / 2] : [min, max + step];
      } } },
      axes: [{}, { values: yValues, size: 60 }],
      series: series,
      legend: { live: true },
      cursor: { points: { show: false } }
    };
    // Counts start at zero and show at least one runner's height.
    if (!stacked) {
      opts.scales.y = { range: function (u, min, max) { return [0, Math.max(1, max)]; } };
    }
    // The axis in the table's time zone (the page's), not the browser's.
    var tz = table.getAttribute("data-tz");
    if (tz && uPlot.tzDate) {
      opts.tzDate = function (ts) { return uPlot.tzDate(new Date(ts * 1000), tz); };
    }
    var u = new uPlot(opts, [d.xs].concat(data), plot);
    figure.classList.add("drawn");
    figure.setAttribute("data-drawn-series", String(n));
    var toggle = document.createElement("button");
    toggle.type = "button";
    toggle.className = "chart-toggle link";
    toggle.textContent = "Show as a table";
    toggle.setAttribute("aria-expanded", "false");
    toggle.addEventListener("click", function () {
      var box = figure.querySelector(".chart-table");
      var open = box.classList.toggle("open");
      toggle.textContent = open ? "Hide the table" : "Show as a table";
      toggle.setAttribute("aria-expanded", String(open));
    });
    figure.appendChild(toggle);
    window.addEventListener("resize", function () {
      u.setSize({ width: Math.max(280, plot.clientWidth), height: 260 });
    });
  }

  function drawCharts(root) {
    root.querySelectorAll("figure.chart[data-chart='stacked-bars']:not(.drawn), figure.chart[data-chart='lines']:not(.drawn)").forEach(draw);
  }

  // Copy buttons: <button data-copy="#id"> copies the text of the element #id.
  function copyButtons(root) {
    root.querySelectorAll("button[data-copy]").forEach(function (b) {
      b.hidden = false;
      b.addEventListener("click", function () {
        var el = document.querySelector(b.getAttribute("data-copy"));
        if (!el || !navigator.clipboard) { return; }
        navigator.clipboard.writeText(el.textContent.trim()).then(function () {
          b.textContent = "Copied";
        });
      });
    });
  }

  // Forms with data-confirm ask before they are sent.
  function confirmations(root) {
    root.querySelectorAll("form[data-confirm]").forEach(function (f) {
      f.addEventListener("submit", function (e) {
        if (!window.confirm(f.getAttribute("data-confirm"))) { e.preventDefault(); }
      });
    });
  }

  // A form marked data-autosubmit is sent as soon as the page opens (the sign-in link's
  // page: the POST, not the GET, uses the link).
  function autosubmit(root) {
    var f = root.querySelector("form[data-autosubmit]");
    if (f) { f.submit(); }
  }

  function enhance(root) {
    drawCharts(root);
    copyButtons(root);
    confirmations(root);
  }

  document.addEventListener("DOMContentLoaded", function () {
    autosubmit(document);
    enhance(document);
  });
  document.addEventListener("htmx:afterSettle", function (e) { enhance(e.target); });
})();
