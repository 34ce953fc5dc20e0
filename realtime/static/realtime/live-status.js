// Live login status for every page: one WebSocket to /ws/status/ (docs/protocol.md).
//
// Renders #live-status (data-state: connecting | authenticated | anonymous | offline | limited).
// After an unexpected close it reconnects with capped exponential backoff and full jitter, and
// takes the first status message of the new connection as the truth.

const CLOSE_LOGGED_OUT = 4001;
const CLOSE_TOO_MANY_SOCKETS = 4029;
// Past the socket limit a place frees only when another tab closes: retry no sooner than this
// attempt's window (up to 4 s), then back off as usual.
const LIMITED_MIN_ATTEMPT = 3;
const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 30000;

const NOTICES = {
  logout: "You signed out in another tab.",
  logout_everywhere: "Signed out on all devices.",
  revoked: "This device was signed out from another one.",
  password_changed: "Your password was changed.",
  expired: "Your session expired.",
  session_ended: "Your session has ended.",
  deactivated: "Your account was deactivated.",
};
const DEFAULT_NOTICE = "Your session has ended.";

const TEXT = {
  connecting: () => "Connecting…",
  authenticated: (username) => `Logged in as ${username}`,
  anonymous: () => "Not logged in",
  offline: () => "Offline, retrying…",
  limited: () => "Too many open tabs: waiting for one to close…",
};

/** Full jitter: a uniformly random wait up to the capped exponential bound. */
export function backoffDelay(attempt, random = Math.random) {
  const bound = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt);
  return Math.floor(random() * bound);
}

function statusUrl() {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${window.location.host}/ws/status/`;
}

class LiveStatus {
  constructor(element, notice) {
    this.element = element;
    this.notice = notice;
    this.attempt = 0;
    this.socket = null;
    this.leaving = false;
    this.sessionsUrl = document.body.dataset.watchSessions || null;
    // Navigating away closes the socket too; that is not "offline".
    window.addEventListener("pagehide", () => {
      this.leaving = true;
    });
  }

  render(state, username = null) {
    this.element.dataset.state = state;
    this.element.textContent = TEXT[state](username);
    if (state === "authenticated" || state === "anonymous") {
      document.body.dataset.authenticated = String(state === "authenticated");
    }
  }

  connect() {
    const socket = new WebSocket(statusUrl());
    this.socket = socket;
    socket.addEventListener("message", (event) => this.onMessage(event));
    socket.addEventListener("close", (event) => this.onClose(event));
  }

  onMessage(event) {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (message.type === "status") {
      this.attempt = 0;
      if (message.authenticated) this.notice.hidden = true;
      this.render(message.authenticated ? "authenticated" : "anonymous", message.username);
      if (this.sessionsUrl && message.authenticated) this.send({ type: "watch_sessions" });
    } else if (message.type === "logout") {
      this.onLogout(message.reason);
    } else if (message.type === "sessions_changed") {
      this.refreshSessions();
    }
  }

  send(message) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(message));
    }
  }

  // The sessions page: re-fetch the list whenever the server says it changed (debounced).
  refreshSessions() {
    window.clearTimeout(this.refreshTimer);
    this.refreshTimer = window.setTimeout(async () => {
      const response = await fetch(this.sessionsUrl, { credentials: "same-origin" });
      const target = document.getElementById("sessions");
      if (response.ok && target && !response.redirected) target.innerHTML = await response.text();
    }, 100);
  }

  onLogout(reason) {
    this.render("anonymous");
    this.notice.textContent = NOTICES[reason] || DEFAULT_NOTICE;
    this.notice.hidden = false;
    if ("loginRequired" in document.body.dataset) {
      const next = encodeURIComponent(window.location.pathname + window.location.search);
      window.location.assign(`${document.body.dataset.loginUrl}?next=${next}`);
    }
  }

  onClose(event) {
    if (this.leaving) return;
    if (event.code === CLOSE_LOGGED_OUT) {
      // The login ended; stay connected as the anonymous session this browser now has.
      this.attempt = 0;
      this.connect();
      return;
    }
    if (event.code === CLOSE_TOO_MANY_SOCKETS) {
      this.render("limited");
      this.attempt = Math.max(this.attempt, LIMITED_MIN_ATTEMPT);
    } else {
      this.render("offline");
    }
    const delay = backoffDelay(this.attempt);
    this.attempt += 1;
    window.setTimeout(() => this.connect(), delay);
  }
}

const element = document.getElementById("live-status");
const notice = document.getElementById("live-notice");
if (element && notice && "WebSocket" in window) {
  const live = new LiveStatus(element, notice);
  live.render("connecting");
  live.connect();
}
