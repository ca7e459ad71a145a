// Button API chat: the web chat served at `/`. Plain JavaScript, no libraries, no build step.
// It calls the HTTP API (POST /api/v3/<name>/) and speaks Socket.IO itself (class Realtime).
// User text only ever reaches the page through textContent, never as HTML.

const PAGE = 50; // messages per page of history
const STORE = "buttonapi.session"; // localStorage key: {"token", "username"}
const NOTICE_MS = 8000; // how long a notice (not an error) stays up
const UNREACHABLE = "Cannot reach the server. Check your connection and try again.";

const $ = (id) => document.getElementById(id);

/** `name` with ASCII letters lower-cased: how the server compares usernames and channels. */
const asciiLower = (name) => name.replace(/[A-Z]/g, (c) => c.toLowerCase());

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

// --- state ------------------------------------------------------------------------------

const state = {
  session: null, // {token, username}
  role: "member", // getme's: member, moderator or admin
  socket: null, // Realtime
  view: { kind: "public", name: null }, // or {kind: "channel" | "dm", name}
  messages: new Map(), // id -> message object, the current view's
  liveIds: new Set(), // ids received live since the current view's last full load
  hasOlder: false,
  loading: false, // the current view's newest page is on its way
  loads: 0, // bumps on every view change; a late answer for an old view is dropped
  channels: [], // [{channel_name, channel_id}]
  conversations: new Map(), // asciiLower(peer) -> {name, lastId, lastMine}
  conversationsLoaded: false, // after the first load, a newer DM found by a reload is new
  unread: new Set(), // view keys with messages not seen yet
  deleted: new Set(), // ids deleted while the page is open
  unreadCounts: new Map(), // view key -> messages others sent that this user has not read
  online: new Set(), // asciiLower(username) of the people online (getonline, `presence`)
  typing: new Map(), // sender -> {key: the view key, until: ms}: who is typing where
};

const viewKey = (view) => (view.kind === "public" || view.kind === "admin"
  ? view.kind : `${view.kind}:${asciiLower(view.name)}`);
const isModerator = () => state.role === "moderator" || state.role === "admin";
const isMine = (m) => state.session && asciiLower(m.sender) === asciiLower(state.session.username);

/** The other person of a DM (oneself for a DM to oneself). */
const peerOf = (m) => (isMine(m) ? m.recipient : m.sender);

function keyOfMessage(m) {
  if (m.kind === "public") return "public";
  if (m.kind === "channel") return `channel:${asciiLower(m.channel)}`;
  return `dm:${asciiLower(peerOf(m))}`;
}

// --- the HTTP API -----------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** POST one endpoint; the JSON answer, or an ApiError whose message is the server's words. */
async function request(name, body) {
  let resp;
  try {
    resp = await fetch(`/api/v3/${name}/`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, UNREACHABLE);
  }
  let data = null;
  try {
    data = await resp.json();
  } catch {
    // not JSON: described below by its status
  }
  if (resp.ok) return data || {};
  let text = data && typeof data.message === "string"
    ? data.message
    : `The server answered with an error (HTTP ${resp.status}).`;
  if (data && data.retry_after) text += ` Try again in ${data.retry_after} s.`;
  if (data && data.reason) text += ` Reason: ${data.reason}.`;
  if (data && data.until) text += ` Until ${new Date(data.until).toLocaleString()}.`;
  throw new ApiError(resp.status, text);
}

/** An endpoint that needs the token; a refused token ends the session. */
async function call(name, body = {}) {
  if (!state.session) throw new ApiError(401, "You are logged out.");
  try {
    return await request(name, { token: state.session.token, ...body });
  } catch (err) {
    if (err.status === 401 && err.message === "Invalid token!") {
      endSession("Your session has ended (Invalid token!). Please log in again.");
    }
    throw err;
  }
}

/** `call`, but an expected "nothing here" 404 gives `empty` instead of an error. */
async function callOr(name, body, emptyMessage, empty) {
  try {
    return await call(name, body);
  } catch (err) {
    if (err.status === 404 && err.message === emptyMessage) return empty;
    throw err;
  }
}

// --- feedback: errors, notices, "working" -------------------------------------------------

function showError(err) {
  if (!(err instanceof ApiError)) console.error(err);
  const text = err instanceof ApiError ? err.message : `Something went wrong: ${err.message || err}`;
  $("alert-text").textContent = text;
  $("alert").hidden = false;
}

function hideError() {
  $("alert").hidden = true;
}

let noticeTimer = null;

function showNotice(text) {
  $("notice-text").textContent = text;
  $("notice").hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { $("notice").hidden = true; }, NOTICE_MS);
}

let pending = 0;

function setWorking(delta) {
  pending += delta;
  $("working").hidden = pending === 0;
  document.body.setAttribute("aria-busy", String(pending > 0));
}

/** Run `work` while `element` (a form or a button) shows that it is busy; errors are shown. */
async function busy(element, work) {
  if (element.getAttribute("aria-busy") === "true") return; // no double submits
  const buttons = element.matches("button") ? [element] : [...element.querySelectorAll("button")];
  element.setAttribute("aria-busy", "true");
  buttons.forEach((b) => { b.disabled = true; });
  setWorking(+1);
  try {
    await work();
  } catch (err) {
    showError(err);
  } finally {
    element.removeAttribute("aria-busy");
    buttons.forEach((b) => { b.disabled = false; });
    setWorking(-1);
  }
}

/** Background work (refreshing lists): shows "Working…" and reports errors. */
async function background(work) {
  setWorking(+1);
  try {
    await work();
  } catch (err) {
    showError(err);
  } finally {
    setWorking(-1);
  }
}

// --- Socket.IO over a WebSocket (Engine.IO v4, Socket.IO v5) ---------------------------------

