// Join page: room, display name, token -> /room/<room>?token=<token>&name=<name>.
// ?token=, ?room= and ?name= prefill the fields.

const form = document.getElementById("join-form");
const roomInput = document.getElementById("room");
const nameInput = document.getElementById("name");
const tokenInput = document.getElementById("token");
const tokenInfo = document.getElementById("token-info");
const kioskLink = document.getElementById("kiosk-link");

/** The token's claims, decoded for display only (the server verifies it). */
function tokenClaims(token) {
  const parts = token.trim().split(".");
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = atob(b64.padEnd(b64.length + ((4 - (b64.length % 4)) % 4), "="));
    const claims = JSON.parse(decodeURIComponent(escape(json)));
    return claims && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

function roomUrl(room, query) {
  return `/room/${encodeURIComponent(room)}?${new URLSearchParams(query)}`;
}

function update() {
  const token = tokenInput.value.trim();
  const claims = token ? tokenClaims(token) : null;
  if (claims) {
    // Fill the room from the token when it names one and the field is empty.
    if (!roomInput.value.trim() && claims.room && claims.room !== "*") roomInput.value = claims.room;
    if (!nameInput.value.trim() && claims.name) nameInput.placeholder = claims.name;
    const parts = [];
    if (claims.role) parts.push(`role ${claims.role}`);
    if (claims.name) parts.push(`name "${claims.name}"`);
    if (claims.room) parts.push(`room ${claims.room}`);
    if (claims.exp) {
      const exp = new Date(claims.exp * 1000);
      parts.push(exp < new Date() ? `EXPIRED ${exp.toLocaleString()}` : `valid until ${exp.toLocaleString()}`);
    }
    tokenInfo.textContent = `Token: ${parts.join(", ")}.`;
  } else {
    tokenInfo.textContent = token ? "This does not look like a token." : "";
  }
  const room = roomInput.value.trim();
  kioskLink.value = room && token ? new URL(roomUrl(room, { token, autojoin: "1" }), location.href).href : "";
}

const params = new URLSearchParams(location.search);
for (const [input, key] of [[tokenInput, "token"], [roomInput, "room"], [nameInput, "name"]]) {
  if (params.get(key)) input.value = params.get(key);
}
for (const input of [roomInput, nameInput, tokenInput]) input.addEventListener("input", update);
kioskLink.addEventListener("focus", () => kioskLink.select());

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const room = roomInput.value.trim();
  const token = tokenInput.value.trim();
  if (!room || !token) return;
  location.assign(roomUrl(room, { token, name: nameInput.value.trim() }));
});

update();
(roomInput.value ? tokenInput : roomInput).focus();
