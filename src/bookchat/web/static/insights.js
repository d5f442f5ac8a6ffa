// Author insights page: fetches /api/v1/admin/insights with the typed API key (held in
// this closure only, never in storage) and renders it. Reader text is untrusted: every
// value goes in through textContent, never as HTML.
(function () {
  "use strict";
  var apiKey = null;
  var $ = function (id) { return document.getElementById(id); };
  var SVG = "http://www.w3.org/2000/svg";

  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function link(page, label) {
    var url = page.url || "";
    if (!/^https?:\/\//i.test(url)) return el("span", label);
    var a = el("a", label);
    a.href = url;
    a.rel = "noopener noreferrer";
    a.target = "_blank";
    return a;
  }

  function pageLabel(page) {
    var title = page.title || page.doc_path;
    return page.section ? title + " › " + page.section : title;
  }

  function pageList(pages, withCounts) {
    var cell = el("td");
    pages.forEach(function (page, i) {
      if (i) cell.appendChild(document.createTextNode(", "));
      cell.appendChild(link(page, pageLabel(page)));
      if (withCounts && page.count > 1) cell.appendChild(el("span", " ×" + page.count, "muted"));
    });
    if (!pages.length) cell.appendChild(el("span", "none", "muted"));
    return cell;
  }

  function fill(tbodyParent, rows) {
    var body = tbodyParent.querySelector("tbody");
    body.textContent = "";
    rows.forEach(function (row) { body.appendChild(row); });
    if (!rows.length) {
      var tr = el("tr");
      var td = el("td", "nothing in this period", "muted");
      td.colSpan = 4;
      tr.appendChild(td);
      body.appendChild(tr);
    }
  }

  function chart(days) {
    var width = 860, height = 180, left = 34, bottom = 22, top = 8;
    var peak = Math.max(1, Math.max.apply(null, days.map(function (d) { return d.questions; })));
    var svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    svg.setAttribute("width", "100%");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", "questions per day");
    var slot = (width - left) / Math.max(1, days.length);
    var scale = (height - bottom - top) / peak;
    function rect(x, y, w, h, color, title) {
      var r = document.createElementNS(SVG, "rect");
      r.setAttribute("x", x); r.setAttribute("y", y);
      r.setAttribute("width", w); r.setAttribute("height", Math.max(0, h));
      r.setAttribute("fill", color);
      var t = document.createElementNS(SVG, "title");
      t.textContent = title;
      r.appendChild(t);
      svg.appendChild(r);
    }
    function label(x, y, text, anchor) {
      var t = document.createElementNS(SVG, "text");
      t.setAttribute("x", x); t.setAttribute("y", y);
      if (anchor) t.setAttribute("text-anchor", anchor);
      t.textContent = text;
      svg.appendChild(t);
    }
    label(left - 6, top + 10, String(peak), "end");
    label(left - 6, height - bottom, "0", "end");
    var every = Math.max(1, Math.ceil(days.length / 10));
    days.forEach(function (d, i) {
      var x = left + i * slot + slot * 0.15, w = slot * 0.7;
      var h = d.questions * scale, r = d.refused * scale;
      rect(x, height - bottom - h, w, h, "#1877f2", d.day + ": " + d.questions + " questions");
      if (d.refused) rect(x, height - bottom - r, w, r, "#e6a700", d.day + ": " + d.refused + " refused");
      if (i % every === 0) label(x + w / 2, height - 6, d.day.slice(5), "middle");
    });
    return svg;
  }

  function render(report) {
    var totals = $("totals");
    totals.textContent = "";
    [["questions", report.questions], ["refused", report.refused],
     ["thumbs down", report.thumbs_down_count], ["pages indexed", report.pages_indexed],
     ["never cited", report.never_cited_pages.length]].forEach(function (pair) {
      var box = el("div");
      box.appendChild(el("strong", pair[1]));
      box.appendChild(el("span", pair[0], "muted"));
      totals.appendChild(box);
    });
    $("chart").textContent = "";
    $("chart").appendChild(chart(report.questions_per_day));

    fill($("gaps"), report.refused_groups.map(function (g) {
      var tr = el("tr");
      tr.appendChild(el("td", g.count, "n"));
      var q = el("td");
      q.appendChild(el("div", g.question));
      g.examples.slice(1).forEach(function (w) { q.appendChild(el("div", w, "muted")); });
      tr.appendChild(q);
      tr.appendChild(pageList(g.closest_pages, true));
      return tr;
    }));
    fill($("downs"), report.thumbs_down.map(function (t) {
      var tr = el("tr");
      tr.appendChild(el("td", t.day));
      tr.appendChild(el("td", t.question));
      tr.appendChild(el("td", t.comment || "—"));
      tr.appendChild(pageList(t.cited_pages, false));
      return tr;
    }));
    [["cited-pages", report.most_cited_pages], ["cited-sections", report.most_cited_sections]]
      .forEach(function (pair) {
        fill($(pair[0]), pair[1].map(function (p) {
          var tr = el("tr");
          tr.appendChild(el("td", p.count, "n"));
          var td = el("td");
          td.appendChild(link(p, pageLabel(p)));
          tr.appendChild(td);
          return tr;
        }));
      });
    var never = $("never-cited");
    never.textContent = "";
    report.never_cited_pages.forEach(function (p) {
      var li = el("li");
      li.appendChild(link(p, p.title || p.doc_path));
      li.appendChild(el("span", " " + p.doc_path, "muted"));
      never.appendChild(li);
    });
    $("report").hidden = false;
  }

  function status(text, isError) {
    var node = $("status");
    node.textContent = text;
    node.className = isError ? "status error" : "status";
  }

  function load() {
    status("Loading…");
    var since = $("since").value;
    fetch("/api/v1/admin/insights?since=" + encodeURIComponent(since), {
      headers: { Authorization: "Bearer " + apiKey, Accept: "application/json" },
      cache: "no-store",
      credentials: "omit",
    }).then(function (response) {
      return response.json().then(function (body) { return [response.status, body]; },
        function () { return [response.status, null]; });
    }).then(function (pair) {
      var code = pair[0], body = pair[1];
      if (code === 200) {
        status("Since " + body.since.slice(0, 10) + " (UTC).");
        render(body);
        return;
      }
      $("report").hidden = true;
      if (code === 401 || code === 403) apiKey = null;
      var message = body && body.error ? body.error.message : "HTTP " + code;
      status(code === 401 ? "That key is not valid: " + message
        : code === 403 ? "That is a reader's token, not an API key." : "Could not load: " + message, true);
    }, function () { status("The server could not be reached.", true); });
  }

  $("key-form").addEventListener("submit", function (event) {
    event.preventDefault();
    apiKey = $("api-key").value.trim();
    $("api-key").value = "";  // the key lives in this closure only
    if (apiKey) load();
  });
  $("since").addEventListener("change", function () { if (apiKey) load(); });
})();
