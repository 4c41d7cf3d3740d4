// One WebSocket to /v1/ws that keeps itself connected. Each new socket first sends the auth
// frame the page gives it (the token goes in that frame, never in the URL); a dropped socket is
// replaced after a backoff with jitter; pings notice a connection that died silently; and the
// browser's own online/offline events cut the wait short. It knows nothing of chat: every
// server frame goes to onFrame.

const RECONNECT_BASE_MS = 500;   // first retry after 250-500 ms...
const RECONNECT_MAX_MS = 15000;  // ...doubling up to 7.5-15 s
const HEARTBEAT_MS = 20000;      // ping this often, so a dead connection is noticed...
const DEAD_AFTER_MS = 45000;     // ...when nothing at all came back for this long
const CLOSE_UNAUTHORIZED = 4001; // PROTOCOL.md: bad token, or no auth frame in time
const CLOSE_CLIENT_GAVE_UP = 4000;

export class Connection {
  // authFrame(): the first frame for each new socket (it carries the current `since`).
  // onFrame(frame): every server frame, `ready` included.
  // onStatus(status): "connecting" (before the first `ready`), "connected", "disconnected".
  // onRefused(reason): the server closed with 4001; the connection stops (retrying the same
  // token would be refused again).
  // url(): where each new socket goes (the current gateway's); onOpenFailed(): a socket closed
  // before its `ready` (its gateway is down or refusing): the page moves to the next gateway.
  constructor({ url, authFrame, onFrame, onStatus, onRefused, onOpenFailed = () => {} }) {
    Object.assign(this, { url, authFrame, onFrame, onStatus, onRefused, onOpenFailed });
    this.socket = null;
    this.ready = false;      // `ready` came on the current socket
    this.everReady = false;  // one did, on some socket: from then on a drop is "disconnected"
    this.stopped = true;
    this.attempt = 0;        // reconnect attempts since the last `ready`
    this.reconnectTimer = null;
    this.heartbeatTimer = null;
    this.lastFrameAt = 0;
    // The browser knows when the network comes back: try at once instead of waiting out the
    // backoff (an attempt begun while offline is doomed: replace it). And when it says the
    // network is gone, an open socket may not notice for minutes.
    this.onOnline = () => {
      if (this.stopped || this.ready) return;
      this.discard("the network is back; starting over");
      this.open();
    };
    this.onOffline = () => this.drop("the browser went offline");
  }

  start() {
    this.stopped = false;
    window.addEventListener("online", this.onOnline);
    window.addEventListener("offline", this.onOffline);
    this.open();
  }

  stop() {
    this.stopped = true;
    window.removeEventListener("online", this.onOnline);
    window.removeEventListener("offline", this.onOffline);
    clearTimeout(this.reconnectTimer);
    this.drop("signed out");
  }

  // True when the frame went out: only on a socket that said `ready` and is still open. Callers
  // keep what did not go out and try again after the next `ready`.
  send(frame) {
    if (!this.ready || this.socket.readyState !== WebSocket.OPEN) return false;
    this.socket.send(JSON.stringify(frame));
    return true;
  }

  open() {
    clearTimeout(this.reconnectTimer);
    const socket = new WebSocket(this.url());
    this.socket = socket;
    this.ready = false;
    this.onStatus(this.everReady ? "disconnected" : "connecting");
    // Each handler checks that its socket is still the current one: an abandoned socket's late
    // frames or close must not touch its successor.
    socket.onopen = () => socket === this.socket && this.authenticate(socket);
    socket.onmessage = (event) => socket === this.socket && this.receive(JSON.parse(event.data));
    socket.onclose = (event) => socket === this.socket && this.closed(event.code, event.reason);
  }

  authenticate(socket) {
    this.lastFrameAt = Date.now();
    socket.send(JSON.stringify(this.authFrame()));
  }

  receive(frame) {
    this.lastFrameAt = Date.now();
    if (frame.type === "ready") {
      this.ready = true;
      this.everReady = true;
      this.attempt = 0;
      this.startHeartbeat();
    }
    this.onFrame(frame);
    if (frame.type === "ready") this.onStatus("connected");
  }

  closed(code, reason) {
    const wasReady = this.ready;
    this.socket = null;
    this.ready = false;
    this.stopHeartbeat();
    if (code === CLOSE_UNAUTHORIZED) {
      this.stop();
      this.onRefused(reason);
    } else {
      if (!wasReady) this.onOpenFailed();
      this.disconnected();
    }
  }

  // Abandon the current socket at once: waiting for a close handshake is pointless when the
  // network is gone, so the page shows "disconnected" now and ignores that socket from here on.
  drop(reason) {
    if (!this.discard(reason)) return;
    if (!this.stopped) this.disconnected();
  }

  // Forget the current socket (its handlers see it is no longer current); false if there was none.
  discard(reason) {
    const socket = this.socket;
    if (!socket) return false;
    this.socket = null;
    this.ready = false;
    this.stopHeartbeat();
    try {
      socket.close(CLOSE_CLIENT_GAVE_UP, reason);
    } catch (_) {
      // already closing
    }
    return true;
  }

  disconnected() {
    this.onStatus("disconnected");
    this.scheduleReconnect();
  }

  // Exponential backoff with jitter: thousands of pages dropped by one server restart must not
  // all come back in the same instant. The delay is drawn from [half, all] of the doubled step.
  scheduleReconnect() {
    clearTimeout(this.reconnectTimer);
    this.attempt += 1;
    const step = Math.min(RECONNECT_MAX_MS, RECONNECT_BASE_MS * 2 ** (this.attempt - 1));
    this.reconnectTimer = setTimeout(() => this.open(), step / 2 + Math.random() * (step / 2));
  }

  startHeartbeat() {
    this.stopHeartbeat();
    this.heartbeatTimer = setInterval(() => {
      if (Date.now() - this.lastFrameAt > DEAD_AFTER_MS) this.drop("no answer from the server");
      else this.send({ type: "ping", nonce: String(Date.now()) });
    }, HEARTBEAT_MS);
  }

  stopHeartbeat() {
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = null;
  }
}
