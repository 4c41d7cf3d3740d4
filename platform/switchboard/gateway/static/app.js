// Switchboard web chat: a plain-JavaScript client of PROTOCOL.md v1, served by the gateway at `/`
// (ES modules: api.js HTTP, connection.js the WebSocket, conversations.js what the page knows of a
// conversation, view.js drawing; this module holds the state and the protocol's flows).
//
// How it stays correct across dropped connections:
//   * The WebSocket connects first; the conversation list is loaded over HTTP only after `ready`,
//     so nothing committed between the two can fall in a gap.
//   * `state.cursor` is the last mailbox cursor this page processed. A reconnect sends it as
//     `since`, and the server replays exactly what came after it (or says `resync_required`, and
//     the page reloads over HTTP).
//   * A mailbox event whose cursor is not above the last one would break the server's promise
//     (cursors strictly increase on a connection); it is not applied, and it is counted and
//     logged, never silently hidden.
//   * A send keeps its client_msg_id until answered. Sends not yet answered when the connection
//     drops go out again with the same id after reconnecting: the server answers with the
//     original message and delivers nothing twice.

import { ApiError, request, useGateways } from "./api.js";
import { Connection } from "./connection.js";
import { Gateways } from "./gateways.js";
import {
  applyWire, firstMissingSeq, newConversation, seqToMarkRead, storeMessage, storeReceipt,
} from "./conversations.js";
import {
  hideError, renderConversation, renderConversationList, renderStatus, showError,
} from "./view.js";

const ACK_DELAY_MS = 1000;           // acks are batched: one a second at most
const TYPING_SEND_EVERY_MS = 2500;   // while typing, tell the others at most this often...
const TYPING_SHOWN_MS = 5000;        // ...and show their "is typing" this long after each frame
const HISTORY_PAGE = 50;             // messages loaded when a conversation opens
const CATCH_UP_PAGE = 200;           // PROTOCOL.md's largest history page, for filling gaps
const SEND_RETRIES = 5;              // rate_limited / overloaded sends retried this many times
const TOKEN_KEY = "switchboard.token";

const state = {
  token: null,
  userId: null,
  connection: null,          // the Connection while signed in
  status: "signed-out",      // signed-out | connecting | connected | disconnected
  cursor: null,              // last mailbox cursor processed: `since` of the next socket
  ackedCursor: 0,
  ackTimer: null,
  listLoaded: false,         // the conversation list came over HTTP (after a `ready`)
  conversations: new Map(),  // conversation_id -> record (conversations.js)
  openId: null,
  outbox: new Map(),         // client_msg_id -> {conversationId, body, status, error, retries}
  lastTypingSentAt: 0,
};

// Exposed for tests and for curious developers in the console; the page never reads it back.
const stats = { connects: 0, lastSince: null, replayed: 0, repeatedCursors: 0, resyncs: 0 };
window.switchboard = { state, stats };

const $ = (id) => document.getElementById(id);

// ---- HTTP ----------------------------------------------------------------------------------------

function api(method, path, body) {
  return request(method, path, { token: state.token, body });
}

// Runs an HTTP task of the signed-in page: a refused token signs out, anything else is shown.
async function attempt(task) {
  try {
    return await task();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      signOut("The server refused your token: " + error.message);
    } else {
      showError("notice", error.message);
    }
    return undefined;
  }
}

// ---- signing in and out --------------------------------------------------------------------------

async function startSession(token) {
  state.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  hideError("sign-in-error");
  $("sign-in").hidden = true;
  $("chat").hidden = false;
  $("sign-out").hidden = false;
  const gateways = await Gateways.load();
  if (state.token !== token) return;  // signed out meanwhile
  useGateways(gateways);
  window.switchboard.gateways = gateways;
  state.connection = new Connection({
    url: () => gateways.wsUrl(),
    onOpenFailed: () => gateways.failed(),
    authFrame,
    onFrame,
    onStatus: (status) => { state.status = status; render(); },
    onRefused: (reason) => signOut("The server refused your token" + (reason ? ": " + reason : "") + ". Sign in again."),
  });
  state.connection.start();
}

