// Room page UI. All protocol and WebRTC logic is in client.js; this file only
// reads the URL, renders the session's state and turns clicks into calls.
//
// Kiosk deep link: /room/<room>?token=<jwt>&autojoin=1 joins with no click and
// rejoins by itself after drops. Without autojoin a Join button is shown.
// &view=2d|anaglyph|sbs: how a stereo (3D) main feed is shown (an AV room with a
// 3D monitor uses sbs); &stereo=sbs|tb: our own camera is a 3D tower's output.

import { TelebridgeSession, roomFromPath } from "./client.js";
import { LAYOUTS, StereoView, parseViewMode } from "./stereo.js";

const $ = (id) => document.getElementById(id);

const params = new URLSearchParams(location.search);
const room = roomFromPath(location.pathname) ?? params.get("room");
const autojoin = ["1", "true", "yes"].includes((params.get("autojoin") || "").toLowerCase());

const el = {
  body: document.body,
  roomName: $("room-name"),
  selfInfo: $("self-info"),
  status: $("status"),
  statusDetail: $("status-detail"),
  quality: $("quality"),
  recording: $("recording-banner"),
  notice: $("notice"),
  mainVideo: $("main-video"),
  mainCaption: $("main-caption"),
  mainPlaceholder: $("main-placeholder"),
  mainStereo: $("main-stereo"),
  viewLabel: $("view-label"),
  viewMode: $("view-mode"),
  stereoLabel: $("stereo-label"),
  stereoLayout: $("stereo-layout"),
  previewBox: $("self-preview-box"),
  preview: $("self-preview"),
  localMuted: $("local-muted"),
  enableSound: $("enable-sound"),
  participants: $("participants"),
  participantCount: $("participant-count"),
  moderatorControls: $("moderator-controls"),
  revokeFloor: $("revoke-floor"),
  toggleRecording: $("toggle-recording"),
  endRoom: $("end-room"),
  thumbs: $("thumbs"),
  joinBox: $("join-box"),
  tokenLabel: $("token-label"),
  tokenInput: $("token-input"),
  join: $("join"),
  raiseHand: $("raise-hand"),
  publishToggle: $("publish-toggle"),
  shareScreen: $("share-screen"),
  leave: $("leave"),
};

const session = new TelebridgeSession({ token: params.get("token") || "", room });
if (LAYOUTS.includes(params.get("stereo"))) session.stereo = params.get("stereo");
const stereoView = new StereoView(el.mainVideo, el.mainStereo);
stereoView.set({ mode: parseViewMode(params.get("view")) });
el.viewMode.value = stereoView.mode;

// ------------------------------------------------------------ test hooks

// Live view of the session for automated tests (getters: always current).
window.telebridge = {
  get state() { return session.state; },
  get self() { return session.self ? { ...session.self } : null; },
  get participants() { return session.participants; },
  get floor() { return session.floor; },
  get mainFeed() { return session.mainFeed; },
  get activeSpeaker() { return session.activeSpeaker; },
  get joins() { return session.joins; },
  get lastError() { return session.lastError ? { ...session.lastError } : null; },
  get recording() { return session.recording; },
  mainVideo: el.mainVideo,
  send: (message) => session.send(message),
};
// Extras, kept non-enumerable so the documented shape stays as it is.
Object.defineProperties(window.telebridge, {
  session: { value: session },
  quality: { get: () => ({ ...session.quality }) },
  stereo: { value: stereoView },
  join: { value: () => startJoin() },
  leave: { value: () => session.leave() },
});

// --------------------------------------------------------------- helpers

function participantName(id) {
  if (id == null) return "";
  if (session.self && session.self.id === id) return `${session.self.name} (you)`;
  const p = session.participantsById.get(id);
  return p ? p.name : "";
}

let noticeTimer = null;
function showNotice(text) {
  el.notice.textContent = text;
  el.notice.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { el.notice.hidden = true; }, 6000);
}

/** Run a moderator/participant action and show its error, if any. */
function act(promise) {
  promise.catch((err) => showNotice(err.message || String(err)));
}

function button(text, attrs, className = "") {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  if (className) b.className = className;
  for (const [k, v] of Object.entries(attrs)) b.setAttribute(k, v);
  return b;
}

// ---------------------------------------------------------- sound/autoplay

// Chromium blocks unmuted autoplay without a user gesture unless the kiosk
// browser runs with --autoplay-policy=no-user-gesture-required. If it is
// blocked, play muted (the picture matters most) and offer a click for sound.
let soundBlocked = false;

