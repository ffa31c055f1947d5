// The kitchen board's logic (/board/board.js): loads the restaurant's live orders from
// GET /api/v1/restaurants/{id}/orders and keeps them current through ResumeRestaurant on
// /hubs/restaurant-orders, resuming from the last sequence it applied after every reconnect (a
// server restart included); a CursorExpired answer reloads the board. The token comes from the
// address's #fragment or the form and is sent only as a bearer token (the SignalR client puts
// it in the WebSocket upgrade's access_token parameter, which the server never logs).
"use strict";
(() => {
  const SHOWN = ["Placed", "Accepted", "Preparing", "ReadyForDelivery"];
  const EVENTS = ["ReceiveOrderPlaced", "ReceiveOrderPaymentSucceeded",
    "ReceiveOrderPaymentFailed", "ReceiveOrderStatusChanged"];
  const $ = (id) => document.getElementById(id);
  const orders = new Map(); // orderId -> { orderId, orderNumber, status, placed }
  let token = "";
  let restaurant = "";
  let cursor = 0;
  let conn = null;

  function setState(state, text) {
    $("state").dataset.state = state;
    $("state").textContent = text;
  }

  function showError(text) {
    $("error").textContent = text;
    $("error").hidden = !text;
  }

  function byPlacement(a, b) {
    if (a.placed !== b.placed) return a.placed < b.placed ? -1 : 1;
    return a.orderId < b.orderId ? -1 : 1;
  }

  function render() {
    for (const section of document.querySelectorAll("main section")) {
      const list = [...orders.values()].filter((o) => o.status === section.dataset.status);
      list.sort(byPlacement);
      section.querySelector("ol").replaceChildren(...list.map((o) => {
        const li = document.createElement("li");
        li.dataset.orderId = o.orderId;
        const num = document.createElement("span");
        num.className = "num";
        num.textContent = o.orderNumber;
        const time = document.createElement("span");
        time.className = "time";
        time.textContent = new Date(o.placed).toLocaleTimeString();
        li.append(num, time);
        return li;
      }));
      section.querySelector(".n").textContent = `(${list.length})`;
    }
    document.body.dataset.cursor = String(cursor);
    $("meta").textContent = `restaurant ${restaurant} · cursor ${cursor} · ${orders.size} orders`;
  }

  async function getJson(path) {
    const r = await fetch(path, { headers: { Authorization: `Bearer ${token}` } });
    if (!r.ok) throw new Error(`${path.split("?")[0]} answered ${r.status}`);
    return r.json();
  }

  // The board as the endpoint gives it. Pages are read one by one: the first page's cursor is
  // the oldest, and replaying from it brings every later change over whatever a later page saw.
  async function loadBoard() {
    const base = `/api/v1/restaurants/${encodeURIComponent(restaurant)}/orders?pageSize=100`;
    const first = await getJson(`${base}&pageNumber=1`);
    const items = [...first.items];
    for (let p = 2; p <= Math.min(first.totalPages, 20); p++) {
      items.push(...(await getJson(`${base}&pageNumber=${p}`)).items);
    }
    orders.clear();
    for (const o of items) {
      orders.set(o.orderId, { orderId: o.orderId, orderNumber: o.orderNumber, status: o.status,
        placed: o.placementTimestamp });
    }
    cursor = first.cursor;
    render();
  }

  function apply(dto) {
    if (typeof dto.sequence === "number") {
      if (dto.sequence <= cursor) return; // already reflected
      cursor = dto.sequence;
    }
    if (SHOWN.includes(dto.status)) {
      const known = orders.get(dto.orderId);
      orders.set(dto.orderId, { orderId: dto.orderId, orderNumber: dto.orderNumber,
        status: dto.status, placed: known ? known.placed : dto.occurredOnUtc });
    } else {
      orders.delete(dto.orderId);
    }
    render();
  }

  async function resume() {
    try {
      await conn.invoke("ResumeRestaurant", restaurant, cursor);
      setState("live", "live");
      showError("");
    } catch (e) {
      const message = String((e && e.message) || e);
      if (message.includes("CursorExpired:")) {
        setState("reloading", "reloading the board…");
        await loadBoard();
        return resume();
      }
      setState("error", "not following");
      showError(message);
    }
  }

  async function connect() {
    try {
      await conn.start();
      await resume();
    } catch (e) {
      setState("reconnecting", "server unreachable, retrying…");
      setTimeout(connect, 1000);
    }
  }

  async function open() {
    $("login").hidden = true;
    setState("loading", "loading…");
    try {
      await loadBoard();
    } catch (e) {
      setState("error", "could not load the board");
      showError(String((e && e.message) || e));
      $("login").hidden = false;
      return;
    }
    conn = new signalR.HubConnectionBuilder()
      .withUrl("/hubs/restaurant-orders", { accessTokenFactory: () => token })
      .withAutomaticReconnect({
        nextRetryDelayInMilliseconds: (ctx) => Math.min(5000, 500 * (ctx.previousRetryCount + 1)),
      })
      .configureLogging(signalR.LogLevel.Warning)
      .build();
    for (const m of EVENTS) conn.on(m, apply);
    conn.onreconnecting(() => setState("reconnecting", "reconnecting…"));
    conn.onreconnected(() => resume());
    conn.onclose(() => {
      setState("reconnecting", "reconnecting…");
      setTimeout(connect, 1000);
    });
    await connect();
  }

  const fragment = new URLSearchParams(location.hash.slice(1));
  token = fragment.get("token") || "";
  restaurant = fragment.get("restaurant") || "";
  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("token").value.trim();
    restaurant = $("restaurant").value.trim();
    if (token && restaurant) open();
  });
  if (token && restaurant) {
    open();
  } else {
    $("restaurant").value = restaurant;
    $("login").hidden = false;
  }
})();
