// The p2pcdn portal page: fetches /api/v1/channels every 2 s and redraws the channel list.
// Plain JavaScript; the markup is the same as portal/server.py's render_row, and every value
// goes into the page as text (textContent), never as HTML.
"use strict";

(function () {
  const REFRESH_MS = 2000;
  const TIMEOUT_MS = 5000;
  const API = "/api/v1/channels";

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function formatBitrate(kbps) {
    if (kbps === null || kbps === undefined) return "\u2014";
    if (kbps < 1000) return kbps + " kbit/s";
    return (kbps / 1000).toFixed(1) + " Mbit/s";
  }

  function formatSize(size) {
    return size % 1024 === 0 ? size / 1024 + " KiB" : size + " B";
  }

  function shortSwarm(id) {
    return id.length <= 16 ? id : id.slice(0, 8) + "\u2026" + id.slice(-6);
  }

  function row(ch) {
    const tr = el("tr");
    tr.dataset.channel = ch.name;

    const name = el("td", "name");
    name.append(el("span", "title", ch.title), el("span", "id", ch.name));

    const kind = el("td", "kind");
    kind.append(ch.live ? el("span", "badge live", "LIVE") : el("span", "badge vod", "VoD"));

    const swarm = el("td", "swarm");
    const code = el("code", null, shortSwarm(ch.swarm_id));
    code.title = ch.swarm_id;
    swarm.append(code);

    const chunks = el("td", "chunks", formatSize(ch.chunk_size));
    chunks.append(el("span", "integrity", ch.integrity));

    const tracker = el("td", "tracker");
    if (ch.trackers.length === 0) tracker.textContent = "\u2014";
    ch.trackers.forEach(function (url, i) {
      if (i > 0) tracker.append(el("br"));
      tracker.append(document.createTextNode(url));
    });

    tr.append(
      name,
      kind,
      el("td", "bitrate", formatBitrate(ch.bitrate)),
      el("td", "viewers", String(ch.viewers)),
      swarm,
      chunks,
      tracker,
    );
    return tr;
  }

  function setStatus(text, offline) {
    const status = document.getElementById("status");
    status.textContent = text;
    status.classList.toggle("offline", offline);
  }

  function render(channels) {
    const tbody = document.querySelector("#channels tbody");
    tbody.replaceChildren.apply(tbody, channels.map(row));
    document.getElementById("empty").classList.toggle("visible", channels.length === 0);
    let viewers = 0;
    channels.forEach(function (ch) { viewers += ch.viewers; });
    const time = new Date().toLocaleTimeString();
    setStatus(channels.length + " channel(s) \u00b7 " + viewers + " viewer(s) \u00b7 updated " +
      time, false);
    document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
  }

  async function refresh() {
    const controller = new AbortController();
    const timer = setTimeout(function () { controller.abort(); }, TIMEOUT_MS);
    try {
      const response = await fetch(API, { cache: "no-store", signal: controller.signal });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const data = await response.json();
      render(Array.isArray(data.channels) ? data.channels : []);
    } catch (err) {
      setStatus("portal unreachable (" + err.message + "), retrying\u2026", true);
    } finally {
      clearTimeout(timer);
      setTimeout(refresh, REFRESH_MS);
    }
  }

  refresh();
})();
