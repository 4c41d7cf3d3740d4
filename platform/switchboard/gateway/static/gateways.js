// The gateways this page may use (issue #10): the one that served it first, then the others in
// the order GET v1/gateways gives (its region's mirror, then the rest). The page talks to one at a
// time; when a socket cannot be opened on it, the next one is tried, resuming with `since` there
// (a mailbox cursor is the user's, not a gateway's). Each is a base URL: /v1 and /v1/ws are under it.

// The URL the page was loaded from, without its trailing slash: its own gateway's base.
export const PAGE_BASE = new URL(".", location.href).href.replace(/\/$/, "");

export class Gateways {
  constructor(bases) {
    this.bases = bases.length ? bases : [PAGE_BASE];
    this.index = 0;
  }

  // Ask the page's own gateway for the list; if it cannot answer, the page's own base alone.
  static async load() {
    try {
      const response = await fetch(PAGE_BASE + "/v1/gateways");
      const data = await response.json();
      const bases = data.gateways.map((gateway) => new URL(gateway.url, location.origin).href.replace(/\/$/, ""));
      // The page's own base first, whatever path it was reached by (`/` is the default region's).
      return new Gateways([PAGE_BASE, ...bases.filter((base) => base !== PAGE_BASE && base !== bases[0])]);
    } catch (_) {
      return new Gateways([PAGE_BASE]);
    }
  }

  get base() {
    return this.bases[this.index];
  }

  httpUrl(path) {
    return this.base + "/v1" + path;
  }

  wsUrl() {
    return this.base.replace(/^http/, "ws") + "/v1/ws";
  }

  // A socket could not be opened on the current gateway: the next attempt goes to the next one.
  failed() {
    if (this.bases.length > 1) this.index = (this.index + 1) % this.bases.length;
  }
}
