// Drawing: the page's state in, DOM out. Nothing here changes state; clicks go to the handlers
// passed in. Text that users wrote is only ever set with textContent, never as HTML.

import { displayName, sortedSeqs } from "./conversations.js";

const $ = (id) => document.getElementById(id);

export function renderStatus(connection, userId) {
  const status = $("status");
  status.dataset.state = connection;
  status.textContent = statusText(connection);
  $("offline-banner").hidden = connection !== "disconnected";
  $("me").hidden = !userId;
  $("me").textContent = userId ? "Signed in as " + userId : "";
}

function statusText(connection) {
  switch (connection) {
    case "connected": return "Connected";
    case "connecting": return "Connecting…";
    case "disconnected": return navigator.onLine ? "Disconnected: reconnecting…" : "Disconnected: no network";
    default: return "Signed out";
  }
}

export function renderConversationList(conversations, { openId, userId, onOpen }) {
  const sorted = [...conversations].sort((a, b) => b.lastActivity - a.lastActivity);
  $("conversations").replaceChildren(...sorted.map((c) => conversationItem(c, c.id === openId, userId, onOpen)));
}

function conversationItem(conversation, isOpen, userId, onOpen) {
  const item = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.dataset.id = conversation.id;
  button.className = isOpen ? "active" : "";
  button.textContent = displayName(conversation, userId);
  button.addEventListener("click", () => onOpen(conversation.id));
  if (conversation.unseen) button.append(textElement("span", "badge", String(conversation.unseen)));
  item.append(button);
  return item;
}

// `pending`: [client_msg_id, outbox entry] of this conversation's sends not yet committed.
export function renderConversation(conversation, { userId, pending, onRetry }) {
  $("no-conversation").hidden = Boolean(conversation);
  $("conversation-view").hidden = !conversation;
  if (!conversation) return;
  $("conversation-title").textContent = displayName(conversation, userId);
  $("conversation-members").textContent = conversation.members.join(", ");
  renderMessages(conversation, userId, pending, onRetry);
  renderTyping(conversation);
}

function renderMessages(conversation, userId, pending, onRetry) {
  const scroller = $("message-scroller");
  const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
  const seqs = sortedSeqs(conversation);
  const readBy = receiptsBySeq(conversation, seqs, userId);
  const items = seqs.map((seq) => messageItem(conversation.messages.get(seq), userId, readBy.get(seq)));
  for (const [clientMsgId, entry] of pending) items.push(pendingItem(clientMsgId, entry, onRetry));
  $("messages").replaceChildren(...items);
  $("load-earlier").hidden = !seqs.length || seqs[0] <= 1;
  if (atBottom) scroller.scrollTop = scroller.scrollHeight; // follow new messages, unless scrolled up
}

// Each other member's receipt is drawn under the newest message it covers, skipping that
// member's own messages ("bob read this" under bob's own message would say nothing).
function receiptsBySeq(conversation, seqs, userId) {
  const readBy = new Map();
  for (const [reader, readSeq] of conversation.reads) {
    if (reader === userId) continue;
    const covered = seqs.filter((seq) => seq <= readSeq && conversation.messages.get(seq).sender !== reader);
    if (!covered.length) continue;
    const seq = covered[covered.length - 1];
    readBy.set(seq, [...(readBy.get(seq) || []), reader]);
  }
  return readBy;
}

function messageItem(message, userId, readers) {
  const item = document.createElement("li");
  item.className = "message" + (message.sender === userId ? " mine" : "");
  item.dataset.seq = String(message.seq);
  item.dataset.sender = message.sender;
  item.append(
    textElement("span", "sender", message.sender),
    textElement("span", "body", message.body),
    textElement("time", "time", formatTime(message.ts)),
  );
  if (readers) item.append(textElement("span", "receipt", "Read by " + readers.sort().join(", ")));
  return item;
}

function pendingItem(clientMsgId, entry, onRetry) {
  const failed = entry.status === "failed";
  const item = document.createElement("li");
  item.className = "message mine pending" + (failed ? " failed" : "");
  item.dataset.clientMsgId = clientMsgId;
  item.append(
    textElement("span", "body", entry.body),
    textElement("span", "time", failed ? "Not sent: " + entry.error : "Sending…"),
  );
  if (failed) {
    const retry = textElement("button", "link", "Retry");
    retry.type = "button";
    retry.addEventListener("click", () => onRetry(clientMsgId));
    item.append(retry);
  }
  return item;
}

function renderTyping(conversation) {
  const names = [...conversation.typing.keys()].sort();
  let text = "";
  if (names.length === 1) text = names[0] + " is typing…";
  else if (names.length > 1) text = names.join(", ") + " are typing…";
  $("typing").textContent = text;
}

function textElement(tag, className, text) {
  const element = document.createElement(tag);
  element.className = className;
  element.textContent = text;
  return element;
}

function formatTime(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

export function showError(id, text) {
  $(id).textContent = text;
  $(id).hidden = false;
}

export function hideError(id) {
  $(id).hidden = true;
}
