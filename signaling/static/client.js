// Telebridge browser client: the signaling protocol (v1, see signaling/PROTOCOL.md)
// and the two WebRTC peer connections. No UI code lives here; room.js renders
// what this session reports through events.
//
//   import { TelebridgeSession } from "/static/client.js";
//   const session = new TelebridgeSession({ url, token, room });
//   session.addEventListener("change", () => render(session));
//   session.join();
//
// Events (all CustomEvent; `change` follows every other one, detail {type}):
//   state, joined, participants, floor, main-feed, active-speaker, recording,
//   streams (remote media changed), local-media (own camera/screen changed),
//   muted (a moderator muted us), quality, notice (non-fatal error or info),
//   message (every server message, for debugging).

export const PROTOCOL_VERSION = 1;

// Errors after which rejoining cannot help: stop and show the message.
export const FATAL_ERROR_CODES = new Set([
  "invalid-token",
  "token-expired",
  "wrong-room",
  "unsupported-protocol",
]);
// `forbidden` is fatal only as the answer to `join` (before `joined`); after
// joining it answers a single request and the connection is kept.
const FATAL_BEFORE_JOIN = new Set(["forbidden"]);

const PUBLISHING_ROLES = new Set(["moderator", "presenter", "participant"]);
// Roles that may publish without holding the floor.
const FREE_PUBLISHING_ROLES = new Set(["moderator", "presenter"]);

/** Room id from a `/room/<room>` path (URL-decoded), or null. */
export function roomFromPath(pathname) {
  const match = /^\/room\/([^/]+)\/?$/.exec(pathname || "");
  if (!match) return null;
  try {
    return decodeURIComponent(match[1]);
  } catch {
    return match[1];
  }
}

/** The `/ws` URL on the page's own origin. */
export function defaultWebSocketUrl(loc = globalThis.location) {
  const scheme = loc.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${loc.host}/ws`;
}

/**
 * Reconnect delay in ms for the n-th consecutive attempt (0-based):
 * 0.5 s doubling up to 10 s, each with +/-20 % jitter so that hundreds of
 * kiosks dropped by the same outage do not come back in lockstep.
 */
export function backoffDelay(attempt, { base = 500, max = 10000, random = Math.random } = {}) {
  const nominal = Math.min(max, base * 2 ** Math.min(attempt, 30));
  return Math.round(Math.min(max, nominal * (0.8 + 0.4 * random())));
}

/**
 * The playout-delay rule (see docs/island.md), one received video track at a time.
 *
 * A lost packet is repaired by a NACK and a retransmission from the SFU's
 * cache, which arrives about one round trip after the loss. Chromium's own
 * jitter buffer is sized from arrival jitter only (~10-100 ms) and a
 * receive-only peer never learns the RTT, so on a long link every repaired
 * frame arrives too late and the picture freezes. So, while losses are being
 * repaired on a link whose RTT is at least `minRttMs`, the track's
 * jitterBufferTarget is raised to RTT + max(`marginMs`, 4 x jitter), at most
 * `maxMs`; it is held `holdMs` after the last repair, then given back to the
 * browser (null), whose own buffer then shrinks (Chromium lowers it by about
 * 100 ms per second): a clean link is back at its low latency within 10 s,
 * and a clean viewer never gets any added delay. A track first seen on a
 * link already known to be long starts with the target, as if repairing.
 * (Far subscribers also get each repair twice from the SFU, so a lost
 * retransmission rarely costs a second round trip.)
 *
 * Frames can also come late through a clean link: a publisher on an island
 * uplink has its losses repaired by the SFU a round trip of *its* link
 * later. So a track that froze in two samples within `holdMs` gets at
 * least its mean freeze duration + `marginMs` (one freeze alone, say a
 * busy CPU, changes nothing), held `lateHoldMs`: once covered, nothing
 * shows that frames still come late.
 *
 * RTT is the selected ICE candidate pair's currentRoundTripTime (STUN
 * consent checks): the only RTT a receive-only Chromium peer reports
 * (remote-outbound-rtp has no RTT without XR); `unknownRttMs` stands in when
 * it is missing.
 */
export const PLAYOUT_RULE = Object.freeze({
  marginMs: 200, // gap detection, NACK pacing and the retransmission's own jitter
  minRttMs: 100, // below this the browser's own buffer hides a repair
  maxMs: 1000, // beyond this a live consultation feels broken anyway
  holdMs: 3000, // losses a few seconds apart still count as one lossy spell
  lateHoldMs: 30000, // a speaker on an island uplink usually keeps the floor a while
  unknownRttMs: 300,
});

/**
 * Next playout-delay state of one received video track.
 * previous: {targetMs: ms|null, holdUntil: ms, frozeAt: ms|null} (or null at first)
 * sample: {now: ms, rtt: s|null, jitter: s|null, sourceRtt: s|null (the
 *          publisher's own link, as it reported it), and since the previous
 *          sample: lost, nacks (sent), retransmitted (received) packets,
 *          freezes (count), frozen (s, their total duration)}
 * Returns the next state; targetMs null means the browser's default.
 */
export function choosePlayoutDelay(previous, sample, rule = PLAYOUT_RULE) {
  const { now, rtt, jitter, lost, nacks, retransmitted, freezes = 0, frozen = 0 } = sample;
  const sourceRttMs = sample.sourceRtt != null ? sample.sourceRtt * 1000 : 0;
  const lastFreeze = previous ? previous.frozeAt : null;
  const frozeAt = freezes > 0 ? now : lastFreeze;
  const rttMs = rtt != null ? rtt * 1000 : rule.unknownRttMs;
  // A new track on a known long link starts covered: its first loss would
  // otherwise freeze the picture before the next sample could react.
  const presumed = previous == null && rtt != null;
  let needMs = null;
  let holdUntil = previous ? previous.holdUntil : -Infinity;
  if ((presumed || lost > 0 || nacks > 0 || retransmitted > 0) && rttMs >= rule.minRttMs) {
    needMs = rttMs + Math.max(rule.marginMs, 4 * (jitter ?? 0) * 1000);
    holdUntil = Math.max(holdUntil, now + rule.holdMs);
  }
  // A publisher on a far link: the SFU gets repairs of its losses one of its
  // round trips late, so every viewer needs that much more, from the first frame.
  if (sourceRttMs >= rule.minRttMs) {
    needMs = Math.max(needMs ?? 0, sourceRttMs + rule.marginMs);
    holdUntil = Math.max(holdUntil, now + rule.holdMs);
  }
  if (freezes > 0 && lastFreeze != null && now - lastFreeze < rule.holdMs) {
    needMs = Math.max(needMs ?? 0, (1000 * frozen) / freezes + rule.marginMs);
    holdUntil = Math.max(holdUntil, now + rule.lateHoldMs);
  }
  if (needMs != null) {
    // Within a hold a target only grows: a smaller need is no reason to shrink it.
    const keep = previous && now < previous.holdUntil ? previous.targetMs ?? 0 : 0;
    return { targetMs: Math.round(Math.min(rule.maxMs, Math.max(keep, needMs))), holdUntil, frozeAt };
  }
  if (previous && previous.targetMs != null && now < holdUntil) {
    return { targetMs: previous.targetMs, holdUntil, frozeAt };
  }
  return { targetMs: null, holdUntil, frozeAt };
}

/**
 * Turn one stats sample into a sentence a nurse understands.
 * sample: {connection: RTCPeerConnectionState|null, rtt: s|null, loss: 0..1|null,
 *          jitter: s|null, fps: number|null, packets: packets received in the window,
 *          delay: s of playout delay added by choosePlayoutDelay|null,
 *          recovered: share of lost video packets repaired, 0..1|null}
 * Returns {level: "good"|"weak"|"poor"|"idle", text}.
 */
export function assessQuality(sample) {
  const { connection, rtt, loss, jitter, fps, packets, delay, recovered } = sample;
  if (!connection || connection === "new" || connection === "connecting") {
    return { level: "idle", text: "connecting" };
  }
  if (connection === "disconnected" || connection === "failed") {
    return { level: "poor", text: "link lost: reconnecting" };
  }
  if (connection === "closed") return { level: "idle", text: "not connected" };
  if (!packets) return { level: "idle", text: "no video being received" };

  const lossPct = (loss ?? 0) * 100;
  const rttMs = (rtt ?? 0) * 1000;
  const jitterMs = (jitter ?? 0) * 1000;
  if (lossPct >= 10 || rttMs >= 1000 || jitterMs >= 150) {
    return { level: "poor", text: "link poor: picture and sound may break up" };
  }
  // Losses are being repaired behind a longer playout delay: smooth but late.
  // Without losses of our own, the late frames come from the sender's link.
  if (delay != null) {
    const smooth = `weak: picture delayed ${delay.toFixed(1)} s to stay smooth`;
    if (lossPct < 0.5 && rttMs < 100) return { level: "weak", text: `sender's link ${smooth}` };
    if (recovered == null || recovered >= 0.9) return { level: "weak", text: `link ${smooth}` };
  }
  if (lossPct >= 2) return { level: "weak", text: "link weak: some picture loss" };
  if (rttMs >= 400) return { level: "weak", text: "link weak: delayed" };
  if (jitterMs >= 50) return { level: "weak", text: "link weak: uneven" };
  // Low frame rates are normal for shared slides, so only count them with loss.
  if (fps != null && fps < 8 && lossPct >= 1) {
    return { level: "weak", text: "link weak: picture jerky" };
  }
  return { level: "good", text: "good" };
}