function signOut(reason) {
  if (state.connection) state.connection.stop();
  sessionStorage.removeItem(TOKEN_KEY);
  clearTimeout(state.ackTimer);
  Object.assign(state, {
    token: null, userId: null, connection: null, status: "signed-out", cursor: null, ackedCursor: 0,
    ackTimer: null, listLoaded: false, openId: null,
  });
  state.conversations.clear();
  state.outbox.clear();
  $("chat").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  if (reason) showError("sign-in-error", reason);
  render();
}

async function devSignIn(userId) {
  try {
    const answer = await request("POST", "/dev/token", { body: { user_id: userId } });
    startSession(answer.token);
  } catch (error) {
    showError("sign-in-error", error.message);
  }
}

// The first frame of every socket: the token, and `since` once the page has processed events.
function authFrame() {
  const frame = { type: "auth", token: state.token };
  if (state.cursor !== null) frame.since = state.cursor;
  stats.connects += 1;
  stats.lastSince = state.cursor;
  return frame;
}

function send(frame) {
  return Boolean(state.connection) && state.connection.send(frame);
}

// ---- frames from the server ----------------------------------------------------------------------

function onFrame(frame) {
  switch (frame.type) {
    case "ready": return onReady(frame);
    case "resync_required": return onResyncRequired(frame);
    case "message": case "receipt": case "member": return onMailboxEvent(frame);
    case "sent": return onSent(frame);
    case "typing": return onTyping(frame);
    case "error": return onErrorFrame(frame);
    default: return undefined; // pong, and frame types a newer server may add
  }
}

function onReady(frame) {
  state.userId = frame.user_id;
  // Without `since` nothing was replayed: the mailbox head is where this page starts.
  if (state.cursor === null) state.cursor = frame.cursor;
  if (!state.listLoaded) attempt(loadConversations);
  reloadOpenConversationIfUnloaded();
  flushOutbox();
  render();
}

// Events after `since` were pruned: no replay is possible, so reload what the page shows.
function onResyncRequired(frame) {
  stats.resyncs += 1;
  state.cursor = frame.cursor;
  attempt(async () => {
    await loadConversations();
    for (const conversation of state.conversations.values()) {
      if (conversation.historyLoaded) await catchUp(conversation);
    }
  });
}

function onMailboxEvent(frame) {
  if (state.cursor !== null && frame.cursor <= state.cursor) {
    stats.repeatedCursors += 1;
    console.warn("switchboard: event with cursor", frame.cursor, "after", state.cursor, frame);
    return;
  }
  state.cursor = frame.cursor;
  if (!state.connection.ready) stats.replayed += 1; // before `ready`: part of the replay
  if (frame.type === "message") addMessage(frame.message, { live: true });
  else if (frame.type === "receipt") addReceipt(frame);
  else addMemberChange(frame);
  scheduleAck();
}

function scheduleAck() {
  if (state.ackTimer) return;
  state.ackTimer = setTimeout(() => {
    state.ackTimer = null;
    if (state.cursor > state.ackedCursor && send({ type: "ack", cursor: state.cursor })) {
      state.ackedCursor = state.cursor;
    }
  }, ACK_DELAY_MS);
}

function onSent(frame) {
  state.outbox.delete(frame.client_msg_id);
  addMessage(frame.message, { live: false });
}

function onTyping(frame) {
  if (frame.user_id === state.userId) return; // our own other device
  const conversation = state.conversations.get(frame.conversation_id);
  if (!conversation) return;
  clearTimeout(conversation.typing.get(frame.user_id));
  conversation.typing.set(frame.user_id, setTimeout(() => {
    conversation.typing.delete(frame.user_id);
    render();
  }, TYPING_SHOWN_MS));
  render();
}

function onErrorFrame(frame) {
  const entry = frame.ref && state.outbox.get(frame.ref);
  if (!entry) {
    showError("notice", frame.message);
    return;
  }
  // Refused for load, not for content: nothing was committed, so the same send may be retried.
  if ((frame.code === "rate_limited" || frame.code === "overloaded") && entry.retries < SEND_RETRIES) {
    entry.retries += 1;
    entry.status = "queued";
    setTimeout(() => transmit(frame.ref), frame.retry_after_ms || 1000 * 2 ** entry.retries);
  } else {
    entry.status = "failed";
    entry.error = frame.message;
  }
  render();
}

// ---- conversations and messages ------------------------------------------------------------------

function upsertConversation(wire) {
  const conversation = state.conversations.get(wire.conversation_id) || newConversation(wire.conversation_id);
  applyWire(conversation, wire);
  state.conversations.set(conversation.id, conversation);
  return conversation;
}

