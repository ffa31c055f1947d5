// The socket.io peer for scripts/bench.sh: a plain socket.io 4.8 server doing ordertrack's
// live-tracking job the way a Node user would write it, so the load tool can run the same
// fanout/hold scenario against both and the numbers can sit side by side.
//
//   node socketio-peer.mjs --port 9000 --secret S      (or PEER_PORT / ORDERTRACK_JWT_SECRET)
//
// What it does, and nothing more:
//   * WebSocket transport only; the HS256 token in the CONNECT auth payload ({ token }) is
//     checked in an `io.use` middleware (signature, exp/nbf with 30 s leeway, `sub` a UUID).
//   * `subscribe(orderId, ack)` joins the room `order:<id>` when the order is the caller's own;
//     the ack carries the order's current snapshot (what ordertrack's SubscribeToOrder returns).
//   * `POST /orders` (role OrderService or Administrator) records an order in memory: 201.
//   * `POST /orders/{id}/{action}` (staff or owner of the order's restaurant; `cancel` also
//     Administrator) moves the order, emits `OrderStatusChanged` with the same DTO fields as
//     ordertrack's OrderStatusBroadcast to the room, then answers 200.
//   The REST paths are also served under `/api/v1`, so the load tool drives both servers alike.
// Nothing is persisted: orders live in a Map for the life of the process.
import { createHmac, randomUUID, timingSafeEqual } from "node:crypto";
import { createServer } from "node:http";
import { parseArgs } from "node:util";
import { Server } from "socket.io";

const { values: args } = parseArgs({
  options: {
    port: { type: "string", default: process.env.PEER_PORT ?? "9000" },
    host: { type: "string", default: process.env.PEER_HOST ?? "127.0.0.1" },
    secret: { type: "string", default: process.env.ORDERTRACK_JWT_SECRET ?? "" },
  },
});
if (!args.secret) {
  console.error("socketio-peer: --secret (or ORDERTRACK_JWT_SECRET) is required");
  process.exit(2);
}
const SECRET = Buffer.from(args.secret, "utf8");
const LEEWAY_S = 30;
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

// ------------------------------------------------------------------------------- tokens

function b64urlJson(part) {
  return JSON.parse(Buffer.from(part, "base64url").toString("utf8"));
}

function asList(v) {
  if (v === undefined || v === null) return [];
  return Array.isArray(v) ? v.filter((x) => typeof x === "string") : typeof v === "string" ? [v] : [];
}

/** The principal of a valid HS256 token, or null. */
function verifyToken(token) {
  if (typeof token !== "string" || token.length === 0 || token.length > 8192) return null;
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  let header, claims;
  try {
    header = b64urlJson(parts[0]);
    claims = b64urlJson(parts[1]);
  } catch {
    return null;
  }
  if (header?.alg !== "HS256") return null;
  const want = createHmac("sha256", SECRET).update(`${parts[0]}.${parts[1]}`).digest();
  const got = Buffer.from(parts[2], "base64url");
  if (got.length !== want.length || !timingSafeEqual(got, want)) return null;
  const now = Math.floor(Date.now() / 1000);
  if (typeof claims.exp !== "number" || claims.exp + LEEWAY_S <= now) return null;
  if (typeof claims.nbf === "number" && claims.nbf - LEEWAY_S > now) return null;
  if (typeof claims.sub !== "string" || !UUID_RE.test(claims.sub)) return null;
  const roles = asList(claims.role ?? claims.roles);
  const perms = asList(claims.permission ?? claims.permissions);
  const staffOf = new Set();
  for (const p of perms) {
    const [kind, id] = p.split(":", 2);
    if ((kind === "RestaurantStaff" || kind === "RestaurantOwner") && UUID_RE.test(id ?? "")) {
      staffOf.add(id.toLowerCase());
    }
  }
  return {
    sub: claims.sub.toLowerCase(),
    admin: roles.includes("Administrator"),
    orderService: roles.includes("OrderService"),
    staffOf,
  };
}

