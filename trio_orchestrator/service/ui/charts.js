// Small SVG charts for the dashboard: a line chart and a stacked bar chart, no library.
// Each draws into an existing <svg> (its viewBox sets the size) and replaces what was there.
"use strict";

const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const PAD = { left: 48, right: 8, top: 8, bottom: 22 };

  function el(name, attributes, text) {
    const node = document.createElementNS(NS, name);
    for (const [key, value] of Object.entries(attributes || {})) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function size(svg) {
    const box = svg.viewBox.baseVal;
    return { width: box.width || 600, height: box.height || 160 };
  }

  // A round upper bound for an axis (1, 2 or 5 times a power of ten).
  function niceMax(value) {
    if (!(value > 0)) return 1;
    const power = 10 ** Math.floor(Math.log10(value));
    return [1, 2, 5, 10].map((m) => m * power).find((m) => m >= value);
  }

  function formatTick(value) {
    if (value === 0) return "0";
    if (Math.abs(value) >= 1000) return value.toExponential(0);
    return Number(value.toPrecision(2)).toString();
  }

  // Horizontal grid lines with their values, from 0 to top.
  function axes(svg, width, height, top, labels) {
    const plot = height - PAD.top - PAD.bottom;
    for (let i = 0; i <= 2; i++) {
      const y = PAD.top + plot - (plot * i) / 2;
      svg.append(el("line", { x1: PAD.left, x2: width - PAD.right, y1: y, y2: y, class: "grid" }));
      svg.append(el("text", { x: PAD.left - 4, y: y + 4, class: "tick", "text-anchor": "end" },
        formatTick((top * i) / 2)));
    }
    const step = Math.max(1, Math.ceil(labels.length / 8));
    const inner = width - PAD.left - PAD.right;
    labels.forEach((label, i) => {
      if (i % step !== 0 || label === "") return;
      const x = PAD.left + (inner * (i + 0.5)) / labels.length;
      svg.append(el("text", { x, y: height - 6, class: "tick", "text-anchor": "middle" }, label));
    });
  }

  function legend(svg, names) {
    let x = PAD.left + 4;
    names.forEach((name, i) => {
      svg.append(el("rect", { x, y: PAD.top, width: 8, height: 8, class: `series s${i % 8}` }));
      svg.append(el("text", { x: x + 11, y: PAD.top + 8, class: "legend" }, name));
      x += 18 + 7 * name.length;
    });
  }

  // series: [{name, values: [number|null]}], all of one length; labels under the x axis.
  function line(svg, series, labels) {
    const { width, height } = size(svg);
    svg.replaceChildren();
    const all = series.flatMap((s) => s.values).filter((v) => v !== null && isFinite(v));
    const top = niceMax(Math.max(0, ...all));
    axes(svg, width, height, top, labels || []);
    const count = Math.max(2, ...series.map((s) => s.values.length));
    const inner = width - PAD.left - PAD.right;
    const plot = height - PAD.top - PAD.bottom;
    series.forEach((s, i) => {
      const points = s.values
        .map((v, j) => (v === null || !isFinite(v) ? null :
          `${PAD.left + (inner * j) / (count - 1)},${PAD.top + plot - (plot * v) / top}`))
        .filter((p) => p !== null);
      if (points.length) {
        svg.append(el("polyline", { points: points.join(" "), class: `line s${i % 8}` }));
      }
    });
    legend(svg, series.map((s) => s.name));
  }

  // groups: {name: [number per label]}; bars stacked per label, one colour per group.
  function stacked(svg, labels, groups) {
    const { width, height } = size(svg);
    svg.replaceChildren();
    const names = Object.keys(groups);
    const totals = labels.map((_, i) => names.reduce((sum, n) => sum + (groups[n][i] || 0), 0));
    const top = niceMax(Math.max(0, ...totals));
    axes(svg, width, height, top, labels);
    const inner = width - PAD.left - PAD.right;
    const plot = height - PAD.top - PAD.bottom;
    const slot = inner / Math.max(1, labels.length);
    labels.forEach((label, i) => {
      let base = 0;
      names.forEach((name, k) => {
        const value = groups[name][i] || 0;
        if (value <= 0) return;
        const h = (plot * value) / top;
        const y = PAD.top + plot - (plot * base) / top - h;
        const bar = el("rect", { x: PAD.left + i * slot + slot * 0.15, y, width: slot * 0.7,
          height: h, class: `series s${k % 8}` });
        bar.append(el("title", {}, `${label} ${name}: $${value.toFixed(6)}`));
        svg.append(bar);
        base += value;
      });
    });
    legend(svg, names);
  }

  return { line, stacked };
})();