// The record for an event's conversation; one the page has not heard of is fetched.
function conversationFor(id) {
  let conversation = state.conversations.get(id);
  if (!conversation) {
    conversation = newConversation(id);
    state.conversations.set(id, conversation);
    fetchConversation(id);
  }
  return conversation;
}

function fetchConversation(id) {
  attempt(async () => upsertConversation(await api("GET", "/conversations/" + id))).then(render);
}

// The list comes in pages (PROTOCOL.md extension: `limit`, and `next_cursor` until the last).
async function loadConversations() {
  let cursor = null;
  do {
    const query = "?limit=200" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : "");
    const answer = await api("GET", "/conversations" + query);
    answer.conversations.forEach(upsertConversation);
    cursor = answer.next_cursor;
  } while (cursor);
  state.listLoaded = true;
  render();
}

function addMessage(message, { live }) {
  const conversation = conversationFor(message.conversation_id);
  const isNew = storeMessage(conversation, message);
  if (message.sender === state.userId) {
    state.outbox.delete(message.client_msg_id); // sent from here (or from another device)
  } else {
    clearTimeout(conversation.typing.get(message.sender)); // their message ends "is typing"
    conversation.typing.delete(message.sender);
    if (live && isNew && conversation.id !== state.openId) conversation.unseen += 1;
  }
  // A live message past a hole in a loaded conversation: fetch the hole over HTTP.
  if (live && conversation.historyLoaded) fillHole(conversation);
  render();
}

function addReceipt(frame) {
  const conversation = conversationFor(frame.conversation_id);
  storeReceipt(conversation, frame.user_id, frame.seq);
  if (frame.user_id === state.userId) conversation.readSent = Math.max(conversation.readSent, frame.seq);
  render();
}

function addMemberChange(frame) {
  const id = frame.conversation_id;
  if (frame.user_id === state.userId && frame.action === "left") {
    state.conversations.delete(id);
    if (state.openId === id) state.openId = null;
  } else if (frame.user_id === state.userId) {
    fetchConversation(id); // we joined: its title and members come over HTTP
  } else {
    const conversation = conversationFor(id);
    const others = conversation.members.filter((member) => member !== frame.user_id);
    conversation.members = frame.action === "joined" ? [...others, frame.user_id] : others;
  }
  render();
}

function addPage(messages) {
  for (const message of messages) addMessage(message, { live: false });
}

// One catch-up at a time per conversation; a hole seen meanwhile is covered by the one running
// (it reads up to the newest message).
function fillHole(conversation) {
  if (conversation.catchingUp || firstMissingSeq(conversation) === null) return;
  conversation.catchingUp = attempt(() => catchUp(conversation)).finally(() => {
    conversation.catchingUp = null;
  });
}

// Fetch every message after the last contiguous one, page by page, until none is missing.
async function catchUp(conversation) {
  const missing = firstMissingSeq(conversation);
  let after = missing === null ? Math.max(0, ...conversation.messages.keys()) : missing - 1;
  for (;;) {
    const page = await api("GET", `/conversations/${conversation.id}/messages?after=${after}&limit=${CATCH_UP_PAGE}`);
    addPage(page.messages);
    if (page.messages.length < CATCH_UP_PAGE) return;
    after = page.messages[page.messages.length - 1].seq;
  }
}

async function openConversation(id) {
  const conversation = state.conversations.get(id);
  if (!conversation) return;
  state.openId = id;
  conversation.unseen = 0;
  hideError("notice");
  render();
  if (!conversation.historyLoaded) await attempt(() => loadHistory(conversation));
  $("composer-input").focus();
}

async function loadHistory(conversation) {
  const page = await api("GET", `/conversations/${conversation.id}/messages?limit=${HISTORY_PAGE}`);
  conversation.historyLoaded = true;
  addPage(page.messages);
  // Live messages that came before the page may sit past a hole: fill it.
  if (firstMissingSeq(conversation) !== null) await catchUp(conversation);
  render();
}

async function loadEarlier() {
  const conversation = state.conversations.get(state.openId);
  const lowest = Math.min(...conversation.messages.keys());
  addPage((await api("GET", `/conversations/${conversation.id}/messages?before=${lowest}&limit=${HISTORY_PAGE}`)).messages);
}