function shouldMute(video) {
  if (video === el.mainVideo) {
    // Our own voice coming back through the main feed would echo.
    return soundBlocked || (session.self != null && session.mainFeed === session.self.id);
  }
  return soundBlocked;
}

function playVideo(video) {
  video.muted = shouldMute(video);
  const attempt = video.play();
  if (!attempt) return;
  attempt.catch((err) => {
    if (err.name !== "NotAllowedError" || video.muted) return;
    soundBlocked = true;
    el.enableSound.hidden = false;
    video.muted = true;
    video.play().catch(() => {});
  });
}

function enableSound() {
  if (!soundBlocked) return;
  soundBlocked = false;
  el.enableSound.hidden = true;
  for (const video of [el.mainVideo, ...el.thumbs.querySelectorAll("video")]) {
    if (video.srcObject) playVideo(video);
  }
}

// -------------------------------------------------------------- rendering

const STATUS_TEXT = {
  idle: "idle",
  connecting: "connecting",
  joined: "joined",
  reconnecting: "reconnecting",
  ended: "ended",
  removed: "removed",
};

function renderStatus() {
  const state = session.state;
  el.body.dataset.state = state;
  el.status.textContent =
    state === "error" ? (session.lastError && session.lastError.message) || "error" : STATUS_TEXT[state];
  el.status.className = `status status-${state}`;
  el.statusDetail.textContent = state === "joined" || state === "error" ? "" : session.statusDetail;
  el.roomName.textContent = room ?? "(none)";
  const self = session.self;
  el.selfInfo.textContent = self ? `${self.name} · ${self.role}` : params.get("name") || "";
  document.title = room ? `Telebridge · ${room}` : "Telebridge";
}

function renderControls() {
  const state = session.state;
  const role = session.role;
  const active = state === "connecting" || state === "joined" || state === "reconnecting";
  const joined = state === "joined";

  el.joinBox.hidden = active;
  el.tokenLabel.hidden = !!session.token && state !== "error";
  el.leave.hidden = !active;

  el.raiseHand.hidden = !(joined && (role === "participant" || role === "viewer"));
  el.raiseHand.textContent = session.handRaised ? "Lower hand" : "Raise hand";
  el.raiseHand.setAttribute("aria-pressed", String(session.handRaised));
  el.raiseHand.classList.toggle("on", session.handRaised);

  el.publishToggle.hidden = !(joined && (role === "moderator" || role === "presenter"));
  el.publishToggle.textContent = session.publishPc ? "Stop camera" : "Start camera";

  el.shareScreen.hidden = !(joined && session.publishPc);
  el.stereoLabel.hidden = el.publishToggle.hidden && !session.publishPc;
  el.stereoLayout.value = session.stereo;
  el.shareScreen.textContent = session.screenTrack ? "Stop sharing" : "Share screen";
  el.shareScreen.disabled = session.mutedByModerator.video;

  el.moderatorControls.hidden = !(joined && session.isModerator);
  el.toggleRecording.textContent = session.recording ? "Stop recording" : "Start recording";
}

function renderRecording() {
  el.recording.hidden = !session.recording;
}

function renderQuality() {
  const q = session.quality;
  el.quality.textContent = q.text;
  el.quality.title = q.title || "";
  el.quality.className = `quality quality-${q.level}`;
}

/** One list entry; moderators get action buttons. */
function participantEntry(p) {
  const self = session.self;
  const isSelf = self != null && p.id === self.id;
  const li = document.createElement("li");
  li.dataset.participant = p.id;
  li.classList.toggle("self", isSelf);
  li.classList.toggle("speaking", p.id === session.activeSpeaker);
  li.classList.toggle("floor", p.id === session.floor);
  li.classList.toggle("hand", !!p.hand);

  const who = document.createElement("div");
  who.className = "who";
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = isSelf ? `${p.name} (you)` : p.name;
  const role = document.createElement("span");
  role.className = `badge role role-${p.role}`;
  role.textContent = p.role;
  who.append(name, role);
  const badges = [];
  if (p.id === session.floor) badges.push(["floor", "has the floor"]);
  if (p.hand) badges.push(["hand", "hand raised"]);
  if (p.publishing) badges.push(["live", "live"]);
  if (p.id === session.activeSpeaker) badges.push(["speaking", "speaking"]);
  for (const [cls, text] of badges) {
    const b = document.createElement("span");
    b.className = `badge ${cls}`;
    b.textContent = text;
    who.append(b);
  }
  li.append(who);

  if (session.isModerator && session.state === "joined") {
    const actions = document.createElement("div");
    actions.className = "actions";
    const id = String(p.id);
    actions.append(button("Give floor", { "data-action": "grant-floor", "data-participant": id }));
    if (!isSelf) {
      actions.append(
        button("Mute mic", { "data-action": "mute", "data-kind": "audio", "data-participant": id }),
        button("Mute video", { "data-action": "mute", "data-kind": "video", "data-participant": id }),
        button("Remove", { "data-action": "remove", "data-participant": id }, "danger"),
      );
    }
    li.append(actions);
  }
  return li;
}