/**
 * Engine.IO packets are text frames: a type digit, then data. 0 open (JSON with pingInterval
 * and pingTimeout), 1 close, 2 ping (answered by 3 pong), 4 message. A message carries a
 * Socket.IO packet: 0 connect (auth JSON), 1 disconnect, 2 event (JSON array [name, data]),
 * 4 connect error. The token goes in the connect packet, never in the URL.
 *
 * It reconnects by itself with a growing delay (0.5 s doubling to 5 s, with jitter); every
 * successful connect calls `onConnect`, which re-fetches what may have been missed.
 */
class Realtime {
  constructor(token, handlers) {
    this.token = token;
    this.handlers = handlers; // onConnect(), onDisconnect(), onEvent(name, data), onRefused(msg)
    this.ws = null;
    this.attempts = 0;
    this.timer = null; // reconnect delay, or the deadline for the next packet from the server
    this.stopped = false;
  }

  start() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/socket.io/?EIO=4&transport=websocket`);
    this.ws = ws;
    ws.onmessage = (event) => this.receive(ws, String(event.data));
    ws.onclose = () => this.lost(ws);
    this.expectWithin(ws, 10000);
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.drop(this.ws);
  }

  /** Send an event to the server, if connected (nothing is queued: typing is fleeting). */
  emit(name, data) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN && this.attempts === 0) {
      this.ws.send(`42${JSON.stringify([name, data])}`);
    }
  }

  /** Reconnect at once if waiting to (the browser came back online, the tab became visible). */
  nudge() {
    if (this.stopped || this.ws) return;
    clearTimeout(this.timer);
    this.start();
  }

  receive(ws, data) {
    const type = data[0];
    if (type === "0") {
      const open = JSON.parse(data.slice(1));
      this.pingWindow = open.pingInterval + open.pingTimeout;
      this.expectWithin(ws, this.pingWindow);
      ws.send(`40${JSON.stringify({ token_api_v3: this.token })}`);
    } else if (type === "2") {
      ws.send("3");
      this.expectWithin(ws, this.pingWindow);
    } else if (type === "1") {
      this.lost(ws);
    } else if (type === "4") {
      this.packet(ws, data.slice(1));
    }
  }

  packet(ws, data) {
    const type = data[0];
    const body = data.slice(1).replace(/^\d+/, ""); // an ack id, if any, is not used
    if (type === "0") {
      this.attempts = 0;
      this.handlers.onConnect();
    } else if (type === "2") {
      const [name, payload] = JSON.parse(body);
      this.handlers.onEvent(name, payload);
    } else if (type === "4") {
      this.stop();
      this.handlers.onRefused(JSON.parse(body).message);
    } else if (type === "1") {
      this.lost(ws); // the server let go of us (it is shutting down): try again
    }
  }

  /** If nothing arrives from the server within `ms`, the connection is dead. */
  expectWithin(ws, ms) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.lost(ws), ms);
  }

  drop(ws) {
    ws.onmessage = null;
    ws.onclose = null;
    ws.close();
    if (this.ws === ws) this.ws = null;
  }

  lost(ws) {
    if (ws !== this.ws) return; // an old connection, already replaced
    this.drop(ws);
    clearTimeout(this.timer);
    if (this.stopped) return;
    this.handlers.onDisconnect();
    const delay = Math.min(5000, 500 * 2 ** this.attempts) * (0.75 + Math.random() / 2);
    this.attempts += 1;
    this.timer = setTimeout(() => this.start(), delay);
  }
}

const EVENTS = {
  ready(text) {
    // "Server has accepted the connection and registered you as : <username>"
    const name = String(text).split(" : ").pop();
    if (name && state.session) {
      state.session.username = name;
      $("me").textContent = name;
    }
  },
  new_public_message: (m) => receive(m),
  new_message: (e) => receive({ kind: "channel", recipient: null, ...e }),
  new_dm: (e) => receive({ kind: "dm", channel: null, ...e }),
  message_deleted(e) {
    state.deleted.add(e.id);
    removeMessage(e.id);
  },
  added_to_channel(e) {
    showNotice(`${e.by} added you to the channel ${e.channel_name}.`);
    background(loadChannels);
  },
  api_v3_error(e) {
    if (e.message === "Token changed!") {
      endSession("Your token was changed by another login (Token changed!). Please log in again.");
    } else if (e.message === "You are banned!") {
      endSession("You have been banned from this community (You are banned!).");
    } else {
      showError(new ApiError(0, e.message));
    }
  },
};

function connect() {
  state.socket = new Realtime(state.session.token, {
    onConnect() {
      $("connection").textContent = "Live";
      $("connection").className = "connection live";
      if ($("alert-text").textContent === UNREACHABLE) hideError(); // it is reachable again
      background(refreshAll); // catch up on whatever happened while not connected
    },
    onDisconnect() {
      $("connection").textContent = "Reconnecting…";
      $("connection").className = "connection offline";
    },
    onEvent(name, data) {
      if (Object.hasOwn(EVENTS, name)) EVENTS[name](data);
    },
    onRefused(message) {
      endSession(`Your session has ended (${message}). Please log in again.`);
    },
  });
  state.socket.start();
}

// --- live messages ----------------------------------------------------------------------

function receive(m) {
  if (state.deleted.has(m.id)) return;
  if (!isMine(m)) announce(`${m.sender}: ${m.message}`);
  if (m.kind === "dm") noteConversation(m);
  const key = keyOfMessage(m);
  if (key === viewKey(state.view)) {
    state.liveIds.add(m.id);
    insertMessage(m);
  } else if (!isMine(m)) {
    state.unread.add(key);
  }
  noteArrival(m, key); // unread counts, the typing line (conversations, below)
  renderSidebar();
  if (m.kind === "channel" && !state.channels.some((c) => `channel:${asciiLower(c.channel_name)}` === key)) {
    background(loadChannels);
  }
}

// Screen readers hear each new message of others once, politely, wherever the focus is.
function announce(text) {
  $("announcer").textContent = text.length > 300 ? `${text.slice(0, 300)}…` : text;
}

function noteConversation(m) {
  const name = peerOf(m);
  const known = state.conversations.get(asciiLower(name));
  if (!known || known.lastId < m.id) {
    state.conversations.set(asciiLower(name), { name, lastId: m.id, lastMine: isMine(m) });
  }
}

// --- lists: channels and DM conversations -----------------------------------------------------

async function loadChannels() {
  const data = await callOr("getchannels", {}, "You are not in any channels!", null);
  state.channels = data ? data.channels : [];
  $("channel-empty").textContent = data ? "" : "You are not in any channels!";
  renderSidebar();
}

async function loadConversations() {
  const data = await callOr("getdms", { count: 1000 }, "No dms!", { dms: [] });
  const before = state.conversations;
  state.conversations = new Map();
  for (const m of data.dms) noteConversation(m);
  if (state.conversationsLoaded) { // a reload after a reconnect: mark what came meanwhile
    for (const [peer, c] of state.conversations) {
      const key = `dm:${peer}`;
      const isNew = !before.has(peer) || before.get(peer).lastId < c.lastId;
      if (isNew && !c.lastMine && key !== viewKey(state.view)) state.unread.add(key);
    }
  }
  state.conversationsLoaded = true;
  renderSidebar();
}

function convButton(key, label) {
  const button = el("button", { type: "button", className: "conv" }, label);
  button.dataset.key = key;
  return el("li", {}, button);
}

function renderSidebar() {
  $("channel-list").replaceChildren(
    ...state.channels.map((c) => convButton(`channel:${asciiLower(c.channel_name)}`, `# ${c.channel_name}`)),
  );
  $("channel-empty").hidden = state.channels.length > 0;
  const conversations = [...state.conversations.values()].sort((a, b) => b.lastId - a.lastId);
  $("dm-list").replaceChildren(...conversations.map((c) => convButton(`dm:${asciiLower(c.name)}`, c.name)));
  $("dm-empty").hidden = conversations.length > 0;
  const current = viewKey(state.view);
  for (const button of document.querySelectorAll("#sidebar .conv")) {
    const key = button.dataset.key;
    if (key === current) button.setAttribute("aria-current", "page");
    else button.removeAttribute("aria-current");
    button.classList.toggle("unread", state.unread.has(key) || unreadCount(key) > 0);
    button.querySelector(".badge")?.remove();
    if (state.unread.has(key) || unreadCount(key) > 0) button.append(badge(key));
    decorateConversation(button, key); // online dots (conversations, below)
  }
}