/** The numbers behind assessQuality, for a tooltip. */
export function describeQualityNumbers({ rtt, loss, jitter, fps, delay, recovered }) {
  const parts = [];
  if (rtt != null) parts.push(`round trip ${Math.round(rtt * 1000)} ms`);
  if (loss != null) parts.push(`packet loss ${(loss * 100).toFixed(1)} %`);
  if (recovered != null) parts.push(`${Math.round(recovered * 100)} % of lost video packets recovered`);
  if (delay != null) parts.push(`picture delayed ${Math.round(delay * 1000)} ms`);
  if (jitter != null) parts.push(`jitter ${Math.round(jitter * 1000)} ms`);
  if (fps != null) parts.push(`${Math.round(fps)} frames/s`);
  return parts.join(" · ");
}

function sameTracks(stream, tracks) {
  if (!stream) return tracks.length === 0;
  const current = stream.getTracks();
  return current.length === tracks.length && tracks.every((t) => current.includes(t));
}

function protocolError(code, message) {
  const err = new Error(message || code);
  err.code = code;
  return err;
}

export class TelebridgeSession extends EventTarget {
  /**
   * @param {object} options
   * @param {string} options.token   the JWT (it determines name and role)
   * @param {string} [options.room]  room from the URL; sent in `join` so the server can check it
   * @param {string} [options.url]   WebSocket URL (default: /ws on this origin)
   */
  constructor({
    token,
    room = null,
    url = defaultWebSocketUrl(),
    rtcConfig = { iceServers: [] },
    statsIntervalMs = 1000, // getStats period: playout delay and quality
    keepaliveTickMs = 5000,
    pingAfterMs = 10000, // send `ping` after this long without any server message
    livenessTimeoutMs = 10000, // no answer to a ping for this long: the link is dead
    joinTimeoutMs = 15000,
    requestTimeoutMs = 15000,
    stableAfterMs = 5000, // a join that lasted this long resets the backoff
  } = {}) {
    super();
    this.token = token;
    this.room = room;
    this.url = url;
    this.rtcConfig = rtcConfig;
    this.timing = {
      statsIntervalMs, keepaliveTickMs, pingAfterMs, livenessTimeoutMs,
      joinTimeoutMs, requestTimeoutMs, stableAfterMs,
    };

    // Public, read-only state (see window.telebridge in room.js).
    this.state = "idle"; // idle|connecting|joined|reconnecting|ended|removed|error
    this.statusDetail = ""; // why we are reconnecting, the removal reason, ...
    this.self = null;
    this.participantsById = new Map();
    this.floor = null;
    this.mainFeed = null;
    this.activeSpeaker = null;
    this.recording = false;
    this.joins = 0;
    this.lastError = null;
    this.quality = { level: "idle", text: "not connected", title: "" };

    // Remote media, from the subscribe connection.
    this.offerTracks = []; // `tracks` of the latest server offer
    this.mainStream = null; // MediaStream: main video + main audio
    this.participantStreams = new Map(); // participant id -> MediaStream

    // Local media and the publish connection.
    this.localStream = null; // camera + microphone (kept across rejoins)
    this.screenTrack = null; // getDisplayMedia video while sharing
    this.publishIntent = false; // we want to be publishing
    this.publishing = false; // the server accepted our publish
    this.publishPc = null;
    this.publishTransceivers = { audio: null, video: null };
    this.mutedByModerator = { audio: false, video: false };
    this.handRaised = false;
    this.stereo = "mono"; // our video's stereo layout: "mono", "sbs" or "tb"

    // Connection bookkeeping.
    this.ws = null;
    this.connId = 0; // bumps on every (re)connect; stale callbacks compare it
    this.stopped = true; // true when no (re)connection is wanted
    this.attempt = 0; // consecutive failed attempts, for the backoff
    this.joinedAt = 0;
    this.subscribePc = null;
    this.offerChain = Promise.resolve();
    this.pending = new Map(); // request id -> {resolve, reject, expect, timer}
    this.nextRequestId = 1;
    this.candidateGate = { publish: false, subscribe: false };
    this.candidateQueue = { publish: [], subscribe: [] };
    this.remoteCandidateQueue = { publish: [], subscribe: [] };
    this.timers = { reconnect: null, join: null, keepalive: null, stats: null };
    this.lastMessageAt = 0;
    this.pingSentAt = null;
    this.prevStats = null;
    this.playout = new Map(); // video mid -> choosePlayoutDelay state and counters
    this.reportedRttMs = null; // our link RTT as last sent in `link`

    this.onOnline = () => {
      // The network came back: do not wait for the rest of the backoff.
      if (this.state === "reconnecting" && this.timers.reconnect) {
        clearTimeout(this.timers.reconnect);
        this.timers.reconnect = null;
        this.connect();
      }
    };
  }