function renderParticipants() {
  const list = session.participants;
  // Show ourselves even if the server's list leaves us out.
  if (session.self && !list.some((p) => p.id === session.self.id)) {
    list.unshift({ ...session.self, hand: session.handRaised, publishing: session.publishing,
      floor: session.floor === session.self.id });
  }
  const items = list.map(participantEntry);
  el.participants.replaceChildren(...items);
  el.participantCount.textContent = list.length ? `(${list.length})` : "";
  const hands = list.filter((p) => p.hand).length;
  el.participantCount.title = hands ? `${hands} hand(s) raised` : "";
}

// Re-rendering hundreds of entries on every event of a join storm is wasteful:
// coalesce list renders.
let listRenderTimer = null;
function scheduleParticipants() {
  if (listRenderTimer) return;
  listRenderTimer = setTimeout(() => {
    listRenderTimer = null;
    renderParticipants();
    renderThumbCaptions();
  }, 30);
}

function renderMain() {
  const stream = session.mainStream;
  if (el.mainVideo.srcObject !== stream) {
    el.mainVideo.srcObject = stream;
    if (stream) playVideo(el.mainVideo);
  } else {
    el.mainVideo.muted = shouldMute(el.mainVideo);
  }
  const feed = session.mainFeed ?? session.floor;
  el.mainCaption.textContent = participantName(feed);
  el.mainCaption.hidden = !el.mainCaption.textContent;
  const speakerIsMain = session.activeSpeaker != null && session.activeSpeaker === feed;
  el.mainVideo.classList.toggle("speaking", speakerIsMain);
  el.mainPlaceholder.hidden = !!stream && session.floor != null;
  stereoView.set({ layout: stream ? session.mainStereo : "mono" });
  el.viewLabel.hidden = stereoView.layout === "mono";
  el.mainPlaceholder.textContent =
    session.state === "joined" ? "Waiting for the presenter" : STATUS_TEXT[session.state] || "";
}

/** Thumbnails: one <video data-participant="ID"> per participant stream. */
function renderThumbs() {
  const wanted = session.participantStreams;
  for (const figure of [...el.thumbs.children]) {
    if (!wanted.has(figure.dataset.thumbFor)) figure.remove();
  }
  const existing = new Map([...el.thumbs.children].map((f) => [f.dataset.thumbFor, f]));
  for (const [id, stream] of wanted) {
    let figure = existing.get(String(id));
    if (!figure) {
      figure = document.createElement("figure");
      figure.className = "thumb";
      figure.dataset.thumbFor = String(id);
      const video = document.createElement("video");
      video.autoplay = true;
      video.playsInline = true;
      video.dataset.participant = String(id);
      const caption = document.createElement("figcaption");
      figure.append(video, caption);
      el.thumbs.append(figure);
    }
    const video = figure.querySelector("video");
    if (video.srcObject !== stream) {
      video.srcObject = stream;
      playVideo(video);
    }
  }
  renderThumbCaptions();
  el.thumbs.hidden = wanted.size === 0;
}

function renderThumbCaptions() {
  for (const figure of el.thumbs.children) {
    const id = figure.dataset.thumbFor;
    const speaking = session.activeSpeaker != null && String(session.activeSpeaker) === id;
    figure.classList.toggle("speaking", speaking);
    figure.querySelector("video").classList.toggle("speaking", speaking);
    const known = [...session.participantsById.keys()].find((k) => String(k) === id);
    figure.querySelector("figcaption").textContent = participantName(known ?? id) || id;
    // A stereo publisher's thumbnail shows one eye (CSS object-view-box, no drawing).
    figure.dataset.stereo = session.participantsById.get(known)?.stereo || "mono";
  }
}

function renderLocalMedia() {
  const track = session.outgoingVideoTrack;
  const current = el.preview.srcObject && el.preview.srcObject.getVideoTracks()[0];
  if (track !== (current || null)) {
    el.preview.srcObject = track ? new MediaStream([track]) : null;
    if (track) el.preview.play().catch(() => {});
  }
  el.previewBox.hidden = !session.publishPc && !session.localStream;
  const muted = [];
  if (session.mutedByModerator.audio) muted.push("microphone");
  if (session.mutedByModerator.video) muted.push("camera");
  el.localMuted.textContent = muted.length ? `· ${muted.join(" and ")} muted by the moderator` : "";
}