/** The view a sidebar key stands for, with the name as the server spells it. */
function viewOfKey(key) {
  if (key === "public") return { kind: "public", name: null };
  const [kind, lower] = [key.slice(0, key.indexOf(":")), key.slice(key.indexOf(":") + 1)];
  if (kind === "channel") {
    const channel = state.channels.find((c) => asciiLower(c.channel_name) === lower);
    return { kind, name: channel ? channel.channel_name : lower };
  }
  return { kind, name: state.conversations.get(lower)?.name || lower };
}

// --- the current view: one conversation's messages -------------------------------------------

function fetchPage(view, before) {
  const paging = before ? { count: PAGE, before } : { count: PAGE };
  if (view.kind === "public") {
    return call("getmessagesforeveryone", paging).then((d) => d.messages);
  }
  if (view.kind === "channel") {
    return call("readmessagesfromchannel", { name: view.name, ...paging }).then((d) => d.messages);
  }
  return callOr("getdms", { username: view.name, ...paging }, "No dms!", { dms: [] }).then((d) => d.dms);
}

function openView(view) {
  state.view = view;
  state.loads += 1;
  state.messages = new Map();
  state.unread.delete(viewKey(view));
  $("view-title").textContent = view.kind === "public" ? "Public feed"
    : view.kind === "channel" ? `# ${view.name}` : `Direct messages with ${view.name}`;
  showAdmin(false);
  $("add-user-form").hidden = view.kind !== "channel";
  viewOpened(view); // channel tools, typing line, unread count (conversations, below)
  $("compose-text").placeholder = view.kind === "public"
    ? "Write to everyone (Enter sends, Shift+Enter adds a line)"
    : `Write to ${view.kind === "channel" ? "#" : ""}${view.name} (Enter sends, Shift+Enter adds a line)`;
  state.loading = true;
  setSidebarOpen(false);
  renderSidebar();
  renderMessages();
  background(reloadView);
}

/** Load the newest page of the current view, keeping what arrived live meanwhile. */
async function reloadView() {
  const view = state.view;
  const loads = state.loads;
  state.liveIds = new Set();
  let page;
  try {
    page = await fetchPage(view);
  } finally {
    if (loads === state.loads) state.loading = false;
  }
  if (loads !== state.loads) return; // the person moved on to another view
  const newest = page.length ? page[page.length - 1].id : 0;
  const live = [...state.messages.values()].filter((m) => state.liveIds.has(m.id) && m.id > newest);
  state.messages = new Map([...page, ...live].filter((m) => !state.deleted.has(m.id)).map((m) => [m.id, m]));
  state.hasOlder = page.length === PAGE;
  renderMessages();
  scrollToEnd();
  markViewRead();
}