function bearer(req) {
  const h = req.headers.authorization ?? "";
  const m = /^bearer\s+(.+)$/i.exec(h.trim());
  return m ? verifyToken(m[1].trim()) : null;
}

// ------------------------------------------------------------------------------- orders

/** orderId -> order. */
const orders = new Map();
let orderSeq = 0;

// action -> [allowed current statuses, target status]
const MOVES = {
  accept: [["Placed"], "Accepted"],
  reject: [["Placed"], "Rejected"],
  preparing: [["Accepted"], "Preparing"],
  ready: [["Preparing"], "ReadyForDelivery"],
  delivered: [["ReadyForDelivery"], "Delivered"],
  cancel: [["Placed", "Accepted", "Preparing", "ReadyForDelivery"], "Cancelled"],
};

/** The OrderStatusBroadcast DTO, field for field as ordertrack's hub sends it. */
function broadcast(o, occurredOn, eventId) {
  return {
    orderId: o.orderId,
    orderNumber: o.orderNumber,
    status: o.status,
    restaurantId: o.restaurantId,
    lastUpdateTimestamp: o.lastUpdateTimestamp,
    estimatedDeliveryTime: o.estimatedDeliveryTime,
    actualDeliveryTime: o.actualDeliveryTime,
    deliveredAt: o.status === "Delivered" ? o.actualDeliveryTime : null,
    occurredOnUtc: occurredOn,
    eventId,
    version: o.version,
  };
}

function orderView(o) {
  return {
    orderId: o.orderId,
    orderNumber: o.orderNumber,
    customerId: o.customerId,
    restaurantId: o.restaurantId,
    restaurantName: o.restaurantName,
    status: o.status,
    version: o.version,
    placedAt: o.placedAt,
    lastUpdateTimestamp: o.lastUpdateTimestamp,
    estimatedDeliveryTime: o.estimatedDeliveryTime,
    actualDeliveryTime: o.actualDeliveryTime,
    currency: o.currency,
    items: o.items,
    total: o.total,
    paymentMethod: o.paymentMethod,
  };
}

function placeOrder(body) {
  const b = body ?? {};
  if (!UUID_RE.test(b.customerId ?? "") || !UUID_RE.test(b.restaurantId ?? "")) return null;
  if (!Array.isArray(b.items) || b.items.length === 0) return null;
  let total = 0;
  for (const it of b.items) {
    const q = Number(it?.quantity);
    const p = Number(it?.unitPrice);
    if (!Number.isInteger(q) || q < 1 || !Number.isFinite(p) || p < 0) return null;
    total += q * p;
  }
  for (const k of ["deliveryFee", "tip", "tax"]) total += Number(b[k] ?? 0) || 0;
  total -= Number(b.discount ?? 0) || 0;
  const now = new Date();
  const ts = now.toISOString();
  orderSeq += 1;
  const o = {
    orderId: randomUUID(),
    orderNumber: `ORD-${now.getUTCFullYear()}-${String(orderSeq).padStart(6, "0")}`,
    customerId: b.customerId.toLowerCase(),
    restaurantId: b.restaurantId.toLowerCase(),
    restaurantName: String(b.restaurantName ?? ""),
    status: b.paymentMethod === "CashOnDelivery" ? "Placed" : "AwaitingPayment",
    version: 1,
    placedAt: ts,
    lastUpdateTimestamp: ts,
    estimatedDeliveryTime: null,
    actualDeliveryTime: null,
    currency: String(b.currency ?? "USD"),
    items: b.items,
    total: total.toFixed(2),
    paymentMethod: String(b.paymentMethod ?? ""),
  };
  orders.set(o.orderId, o);
  return o;
}

// --------------------------------------------------------------------------------- REST

function send(res, status, value) {
  const body = value === undefined ? "" : JSON.stringify(value);
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(body),
  });
  res.end(body);
}

function problem(res, status, title) {
  send(res, status, { status, title });
}