function renderAll() {
  renderStatus();
  renderControls();
  renderRecording();
  renderQuality();
  renderParticipants();
  renderMain();
  renderThumbs();
  renderLocalMedia();
}

// ------------------------------------------------------------ session events

session.addEventListener("change", (event) => {
  const type = event.detail.type;
  switch (type) {
    case "quality": renderQuality(); break;
    case "recording": renderRecording(); renderControls(); break;
    case "streams": renderMain(); renderThumbs(); break;
    case "local-media": renderLocalMedia(); renderControls(); break;
    case "participants": scheduleParticipants(); renderControls(); renderMain(); break;
    case "stereo": renderControls(); break;
    case "active-speaker": scheduleParticipants(); renderMain(); break;
    case "main-feed":
    case "floor": renderMain(); scheduleParticipants(); renderControls(); break;
    case "muted": renderLocalMedia(); renderControls(); break;
    case "notice": showNotice(event.detail.detail?.message || "error"); break;
    case "connection": break;
    default: renderAll();
  }
});

session.addEventListener("muted", (event) => {
  const what = event.detail.kind === "audio" ? "microphone" : "camera";
  showNotice(`The moderator muted your ${what}.`);
});

// ----------------------------------------------------------------- controls

function startJoin() {
  const typed = el.tokenInput.value.trim();
  if (typed) session.token = typed;
  session.join();
}

el.join.addEventListener("click", startJoin);
el.tokenInput.addEventListener("keydown", (e) => { if (e.key === "Enter") startJoin(); });
el.leave.addEventListener("click", () => session.leave());
el.raiseHand.addEventListener("click", () => act(session.raiseHand(!session.handRaised)));
el.publishToggle.addEventListener("click", () => {
  if (session.publishPc) session.unpublish();
  else session.publish();
});
el.shareScreen.addEventListener("click", () => {
  act(session.screenTrack ? session.stopScreenShare() : session.startScreenShare());
});
el.revokeFloor.addEventListener("click", () => act(session.revokeFloor()));
el.endRoom.addEventListener("click", () => act(session.endRoom()));
el.toggleRecording.addEventListener("click", () => act(session.setRecording(!session.recording)));
el.viewMode.addEventListener("change", () => {
  stereoView.set({ mode: el.viewMode.value });
  // Keep the choice in the address, so a reload (or a bookmark) comes up the same.
  const url = new URL(location.href);
  url.searchParams.set("view", stereoView.mode);
  history.replaceState(null, "", url);
});
el.stereoLayout.addEventListener("change", () => act(session.setStereo(el.stereoLayout.value)));

// Moderator buttons in the list (event delegation: the list re-renders).
el.participants.addEventListener("click", (event) => {
  const b = event.target.closest("button[data-action]");
  if (!b) return;
  const known = [...session.participantsById.keys()].find((k) => String(k) === b.dataset.participant);
  const id = known ?? b.dataset.participant;
  switch (b.dataset.action) {
    case "grant-floor": act(session.grantFloor(id)); break;
    case "mute": act(session.mute(id, b.dataset.kind)); break;
    case "remove": act(session.remove(id)); break;
    default: break;
  }
});

el.enableSound.addEventListener("click", enableSound);
// Any interaction with the page counts as the gesture that allows sound.
document.addEventListener("pointerdown", enableSound, true);
document.addEventListener("keydown", enableSound, true);

// Tell the server we are gone when the page goes away (reload, close).
window.addEventListener("pagehide", () => session.leave());
// Coming back from the back/forward cache: a kiosk joins again by itself.
window.addEventListener("pageshow", (event) => {
  if (event.persisted && autojoin) startJoin();
});

// ----------------------------------------------------------- kiosk screen

// Keep an unattended AV-room screen awake (needs a secure context; optional).
let wakeLock = null;
async function keepAwake() {
  if (!("wakeLock" in navigator) || wakeLock || document.visibilityState !== "visible") return;
  try {
    wakeLock = await navigator.wakeLock.request("screen");
    wakeLock.addEventListener("release", () => { wakeLock = null; });
  } catch {
    wakeLock = null;
  }
}
document.addEventListener("visibilitychange", keepAwake);

// ------------------------------------------------------------------- start

renderAll();
if (autojoin && session.token) {
  startJoin();
  keepAwake();
}