async function loadOlder() {
  const loads = state.loads;
  const oldest = Math.min(...state.messages.keys());
  const page = await fetchPage(state.view, oldest);
  if (loads !== state.loads) return;
  const box = $("messages");
  const fromBottom = box.scrollHeight - box.scrollTop;
  for (const m of page) if (!state.deleted.has(m.id)) state.messages.set(m.id, m);
  state.hasOlder = page.length === PAGE;
  renderMessages();
  box.scrollTop = box.scrollHeight - fromBottom; // keep the same messages in sight
}

function formatTime(iso) {
  const date = new Date(iso);
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (date.toDateString() === new Date().toDateString()) return time;
  return `${date.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
}

function messageElement(m) {
  const mine = isMine(m) && m.source !== "discord";
  const meta = el("div", { className: "meta" }, el("span", { className: "sender" }, m.sender));
  if (m.source === "discord") meta.append(el("span", { className: "source" }, "via Discord"));
  const when = el("time", { dateTime: m.timestamp, title: new Date(m.timestamp).toLocaleString() });
  when.textContent = formatTime(m.timestamp);
  meta.append(when);
  if (m.edited_timestamp) meta.append(editedMark(m));
  // A moderator or admin may delete anyone's public and channel messages (the server decides
  // in the end: a moderator may not delete an admin's), and ban or time out their author.
  const moderate = !mine && isModerator() && (m.kind === "public" || m.kind === "channel");
  if (mine || moderate) {
    const del = el("button", { type: "button", className: "delete" }, "Delete");
    const whose = mine ? "your message" : `${m.sender}'s message`;
    del.setAttribute("aria-label", `Delete ${whose}: ${m.message.slice(0, 60)}`);
    del.addEventListener("click", () => busy(del, () => deleteMessage(m.id)));
    meta.append(del);
  }
  const item = el("li", { className: mine ? "message mine" : "message" }, meta,
    el("p", { className: "text" }, m.message));
  if (moderate && m.source !== "discord") {
    for (const [label, form] of [["Ban", banForm], ["Time out", timeoutForm]]) {
      const button = el("button", { type: "button", className: "delete" }, label);
      button.setAttribute("aria-label", `${label} ${m.sender}`);
      button.addEventListener("click", () => toggleForm(item, form(m.sender)));
      meta.append(button);
    }
  }
  if (mine) meta.append(editButton(m, item));
  item.dataset.id = String(m.id);
  return item;
}

// --- moderating from a message -----------------------------------------------------------------

/** Show `form` under a message (replacing another one there), or hide it if it is the same kind. */
function toggleForm(item, form) {
  const open = item.querySelector("form.moderate");
  if (open) open.remove();
  if (open && open.dataset.kind === form.dataset.kind) return;
  item.append(form);
  form.querySelector("select, input")?.focus();
}

let formIds = 0;

function field(label, control) {
  control.id = `moderate-${(formIds += 1)}`;
  return [el("label", { htmlFor: control.id }, label), control];
}

function choices(name, options) {
  const select = el("select", { name });
  for (const [value, text] of options) select.append(el("option", { value }, text));
  return select;
}

const BAN_LENGTHS = [["", "until unbanned"], ["3600", "1 hour"], ["86400", "1 day"], ["604800", "1 week"]];
const TIMEOUT_LENGTHS = [["600", "10 minutes"], ["3600", "1 hour"], ["86400", "1 day"], ["604800", "1 week"]];

function banForm(username) {
  const reason = el("input", { name: "reason", maxLength: 200, autocomplete: "off" });
  const purge = el("input", { name: "purge", type: "checkbox" });
  purge.id = `moderate-${(formIds += 1)}`;
  const form = el("form", { className: "moderate inline-form", method: "post" },
    ...field("Reason", reason), ...field("Ban for", choices("seconds", BAN_LENGTHS)),
    el("p", { className: "check" }, purge,
      el("label", { htmlFor: purge.id }, "Also delete their messages of the last 7 days")),
    el("button", { type: "submit" }, `Ban ${username}`));
  form.dataset.kind = "ban";
  form.setAttribute("aria-label", `Ban ${username}`);
  onFormSubmit(form, async (f) => {
    const body = { username, purge: f.purge.checked };
    if (f.reason.value) body.reason = f.reason.value;
    if (f.seconds.value) body.seconds = Number(f.seconds.value);
    const done = await call("banuser", body);
    form.remove();
    showNotice(`${done.username} is banned${done.until ? ` until ${new Date(done.until).toLocaleString()}` : ""}.`);
  });
  return form;
}

function timeoutForm(username) {
  const form = el("form", { className: "moderate inline-form", method: "post" },
    ...field("Time out for", choices("seconds", TIMEOUT_LENGTHS)),
    el("button", { type: "submit" }, `Time out ${username}`));
  form.dataset.kind = "timeout";
  form.setAttribute("aria-label", `Time out ${username}`);
  onFormSubmit(form, async (f) => {
    const done = await call("timeoutuser", { username, seconds: Number(f.seconds.value) });
    form.remove();
    showNotice(`${done.username} is timed out until ${new Date(done.until).toLocaleString()}.`);
  });
  return form;
}

// --- the community page (moderators and admins) -------------------------------------------------

const USERS_PAGE = 100;

function openAdmin() {
  state.view = { kind: "admin", name: null };
  state.loads += 1;
  $("view-title").textContent = "Community";
  showAdmin(true);
  setSidebarOpen(false);
  renderSidebar();
  background(() => Promise.all([loadUsers(), loadLinks(), loadAudit()]));
}

function showAdmin(shown) {
  $("admin-view").hidden = !shown;
  $("messages").hidden = shown;
  $("compose-form").hidden = shown;
  if (shown) $("add-user-form").hidden = true;
  $("link-form").hidden = state.role !== "admin";
}