  // ---------------------------------------------------------------- public API

  /** Participants as plain objects, in join order. */
  get participants() {
    return [...this.participantsById.values()].map((p) => ({ ...p }));
  }

  get role() {
    return this.self ? this.self.role : null;
  }

  get isModerator() {
    return this.role === "moderator";
  }

  /** Start joining; keeps rejoining after drops until leave/removed/ended/fatal error. */
  join() {
    if (!this.stopped) return;
    if (!this.token) {
      this.fail(protocolError("invalid-token", "No token: open the link you were given, or paste a token."));
      return;
    }
    this.stopped = false;
    this.attempt = 0;
    this.lastError = null;
    globalThis.addEventListener?.("online", this.onOnline);
    this.setState("connecting");
    this.connect();
  }

  /** Leave the room on purpose (no rejoin). */
  leave() {
    if (this.stopped) return;
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.send({ type: "leave" });
    this.shutdown("idle", "left the room");
  }

  /** Send a raw protocol message; returns false when the socket is not open. */
  send(message) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(message));
    return true;
  }

  /**
   * Send a request with an `id` and wait for its reply (`expect` type, or
   * `error` with the same id, which rejects with err.code).
   */
  request(message, expect = "ok") {
    return new Promise((resolve, reject) => {
      const id = `c${this.nextRequestId++}`;
      if (!this.send({ ...message, id })) {
        reject(protocolError("disconnected", "Not connected"));
        return;
      }
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(protocolError("timeout", `No answer to ${message.type}`));
      }, this.timing.requestTimeoutMs);
      this.pending.set(id, { resolve, reject, expect, timer, type: message.type });
    });
  }

  raiseHand(raised) {
    return this.request({ type: "raise-hand", raised: !!raised }).then((reply) => {
      this.handRaised = !!raised;
      this.emit("participants");
      return reply;
    });
  }

  grantFloor(participantId) {
    return this.request({ type: "grant-floor", participant: participantId });
  }

  revokeFloor() {
    return this.request({ type: "revoke-floor" });
  }

  mute(participantId, kind) {
    return this.request({ type: "mute", participant: participantId, kind });
  }

  remove(participantId) {
    return this.request({ type: "remove", participant: participantId });
  }

  endRoom() {
    return this.request({ type: "end-room" });
  }

  setRecording(active) {
    return this.request({ type: active ? "start-recording" : "stop-recording" });
  }

  /**
   * Say how our video packs a stereo (3D) picture: "mono", "sbs" (left eye in
   * the left half) or "tb" (left eye on top). Sent with every publish, and
   * at once when publishing already.
   */
  setStereo(layout) {
    this.stereo = layout;
    this.emit("stereo");
    if (!this.publishing) return Promise.resolve();
    return this.request({ type: "set-stereo", stereo: layout });
  }

  /** The stereo layout of the main feed (the publisher it carries). */
  get mainStereo() {
    const p = this.mainFeed != null ? this.participantsById.get(this.mainFeed) : null;
    return (p && p.stereo) || "mono";
  }

  /** Manually start publishing (moderator/presenter may do so without the floor). */
  publish() {
    this.publishIntent = true;
    this.reconcilePublishing();
  }

  /** Manually stop publishing and release camera and microphone. */
  unpublish() {
    this.publishIntent = false;
    this.closePublishConnection({ stopMedia: true });
  }

  /** Replace the camera picture with a screen/window share (no renegotiation). */
  async startScreenShare() {
    if (!this.publishPc) throw protocolError("not-publishing", "Start publishing before sharing the screen.");
    if (this.mutedByModerator.video) throw protocolError("muted", "Your video was muted by the moderator.");
    const display = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
    const track = display.getVideoTracks()[0];
    if (!track) throw protocolError("media-unavailable", "No screen was chosen.");
    if ("contentHint" in track) track.contentHint = "detail"; // slides: sharp over smooth
    if (this.screenTrack) this.screenTrack.stop();
    this.screenTrack = track;
    // The browser's own "Stop sharing" bar ends the track: go back to the camera.
    track.addEventListener("ended", () => {
      if (this.screenTrack === track) this.stopScreenShare();
    });
    await this.setOutgoingVideo(track);
    this.emit("local-media");
  }

  async stopScreenShare() {
    const track = this.screenTrack;
    if (!track) return;
    this.screenTrack = null;
    track.stop();
    await this.setOutgoingVideo(this.liveTrack("video"));
    this.emit("local-media");
  }

  /** The video this client sends right now (screen or camera), for the preview. */
  get outgoingVideoTrack() {
    return this.screenTrack || this.liveTrack("video");
  }

  // ------------------------------------------------------------ connection

  connect() {
    this.timers.reconnect = null;
    const conn = ++this.connId;
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      this.drop(`cannot open ${this.url}: ${err.message}`);
      return;
    }
    this.ws = ws;
    this.joinedAt = 0;

    ws.onopen = () => {
      if (conn !== this.connId) return;
      this.lastMessageAt = Date.now();
      this.pingSentAt = null;
      // Exactly the documented join; no `id` (its reply is identified by type).
      const join = { type: "join", token: this.token, protocol: PROTOCOL_VERSION };
      if (this.room != null) join.room = this.room;
      this.send(join);
      this.timers.join = setTimeout(() => {
        if (conn === this.connId && !this.joinedAt) this.drop("no answer to join");
      }, this.timing.joinTimeoutMs);
      this.timers.keepalive = setInterval(() => this.keepalive(conn), this.timing.keepaliveTickMs);
    };
    ws.onmessage = (event) => {
      if (conn !== this.connId) return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return; // not ours to fix; the server never sends invalid JSON
      }
      if (message && typeof message === "object") this.handleMessage(message, conn);
    };
    ws.onerror = () => {
      if (conn === this.connId) this.drop("connection error");
    };
    ws.onclose = (event) => {
      if (conn === this.connId) this.drop(`connection closed (${event.code})`);
    };
  }

  /** Application-level keep-alive: browsers cannot see the server's ping frames. */
  keepalive(conn) {
    if (conn !== this.connId) return;
    const now = Date.now();
    if (this.pingSentAt != null) {
      if (now - this.pingSentAt > this.timing.livenessTimeoutMs) this.drop("server not responding");
    } else if (now - this.lastMessageAt >= this.timing.pingAfterMs) {
      this.pingSentAt = now;
      this.send({ type: "ping" });
    }
  }

  /** An unexpected loss of the socket or of media: tear down and rejoin with backoff. */
  drop(reason) {
    if (this.stopped) return;
    const wasStable = this.joinedAt && Date.now() - this.joinedAt >= this.timing.stableAfterMs;
    if (wasStable) this.attempt = 0;
    this.teardown();
    this.statusDetail = reason;
    this.setState("reconnecting");
    const delay = backoffDelay(this.attempt++);
    this.timers.reconnect = setTimeout(() => this.connect(), delay);
  }

  /** A fatal error: stop for good and show it. */
  fail(error) {
    this.lastError = { code: error.code || "error", message: error.message || String(error) };
    this.shutdown("error", this.lastError.message);
  }

  /** Stop everything (no rejoin) and enter a final state. */
  shutdown(state, detail = "") {
    this.stopped = true;
    globalThis.removeEventListener?.("online", this.onOnline);
    clearTimeout(this.timers.reconnect);
    this.timers.reconnect = null;
    this.teardown();
    this.publishIntent = false;
    this.stopLocalMedia();
    this.statusDetail = detail;
    this.setState(state);
  }

  /** Close the socket and both peer connections (a rejoin makes fresh ones). */
  teardown() {
    this.connId++; // every callback of the old connection is now stale
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      try {
        ws.close();
      } catch {
        /* already closed */
      }
    }
    clearTimeout(this.timers.join);
    clearInterval(this.timers.keepalive);
    clearInterval(this.timers.stats);
    this.timers.join = this.timers.keepalive = this.timers.stats = null;
    for (const [id, entry] of this.pending) {
      clearTimeout(entry.timer);
      entry.reject(protocolError("disconnected", "Connection lost"));
      this.pending.delete(id);
    }
    this.joinedAt = 0;
    this.closeSubscribeConnection();
    // Keep the camera running: a presenter republishes it right after rejoining.
    this.closePublishConnection({ stopMedia: false, notifyServer: false });
    this.prevStats = null;
    this.playout = new Map();
    this.setQuality({ level: "idle", text: "not connected", title: "" });
  }

  // -------------------------------------------------------------- messages

  handleMessage(message, conn) {
    this.lastMessageAt = Date.now();
    this.pingSentAt = null;
    this.emit("message", message, { change: false });
    if (this.settleRequest(message)) return;

    switch (message.type) {
      case "joined": return this.onJoined(message, conn);
      case "offer": return this.enqueueOffer(message, conn);
      case "tracks": return this.enqueueTracks(message, conn);
      case "ice": return this.onRemoteCandidate(message);
      case "participant-joined":
      case "participant-updated": return this.onParticipant(message.participant);
      case "participant-left": return this.onParticipantLeft(message.participant);
      case "floor": return this.onFloor(message.holder ?? null);
      case "main-feed":
        this.mainFeed = message.participant ?? null;
        return this.emit("main-feed");
      case "active-speaker":
        this.activeSpeaker = message.participant ?? null;
        return this.emit("active-speaker");
      case "recording":
        this.recording = !!message.active;
        return this.emit("recording");
      case "muted": return this.onMuted(message.kind);
      case "removed":
        return this.shutdown("removed", message.reason || "removed by the moderator");
      case "room-ended":
        return this.shutdown("ended", "the room was ended");
      case "error": return this.onError(message);
      default:
        return undefined; // pong, and message types from newer servers
    }
  }

  /** Resolve/reject the pending request this message answers; true if it did. */
  settleRequest(message) {
    let id = message.id;
    if (id === undefined || !this.pending.has(id)) {
      // Tolerate a reply without its id: the oldest request expecting this type.
      if (message.type === "error" || message.type === "ok") return false;
      id = [...this.pending.keys()].find((key) => this.pending.get(key).expect === message.type);
      if (id === undefined) return false;
    }
    const entry = this.pending.get(id);
    this.pending.delete(id);
    clearTimeout(entry.timer);
    if (message.type === "error") {
      this.lastError = { code: message.code, message: message.message || message.code };
      entry.reject(protocolError(message.code, message.message));
      this.emit("notice", { ...this.lastError, request: entry.type });
    } else {
      entry.resolve(message);
    }
    return true;
  }

  onError(message) {
    const error = { code: message.code || "error", message: message.message || message.code || "error" };
    this.lastError = error;
    const beforeJoin = !this.joinedAt;
    if (FATAL_ERROR_CODES.has(error.code) || (beforeJoin && FATAL_BEFORE_JOIN.has(error.code))) {
      this.fail(error);
      return;
    }
    if (!beforeJoin && error.code === "server-busy") {
      // An overloaded server sent us away (the newest viewers go first): come
      // back with backoff, saying why rather than "connection closed".
      this.emit("notice", error);
      this.drop(error.message);
      return;
    }
    // Anything else before `joined` (room-full, too-many-rooms, auth-required,
    // internal) is followed by the server closing the socket: we retry then.
    if (beforeJoin) this.statusDetail = error.message;
    this.emit("notice", error);
  }

  onJoined(message, conn) {
    clearTimeout(this.timers.join);
    this.joinedAt = Date.now();
    this.joins += 1;
    this.reportedRttMs = null; // a new session on the server: report the link again
    this.self = message.self ? { ...message.self } : null;
    this.floor = message.floor ?? null;
    this.recording = !!(message.room && message.room.recording);
    this.mainFeed = null; // until the server says which feed `main` carries
    this.activeSpeaker = null;
    this.participantsById = new Map();
    for (const p of message.participants || []) this.participantsById.set(p.id, { ...p });
    const me = this.self && this.participantsById.get(this.self.id);
    this.handRaised = !!(me && me.hand);
    this.statusDetail = "";
    this.setState("joined");
    this.emit("joined");
    this.emit("participants");

    clearInterval(this.timers.stats);
    this.timers.stats = setInterval(() => this.sampleQuality(conn), this.timing.statsIntervalMs);
    this.reconcilePublishing();
  }

  onParticipant(participant) {
    if (!participant || participant.id == null) return;
    this.participantsById.set(participant.id, { ...participant });
    if (this.self && participant.id === this.self.id) this.handRaised = !!participant.hand;
    this.emit("participants");
  }

  onParticipantLeft(participant) {
    const id = participant && typeof participant === "object" ? participant.id : participant;
    this.participantsById.delete(id);
    if (this.participantStreams.delete(id)) this.emit("streams");
    if (this.activeSpeaker === id) this.activeSpeaker = null;
    this.emit("participants");
  }

  onFloor(holder) {
    this.floor = holder;
    for (const p of this.participantsById.values()) p.floor = p.id === holder;
    this.emit("floor");
    this.emit("participants");
    this.reconcilePublishing();
  }

  onMuted(kind) {
    if (kind !== "audio" && kind !== "video") return;
    this.mutedByModerator[kind] = true;
    // The server stopped forwarding it; stop sending it and free the device.
    if (kind === "video" && this.screenTrack) {
      this.screenTrack.stop();
      this.screenTrack = null;
    }
    const transceiver = this.publishTransceivers[kind];
    if (transceiver) transceiver.sender.replaceTrack(null).catch(() => {});
    if (this.localStream) {
      for (const track of this.localStream.getTracks()) {
        if (track.kind === kind) {
          track.stop();
          this.localStream.removeTrack(track);
        }
      }
    }
    this.emit("muted", { kind });
    this.emit("local-media");
  }

  // ------------------------------------------------------ subscribe side

  /** Server offers are applied one at a time, on the same peer connection. */
  enqueueOffer(message, conn) {
    this.offerChain = this.offerChain
      .then(() => this.applyOffer(message, conn))
      .catch((err) => {
        if (conn !== this.connId) return;
        this.lastError = { code: "negotiation-failed", message: `Media negotiation failed: ${err.message}` };
        this.emit("notice", this.lastError);
        this.drop("media negotiation failed"); // a fresh connection on rejoin
      });
  }

  /**
   * `tracks`: the server reassigned the subscribe connection's tracks without
   * renegotiating (an idle thumbnail reused for another publisher, a publisher
   * gone). Queued behind any offer in progress so the mids exist.
   */
  enqueueTracks(message, conn) {
    this.offerChain = this.offerChain.then(() => {
      if (conn !== this.connId || !Array.isArray(message.tracks)) return;
      this.offerTracks = message.tracks;
      this.mapTracks();
    });
  }

  async applyOffer(message, conn) {
    if (conn !== this.connId) return;
    // `restart`: the offer is from a new server-side connection (first offer,
    // or the old one's media worker was lost): the previous one is useless.
    if (message.restart && this.subscribePc) {
      const chain = this.offerChain; // this offer is on it: later ones still wait for it
      this.closeSubscribeConnection();
      this.offerChain = chain;
    }
    const pc = this.ensureSubscribeConnection();
    // Set first: `track` events fire during setRemoteDescription.
    this.offerTracks = Array.isArray(message.tracks) ? message.tracks : [];
    await pc.setRemoteDescription({ type: "offer", sdp: message.sdp });
    await this.flushRemoteCandidates("subscribe", pc);
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    if (conn !== this.connId || pc !== this.subscribePc) return;
    this.request({ type: "answer", sdp: pc.localDescription.sdp }).catch(() => {
      /* reported as a notice by settleRequest */
    });
    // Our candidates go out only after the answer, so the server knows the m-sections.
    this.openCandidateGate("subscribe");
    this.mapTracks();
  }

  ensureSubscribeConnection() {
    if (this.subscribePc) return this.subscribePc;
    const pc = new RTCPeerConnection(this.rtcConfig);
    this.subscribePc = pc;
    this.candidateGate.subscribe = false;
    this.candidateQueue.subscribe = [];
    pc.onicecandidate = (event) => this.onLocalCandidate("subscribe", pc, event.candidate);
    pc.ontrack = () => {
      if (pc === this.subscribePc) this.mapTracks();
    };
    pc.onconnectionstatechange = () => {
      if (pc !== this.subscribePc) return;
      if (pc.connectionState === "failed") this.drop("media connection failed");
      else this.emit("connection");
      // Size the playout delay before the first frames, not a second later.
      if (pc.connectionState === "connected") this.sampleQuality(this.connId);
    };
    return pc;
  }

  closeSubscribeConnection() {
    const pc = this.subscribePc;
    this.subscribePc = null;
    this.offerChain = Promise.resolve();
    this.offerTracks = [];
    this.remoteCandidateQueue.subscribe = [];
    if (pc) pc.close();
    const hadMedia = this.mainStream || this.participantStreams.size;
    this.mainStream = null;
    this.participantStreams = new Map();
    if (hadMedia) this.emit("streams");
  }

  /**
   * Map the receivers to the latest offer's `tracks` by transceiver.mid:
   * `main` tracks form one stream (main video + audio), `participant` tracks
   * one stream per publisher. Streams are only replaced when their tracks
   * change, so renegotiations do not restart videos that keep playing.
   */
  mapTracks() {
    const pc = this.subscribePc;
    if (!pc) return;
    const byMid = new Map(this.offerTracks.map((t) => [String(t.mid), t]));
    const main = [];
    const perParticipant = new Map();
    for (const transceiver of pc.getTransceivers()) {
      if (transceiver.mid == null || transceiver.currentDirection === "stopped") continue;
      if (transceiver.currentDirection === "inactive") continue;
      const info = byMid.get(transceiver.mid);
      const track = transceiver.receiver.track;
      if (!info || !track) continue;
      if (info.slot === "main") {
        main.push(track);
      } else if (info.slot === "participant" && info.participant != null) {
        if (this.self && info.participant === this.self.id) continue; // no echo of ourselves
        if (!perParticipant.has(info.participant)) perParticipant.set(info.participant, []);
        perParticipant.get(info.participant).push(track);
      }
    }
    let changed = false;
    if (!sameTracks(this.mainStream, main)) {
      this.mainStream = main.length ? new MediaStream(main) : null;
      changed = true;
    }
    const streams = new Map();
    for (const [id, tracks] of perParticipant) {
      const old = this.participantStreams.get(id);
      if (old && sameTracks(old, tracks)) {
        streams.set(id, old);
      } else {
        streams.set(id, new MediaStream(tracks));
        changed = true;
      }
    }
    if (streams.size !== this.participantStreams.size) changed = true;
    this.participantStreams = streams;
    if (changed) this.emit("streams");
  }

  // ------------------------------------------------------------ publishing

  /** Publish or stop according to role, floor and intent. */
  reconcilePublishing() {
    if (this.state !== "joined" || !this.self) return;
    const role = this.self.role;
    if (!PUBLISHING_ROLES.has(role)) return;
    const holdsFloor = this.floor != null && this.floor === this.self.id;
    if (holdsFloor) {
      this.publishIntent = true; // "the holder's client should publish"
    } else if (!FREE_PUBLISHING_ROLES.has(role)) {
      this.publishIntent = false; // a participant publishes only with the floor
    }
    if (this.publishIntent) {
      if (!this.publishPc) this.openPublishConnection();
    } else if (this.publishPc || this.localStream) {
      this.closePublishConnection({ stopMedia: true });
    }
  }

  async openPublishConnection() {
    const conn = this.connId;
    const pc = new RTCPeerConnection(this.rtcConfig);
    this.publishPc = pc;
    this.publishing = false;
    this.candidateGate.publish = false;
    this.candidateQueue.publish = [];
    this.remoteCandidateQueue.publish = [];
    const stillCurrent = () => pc === this.publishPc && conn === this.connId;
    try {
      const stream = await this.acquireLocalMedia();
      if (!stillCurrent()) return;
      // Always one audio and one video m-section, even without a device, so a
      // screen share can be swapped in later without renegotiation.
      const audio = this.liveTrack("audio");
      const video = this.screenTrack || this.liveTrack("video");
      const streams = stream ? [stream] : [];
      this.publishTransceivers = {
        audio: pc.addTransceiver(audio || "audio", { direction: "sendonly", streams }),
        video: pc.addTransceiver(video || "video", { direction: "sendonly", streams }),
      };
      pc.onicecandidate = (event) => this.onLocalCandidate("publish", pc, event.candidate);
      pc.onconnectionstatechange = () => {
        if (pc === this.publishPc && pc.connectionState === "failed") this.drop("sending connection failed");
      };
      await pc.setLocalDescription(await pc.createOffer());
      this.emit("local-media");
      const reply = await this.request(
        { type: "publish", sdp: pc.localDescription.sdp, stereo: this.stereo }, "published");
      if (!stillCurrent()) {
        // Cancelled while the server was answering: it has our publication now.
        if (conn === this.connId) this.request({ type: "unpublish" }, "unpublished").catch(() => {});
        return;
      }
      await pc.setRemoteDescription({ type: "answer", sdp: reply.sdp });
      await this.flushRemoteCandidates("publish", pc);
      this.publishing = true;
      // The server has the publish connection now: send our candidates.
      this.openCandidateGate("publish");
      this.emit("local-media");
    } catch (err) {
      if (!stillCurrent()) return;
      this.closePublishConnection({ stopMedia: false, notifyServer: false });
      if (err.code === "disconnected") return; // the rejoin publishes again
      if (err.code === "forbidden" && !FREE_PUBLISHING_ROLES.has(this.role)) {
        this.publishIntent = false; // the floor moved on meanwhile
        this.stopLocalMedia();
      }
      this.lastError = { code: err.code || "publish-failed", message: err.message || String(err) };
      this.emit("notice", this.lastError);
    }
  }

  closePublishConnection({ stopMedia, notifyServer = true }) {
    const pc = this.publishPc;
    const wasPublishing = this.publishing;
    this.publishPc = null;
    this.publishing = false;
    this.publishTransceivers = { audio: null, video: null };
    this.candidateQueue.publish = [];
    this.remoteCandidateQueue.publish = [];
    if (pc) pc.close();
    if (wasPublishing && notifyServer) {
      this.request({ type: "unpublish" }, "unpublished").catch(() => {});
    }
    if (stopMedia) this.stopLocalMedia();
    if (pc || stopMedia) this.emit("local-media");
  }

  /** Camera + microphone, reusing the running ones; falls back to one of them. */
  async acquireLocalMedia() {
    if (this.localStream && this.localStream.getTracks().some((t) => t.readyState === "live")) {
      return this.localStream;
    }
    if (this.localStream && (this.mutedByModerator.audio || this.mutedByModerator.video)) {
      return this.localStream; // what is left after a moderator's mute stays off
    }
    const attempts = [{ video: true, audio: true }, { audio: true }, { video: true }];
    let lastErr = null;
    for (const constraints of attempts) {
      try {
        this.localStream = await navigator.mediaDevices.getUserMedia(constraints);
        this.mutedByModerator = { audio: false, video: false };
        if (!constraints.video || !constraints.audio) {
          const missing = constraints.video ? "microphone" : "camera";
          this.emit("notice", { code: "media-unavailable", message: `No ${missing} available.` });
        }
        this.emit("local-media");
        return this.localStream;
      } catch (err) {
        lastErr = err;
      }
    }
    this.lastError = {
      code: "media-unavailable",
      message: `Camera and microphone unavailable (${lastErr && lastErr.name}).`,
    };
    this.emit("notice", this.lastError);
    return null; // publish anyway: a screen share can still be sent
  }

  stopLocalMedia() {
    const hadMedia = this.localStream || this.screenTrack;
    if (this.localStream) for (const track of this.localStream.getTracks()) track.stop();
    if (this.screenTrack) this.screenTrack.stop();
    this.localStream = null;
    this.screenTrack = null;
    this.mutedByModerator = { audio: false, video: false };
    if (hadMedia) this.emit("local-media");
  }

  liveTrack(kind) {
    if (!this.localStream) return null;
    return this.localStream.getTracks().find((t) => t.kind === kind && t.readyState === "live") || null;
  }

  async setOutgoingVideo(track) {
    const transceiver = this.publishTransceivers.video;
    if (transceiver) await transceiver.sender.replaceTrack(track || null);
  }

  // ------------------------------------------------------------------ ICE

  /** Trickle our candidates; `null` (end of candidates) is sent too. */
  onLocalCandidate(target, pc, candidate) {
    if ((target === "subscribe" ? this.subscribePc : this.publishPc) !== pc) return;
    if (candidate && !candidate.candidate) return; // per-generation end marker
    const payload = candidate
      ? { candidate: candidate.candidate, sdpMid: candidate.sdpMid, sdpMLineIndex: candidate.sdpMLineIndex }
      : null;
    if (this.candidateGate[target]) this.send({ type: "ice", target, candidate: payload });
    else this.candidateQueue[target].push(payload);
  }

  openCandidateGate(target) {
    if (this.candidateGate[target]) return;
    this.candidateGate[target] = true;
    for (const candidate of this.candidateQueue[target]) this.send({ type: "ice", target, candidate });
    this.candidateQueue[target] = [];
  }

  /** The protocol does not require the server to trickle, but accept it if it does. */
  onRemoteCandidate(message) {
    const target = message.target === "publish" ? "publish" : "subscribe";
    const pc = target === "publish" ? this.publishPc : this.subscribePc;
    const candidate = message.candidate || null;
    if (!pc) return;
    if (pc.remoteDescription) pc.addIceCandidate(candidate || undefined).catch(() => {});
    else this.remoteCandidateQueue[target].push(candidate);
  }

  async flushRemoteCandidates(target, pc) {
    const queued = this.remoteCandidateQueue[target];
    this.remoteCandidateQueue[target] = [];
    for (const candidate of queued) await pc.addIceCandidate(candidate || undefined).catch(() => {});
  }

  // -------------------------------------------------------------- quality

  /**
   * Every second: getStats of the subscribe connection -> each video track's
   * playout delay (choosePlayoutDelay) and a short sentence for the nurse.
   */
  async sampleQuality(conn) {
    // (offerTracks: from the latest `offer` or `tracks` message)
    const pc = this.subscribePc;
    if (conn !== this.connId) return;
    if (!pc) {
      this.setQuality({ level: "idle", text: "no video being received", title: "" });
      return;
    }
    let report;
    try {
      report = await pc.getStats();
    } catch {
      return;
    }
    if (pc !== this.subscribePc) return;

    let rtt = null;
    let pairFallback = null;
    const selectedPairIds = new Set();
    let lost = 0, received = 0, audioJitter = null, videoJitter = null, fps = null;
    const videoFps = [];
    const videoInbound = [];
    report.forEach((s) => {
      if (s.type === "transport" && s.selectedCandidatePairId) selectedPairIds.add(s.selectedCandidatePairId);
    });
    report.forEach((s) => {
      if (s.type === "candidate-pair" && s.currentRoundTripTime != null) {
        if (selectedPairIds.has(s.id)) rtt = s.currentRoundTripTime;
        else if (s.nominated && s.state === "succeeded") pairFallback = s.currentRoundTripTime;
      } else if (s.type === "inbound-rtp") {
        lost += Math.max(0, s.packetsLost || 0);
        received += s.packetsReceived || 0;
        if (s.jitter != null) {
          if (s.kind === "audio") audioJitter = Math.max(audioJitter ?? 0, s.jitter);
          else videoJitter = Math.max(videoJitter ?? 0, s.jitter);
        }
        if (s.kind === "video") {
          videoInbound.push(s);
          if (s.framesPerSecond != null) videoFps.push({ mid: s.mid, fps: s.framesPerSecond });
        }
      }
    });
    if (rtt == null) rtt = pairFallback;
    this.reportLink(rtt);
    const { delay, recovered } = this.tunePlayout(pc, videoInbound, rtt);
    // Video jitter is bursty by nature (a frame is many packets); audio's tells
    // how even the link is. Fall back to video when there is no audio.
    const jitter = audioJitter ?? videoJitter;
    // Frame rate of the main video when we can tell which one it is.
    const mainVideo = this.offerTracks.find((t) => t.slot === "main" && t.kind === "video");
    const mainFps = videoFps.find((v) => mainVideo && String(v.mid) === String(mainVideo.mid));
    if (mainFps) fps = mainFps.fps;
    else if (videoFps.length) fps = Math.max(...videoFps.map((v) => v.fps));

    const prev = this.prevStats;
    this.prevStats = { lost, received };
    const dLost = prev ? Math.max(0, lost - prev.lost) : 0;
    const dReceived = prev ? Math.max(0, received - prev.received) : received;
    const loss = dLost + dReceived > 0 ? dLost / (dLost + dReceived) : null;
    const sample = { connection: pc.connectionState, rtt, loss, jitter, fps, packets: dReceived, delay, recovered };
    const verdict = assessQuality(sample);
    this.setQuality({ ...verdict, title: describeQualityNumbers(sample), numbers: sample });
  }

  /**
   * Apply choosePlayoutDelay to every received video track (by mid) and set
   * its receiver's jitterBufferTarget. Audio follows through lip sync.
   * Returns {delay: the largest added delay in s or null, recovered: share of
   * lost video packets repaired since the connection started, or null}.
   */
  tunePlayout(pc, videoInbound, rtt) {
    const inbound = new Map(videoInbound.map((s) => [String(s.mid), s]));
    const now = Date.now();
    const states = new Map();
    let delayMs = null, lost = 0, retransmitted = 0;
    for (const transceiver of pc.getTransceivers()) {
      const receiver = transceiver.receiver;
      if (transceiver.mid == null || transceiver.currentDirection === "stopped") continue;
      if (receiver.track.kind !== "video") continue;
      if (!("jitterBufferTarget" in receiver)) continue;
      const mid = String(transceiver.mid);
      const s = inbound.get(mid) || {};
      const counts = {
        lost: Math.max(0, s.packetsLost || 0),
        nacks: s.nackCount || 0,
        retransmitted: s.retransmittedPacketsReceived || 0,
        freezes: s.freezeCount || 0,
        frozen: s.totalFreezesDuration || 0,
      };
      const prev = this.playout.get(mid);
      const delta = {};
      for (const [key, value] of Object.entries(counts)) {
        delta[key] = prev ? Math.max(0, value - prev.counts[key]) : value;
      }
      const sourceRtt = this.sourceRtt(mid);
      const next = choosePlayoutDelay(prev, { now, rtt, jitter: s.jitter ?? null, sourceRtt, ...delta });
      if (receiver.jitterBufferTarget !== next.targetMs) receiver.jitterBufferTarget = next.targetMs;
      states.set(mid, { ...next, counts });
      if (next.targetMs != null) delayMs = Math.max(delayMs ?? 0, next.targetMs);
      lost += counts.lost;
      retransmitted += counts.retransmitted;
    }
    this.playout = states;
    return {
      delay: delayMs == null ? null : delayMs / 1000,
      recovered: lost > 0 ? Math.min(1, retransmitted / lost) : null,
    };
  }

  /**
   * The reported link RTT (s) of the publisher a received track (by mid) carries.
   * For the main tracks also the floor holder's: a far participant just granted
   * the floor is prepared for while the previous feed is still on, so the jump
   * in playout delay does not fall on its first seconds.
   */
  sourceRtt(mid) {
    const track = this.offerTracks.find((t) => String(t.mid) === mid);
    if (!track) return null;
    const ids = track.slot === "main" ? [this.mainFeed, this.floor] : [track.participant];
    const rtts = ids
      .map((id) => this.participantsById.get(id))
      .filter((p) => p && p.rtt_ms != null)
      .map((p) => p.rtt_ms / 1000);
    return rtts.length ? Math.max(...rtts) : null;
  }

  /** Tell the server our link's round trip when it moved by 100 ms (see PROTOCOL.md, `link`). */
  reportLink(rtt) {
    if (rtt == null || this.state !== "joined") return;
    const ms = Math.round(rtt * 1000);
    if (this.reportedRttMs != null && Math.abs(ms - this.reportedRttMs) < 100) return;
    this.reportedRttMs = ms;
    this.send({ type: "link", rtt_ms: ms });
  }

  setQuality(quality) {
    const old = this.quality;
    this.quality = quality;
    if (!old || old.text !== quality.text || old.title !== quality.title) this.emit("quality");
  }

  // ------------------------------------------------------------- plumbing

  setState(state) {
    if (this.state === state && state !== "reconnecting") return;
    this.state = state;
    this.emit("state");
  }

  emit(type, detail = null, { change = true } = {}) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
    if (change) this.dispatchEvent(new CustomEvent("change", { detail: { type, detail } }));
  }
}