// After a reconnect: a history load that failed while offline is tried again.
function reloadOpenConversationIfUnloaded() {
  const conversation = state.conversations.get(state.openId);
  if (conversation && !conversation.historyLoaded) attempt(() => loadHistory(conversation));
}

async function createConversation(members, title) {
  hideError("new-error");
  try {
    const wire = await api("POST", "/conversations", { members, title });
    upsertConversation(wire);
    $("new-members").value = "";
    $("new-title").value = "";
    await openConversation(wire.conversation_id);
  } catch (error) {
    showError("new-error", error.message);
  }
}

// ---- sending -------------------------------------------------------------------------------------

function newClientMsgId() {
  // getRandomValues, not randomUUID: the latter exists only on https or localhost pages.
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function submitMessage(body) {
  const clientMsgId = newClientMsgId();
  state.outbox.set(clientMsgId, { conversationId: state.openId, body, status: "queued", error: null, retries: 0 });
  transmit(clientMsgId);
  state.lastTypingSentAt = 0; // the next keystroke starts a new message: announce it at once
  render();
}

// Send (or send again: the same client_msg_id, so never twice) one outbox entry, if connected.
function transmit(clientMsgId) {
  const entry = state.outbox.get(clientMsgId);
  if (!entry || entry.status === "failed") return;
  const frame = { type: "send", conversation_id: entry.conversationId, client_msg_id: clientMsgId, body: entry.body };
  if (send(frame)) entry.status = "sending";
}

// After `ready`: everything queued while offline, and every send the old socket never answered.
function flushOutbox() {
  for (const clientMsgId of state.outbox.keys()) transmit(clientMsgId);
}

function retrySend(clientMsgId) {
  Object.assign(state.outbox.get(clientMsgId), { status: "queued", error: null, retries: 0 });
  transmit(clientMsgId);
  render();
}

function onComposerInput() {
  const now = Date.now();
  if (!state.openId || !$("composer-input").value) return;
  if (now - state.lastTypingSentAt < TYPING_SEND_EVERY_MS) return;
  if (send({ type: "typing", conversation_id: state.openId })) state.lastTypingSentAt = now;
}

// Mark read what the open conversation shows, while the page is actually visible.
function maybeSendRead() {
  const conversation = state.conversations.get(state.openId);
  if (!conversation || document.visibilityState !== "visible") return;
  const seq = seqToMarkRead(conversation, state.userId);
  if (seq !== null && send({ type: "read", conversation_id: conversation.id, seq })) conversation.readSent = seq;
}

// ---- drawing -------------------------------------------------------------------------------------

let renderQueued = false;

// Many events can arrive in one burst (a replay): draw once after them.
function render() {
  if (renderQueued) return;
  renderQueued = true;
  setTimeout(() => {
    renderQueued = false;
    renderStatus(state.status, state.userId);
    renderConversationList(state.conversations.values(), {
      openId: state.openId, userId: state.userId, onOpen: openConversation,
    });
    const pending = [...state.outbox].filter(([, entry]) => entry.conversationId === state.openId);
    renderConversation(state.conversations.get(state.openId), {
      userId: state.userId, pending, onRetry: retrySend,
    });
    maybeSendRead();
  }, 0);
}

// ---- wiring --------------------------------------------------------------------------------------

function onSubmit(id, handler) {
  $(id).addEventListener("submit", (event) => {
    event.preventDefault();
    handler();
  });
}

function wireUp() {
  onSubmit("token-form", () => startSession($("token-input").value.trim()));
  onSubmit("dev-form", () => devSignIn($("dev-user").value.trim()));
  onSubmit("new-conversation", () => {
    createConversation($("new-members").value.split(/[\s,]+/).filter(Boolean), $("new-title").value.trim());
  });
  onSubmit("composer", () => {
    const body = $("composer-input").value;
    if (!body.trim() || !state.openId) return;
    $("composer-input").value = "";
    submitMessage(body);
  });
  $("composer-input").addEventListener("input", onComposerInput);
  $("load-earlier").addEventListener("click", () => attempt(loadEarlier));
  $("sign-out").addEventListener("click", () => signOut(null));
  window.addEventListener("online", render); // the status line says whether there is a network
  document.addEventListener("visibilitychange", render);
}

wireUp();
const savedToken = sessionStorage.getItem(TOKEN_KEY);
if (savedToken) startSession(savedToken);
else render();