function statusOf(u) {
  if (u.banned) {
    const until = u.banned.until ? ` until ${new Date(u.banned.until).toLocaleString()}` : "";
    return `banned${until}${u.banned.reason ? ` (${u.banned.reason})` : ""}`;
  }
  if (u.timed_out_until) return `timed out until ${new Date(u.timed_out_until).toLocaleString()}`;
  return "active";
}

function userRow(u) {
  let role = el("span", {}, u.role);
  if (state.role === "admin" && asciiLower(u.username) !== asciiLower(state.session.username)) {
    role = choices("role", [["member", "member"], ["moderator", "moderator"], ["admin", "admin"]]);
    role.value = u.role;
    role.setAttribute("aria-label", `Role of ${u.username}`);
    role.addEventListener("change", () => busy(role, async () => {
      try {
        const done = await call("setrole", { username: u.username, role: role.value });
        showNotice(`${done.username} is now ${done.role}.`);
      } catch (err) {
        role.value = u.role;
        throw err;
      }
      u.role = role.value;
      await loadAudit();
    }));
  }
  const row = el("tr", {}, el("td", {}, u.username), el("td", {}, role), el("td", {}, statusOf(u)));
  row.dataset.username = u.username;
  return row;
}

async function loadUsers(after) {
  const data = await call("getusers", after ? { count: USERS_PAGE, after } : { count: USERS_PAGE, after: 0 });
  const rows = data.users.map(userRow);
  if (after) $("user-rows").append(...rows);
  else $("user-rows").replaceChildren(...rows);
  state.lastUserId = data.users.length ? data.users[data.users.length - 1].id : after || 0;
  $("users-more").hidden = data.users.length < USERS_PAGE;
}

async function loadLinks() {
  const data = await call("getlinks");
  $("link-rows").replaceChildren(...data.links.map((l) => {
    const item = el("li", {}, `# ${l.name} ↔ Discord channel ${l.discord_channel} `);
    if (state.role === "admin") {
      const unlink = el("button", { type: "button", className: "delete" }, "Unlink");
      unlink.setAttribute("aria-label", `Unlink ${l.name}`);
      unlink.addEventListener("click", () => busy(unlink, async () => {
        await call("unlinkchannel", { name: l.name });
        showNotice(`# ${l.name} is no longer linked to Discord.`);
        await Promise.all([loadLinks(), loadAudit()]);
      }));
      item.append(unlink);
    }
    return item;
  }));
  $("links-empty").hidden = data.links.length > 0;
}

function auditRow(e) {
  const when = el("time", { dateTime: e.timestamp }, formatTime(e.timestamp));
  const details = [e.reason, e.until && `until ${new Date(e.until).toLocaleString()}`,
    e.message_id && `message ${e.message_id}`].filter(Boolean).join(", ");
  const row = el("tr", {}, el("td", {}, when), el("td", {}, e.actor), el("td", {}, e.action),
    el("td", {}, e.target || ""), el("td", {}, details));
  row.dataset.id = String(e.id);
  return row;
}

async function loadAudit(before) {
  const data = await call("getauditlog", before ? { count: PAGE, before } : { count: PAGE });
  const rows = data.entries.map(auditRow).reverse(); // newest first
  if (before) $("audit-rows").append(...rows);
  else $("audit-rows").replaceChildren(...rows);
  $("audit-older").hidden = data.entries.length < PAGE;
}

async function loadMe() {
  const me = await call("getme");
  state.role = me.role;
  $("my-role").textContent = me.role === "member" ? "" : `(${me.role})`;
  $("admin-button").hidden = !isModerator();
  if (state.view.kind !== "admin") renderMessages();
}

function renderMessages() {
  const sorted = [...state.messages.values()].sort((a, b) => a.id - b.id);
  $("message-list").replaceChildren(...sorted.map(messageElement));
  $("messages-empty").hidden = sorted.length > 0 || state.loading;
  $("messages").setAttribute("aria-busy", String(state.loading));
  $("older-button").hidden = !state.hasOlder;
}

function nearEnd() {
  const box = $("messages");
  return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
}

function scrollToEnd() {
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
}

function insertMessage(m) {
  if (state.messages.has(m.id) || state.deleted.has(m.id)) return;
  const follow = nearEnd() || isMine(m);
  state.messages.set(m.id, m);
  const list = $("message-list");
  const later = [...list.children].find((li) => Number(li.dataset.id) > m.id);
  list.insertBefore(messageElement(m), later || null);
  $("messages-empty").hidden = true;
  if (follow) scrollToEnd();
}

function removeMessage(id) {
  state.messages.delete(id);
  const item = $("message-list").querySelector(`li[data-id="${Number(id)}"]`);
  if (!item) return;
  const hadFocus = item.contains(document.activeElement);
  item.remove();
  $("messages-empty").hidden = state.messages.size > 0;
  if (hadFocus) $("compose-text").focus();
}

// --- actions ----------------------------------------------------------------------------

async function deleteMessage(id) {
  await call("deletemessage", { message_id: id });
  state.deleted.add(id);
  removeMessage(id);
}

async function sendMessage(text) {
  const view = state.view;
  if (view.kind === "public") {
    await call("senddcmsgwithtoken", { message: text });
  } else if (view.kind === "channel") {
    await call("sendmessage", { message: text, channel: view.name });
  } else {
    const sent = await call("senddm", { username: view.name, message: text });
    // Only the recipient gets new_dm: read our own copy back to show it.
    const read = await call("readmessagesfromchannel", { message_id: sent.id });
    receive(read.messages[0]);
  }
}

async function refreshAll() {
  const view = state.view.kind === "admin" ? loadAudit() : reloadView();
  await Promise.all([loadMe(), loadChannels(), loadConversations(), view, loadPresenceAndUnread()]);
}

// --- the session ------------------------------------------------------------------------