function readJson(req) {
  return new Promise((resolve) => {
    const chunks = [];
    let size = 0;
    req.on("data", (c) => {
      size += c.length;
      if (size <= 65536) chunks.push(c);
    });
    req.on("end", () => {
      if (size > 65536) return resolve(undefined);
      if (size === 0) return resolve({});
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString("utf8")));
      } catch {
        resolve(undefined);
      }
    });
    req.on("error", () => resolve(undefined));
  });
}

async function handle(req, res) {
  const path = (req.url ?? "/").split("?", 1)[0].replace(/^\/api\/v1(?=\/)/, "");
  if (req.method === "GET" && path === "/readyz") return send(res, 200, { status: "ready" });
  const parts = path.split("/").filter(Boolean);
  if (parts[0] !== "orders" || parts.length > 3) return problem(res, 404, "Not Found");
  if (req.method !== "POST") return problem(res, 405, "Method Not Allowed");
  const who = bearer(req);
  if (!who) return problem(res, 401, "Unauthorized");
  const body = await readJson(req);
  if (body === undefined) return problem(res, 400, "Bad Request");

  if (parts.length === 1) {
    if (!who.orderService && !who.admin) return problem(res, 403, "Forbidden");
    const o = placeOrder(body);
    if (!o) return problem(res, 400, "Bad Request");
    return send(res, 201, { order: orderView(o) });
  }
  if (parts.length !== 3) return problem(res, 404, "Not Found");
  const [, id, action] = parts;
  const o = orders.get(id.toLowerCase());
  const move = MOVES[action];
  if (!move) return problem(res, 404, "Not Found");
  const staff = o && who.staffOf.has(o.restaurantId);
  if (!o || !(staff || (action === "cancel" && who.admin))) {
    return problem(res, 404, "Not Found");
  }
  const [from, to] = move;
  if (o.status === to) return send(res, 200, { order: orderView(o) });
  if (!from.includes(o.status)) return problem(res, 409, "Conflict");
  let eta = null;
  if (action === "accept") {
    const t = Date.parse(body.estimatedDeliveryTime ?? "");
    if (!Number.isFinite(t)) return problem(res, 400, "Bad Request");
    eta = new Date(t).toISOString();
  }
  const now = new Date().toISOString();
  o.status = to;
  o.version += 1;
  o.lastUpdateTimestamp = now > o.lastUpdateTimestamp ? now : o.lastUpdateTimestamp;
  if (action === "accept") o.estimatedDeliveryTime = eta;
  if (action === "delivered") o.actualDeliveryTime = o.lastUpdateTimestamp;
  io.to(`order:${o.orderId}`).emit("OrderStatusChanged", broadcast(o, now, randomUUID()));
  return send(res, 200, { order: orderView(o) });
}

// ---------------------------------------------------------------------------- socket.io

const http = createServer((req, res) => {
  handle(req, res).catch((e) => {
    console.error("socketio-peer:", e);
    if (!res.headersSent) problem(res, 500, "Internal Server Error");
  });
});
// The load tool's 32 writers stay connected between bursts; don't drop them after 5 s.
http.keepAliveTimeout = 65_000;

const io = new Server(http, { transports: ["websocket"], serveClient: false });

io.use((socket, next) => {
  const who = verifyToken(socket.handshake.auth?.token);
  if (!who) return next(new Error("unauthorized"));
  socket.data.sub = who.sub;
  next();
});

io.on("connection", (socket) => {
  socket.on("subscribe", (orderId, ack) => {
    if (typeof ack !== "function") return;
    const o = typeof orderId === "string" ? orders.get(orderId.toLowerCase()) : undefined;
    // Someone else's order and a missing one get the same answer.
    if (!o || o.customerId !== socket.data.sub) return ack({ error: "Order not found." });
    socket.join(`order:${o.orderId}`);
    ack({ order: broadcast(o, o.lastUpdateTimestamp, null) });
  });
});

http.listen({ port: Number(args.port), host: args.host, backlog: 4096 }, () => {
  console.log(`listening on ${args.host}:${http.address().port} pid ${process.pid}`);
});

for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => {
    io.close();
    process.exit(0);
  });
}
