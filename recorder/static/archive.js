// The recording archive page: search recordings, play one, download its files.
//
// The token comes from the link (/archive?token=...), is kept in sessionStorage
// and removed from the address bar. API calls send it as a bearer token; media
// and file links carry it as ?token= (a <video src> cannot set headers).
// window.archive exposes the page's state for tests and kiosk scripts.
"use strict";

(() => {
  const TOKEN_KEY = "telebridge.archive.token";
  const STEREO_LAYOUTS = ["sbs", "tb"];
  const $ = (id) => document.getElementById(id);

  const state = {
    token: "",
    status: "loading", // "loading" | "ready" | "error"
    error: null, // {code, message} of the last failure
    recordings: [],
    manifest: null,
    stereo: { layout: "mono", mode: "sbs" },
    view: null, // StereoView over the player
  };

  // An element with properties (className, textContent, href, ...) and children.
  function el(tag, props = {}, ...children) {
    const node = Object.assign(document.createElement(tag), props);
    node.append(...children.filter((child) => child !== null && child !== undefined));
    return node;
  }

  function readToken() {
    const url = new URL(location.href);
    const fromLink = url.searchParams.get("token");
    if (fromLink) {
      sessionStorage.setItem(TOKEN_KEY, fromLink);
      url.searchParams.delete("token");
      history.replaceState(null, "", url.pathname + url.search + url.hash);
    }
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  async function api(path) {
    const headers = state.token ? { Authorization: `Bearer ${state.token}` } : {};
    const response = await fetch(path, { headers, cache: "no-store" });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const error = new Error((body && body.message) || `HTTP ${response.status}`);
      error.code = (body && body.error) || `http-${response.status}`;
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function fileUrl(id, name, download = false) {
    const params = new URLSearchParams();
    if (state.token) params.set("token", state.token);
    if (download) params.set("download", "1");
    return `/recordings/${encodeURIComponent(id)}/${encodeURIComponent(name)}?${params}`;
  }

  function showError(error) {
    state.error = { code: error.code || "error", message: error.message };
    let text = error.message;
    if (error.status === 401) {
      text = `Access refused (${state.error.code}): ${error.message}. ` +
        "Open the archive with the link you were given (it ends in ?token=...).";
    }
    $("error").textContent = text;
    $("error").hidden = false;
  }

  function clearError() {
    state.error = null;
    $("error").hidden = true;
  }

  function formatDate(iso) {
    const date = iso ? new Date(iso) : null;
    return date && !Number.isNaN(date.getTime()) ? date.toLocaleString() : "unknown date";
  }

  function formatDuration(seconds) {
    if (typeof seconds !== "number" || !Number.isFinite(seconds)) return "-";
    const s = Math.round(seconds);
    const mm = String(Math.floor((s % 3600) / 60)).padStart(s >= 3600 ? 2 : 1, "0");
    const ss = String(s % 60).padStart(2, "0");
    return s >= 3600 ? `${Math.floor(s / 3600)}:${mm}:${ss}` : `${mm}:${ss}`;
  }

  function formatBytes(bytes) {
    if (typeof bytes !== "number") return "-";
    const units = ["B", "kB", "MB", "GB", "TB"];
    let value = bytes;
    let unit = 0;
    while (value >= 1000 && unit < units.length - 1) {
      value /= 1000;
      unit += 1;
    }
    return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
  }

  function badge(status) {
    const label = status === "recording" ? "recording…" : status || "unknown";
    return el("span", { className: `badge ${status || ""}`, textContent: label });
  }

  // --- the list ---

  function card(recording) {
    const thumbnail = recording.thumbnails[0]
      ? el("img", {
          className: "thumb",
          alt: "",
          loading: "lazy",
          src: fileUrl(recording.id, recording.thumbnails[0]),
        })
      : el("div", { className: "thumb" });
    const people = recording.participants.join(", ") || "no participants";
    const button = el(
      "button",
      { type: "button", className: "card" },
      thumbnail,
      el(
        "div",
        {},
        el("div", { className: "when", textContent: formatDate(recording.started_at) }),
        el("div", { className: "line" }, `${recording.room} · ${formatDuration(recording.duration_s)} `,
          badge(recording.status)),
        el("div", { className: "line muted", textContent: people }),
      ),
    );
    button.dataset.id = recording.id;
    button.addEventListener("click", () => select(recording.id));
    return el("li", {}, button);
  }

  function renderList() {
    const list = $("recordings");
    list.replaceChildren(...state.recordings.map(card));
    const n = state.recordings.length;
    $("count").textContent = n ? `${n} recording${n === 1 ? "" : "s"}` : "No recordings match.";
    markSelected();
  }

  function markSelected() {
    const current = state.manifest && state.manifest.id;
    for (const button of document.querySelectorAll(".card")) {
      button.setAttribute("aria-current", String(button.dataset.id === current));
    }
  }

  async function search() {
    const form = new FormData($("search"));
    const params = new URLSearchParams();
    for (const key of ["room", "from", "to", "q"]) {
      const value = String(form.get(key) || "").trim();
      if (value) params.set(key, value);
    }
    state.status = "loading";
    try {
      const body = await api(`/api/recordings?${params}`);
      state.recordings = body.recordings;
      clearError();
      renderList();
      state.status = "ready";
    } catch (error) {
      state.recordings = [];
      renderList();
      $("count").textContent = "";
      showError(error);
      state.status = "error";
    }
  }

  // --- one recording ---

  function mainFile(manifest) {
    return manifest.files.find((f) => f.kind === "main") || manifest.files[0] || null;
  }

  function play(name) {
    const video = $("player");
    video.src = fileUrl(state.manifest.id, name);
    video.load();
  }

  function renderFiles(manifest) {
    const names = new Map(manifest.participants.map((p) => [p.id, p.name]));
    const rows = manifest.files.map((file) => {
      const tracks = (file.tracks || [])
        .map((t) => [t.codec, t.width && t.height ? `${t.width}×${t.height}` : ""].join(" ").trim())
        .join(", ");
      const kind = file.kind === "participant"
        ? `participant (${names.get(file.participant) || file.participant})`
        : file.kind || "";
      const playButton = el("button", { type: "button", textContent: "Play" });
      playButton.addEventListener("click", () => play(file.name));
      return el(
        "tr",
        {},
        el("td", { textContent: file.name }),
        el("td", { textContent: kind }),
        el("td", { textContent: formatDuration(file.start_s) }),
        el("td", { textContent: formatDuration(file.duration_s) }),
        el("td", { textContent: tracks }),
        el("td", { textContent: formatBytes(file.bytes) }),
        el(
          "td",
          {},
          playButton,
          " ",
          el("a", { href: fileUrl(manifest.id, file.name, true), textContent: "Download" }),
        ),
      );
    });
    $("files").tBodies[0].replaceChildren(...rows);
  }

  function renderFacts(manifest) {
    const facts = [
      ["Recording", manifest.id],
      ["Room", manifest.room],
      ["Status", manifest.status === "recording" ? "recording…" : manifest.status],
      ["Started", formatDate(manifest.started_at)],
      ["Ended", manifest.ended_at ? formatDate(manifest.ended_at) : "-"],
      ["Duration", formatDuration(manifest.duration_s)],
      ["Stereo", manifest.stereo || "mono"],
    ];
    $("facts").replaceChildren(
      ...facts.flatMap(([term, value]) => [
        el("dt", { textContent: term }),
        el("dd", { textContent: value === null || value === undefined ? "-" : String(value) }),
      ]),
    );
    $("participants").tBodies[0].replaceChildren(
      ...manifest.participants.map((p) =>
        el(
          "tr",
          {},
          el("td", { textContent: p.name || p.id || "" }),
          el("td", { textContent: p.role || "" }),
          el("td", { textContent: p.joined_at ? formatDate(p.joined_at) : "-" }),
          el("td", { textContent: p.left_at ? formatDate(p.left_at) : "-" }),
        ),
      ),
    );
    const raw = el("a", { href: fileUrl(manifest.id, "manifest.json", true), textContent: "Download manifest.json" });
    $("manifest").replaceChildren(raw, "\n\n", JSON.stringify(manifest, null, 2));
  }

  async function select(id) {
    let manifest;
    try {
      manifest = await api(`/api/recordings/${encodeURIComponent(id)}`);
    } catch (error) {
      showError(error);
      return;
    }
    clearError();
    state.manifest = manifest;
    history.replaceState(null, "", `${location.pathname}${location.search}#${encodeURIComponent(id)}`);
    $("detail").hidden = false;
    $("title").textContent = `${manifest.room} · ${formatDate(manifest.started_at)}`;
    $("status").replaceWith(Object.assign(badge(manifest.status), { id: "status" }));
    renderFiles(manifest);
    renderFacts(manifest);
    markSelected();

    const layout = STEREO_LAYOUTS.includes(manifest.stereo) ? manifest.stereo : "mono";
    $("view-label").hidden = layout === "mono";
    const file = mainFile(manifest);
    const video = $("player");
    if (file) {
      play(file.name);
    } else {
      video.removeAttribute("src");
      video.load();
    }
    applyStereo(video, layout, layout === "mono" ? "sbs" : $("view").value);
  }

  // --- stereo views: the room page's renderer (/static/stereo.js), same three modes ---

  // Show `video` of stereo `layout` ("mono", "sbs", "tb") in `mode`: "sbs" as recorded,
  // "2d" the left (top) eye at the frame's aspect ratio, "anaglyph" red/cyan.
  function applyStereo(video, layout, mode) {
    state.stereo = { layout, mode };
    if (!state.view) return; // stereo.js not loaded yet: start() applies it
    state.view.set({ layout, mode });
    $("transport").hidden = !state.view.drawing; // the native controls are covered
  }

  // --- the transport bar, for stereo views that crop or cover the native controls ---

  function updateTransport() {
    const video = $("player");
    const seek = $("seek");
    const duration = Number.isFinite(video.duration) ? video.duration : 0;
    seek.max = String(duration);
    if (document.activeElement !== seek) seek.value = String(video.currentTime);
    $("play").textContent = video.paused ? "Play" : "Pause";
    $("clock").textContent = `${formatDuration(video.currentTime)} / ${formatDuration(duration)}`;
  }

  function wire() {
    const video = $("player");
    for (const event of ["timeupdate", "play", "pause", "durationchange", "emptied"]) {
      video.addEventListener(event, updateTransport);
    }
    video.addEventListener("error", () => {
      if (video.getAttribute("src")) {
        showError(new Error("this file cannot be played here (download it instead)"));
      }
    });
    $("play").addEventListener("click", () => (video.paused ? video.play() : video.pause()));
    $("seek").addEventListener("input", () => {
      video.currentTime = Number($("seek").value);
    });
    $("view").addEventListener("change", () => {
      applyStereo(video, state.stereo.layout, $("view").value);
    });
    $("search").addEventListener("submit", (event) => {
      event.preventDefault();
      search();
    });
    $("search").addEventListener("reset", () => setTimeout(search));
  }

  async function start() {
    state.token = readToken();
    const { StereoView } = await import("/archive/static/stereo.js");
    state.view = new StereoView($("player"), $("anaglyph"));
    wire();
    await search();
    const wanted = decodeURIComponent(location.hash.slice(1));
    if (wanted && state.status === "ready") await select(wanted);
  }

  window.archive = {
    get video() {
      return $("player");
    },
    get status() {
      return state.status;
    },
    get error() {
      return state.error;
    },
    get recordings() {
      return state.recordings;
    },
    get manifest() {
      return state.manifest;
    },
    get view() {
      return state.view;
    },
    search,
    select,
    applyStereo,
  };

  start();
})();