async function logIn(username, password) {
  let answer;
  try {
    answer = await request("gettoken", { username, password });
  } catch (err) {
    if (!(err.status === 401 && err.message === "No token!")) throw err;
    answer = await request("generatetoken", { username, password });
  }
  startSession({ token: answer.token, username });
}

function startSession(session) {
  state.session = session;
  localStorage.setItem(STORE, JSON.stringify(session));
  Object.assign(state, {
    channels: [], conversations: new Map(), conversationsLoaded: false, unread: new Set(), deleted: new Set(),
    role: "member", unreadCounts: new Map(), online: new Set(), typing: new Map(),
  });
  $("my-role").textContent = "";
  $("admin-button").hidden = true;
  $("me").textContent = session.username;
  $("connection").textContent = "Connecting…";
  $("connection").className = "connection";
  $("auth-screen").hidden = true;
  $("chat-screen").hidden = false;
  for (const form of document.querySelectorAll("#auth-screen form")) form.reset();
  openView({ kind: "public", name: null });
  background(() => Promise.all([loadMe(), loadChannels(), loadConversations(), loadPresenceAndUnread()]));
  connect();
  $("compose-text").focus();
}

function endSession(reason) {
  if (state.socket) state.socket.stop();
  state.socket = null;
  state.session = null;
  localStorage.removeItem(STORE);
  $("chat-screen").hidden = true;
  $("auth-screen").hidden = false;
  $("notice").hidden = true;
  if (reason) showError(new ApiError(0, reason));
  else hideError();
  $("login-username").focus();
}

function storedSession() {
  try {
    const session = JSON.parse(localStorage.getItem(STORE));
    return session && typeof session.token === "string" && typeof session.username === "string"
      ? session : null;
  } catch {
    return null;
  }
}

// --- wiring -----------------------------------------------------------------------------

function onSubmit(id, work) {
  onFormSubmit($(id), work);
}

function onFormSubmit(form, work) {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    hideError();
    busy(form, () => work(form.elements));
  });
}

function setSidebarOpen(open) {
  $("sidebar").classList.toggle("open", open);
  $("menu-button").setAttribute("aria-expanded", String(open));
}

function wire() {
  wireConversations();
  onSubmit("login-form", (f) => logIn(f.username.value, f.password.value));
  onSubmit("register-form", async (f) => {
    const body = { username: f.username.value, password: f.password.value };
    if (f.invite.value) body.invite = f.invite.value.trim();
    await request("register", body);
    await logIn(f.username.value, f.password.value);
  });
  onSubmit("channel-form", async (f) => {
    const made = await call("makechannel", { name: f.name.value });
    f.name.value = "";
    await loadChannels();
    openView({ kind: "channel", name: made.channel_name });
    $("compose-text").focus();
  });
  onSubmit("add-user-form", async (f) => {
    const added = await call("addusertochannel", { name: state.view.name, username: f.username.value });
    f.username.value = "";
    showNotice(`Added ${added.username} to ${added.channel_name}.`);
  });
  onSubmit("dm-form", async (f) => {
    const name = f.username.value;
    await call("getdms", { username: name, count: 1 }).catch((err) => {
      if (!(err.status === 404 && err.message === "No dms!")) throw err; // "User not found!"
    });
    f.username.value = "";
    openView({ kind: "dm", name: state.conversations.get(asciiLower(name))?.name || name });
    $("compose-text").focus();
  });
  onSubmit("compose-form", async (f) => {
    await sendMessage(f.message.value);
    f.message.value = "";
    resizeCompose();
  });

  $("compose-text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("compose-form").requestSubmit();
    }
  });
  $("compose-text").addEventListener("input", resizeCompose);
  $("sidebar").addEventListener("click", (event) => {
    const button = event.target.closest("button.conv");
    if (!button) return;
    const overlay = $("sidebar").classList.contains("open"); // the phone layout's menu
    openView(viewOfKey(button.dataset.key));
    if (overlay) $("view-title").focus(); // the button is hidden now: keep the focus in sight
  });
  $("older-button").addEventListener("click", () => busy($("older-button"), loadOlder));
  $("admin-button").addEventListener("click", openAdmin);
  $("users-more").addEventListener("click", () => busy($("users-more"), () => loadUsers(state.lastUserId)));
  $("audit-older").addEventListener("click", () => busy($("audit-older"), () => {
    const ids = [...$("audit-rows").children].map((row) => Number(row.dataset.id));
    return loadAudit(Math.min(...ids));
  }));
  onSubmit("invite-form", async (f) => {
    const made = await call("createinvite", { uses: Number(f.uses.value), seconds: Number(f.days.value) * 86400 });
    $("invite-code").textContent = made.invite;
    $("invite-info").textContent = `${made.uses} use${made.uses === 1 ? "" : "s"}, until ${new Date(made.expires).toLocaleString()}`;
    $("invite-made").hidden = false;
    await loadAudit();
  });
  onSubmit("link-form", async (f) => {
    const done = await call("linkchannel", { name: f.name.value, discord_channel: f.discord.value });
    f.name.value = "";
    f.discord.value = "";
    showNotice(`# ${done.name} is linked to Discord channel ${done.discord_channel}.`);
    await Promise.all([loadLinks(), loadAudit()]);
  });
  $("logout-button").addEventListener("click", () => endSession(null));
  $("alert-close").addEventListener("click", hideError);
  $("notice-close").addEventListener("click", () => { $("notice").hidden = true; });
  $("menu-button").addEventListener("click", () => {
    const open = !$("sidebar").classList.contains("open");
    setSidebarOpen(open);
    if (open) $("public-button").focus();
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && $("sidebar").classList.contains("open")) {
      setSidebarOpen(false);
      $("menu-button").focus();
    }
  });
  window.addEventListener("online", () => state.socket?.nudge());
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) state.socket?.nudge();
  });
  window.addEventListener("storage", (event) => {
    if (event.key === STORE && !event.newValue && state.session) endSession("You logged out in another tab.");
  });
}

