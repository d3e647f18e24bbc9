// bland-notifier console: refreshes the page in place and sends changes to the JSON API.
// Values are only ever set with textContent (or arrive as HTML the server escaped), and
// the token travels in the authorization header, never a cookie, so a change cannot be
// forged by another site.
(() => {
  "use strict";
  const KEY = "bland-notifier-token";
  const EVERY = 5000;
  const readOnly = document.body.dataset.readOnly || "";
  const $ = (selector) => document.querySelector(selector);
  const token = () => sessionStorage.getItem(KEY) || "";

  function flash(text) {
    $("#flash").textContent = text;
  }

  // Every change button says why it cannot act: the daemon takes no changes, or no token yet.
  function explain() {
    const why = readOnly || (token() ? "" : "enter the API token above to act");
    for (const button of document.querySelectorAll("button[data-act]")) {
      button.disabled = Boolean(why);
      button.title = why;
    }
    for (const note of document.querySelectorAll(".why")) {
      note.textContent = why;
      note.hidden = !why;
    }
  }

  async function api(method, path, body) {
    const headers = { authorization: `Bearer ${token()}` };
    if (body !== undefined) headers["content-type"] = "application/json";
    const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    let answer = null;
    try {
      answer = await response.json();
    } catch {
      answer = null;
    }
    if (!response.ok) {
      const detail = answer && answer.detail ? answer.detail : response.statusText;
      const extra = answer && Array.isArray(answer.extra) && answer.extra.length ? `: ${answer.extra[0].message}` : "";
      throw new Error(`${response.status} ${detail}${extra}`);
    }
    return answer;
  }

  // Swap each live section for its fresh copy. On the timer, one that holds the focus is
  // left alone (a keyboard user keeps their place); after an action, every one is swapped.
  let updated = new Date();
  function stale(why) {
    const note = $("#stale");
    note.textContent = why ? `not updated since ${updated.toLocaleTimeString()}: ${why}` : "";
    note.hidden = !why;
  }

  async function refresh(all = false) {
    let response;
    try {
      response = await fetch(location.href, { headers: { accept: "text/html" } });
    } catch {
      stale("the daemon does not answer");
      return;
    }
    if (!response.ok) {
      let detail = response.statusText;
      try {
        detail = (await response.json()).detail || detail;
      } catch {}
      stale(`${response.status} ${detail}`);
      return;
    }
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
    if ((fresh.body.dataset.readOnly || "") !== readOnly) {
      location.reload(); // leader <-> standby, or the token setting changed: the page is another one
      return;
    }
    updated = new Date();
    stale("");
    for (const section of document.querySelectorAll("[data-live]")) {
      const next = fresh.getElementById(section.id);
      if (next && (all || !section.contains(document.activeElement))) {
        section.replaceWith(document.importNode(next, true));
      }
    }
    const role = fresh.getElementById("role");
    if (role) $("#role").replaceWith(document.importNode(role, true));
    explain();
  }

  setInterval(() => {
    if (!document.hidden) refresh().catch((error) => stale(error.message));
  }, EVERY);

  const tokenForm = $("#token-form");
  if (tokenForm) {
    tokenForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("#token").value.trim();
      if (value) sessionStorage.setItem(KEY, value);
      $("#token").value = "";
      flash(value ? "token set for this tab" : "the token is empty");
      explain();
    });
    $("#token-forget").addEventListener("click", () => {
      sessionStorage.removeItem(KEY);
      flash("token forgotten");
      explain();
    });
  }

  // Matchers are checked as they are typed, by the parser `silence add` uses.
  const matchers = $("#s-matchers");
  const check = $("#s-check");
  const lines = () => matchers.value.split("\n").map((line) => line.trim()).filter(Boolean);
  let pending = null;
  async function validate() {
    if (!lines().length) {
      check.textContent = "the matchers of rules, over event fields plus rule and target";
      check.className = "muted";
      matchers.removeAttribute("aria-invalid");
      return;
    }
    const query = new URLSearchParams(lines().map((line) => ["matcher", line]));
    const result = await api("GET", `/api/v1/matchers?${query}`);
    check.textContent = result.ok ? `silences ${result.matchers.join(" and ")}` : result.error;
    check.className = result.ok ? "ok" : "bad";
    matchers.setAttribute("aria-invalid", result.ok ? "false" : "true");
  }
  matchers.addEventListener("input", () => {
    clearTimeout(pending);
    pending = setTimeout(() => validate().catch((error) => (check.textContent = error.message)), 250);
  });

  $("#silence-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    try {
      const made = await api("POST", "/api/v1/silences", {
        matchers: lines(),
        duration: form.duration.value.trim(),
        comment: form.comment.value,
        author: form.author.value.trim(),
      });
      flash(`silence ${made.id} made: ${made.matchers.join(" and ")} until ${made.ends_at}`);
      form.reset();
      await refresh(true);
    } catch (error) {
      flash(`no silence made: ${error.message}`);
    }
  });

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-act], button[data-like]");
    if (!button) return;
    if (button.dataset.like) {
      matchers.value = JSON.parse(button.dataset.like).join("\n");
      matchers.focus();
      validate().catch(() => {});
      return;
    }
    const id = button.dataset.id;
    try {
      if (button.dataset.act === "redeliver") {
        await api("POST", `/api/v1/deliveries/${encodeURIComponent(id)}/redeliver`);
        flash(`delivery ${id} queued again`);
      } else if (button.dataset.act === "expire") {
        await api("DELETE", `/api/v1/silences/${encodeURIComponent(id)}`);
        flash(`silence ${id} expired`);
      } else {
        return;
      }
      await refresh(true);
    } catch (error) {
      flash(`${button.dataset.act} ${id}: ${error.message}`);
    }
  });

  explain();
})();
