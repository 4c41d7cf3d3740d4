// What the page knows of one conversation. Messages are kept in a Map keyed by `seq`: the same
// message can rightly reach the page from two sources (the `sent` answer and the mailbox event
// of our own send; an HTTP history page and a live event), and keying by seq makes storing it
// twice store it once. They are always drawn in seq order, PROTOCOL.md's one order for all.

export function newConversation(id) {
  return {
    id, title: "", members: [], lastSeq: 0, lastActivity: 0,
    messages: new Map(),     // seq -> message
    historyLoaded: false,    // its latest page was fetched (done when first opened)
    reads: new Map(),        // user_id -> highest seq that member marked read
    typing: new Map(),       // user_id -> timer that hides their "is typing"
    readSent: 0,             // highest seq this user marked read
    unseen: 0,               // messages from others that came while it was not open
    catchingUp: null,        // the HTTP catch-up in flight, if any
  };
}

// Take the fields of a PROTOCOL.md conversation object.
export function applyWire(conversation, wire) {
  conversation.title = wire.title || "";
  conversation.members = wire.members;
  conversation.lastSeq = Math.max(conversation.lastSeq, wire.last_seq);
  conversation.lastActivity = Math.max(conversation.lastActivity, Date.parse(wire.created_at) || 0);
}

// Store a message; true when its seq was not there yet.
export function storeMessage(conversation, message) {
  const isNew = !conversation.messages.has(message.seq);
  conversation.messages.set(message.seq, message);
  conversation.lastSeq = Math.max(conversation.lastSeq, message.seq);
  conversation.lastActivity = Math.max(conversation.lastActivity, message.ts);
  return isNew;
}

export function storeReceipt(conversation, userId, seq) {
  conversation.reads.set(userId, Math.max(conversation.reads.get(userId) || 0, seq));
}

export function sortedSeqs(conversation) {
  return [...conversation.messages.keys()].sort((a, b) => a - b);
}

// The first seq missing between the lowest and the highest stored message, or null.
export function firstMissingSeq(conversation) {
  const seqs = sortedSeqs(conversation);
  for (let i = 1; i < seqs.length; i += 1) {
    if (seqs[i] !== seqs[i - 1] + 1) return seqs[i - 1] + 1;
  }
  return null;
}

// The seq to mark read when the conversation is shown: its newest message, but only once the
// others wrote something not yet marked (our own messages need no receipt). Null: nothing to do.
export function seqToMarkRead(conversation, userId) {
  const seqs = sortedSeqs(conversation);
  const fromOthers = seqs.filter((seq) => conversation.messages.get(seq).sender !== userId);
  if (!fromOthers.length || fromOthers[fromOthers.length - 1] <= conversation.readSent) return null;
  return seqs[seqs.length - 1];
}

export function displayName(conversation, userId) {
  if (conversation.title) return conversation.title;
  const others = conversation.members.filter((member) => member !== userId);
  return others.join(", ") || conversation.id;
}