// --- conversations: unread counts, presence, typing, search, edits, members (SPEC section 10) ---

const TYPING_EVERY_MS = 2000; // the server relays one `typing` per 2 s; sending more is waste
const TYPING_SHOWN_MS = 3500; // how long "… is typing…" stays without a new `typing`
let typingSentAt = 0;
let typingTimer = null;

const unreadCount = (key) => (state.unreadCounts ? state.unreadCounts.get(key) || 0 : 0);

function badge(key) {
  const n = unreadCount(key);
  const text = n ? String(n) : "new";
  const node = el("span", { className: "badge" }, text);
  node.setAttribute("aria-label", n ? `${n} unread` : "new messages");
  return node;
}

let presenceLoads = 0; // bumps on every load: an answer overtaken by a newer one is dropped

/** getunread's counts and getonline's people, as the server has them now. */
async function loadPresenceAndUnread() {
  const loads = (presenceLoads += 1);
  const [unread, online] = await Promise.all([call("getunread"), call("getonline")]);
  if (loads !== presenceLoads) return;
  const counts = new Map();
  if (unread.public) counts.set("public", unread.public);
  for (const [name, n] of Object.entries(unread.channels)) counts.set(`channel:${asciiLower(name)}`, n);
  for (const [name, n] of Object.entries(unread.dms)) counts.set(`dm:${asciiLower(name)}`, n);
  counts.delete(viewKey(state.view)); // being read right now
  state.unreadCounts = counts;
  for (const key of state.unread) if (!counts.has(key)) state.unread.delete(key); // read elsewhere
  state.online = new Set(online.online.map(asciiLower));
  renderSidebar();
  renderMembersDots();
}

/** A live message: counted unread unless it is one's own or shown now (then it is read). */
function noteArrival(m, key) {
  if (isMine(m)) return;
  stopTyping(m.sender);
  if (key === viewKey(state.view) && !document.hidden) markRead(m.id);
  else state.unreadCounts.set(key, unreadCount(key) + 1);
}

function markRead(messageId) {
  call("markread", { message_id: messageId }).catch(() => {}); // a gone message: nothing to mark
}

/** The view's newest message is read (its marker moves; the other tabs hear `read_marker`). */
function markViewRead() {
  state.unreadCounts.delete(viewKey(state.view));
  renderSidebar();
  const ids = [...state.messages.keys()];
  if (ids.length && state.view.kind !== "admin" && !document.hidden) markRead(Math.max(...ids));
}

function decorateConversation(button, key) {
  button.querySelector(".dot")?.remove();
  if (!key.startsWith("dm:")) return;
  const online = state.online && state.online.has(key.slice(3));
  const dot = el("span", { className: online ? "dot on" : "dot" });
  dot.setAttribute("aria-label", online ? "online" : "offline");
  dot.setAttribute("role", "img");
  button.prepend(dot);
}

function viewOpened(view) {
  state.unreadCounts?.delete(viewKey(view));
  $("channel-tools").hidden = view.kind !== "channel";
  $("members-panel").hidden = true;
  $("members-button").setAttribute("aria-expanded", "false");
  renderTyping();
}

// typing: sent while composing, shown for the conversation it is about

function emitTyping() {
  const view = state.view;
  if (!state.socket || view.kind === "public" || view.kind === "admin" || !$("compose-text").value) return;
  const now = Date.now();
  if (now - typingSentAt < TYPING_EVERY_MS) return;
  typingSentAt = now;
  state.socket.emit("typing", view.kind === "channel" ? { channel: view.name } : { username: view.name });
}

function typingKey(e) {
  return e.channel != null ? `channel:${asciiLower(e.channel)}` : `dm:${asciiLower(e.sender)}`;
}

function stopTyping(sender) {
  for (const [who, t] of state.typing) if (asciiLower(who) === asciiLower(sender)) state.typing.delete(who);
  renderTyping();
}

function renderTyping() {
  const key = viewKey(state.view);
  const now = Date.now();
  const names = [...state.typing].filter(([, t]) => t.key === key && t.until > now).map(([who]) => who);
  $("typing").textContent = names.length === 0 ? ""
    : `${names.join(", ")} ${names.length === 1 ? "is" : "are"} typing…`;
  clearTimeout(typingTimer);
  if (names.length) typingTimer = setTimeout(renderTyping, TYPING_SHOWN_MS);
}

// editing one's own message

function editedMark(m) {
  const mark = el("span", { className: "edited" }, "(edited)");
  mark.title = `Edited ${new Date(m.edited_timestamp).toLocaleString()}`;
  return mark;
}

function editButton(m, item) {
  const button = el("button", { type: "button", className: "edit" }, "Edit");
  button.setAttribute("aria-label", `Edit your message: ${m.message.slice(0, 60)}`);
  button.addEventListener("click", () => {
    const open = item.querySelector("form.edit-form");
    if (open) { open.remove(); return; }
    const box = el("textarea", { name: "message", rows: 2, maxLength: 2000, required: true });
    box.value = m.message;
    box.id = `edit-${m.id}`;
    const label = el("label", { htmlFor: box.id, className: "visually-hidden" }, "Edited message");
    const form = el("form", { className: "edit-form", method: "post" }, label, box,
      el("div", { className: "row" }, el("button", { type: "submit" }, "Save"),
        el("button", { type: "button", className: "cancel" }, "Cancel")));
    form.querySelector(".cancel").addEventListener("click", () => { form.remove(); button.focus(); });
    box.addEventListener("keydown", (event) => { // as in the compose box: Enter saves
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        form.requestSubmit();
      }
    });
    onFormSubmit(form, async (f) => {
      await call("editmessage", { message_id: m.id, message: f.message.value });
      showEdited({ ...m, message: f.message.value, edited_timestamp: new Date().toISOString() });
    });
    item.append(form);
    box.focus();
  });
  return button;
}

/** A message's new text (an edit, here or live): replaced where it is shown. */
function showEdited(m) {
  if (!state.messages.has(m.id)) return;
  state.messages.set(m.id, { ...state.messages.get(m.id), ...m });
  const item = $("message-list").querySelector(`li[data-id="${Number(m.id)}"]`);
  if (item) item.replaceWith(messageElement(state.messages.get(m.id)));
}

// channel members, leaving a channel

async function loadMembers() {
  const got = await call("getchannelmembers", { name: state.view.name });
  const me = asciiLower(state.session.username);
  $("member-list").replaceChildren(...got.members.map((name) => {
    const item = el("li", {}, el("span", { className: "member-name" }, name));
    item.dataset.name = asciiLower(name);
    if (asciiLower(name) !== me && got.creator && asciiLower(got.creator) === me) {
      const remove = el("button", { type: "button", className: "delete" }, "Remove");
      remove.setAttribute("aria-label", `Remove ${name} from ${got.channel_name}`);
      remove.addEventListener("click", () => busy(remove, async () => {
        await call("removeuserfromchannel", { name: got.channel_name, username: name });
        showNotice(`Removed ${name} from ${got.channel_name}.`);
        await loadMembers();
      }));
      item.append(remove);
    }
    return item;
  }));
  renderMembersDots();
}

function renderMembersDots() {
  for (const item of $("member-list").children) {
    item.querySelector(".dot")?.remove();
    const online = state.online.has(item.dataset.name)
      || item.dataset.name === asciiLower(state.session?.username || "");
    const dot = el("span", { className: online ? "dot on" : "dot" });
    dot.setAttribute("aria-label", online ? "online" : "offline");
    dot.setAttribute("role", "img");
    item.prepend(dot);
  }
}

async function leaveChannel() {
  const name = state.view.name;
  await call("leavechannel", { name });
  showNotice(`You left ${name}.`);
  await loadChannels();
  openView({ kind: "public", name: null });
}

// search

async function search(query) {
  const found = await call("searchmessages", { query, count: 50 });
  $("search-results").hidden = false;
  $("search-summary").textContent = found.messages.length
    ? `${found.messages.length === 50 ? "The newest 50" : found.messages.length} message${found.messages.length === 1 ? "" : "s"} found.`
    : "No messages found.";
  $("search-list").replaceChildren(...found.messages.map((m) => {
    const where = m.kind === "public" ? "Public feed" : m.kind === "channel" ? `# ${m.channel}`
      : m.kind === "dm" ? `DM with ${peerOf(m)}` : `to Discord ${m.channel}`;
    const button = el("button", { type: "button", className: "result" },
      el("span", { className: "where" }, `${where} · ${m.sender}`),
      el("span", { className: "snippet" }, m.message.length > 120 ? `${m.message.slice(0, 120)}…` : m.message));
    button.disabled = m.kind === "discord";
    button.addEventListener("click", () => jumpTo(m));
    return el("li", {}, button);
  }));
}

/** Open the conversation holding a found message and bring the message into sight. */
async function jumpTo(m) {
  const view = m.kind === "public" ? { kind: "public", name: null }
    : m.kind === "channel" ? { kind: "channel", name: m.channel } : { kind: "dm", name: peerOf(m) };
  openView(view);
  const loads = state.loads;
  for (let pages = 0; pages < 20 && loads === state.loads; pages += 1) {
    const item = $("message-list").querySelector(`li[data-id="${Number(m.id)}"]`);
    if (item) {
      item.classList.add("found");
      item.scrollIntoView({ block: "center" });
      return;
    }
    if (state.loading) await new Promise((resolve) => setTimeout(resolve, 50));
    else if (state.hasOlder && state.messages.size && Math.min(...state.messages.keys()) > m.id) await loadOlder();
    else return;
  }
}

Object.assign(EVENTS, {
  read_marker() {
    background(loadPresenceAndUnread); // another tab (or this one) read something: recount
  },
  presence(e) {
    if (e.online) state.online.add(asciiLower(e.username));
    else state.online.delete(asciiLower(e.username));
    renderSidebar();
    renderMembersDots();
  },
  typing(e) {
    state.typing.set(e.sender, { key: typingKey(e), until: Date.now() + TYPING_SHOWN_MS });
    renderTyping();
  },
  message_edited: (m) => showEdited(m),
  removed_from_channel(e) {
    if (asciiLower(e.by) !== asciiLower(state.session.username)) {
      showNotice(`${e.by} removed you from the channel ${e.channel_name}.`);
    }
    background(loadChannels);
    if (state.view.kind === "channel" && asciiLower(state.view.name) === asciiLower(e.channel_name)) {
      openView({ kind: "public", name: null });
    }
  },
});

function wireConversations() {
  onSubmit("search-form", (f) => search(f.query.value));
  $("compose-text").addEventListener("input", emitTyping);
  $("members-button").addEventListener("click", () => {
    const open = $("members-panel").hidden;
    $("members-panel").hidden = !open;
    $("members-button").setAttribute("aria-expanded", String(open));
    if (open) busy($("members-button"), loadMembers);
  });
  $("leave-button").addEventListener("click", () => busy($("leave-button"), leaveChannel));
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && state.session) markViewRead();
  });
}

function resizeCompose() {
  const box = $("compose-text");
  box.style.height = "auto";
  box.style.height = `${Math.min(box.scrollHeight, 160)}px`;
}

wire();
const session = storedSession();
if (session) startSession(session);
else endSession(null);
