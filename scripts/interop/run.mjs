#!/usr/bin/env node
// Interop suite for the ordertrack SignalR hubs, driven by the official
// @microsoft/signalr 10.x client (JSON and MessagePack), in Node and in Chromium.
//
// By default it starts the server itself:
//   $ORDERTRACK_BIN (default <repo>/target/debug/ordertrack)
//     serve --listen 127.0.0.1:<free port> --data-dir <temp dir> --jwt-secret <fixed secret>
// waits for GET /readyz == 200, runs every scenario, stops the server with SIGTERM
// and exits 1 if anything failed.  Tokens come from `ordertrack token ...`.
//
// Usage: node run.mjs [--only a,b,j] [--base http://127.0.0.1:8080] [--browser-selftest]
// Environment:
//   ORDERTRACK_BIN          server binary
//   INTEROP_SKIP_BROWSER=1  skip the Chromium scenarios (local debugging only)
//   INTEROP_ONLY=a,e        same as --only (scenario letters)
//   INTEROP_BASE_URL        same as --base: use a server that is already running
//                           (it must use INTEROP_JWT_SECRET; the restart scenario is skipped)
//   INTEROP_JWT_SECRET      HS256 secret (default: a fixed test secret)
//   INTEROP_WAIT_MS         per-wait timeout in ms (default 10000)
//   INTEROP_VERBOSE=1       print client logs and the server log as they happen
//   CHROMIUM_BIN            browser executable (default /usr/bin/chromium)

import { spawn, execFile } from "node:child_process";
import { createRequire } from "node:module";
import { randomUUID } from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";

const require = createRequire(import.meta.url);
const signalR = require("@microsoft/signalr");
const { MessagePackHubProtocol } = require("@microsoft/signalr-protocol-msgpack");

// ------------------------------------------------------------------ settings

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, "..", "..");
const BIN = process.env.ORDERTRACK_BIN || path.join(REPO, "target", "debug", "ordertrack");
const SECRET =
  process.env.INTEROP_JWT_SECRET || "ordertrack-interop-suite-hs256-secret-not-for-production-use";
const WAIT_MS = Number(process.env.INTEROP_WAIT_MS || 10_000);
const GRACE_MS = 300; // how long to keep listening after the expected events, to catch extras
const SCENARIO_MS = 40_000; // backstop per scenario; each wait inside has WAIT_MS
const READY_MS = 20_000;
const SILENT_TIMEOUT_MS = 20_000; // the server's bound for clients that never ping (scenario k)
const STOP_MS = 10_000;
const VERBOSE = process.env.INTEROP_VERBOSE === "1";
const SKIP_BROWSER = process.env.INTEROP_SKIP_BROWSER === "1";
const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

const CUSTOMER_HUB = "/hubs/customer-orders";
const RESTAURANT_HUB = "/hubs/restaurant-orders";
const EVENT_NAMES = [
  "ReceiveOrderPlaced",
  "ReceiveOrderPaymentSucceeded",
  "ReceiveOrderPaymentFailed",
  "ReceiveOrderStatusChanged",
];
const PROTOCOLS = ["json", "msgpack"];
const ISO_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$/;
const ORDER_NUMBER = /^ORD-\d{4}-\d{6}$/;

function parseArgs(argv) {
  const out = {
    only: process.env.INTEROP_ONLY || "",
    base: process.env.INTEROP_BASE_URL || "",
    browserSelftest: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--only") out.only = argv[++i] ?? "";
    else if (a.startsWith("--only=")) out.only = a.slice(7);
    else if (a === "--base") out.base = argv[++i] ?? "";
    else if (a.startsWith("--base=")) out.base = a.slice(7);
    else if (a === "--browser-selftest") out.browserSelftest = true;
    else if (a === "-h" || a === "--help") {
      console.log(fs.readFileSync(fileURLToPath(import.meta.url), "utf8").split("\n\n")[0]);
      process.exit(0);
    } else {
      console.error(`run.mjs: unknown argument ${a}`);
      process.exit(2);
    }
  }
  out.only = out.only
    .split(",")
    .map((s) => s.trim().toLowerCase())
    .filter(Boolean);
  out.base = out.base.replace(/\/+$/, "");
  return out;
}

// ------------------------------------------------------------------ small helpers

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function waitUntil(check, what, ms = WAIT_MS, every = 25) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(every);
  }
}

function assert(condition, message) {
  if (!condition) throw new Error(message);
}

function show(v) {
  if (v instanceof Date) return `Date(${isNaN(v.getTime()) ? "invalid" : v.toISOString()})`;
  if (v === undefined) return "undefined";
  try {
    const s = JSON.stringify(v);
    return s.length > 300 ? s.slice(0, 300) + "…" : s;
  } catch {
    return String(v);
  }
}

function assertEq(actual, expected, what) {
  if (actual !== expected) throw new Error(`${what}: expected ${show(expected)}, got ${show(actual)}`);
}

// Expects a hub invocation to be refused by the server (a Completion with an error),
// as opposed to timing out or failing because the connection went away.
async function expectRejection(promise, what, client) {
  let value;
  try {
    value = await promise;
  } catch (e) {
    if (e?.message?.startsWith("timed out")) throw new Error(`${what}: ${e.message}`);
    if (client && client.conn.state !== signalR.HubConnectionState.Connected)
      throw new Error(`${what}: the connection dropped instead of a refusal (${e?.message ?? e})`);
    return e;
  }
  throw new Error(`${what}: expected the invocation to fail, but it returned ${show(value)}`);
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function tail(file, lines = 40) {
  try {
    const all = fs.readFileSync(file, "utf8").split("\n");
    return all.slice(-lines).join("\n");
  } catch {
    return "(no log)";
  }
}

// The first lines of each distinct panic in a Rust log ("thread ... panicked at ...").
function panicLines(file, max = 5) {
  let lines;
  try {
    lines = fs.readFileSync(file, "utf8").split("\n");
  } catch {
    return "";
  }
  const seen = new Set();
  const out = [];
  lines.forEach((l, i) => {
    if (!/panicked at/.test(l) || out.length >= max * 2) return;
    const key = l.replace(/\(\d+\)/, "") + (lines[i + 1] ?? "");
    if (seen.has(key)) return;
    seen.add(key);
    out.push(l, lines[i + 1] ?? "");
  });
  return out.join("\n");
}

function indent(text, prefix = "      ") {
  return String(text)
    .split("\n")
    .map((l) => prefix + l)
    .join("\n");
}

function fmtEvents(events) {
  if (events.length === 0) return "(none)";
  return events.map((e) => `${e.name}(${e.dto?.status ?? "?"})`).join(", ");
}

// ------------------------------------------------------------------ the server process

class ServerProcess {
  constructor({ port, dataDir, logFile, tls = null, extra = [] }) {
    this.port = port;
    this.extra = extra; // more `serve` flags (scenarios m/*: cluster mode)
    this.dataDir = dataDir;
    this.logFile = logFile;
    this.tls = tls; // {cert, key, ca}: serve HTTPS (scenarios s/*)
    this.base = `${tls ? "https" : "http"}://127.0.0.1:${port}`;
    this.proc = null;
    this.exit = null; // {code, signal} once it exited
  }

  async start() {
    fs.appendFileSync(this.logFile, `\n===== run.mjs: starting server on ${this.base} =====\n`);
    const out = fs.openSync(this.logFile, "a");
    const args = [
      "serve",
      "--listen",
      `127.0.0.1:${this.port}`,
      "--data-dir",
      this.dataDir,
      "--jwt-secret",
      SECRET,
      // Scenario k: a client that has not pinged yet is closed after this much silence; the
      // official client's keep-alive ping (every 15 s) must keep it inside the bound.
      "--hub-silent-timeout-ms",
      String(SILENT_TIMEOUT_MS),
      ...(this.tls ? ["--tls-cert", this.tls.cert, "--tls-key", this.tls.key] : []),
      ...this.extra,
    ];
    this.exit = null;
    const proc = spawn(BIN, args, { stdio: ["ignore", out, out], env: { ...process.env } });
    fs.closeSync(out);
    this.proc = proc;
    let spawnError = null;
    this.exited = new Promise((resolve) => {
      proc.on("error", (e) => {
        spawnError = e;
        this.exit = { code: null, signal: null, error: e };
        resolve(this.exit);
      });
      proc.on("exit", (code, signal) => {
        this.exit = { code, signal };
        resolve(this.exit);
      });
    });
    const deadline = Date.now() + READY_MS;
    let last = "no answer yet";
    for (;;) {
      if (spawnError) throw new Error(`could not start ${BIN}: ${spawnError.message}`);
      if (this.exit)
        throw new Error(
          `server exited during startup (code ${this.exit.code}, signal ${this.exit.signal})\n` +
            indent(tail(this.logFile, 30)),
        );
      try {
        const res = this.tls
          ? await tlsRequest("GET", `${this.base}/readyz`, { ca: this.tls.ca })
          : await fetch(`${this.base}/readyz`, { signal: AbortSignal.timeout(1000) });
        await res.arrayBuffer?.().catch(() => {});
        if (res.status === 200) return;
        last = `HTTP ${res.status}`;
      } catch (e) {
        last = e.cause?.code || e.message;
      }
      if (Date.now() > deadline)
        throw new Error(
          `server not ready after ${READY_MS} ms (GET /readyz: ${last})\n` + indent(tail(this.logFile, 30)),
        );
      await sleep(100);
    }
  }

  running() {
    return this.proc !== null && this.exit === null;
  }

  // SIGTERM, then wait for the exit. Returns {code, signal, forced}.
  async stop(ms = STOP_MS) {
    if (!this.proc) return { code: null, signal: null, forced: false };
    if (this.exit) return { ...this.exit, forced: false };
    this.proc.kill("SIGTERM");
    try {
      const r = await withTimeout(this.exited, ms, "server exit after SIGTERM");
      return { ...r, forced: false };
    } catch {
      this.proc.kill("SIGKILL");
      const r = await this.exited;
      return { ...r, forced: true };
    }
  }

  killNow() {
    if (this.proc && this.exit === null) {
      try {
        this.proc.kill("SIGKILL");
      } catch {
        /* already gone */
      }
    }
  }
}

// ------------------------------------------------------------------ tokens and REST

const tokenCache = new Map();

function runBinary(args) {
  return new Promise((resolve, reject) => {
    execFile(BIN, args, { timeout: WAIT_MS, maxBuffer: 1 << 20 }, (err, stdout, stderr) => {
      if (err) {
        reject(
          new Error(
            `\`ordertrack ${args[0]}\` failed: ${err.message.split("\n")[0]}\n` +
              indent(String(stderr).trim().split("\n").slice(-10).join("\n")),
          ),
        );
      } else resolve(String(stdout));
    });
  });
}

async function mintToken({ sub, roles = [], permissions = [] }) {
  const args = ["token", "--jwt-secret", SECRET, "--sub", sub, "--ttl", "1h"];
  for (const r of roles) args.push("--role", r);
  for (const p of permissions) args.push("--permission", p);
  const key = args.join("\u0000");
  if (tokenCache.has(key)) return tokenCache.get(key);
  const stdout = await runBinary(args);
  const lines = stdout
    .split("\n")
    .map((l) => l.trim())
    .filter(Boolean);
  const token = lines[lines.length - 1] ?? "";
  assert(
    /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(token),
    `\`ordertrack token\` did not print a JWT on its last stdout line (got ${show(token.slice(0, 40))})`,
  );
  tokenCache.set(key, token);
  return token;
}

async function newCustomer() {
  const sub = randomUUID();
  return { sub, token: await mintToken({ sub }) };
}

async function newStaff(restaurantId) {
  const sub = randomUUID();
  return { sub, token: await mintToken({ sub, permissions: [`RestaurantStaff:${restaurantId}`] }) };
}

let orderServicePrincipal = null;
async function orderService() {
  if (!orderServicePrincipal) {
    const sub = randomUUID();
    orderServicePrincipal = { sub, token: await mintToken({ sub, roles: ["OrderService"] }) };
  }
  return orderServicePrincipal;
}

const state = { base: "" }; // API base URL, set by main()

async function api(method, urlPath, token, body) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  let payload;
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(state.base + urlPath, {
      method,
      headers,
      body: payload,
      signal: AbortSignal.timeout(WAIT_MS),
    });
  } catch (e) {
    throw new Error(`${method} ${urlPath}: request failed: ${e.cause?.code || e.message}`);
  }
  const text = await res.text();
  let json;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, text, json };
}

function expectStatus(res, expected, what) {
  if (res.status !== expected)
    throw new Error(`${what}: expected HTTP ${expected}, got ${res.status}: ${res.text.slice(0, 500)}`);
  return res.json;
}

function orderBody({ customerId, restaurantId, paymentMethod }) {
  return {
    customerId,
    restaurantId,
    restaurantName: "Interop Trattoria",
    currency: "USD",
    items: [
      {
        menuItemId: randomUUID(),
        name: "Margherita Pizza",
        quantity: 2,
        unitPrice: 12.5,
        customizations: [],
      },
      { menuItemId: randomUUID(), name: "Lemonade", quantity: 1, unitPrice: 3, customizations: [] },
    ],
    deliveryFee: 2.99,
    tip: 4,
    tax: 1.5,
    discount: 0,
    paymentMethod,
  };
}

async function placeOrder({ customerId, restaurantId, paymentMethod }) {
  const svc = await orderService();
  const res = await api(
    "POST",
    "/api/v1/orders",
    svc.token,
    orderBody({ customerId, restaurantId, paymentMethod }),
  );
  const body = expectStatus(res, 201, "POST /api/v1/orders");
  const order = body && typeof body.order === "object" && body.order !== null ? body.order : body;
  assert(
    order && typeof order.orderId === "string",
    `POST /api/v1/orders: no orderId in the 201 body: ${res.text.slice(0, 300)}`,
  );
  const expected = paymentMethod === "CashOnDelivery" ? "Placed" : "AwaitingPayment";
  assertEq(order.status, expected, `status of a new ${paymentMethod} order`);
  return order;
}

// POST /api/v1/orders/{id}/{action}; expects 200 and the given resulting status.
async function act(orderId, action, principal, body, expectedStatus) {
  const res = await api("POST", `/api/v1/orders/${orderId}/${action}`, principal.token, body ?? {});
  const answer = expectStatus(res, 200, `POST /api/v1/orders/{id}/${action}`);
  if (expectedStatus) assertEq(answer?.status, expectedStatus, `status after ${action}`);
  return answer;
}

function inMinutes(minutes) {
  return new Date(Date.now() + minutes * 60_000).toISOString();
}

// ------------------------------------------------------------------ hub clients

// Records every line the client logs, so a failing scenario can show them.
class CaptureLogger {
  constructor(label) {
    this.label = label;
    this.lines = [];
  }
  log(level, message) {
    if (level < signalR.LogLevel.Information) return;
    const line = `[${signalR.LogLevel[level]}] ${message}`;
    this.lines.push(line);
    if (VERBOSE) console.log(`    ${this.label} ${line}`);
  }
}

// Wraps a hub protocol so that the Close messages the server sends are recorded.
function recordCloses(protocol, sink) {
  const parse = protocol.parseMessages.bind(protocol);
  protocol.parseMessages = (input, logger) => {
    const messages = parse(input, logger);
    for (const m of messages) if (m.type === signalR.MessageType.Close) sink.push(m);
    return messages;
  };
  return protocol;
}

class Client {
  constructor({ hub, token, protocol = "json", reconnectDelays, skipNegotiation = false, label, transport, base, expectTransport }) {
    this.protocol = protocol;
    this.expectTransport = expectTransport ?? "WebSocketTransport";
    this.label = label ?? `${protocol}@${hub}`;
    this.logger = new CaptureLogger(this.label);
    this.events = [];
    this.closeMessages = [];
    this.reconnecting = [];
    this.reconnected = [];
    this.closed = [];
    const options = { accessTokenFactory: () => token };
    if (skipNegotiation) {
      options.skipNegotiation = true;
      options.transport = signalR.HttpTransportType.WebSockets;
    }
    if (transport !== undefined) options.transport = transport;
    const wire = protocol === "msgpack" ? new MessagePackHubProtocol() : new signalR.JsonHubProtocol();
    let builder = new signalR.HubConnectionBuilder()
      .withUrl((base ?? state.base) + hub, options)
      .withHubProtocol(recordCloses(wire, this.closeMessages))
      .configureLogging(this.logger);
    builder = reconnectDelays
      ? builder.withAutomaticReconnect(reconnectDelays)
      : builder.withAutomaticReconnect();
    this.conn = builder.build();
    for (const name of EVENT_NAMES) {
      // The handler must return undefined: a returned value would be taken as a client result.
      this.conn.on(name, (...args) => {
        this.events.push({ name, args, dto: args[0], at: Date.now() });
      });
    }
    this.conn.onreconnecting((e) => {
      this.reconnecting.push(e ?? null);
    });
    this.conn.onreconnected((id) => {
      this.reconnected.push(id ?? null);
    });
    this.conn.onclose((e) => {
      this.closed.push(e ?? null);
    });
  }

  async start() {
    await withTimeout(this.conn.start(), WAIT_MS, `${this.label}: start()`);
    const transport = this.conn.connection?.transport?.constructor?.name;
    if (transport !== undefined)
      assertEq(transport, this.expectTransport, `${this.label}: transport chosen by the client`);
  }

  invoke(method, ...args) {
    return withTimeout(this.conn.invoke(method, ...args), WAIT_MS, `${this.label}: invoke ${method}`);
  }

  eventsFor(orderId) {
    return this.events.filter((e) => e.dto && e.dto.orderId === orderId);
  }

  // Waits until `count` events of the order have arrived, then a little longer so
  // that duplicates or extra events would be seen too.
  async waitEvents(orderId, count, what) {
    try {
      await waitUntil(() => this.eventsFor(orderId).length >= count, what);
    } catch (e) {
      throw new Error(`${this.label}: ${e.message}; received so far: ${fmtEvents(this.eventsFor(orderId))}`);
    }
    await sleep(GRACE_MS);
    return this.eventsFor(orderId);
  }

  async stop() {
    try {
      await withTimeout(this.conn.stop(), 5000, `${this.label}: stop()`);
    } catch {
      /* best effort */
    }
  }
}

// ------------------------------------------------------------------ payload checks

function checkTimestamp(value, protocol, what, { nullable = false } = {}) {
  if (value === null && nullable) return;
  if (protocol === "msgpack") {
    assert(
      value instanceof Date && !isNaN(value.getTime()),
      `${what}: expected a Date (MessagePack timestamp extension), got ${show(value)} (${typeof value})`,
    );
  } else {
    assert(
      typeof value === "string" && ISO_UTC.test(value),
      `${what}: expected an RFC 3339 UTC string ending in Z, got ${show(value)}`,
    );
  }
  const ms = value instanceof Date ? value.getTime() : Date.parse(value);
  assert(!isNaN(ms), `${what}: unparseable timestamp ${show(value)}`);
}

function toMs(v) {
  return v instanceof Date ? v.getTime() : Date.parse(v);
}

// Checks one OrderStatusBroadcastDto (an event payload or a SubscribeToOrder result).
function checkDto(dto, { protocol, orderId, status, restaurantId, isEvent = true, label }) {
  assert(dto && typeof dto === "object" && !Array.isArray(dto), `${label}: payload is not an object: ${show(dto)}`);
  assertEq(dto.orderId, orderId, `${label}: orderId`);
  if (status !== undefined) assertEq(dto.status, status, `${label}: status`);
  if (restaurantId !== undefined) assertEq(dto.restaurantId, restaurantId, `${label}: restaurantId`);
  assert(
    typeof dto.orderNumber === "string" && ORDER_NUMBER.test(dto.orderNumber),
    `${label}: orderNumber ${show(dto.orderNumber)} is not ORD-YYYY-NNNNNN`,
  );
  checkTimestamp(dto.lastUpdateTimestamp, protocol, `${label}: lastUpdateTimestamp`);
  const skew = Math.abs(toMs(dto.lastUpdateTimestamp) - Date.now());
  assert(skew < 10 * 60_000, `${label}: lastUpdateTimestamp ${show(dto.lastUpdateTimestamp)} is not recent`);
  for (const f of ["estimatedDeliveryTime", "actualDeliveryTime", "deliveredAt", "occurredOnUtc"]) {
    if (dto[f] !== undefined) checkTimestamp(dto[f], protocol, `${label}: ${f}`, { nullable: true });
  }
  if (isEvent) {
    assert(
      typeof dto.eventId === "string" && dto.eventId.length > 0,
      `${label}: eventId missing or not a string: ${show(dto.eventId)}`,
    );
    assert(
      Number.isInteger(dto.sequence) && dto.sequence > 0,
      `${label}: sequence missing or not a positive integer: ${show(dto.sequence)}`,
    );
  }
}

function checkEvents(events, expected, { protocol, orderId, restaurantId, label }) {
  const got = events.map((e) => `${e.name}:${e.dto?.status}`);
  const want = expected.map(([name, status]) => `${name}:${status ?? "*"}`);
  const matches =
    got.length === want.length &&
    expected.every(([name, status], i) => events[i].name === name && (status === undefined || events[i].dto?.status === status));
  assert(matches, `${label}: expected events [${want.join(", ")}], got [${got.join(", ")}]`);
  const ids = new Set();
  events.forEach((e, i) => {
    assertEq(e.args.length, 1, `${label}: argument count of ${e.name}`);
    checkDto(e.dto, { protocol, orderId, restaurantId, label: `${label}: event #${i + 1} ${e.name}` });
    assert(!ids.has(e.dto.eventId), `${label}: eventId ${e.dto.eventId} delivered twice`);
    ids.add(e.dto.eventId);
  });
}

// ------------------------------------------------------------------ scenarios

const scenarios = [];
function scenario(id, title, fn, { browser = false, needsOwnServer = false, timeout = SCENARIO_MS } = {}) {
  scenarios.push({ id, title, fn, browser, needsOwnServer, timeout });
}

// Per-scenario context: hands out clients and stops them afterwards.
class Context {
  constructor(name) {
    this.name = name;
    this.clients = [];
    this.cleanups = [];
  }
  async connect(opts) {
    const c = new Client(opts);
    this.clients.push(c);
    await c.start();
    return c;
  }
  defer(fn) {
    this.cleanups.push(fn);
  }
  async close() {
    for (const fn of this.cleanups.reverse()) {
      try {
        await withTimeout(Promise.resolve().then(fn), 10_000, "cleanup");
      } catch {
        /* best effort */
      }
    }
    await Promise.all(this.clients.map((c) => c.stop()));
  }
  clientLogs() {
    return this.clients
      .filter((c) => c.logger.lines.length > 0)
      .map((c) => `${c.label}:\n` + indent(c.logger.lines.slice(-12).join("\n"), "  "))
      .join("\n");
  }
}

for (const protocol of PROTOCOLS) {
  // a) the whole life of a cash order, seen by its customer
  scenario(`a/${protocol}`, "lifecycle: CashOnDelivery order accepted → delivered", async (ctx) => {
    const customer = await newCustomer();
    const restaurantId = randomUUID();
    const order = await placeOrder({ customerId: customer.sub, restaurantId, paymentMethod: "CashOnDelivery" });
    const c = await ctx.connect({ hub: CUSTOMER_HUB, token: customer.token, protocol, label: `customer/${protocol}` });
    const current = await c.invoke("SubscribeToOrder", order.orderId);
    checkDto(current, {
      protocol,
      orderId: order.orderId,
      status: "Placed",
      restaurantId,
      isEvent: false,
      label: "SubscribeToOrder result",
    });
    const staff = await newStaff(restaurantId);
    await act(order.orderId, "accept", staff, { estimatedDeliveryTime: inMinutes(30) }, "Accepted");
    await act(order.orderId, "preparing", staff, {}, "Preparing");
    await act(order.orderId, "ready", staff, {}, "ReadyForDelivery");
    await act(order.orderId, "delivered", staff, {}, "Delivered");
    const events = await c.waitEvents(order.orderId, 4, "4 ReceiveOrderStatusChanged events");
    checkEvents(
      events,
      [
        ["ReceiveOrderStatusChanged", "Accepted"],
        ["ReceiveOrderStatusChanged", "Preparing"],
        ["ReceiveOrderStatusChanged", "ReadyForDelivery"],
        ["ReceiveOrderStatusChanged", "Delivered"],
      ],
      { protocol, orderId: order.orderId, restaurantId, label: "customer" },
    );
    checkTimestamp(events[0].dto.estimatedDeliveryTime, protocol, "Accepted event: estimatedDeliveryTime");
    checkTimestamp(events[3].dto.actualDeliveryTime, protocol, "Delivered event: actualDeliveryTime");
    assert(c.events.length === 4, `customer got events of other orders: ${fmtEvents(c.events)}`);
  });

  // b) card payment succeeds
  scenario(`b/${protocol}`, "payment succeeded: PaymentSucceeded then Placed", async (ctx) => {
    const customer = await newCustomer();
    const restaurantId = randomUUID();
    const order = await placeOrder({ customerId: customer.sub, restaurantId, paymentMethod: "Card" });
    const c = await ctx.connect({ hub: CUSTOMER_HUB, token: customer.token, protocol, label: `customer/${protocol}` });
    const current = await c.invoke("SubscribeToOrder", order.orderId);
    checkDto(current, {
      protocol,
      orderId: order.orderId,
      status: "AwaitingPayment",
      isEvent: false,
      label: "SubscribeToOrder result",
    });
    await act(order.orderId, "payment-succeeded", await orderService(), {}, "Placed");
    const events = await c.waitEvents(order.orderId, 2, "ReceiveOrderPaymentSucceeded and ReceiveOrderPlaced");
    checkEvents(
      events,
      [["ReceiveOrderPaymentSucceeded"], ["ReceiveOrderPlaced", "Placed"]],
      { protocol, orderId: order.orderId, restaurantId, label: "customer" },
    );
  });

  // c) card payment fails
  scenario(`c/${protocol}`, "payment failed: PaymentFailed then StatusChanged(Cancelled)", async (ctx) => {
    const customer = await newCustomer();
    const restaurantId = randomUUID();
    const order = await placeOrder({ customerId: customer.sub, restaurantId, paymentMethod: "Card" });
    const c = await ctx.connect({ hub: CUSTOMER_HUB, token: customer.token, protocol, label: `customer/${protocol}` });
    await c.invoke("SubscribeToOrder", order.orderId);
    await act(order.orderId, "payment-failed", await orderService(), {}, "Cancelled");
    const events = await c.waitEvents(order.orderId, 2, "ReceiveOrderPaymentFailed and ReceiveOrderStatusChanged");
    checkEvents(
      events,
      [["ReceiveOrderPaymentFailed"], ["ReceiveOrderStatusChanged", "Cancelled"]],
      { protocol, orderId: order.orderId, restaurantId, label: "customer" },
    );
  });

  // d) the customer cancels a placed order
  scenario(`d/${protocol}`, "customer cancels from Placed: StatusChanged(Cancelled)", async (ctx) => {
    const customer = await newCustomer();
    const order = await placeOrder({
      customerId: customer.sub,
      restaurantId: randomUUID(),
      paymentMethod: "CashOnDelivery",
    });
    const c = await ctx.connect({ hub: CUSTOMER_HUB, token: customer.token, protocol, label: `customer/${protocol}` });
    await c.invoke("SubscribeToOrder", order.orderId);
    await act(order.orderId, "cancel", customer, { reason: "changed my mind" }, "Cancelled");
    const events = await c.waitEvents(order.orderId, 1, "ReceiveOrderStatusChanged(Cancelled)");
    checkEvents(events, [["ReceiveOrderStatusChanged", "Cancelled"]], {
      protocol,
      orderId: order.orderId,
      label: "customer",
    });
  });

  // e) someone else's order and an unknown order are refused alike
  scenario(`e/${protocol}`, "refused subscription: foreign order and unknown id fail identically", async (ctx) => {
    const owner = await newCustomer();
    const stranger = await newCustomer();
    const order = await placeOrder({
      customerId: owner.sub,
      restaurantId: randomUUID(),
      paymentMethod: "CashOnDelivery",
    });
    const s = await ctx.connect({ hub: CUSTOMER_HUB, token: stranger.token, protocol, label: `stranger/${protocol}` });
    const foreign = await expectRejection(s.invoke("SubscribeToOrder", order.orderId), "SubscribeToOrder(foreign order)", s);
    const unknown = await expectRejection(s.invoke("SubscribeToOrder", randomUUID()), "SubscribeToOrder(unknown id)", s);
    assert(foreign instanceof Error && foreign.message, `foreign subscription: rejection without a message: ${show(foreign)}`);
    assert(!/timed out/.test(foreign.message), `foreign subscription: ${foreign.message}`);
    assertEq(unknown.message, foreign.message, "error text for an unknown order vs. a foreign one");
    assert(!foreign.message.includes(order.orderId), `the refusal names the order id: ${foreign.message}`);
    assertEq(s.conn.state, signalR.HubConnectionState.Connected, "stranger's connection state after the refusals");
    // The refused stranger must not see the order's events; the owner must.
    const o = await ctx.connect({ hub: CUSTOMER_HUB, token: owner.token, protocol, label: `owner/${protocol}` });
    await o.invoke("SubscribeToOrder", order.orderId);
    await act(order.orderId, "cancel", owner, {}, "Cancelled");
    await o.waitEvents(order.orderId, 1, "owner's ReceiveOrderStatusChanged(Cancelled)");
    assert(s.events.length === 0, `the refused stranger received events: ${fmtEvents(s.events)}`);
  });

  // f) restaurant hub: staff see all of their restaurant's orders
  scenario(`f/${protocol}`, "restaurant hub: staff receive events of a new card order", async (ctx) => {
    const restaurantId = randomUUID();
    const staff = await newStaff(restaurantId);
    const r = await ctx.connect({ hub: RESTAURANT_HUB, token: staff.token, protocol, label: `staff/${protocol}` });
    await r.invoke("SubscribeToRestaurant", restaurantId);
    const otherStaff = await newStaff(randomUUID());
    const x = await ctx.connect({ hub: RESTAURANT_HUB, token: otherStaff.token, protocol, label: `other-staff/${protocol}` });
    await expectRejection(x.invoke("SubscribeToRestaurant", restaurantId), "SubscribeToRestaurant(another restaurant)", x);
    const customer = await newCustomer();
    const order = await placeOrder({ customerId: customer.sub, restaurantId, paymentMethod: "Card" });
    await act(order.orderId, "payment-succeeded", await orderService(), {}, "Placed");
    await act(order.orderId, "accept", staff, { estimatedDeliveryTime: inMinutes(45) }, "Accepted");
    const events = await r.waitEvents(order.orderId, 3, "PaymentSucceeded, Placed and StatusChanged(Accepted)");
    checkEvents(
      events,
      [["ReceiveOrderPaymentSucceeded"], ["ReceiveOrderPlaced", "Placed"], ["ReceiveOrderStatusChanged", "Accepted"]],
      { protocol, orderId: order.orderId, restaurantId, label: "staff" },
    );
    assert(x.events.length === 0, `staff of another restaurant received events: ${fmtEvents(x.events)}`);
  });

  // g) skipNegotiation: WebSocket opened directly on the hub URL, no id
  scenario(`g/${protocol}`, "skipNegotiation + WebSockets transport", async (ctx) => {
    const customer = await newCustomer();
    const order = await placeOrder({
      customerId: customer.sub,
      restaurantId: randomUUID(),
      paymentMethod: "CashOnDelivery",
    });
    const c = await ctx.connect({
      hub: CUSTOMER_HUB,
      token: customer.token,
      protocol,
      skipNegotiation: true,
      label: `skipneg/${protocol}`,
    });
    const current = await c.invoke("SubscribeToOrder", order.orderId);
    checkDto(current, { protocol, orderId: order.orderId, status: "Placed", isEvent: false, label: "SubscribeToOrder result" });
    await act(order.orderId, "cancel", customer, {}, "Cancelled");
    const events = await c.waitEvents(order.orderId, 1, "ReceiveOrderStatusChanged(Cancelled)");
    checkEvents(events, [["ReceiveOrderStatusChanged", "Cancelled"]], { protocol, orderId: order.orderId, label: "customer" });
  });

  // h) hub method names match case-insensitively
  scenario(`h/${protocol}`, "case-insensitive hub method names", async (ctx) => {
    const customer = await newCustomer();
    const restaurantId = randomUUID();
    const order = await placeOrder({ customerId: customer.sub, restaurantId, paymentMethod: "CashOnDelivery" });
    const c = await ctx.connect({ hub: CUSTOMER_HUB, token: customer.token, protocol, label: `customer/${protocol}` });
    const current = await c.invoke("subscribetoorder", order.orderId);
    checkDto(current, { protocol, orderId: order.orderId, status: "Placed", isEvent: false, label: "subscribetoorder result" });
    const staff = await newStaff(restaurantId);
    await act(order.orderId, "accept", staff, { estimatedDeliveryTime: inMinutes(30) }, "Accepted");
    await c.waitEvents(order.orderId, 1, "ReceiveOrderStatusChanged(Accepted) after subscribetoorder");
    await c.invoke("UNSUBSCRIBEFROMORDER", order.orderId);
    await act(order.orderId, "preparing", staff, {}, "Preparing");
    await sleep(GRACE_MS * 2);
    const events = c.eventsFor(order.orderId);
    checkEvents(events, [["ReceiveOrderStatusChanged", "Accepted"]], {
      protocol,
      orderId: order.orderId,
      label: "customer (an event after UNSUBSCRIBEFROMORDER must not arrive)",
    });
  });
}

// i) the server restarts; clients reconnect by themselves and re-subscribe
for (const protocol of PROTOCOLS) {
  scenario(
    `i/${protocol}`,
    "automatic reconnect after a server restart (SIGTERM → Close allowReconnect)",
    async (ctx, env) => {
      const customer = await newCustomer();
      const restaurantId = randomUUID();
      const order = await placeOrder({ customerId: customer.sub, restaurantId, paymentMethod: "CashOnDelivery" });
      const c = await ctx.connect({
        hub: CUSTOMER_HUB,
        token: customer.token,
        protocol,
        reconnectDelays: [0, 500, 1000, 1000, 2000, 2000, 5000],
        label: `reconnecting/${protocol}`,
      });
      await c.invoke("SubscribeToOrder", order.orderId);
      let resubscribed = null;
      let resubscribeError = null;
      c.conn.onreconnected(() => {
        c.conn
          .invoke("SubscribeToOrder", order.orderId)
          .then((dto) => {
            resubscribed = dto;
          })
          .catch((e) => {
            resubscribeError = e;
          });
      });

      const stopped = await env.server.stop();
      assert(!stopped.forced, `server did not exit within ${STOP_MS} ms of SIGTERM`);
      assertEq(stopped.code, 0, "server exit code after SIGTERM");
      await waitUntil(
        () => c.closeMessages.length > 0 || c.closed.length > 0,
        "a Close message from the stopping server",
        3000,
      ).catch(() => {});
      const close = c.closeMessages[c.closeMessages.length - 1];
      assert(close, `${c.label}: no Close message received before the server went away`);
      assertEq(close.allowReconnect, true, `${c.label}: Close.allowReconnect`);

      await env.server.start();
      await waitUntil(() => c.reconnected.length > 0 || c.closed.length > 0, `${c.label}: onreconnected`, 15_000);
      assert(
        c.closed.length === 0,
        `${c.label}: connection closed instead of reconnecting: ${c.closed[0]?.message ?? c.closed[0]}`,
      );
      assert(c.reconnecting.length > 0, `${c.label}: onreconnecting never fired`);
      await waitUntil(() => resubscribed || resubscribeError, `${c.label}: re-subscription`);
      if (resubscribeError) throw new Error(`${c.label}: re-subscription failed: ${resubscribeError.message}`);
      checkDto(resubscribed, {
        protocol,
        orderId: order.orderId,
        status: "Placed",
        isEvent: false,
        label: `${c.label}: SubscribeToOrder after the restart`,
      });

      const staff = await newStaff(restaurantId);
      await act(order.orderId, "accept", staff, { estimatedDeliveryTime: inMinutes(30) }, "Accepted");
      const events = await c.waitEvents(order.orderId, 1, "ReceiveOrderStatusChanged(Accepted) after the restart");
      checkEvents(events, [["ReceiveOrderStatusChanged", "Accepted"]], {
        protocol,
        orderId: order.orderId,
        restaurantId,
        label: c.label,
      });
    },
    { needsOwnServer: true, timeout: 60_000 },
  );
}

// k) the official client, idle with its default keep-alive, outlives the server's bound on
// clients that never ping: its pings count, so it still gets the next event.
scenario(
  "k/json",
  "idle official client (default 15 s keep-alive) stays past the silent-client bound",
  async (ctx) => {
    const customer = await newCustomer();
    const restaurantId = randomUUID();
    const order = await placeOrder({ customerId: customer.sub, restaurantId, paymentMethod: "CashOnDelivery" });
    const c = await ctx.connect({ hub: CUSTOMER_HUB, token: customer.token, protocol: "json", label: "idle/json" });
    await c.invoke("SubscribeToOrder", order.orderId);
    await sleep(SILENT_TIMEOUT_MS + 3_000);
    assert(c.closed.length === 0, `idle/json: closed while idle: ${c.closed[0]?.message ?? c.closed[0]}`);
    assertEq(c.closeMessages.length, 0, "idle/json: Close messages while idle");
    const staff = await newStaff(restaurantId);
    await act(order.orderId, "accept", staff, { estimatedDeliveryTime: inMinutes(30) }, "Accepted");
    const events = await c.waitEvents(order.orderId, 1, "ReceiveOrderStatusChanged(Accepted) after idling");
    checkEvents(events, [["ReceiveOrderStatusChanged", "Accepted"]], {
      protocol: "json",
      orderId: order.orderId,
      restaurantId,
      label: c.label,
    });
  },
  { timeout: SILENT_TIMEOUT_MS + 30_000 },
);

// j) the browser bundle in Chromium, cross-origin, token in access_token
for (const protocol of PROTOCOLS) {
  scenario(
    `j/${protocol}`,
    "browser (Chromium): bundle from another origin, access_token on the WebSocket",
    async (ctx, env) => {
      const browser = await env.browser();
      const page = await browser.newPage();
      ctx.defer(() => page.close());
      const consoleLines = [];
      const sockets = [];
      page.on("console", (m) => consoleLines.push(`[console.${m.type()}] ${m.text()}`));
      page.on("pageerror", (e) => consoleLines.push(`[pageerror] ${e.message}`));
      page.on("websocket", (ws) => sockets.push(ws.url()));
      ctx.defer(() => {
        if (ctx.failed && consoleLines.length) console.log(indent(consoleLines.slice(-15).join("\n")));
      });
      await page.goto(`${await env.pageBase()}/index.html`, { timeout: WAIT_MS, waitUntil: "load" });
      await page.waitForFunction(() => window.__ready === true, null, { timeout: WAIT_MS });

      const customer = await newCustomer();
      const restaurantId = randomUUID();
      const order = await placeOrder({ customerId: customer.sub, restaurantId, paymentMethod: "CashOnDelivery" });
      const started = await withTimeout(
        page.evaluate((cfg) => window.__track(cfg), {
          base: state.base,
          hub: CUSTOMER_HUB,
          token: customer.token,
          orderId: order.orderId,
          protocol,
        }),
        WAIT_MS + 2000,
        "page: start + SubscribeToOrder",
      );
      if (!started.ok) {
        const log = await page.evaluate(() => window.__log.slice(-10)).catch(() => []);
        throw new Error(`page could not subscribe: ${started.error}\n${indent(log.join("\n"))}`);
      }
      assertEq(started.orderId, order.orderId, "page: SubscribeToOrder result orderId");
      assertEq(started.status, "Placed", "page: SubscribeToOrder result status");
      assert(
        sockets.some((u) => u.includes(CUSTOMER_HUB) && /[?&]access_token=/.test(u)),
        `page: no WebSocket to ${CUSTOMER_HUB} carrying access_token (saw ${sockets.length} socket(s))`,
      );

      const staff = await newStaff(restaurantId);
      await act(order.orderId, "accept", staff, { estimatedDeliveryTime: inMinutes(30) }, "Accepted");
      const events = await waitUntil(async () => {
        const evs = await page.evaluate(() => window.__events);
        return evs.length > 0 ? evs : null;
      }, "page: ReceiveOrderStatusChanged(Accepted)");
      await sleep(GRACE_MS);
      const all = await page.evaluate(() => window.__events);
      assertEq(all.length, 1, `page: number of events (${all.map((e) => e.name + ":" + e.status).join(", ")})`);
      const ev = events[0];
      assertEq(ev.name, "ReceiveOrderStatusChanged", "page: event name");
      assertEq(ev.orderId, order.orderId, "page: event orderId");
      assertEq(ev.status, "Accepted", "page: event status");
      assert(typeof ev.eventId === "string" && ev.eventId.length > 0, `page: eventId ${show(ev.eventId)}`);
      const ts = ev.lastUpdateTimestamp;
      if (protocol === "msgpack") assertEq(ts.kind, "Date", "page: lastUpdateTimestamp type (msgpack)");
      else {
        assertEq(ts.kind, "string", "page: lastUpdateTimestamp type (json)");
        assert(ISO_UTC.test(ts.value), `page: lastUpdateTimestamp ${show(ts.value)} is not RFC 3339 UTC with Z`);
      }
      const stopped = await page.evaluate(() => window.__stop());
      assert(stopped === "Disconnected", `page: connection state after stop(): ${stopped}`);
    },
    { browser: true, timeout: 60_000 },
  );
}

// ------------------------------------------------------------------ t: SSE and long polling
// Issue 12 §1: the official client with its transport forced to ServerSentEvents or
// LongPolling (JSON, and MessagePack where the transport carries binary: long polling only),
// in Node and in Chromium; reconnect after a server restart; and no forcing at all behind a
// proxy that refuses the WebSocket upgrade, where the client must fall back and still get
// every event.

const T_FORCED = [
  { id: "lp-json", protocol: "json", transport: "LongPolling", cls: "LongPollingTransport" },
  { id: "lp-msgpack", protocol: "msgpack", transport: "LongPolling", cls: "LongPollingTransport" },
  { id: "sse-json", protocol: "json", transport: "ServerSentEvents", cls: "ServerSentEventsTransport" },
];
// What the client falls back to without WebSockets: SSE carries text only.
const T_FALLBACK = { json: "ServerSentEventsTransport", msgpack: "LongPollingTransport" };

// A reverse proxy (node http) that forwards every request, streaming both ways, and answers
// every WebSocket upgrade 403, as some corporate and carrier proxies do.
function tRefusingProxy(target) {
  const up = new URL(target);
  const proxy = http.createServer((req, res) => {
    const fwd = http.request(
      { host: up.hostname, port: up.port, method: req.method, path: req.url, headers: req.headers },
      (answer) => {
        res.writeHead(answer.statusCode, answer.headers);
        answer.pipe(res);
      },
    );
    fwd.on("error", () => {
      if (!res.headersSent) res.writeHead(502);
      res.end();
    });
    res.on("close", () => fwd.destroy());
    req.pipe(fwd);
  });
  proxy.refusedUpgrades = 0;
  proxy.on("upgrade", (_req, socket) => {
    proxy.refusedUpgrades++;
    socket.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  });
  return new Promise((resolve, reject) => {
    proxy.on("error", reject);
    proxy.listen(0, "127.0.0.1", () => resolve(proxy));
  });
}

async function tProxy(ctx) {
  const proxy = await tRefusingProxy(state.base);
  ctx.defer(
    () =>
      new Promise((r) => {
        proxy.closeAllConnections?.();
        proxy.close(r);
      }),
  );
  return { proxy, base: `http://127.0.0.1:${proxy.address().port}` };
}

// A customer's whole order over one connection: subscribe (the current DTO), a refused
// subscription (another customer's order fails like an unknown one, the connection stays up),
// then accept → delivered: exactly four events, in order.
async function tLifecycle(ctx, { protocol, transport, expectTransport, base, label }) {
  const customer = await newCustomer();
  const restaurantId = randomUUID();
  const order = await placeOrder({ customerId: customer.sub, restaurantId, paymentMethod: "CashOnDelivery" });
  const c = await ctx.connect({
    hub: CUSTOMER_HUB,
    token: customer.token,
    protocol,
    transport: transport && signalR.HttpTransportType[transport],
    expectTransport,
    base,
    label,
  });
  const current = await c.invoke("SubscribeToOrder", order.orderId);
  checkDto(current, { protocol, orderId: order.orderId, status: "Placed", restaurantId, isEvent: false, label });
  const other = await newCustomer();
  const foreign = await placeOrder({ customerId: other.sub, restaurantId, paymentMethod: "CashOnDelivery" });
  const refused = await expectRejection(c.invoke("SubscribeToOrder", foreign.orderId), `${label}: foreign order`, c);
  const unknown = await expectRejection(c.invoke("SubscribeToOrder", randomUUID()), `${label}: unknown order`, c);
  assertEq(refused.message, unknown.message, `${label}: refusal text, foreign vs. unknown order`);
  const staff = await newStaff(restaurantId);
  await act(order.orderId, "accept", staff, { estimatedDeliveryTime: inMinutes(30) }, "Accepted");
  await act(foreign.orderId, "accept", staff, { estimatedDeliveryTime: inMinutes(30) }, "Accepted");
  await act(order.orderId, "preparing", staff, {}, "Preparing");
  await act(order.orderId, "ready", staff, {}, "ReadyForDelivery");
  await act(order.orderId, "delivered", staff, {}, "Delivered");
  const events = await c.waitEvents(order.orderId, 4, `${label}: 4 ReceiveOrderStatusChanged events`);
  checkEvents(
    events,
    [
      ["ReceiveOrderStatusChanged", "Accepted"],
      ["ReceiveOrderStatusChanged", "Preparing"],
      ["ReceiveOrderStatusChanged", "ReadyForDelivery"],
      ["ReceiveOrderStatusChanged", "Delivered"],
    ],
    { protocol, orderId: order.orderId, restaurantId, label },
  );
  assert(c.events.length === 4, `${label}: events of other orders arrived: ${fmtEvents(c.events)}`);
  return c;
}

for (const f of T_FORCED) {
  scenario(`t/${f.id}`, `${f.transport} forced (Node): lifecycle and a refused subscription`, async (ctx) => {
    await tLifecycle(ctx, { ...f, expectTransport: f.cls, label: `${f.id}` });
  });
}

for (const protocol of PROTOCOLS) {
  scenario(
    `t/fallback-${protocol}`,
    "WebSocket upgrade refused by a proxy (Node): the client falls back and gets every event",
    async (ctx) => {
      const { proxy, base } = await tProxy(ctx);
      await tLifecycle(ctx, { protocol, base, expectTransport: T_FALLBACK[protocol], label: `fallback-${protocol}` });
      assert(proxy.refusedUpgrades > 0, "the client never tried WebSockets through the proxy");
    },
  );
}

// Reconnect: SIGTERM sends Close(allowReconnect) through the poll or the stream; after the
// restart withAutomaticReconnect comes back on the same transport, resubscribes, gets events.
for (const f of T_FORCED) {
  scenario(
    `t/reconnect-${f.id}`,
    `${f.transport} forced (Node): server restart, withAutomaticReconnect, events again`,
    async (ctx, env) => {
      const customer = await newCustomer();
      const restaurantId = randomUUID();
      const order = await placeOrder({ customerId: customer.sub, restaurantId, paymentMethod: "CashOnDelivery" });
      const c = await ctx.connect({
        hub: CUSTOMER_HUB,
        token: customer.token,
        protocol: f.protocol,
        transport: signalR.HttpTransportType[f.transport],
        expectTransport: f.cls,
        reconnectDelays: [0, 500, 1000, 2000, 2000, 2000, 2000, 2000],
        label: `reconnect-${f.id}`,
      });
      await c.invoke("SubscribeToOrder", order.orderId);
      let resubscribed = null;
      c.conn.onreconnected(() => {
        c.conn.invoke("SubscribeToOrder", order.orderId).then(
          (dto) => (resubscribed = dto),
          (e) => (resubscribed = e),
        );
      });
      const stopped = await env.server.stop();
      assertEq(stopped.code, 0, "server exit code after SIGTERM");
      await env.server.start();
      await waitUntil(() => c.reconnected.length > 0 || c.closed.length > 0, `${c.label}: onreconnected`, 20_000);
      assert(c.closed.length === 0, `${c.label}: closed instead of reconnecting: ${c.closed[0]?.message ?? c.closed[0]}`);
      await waitUntil(() => resubscribed, `${c.label}: re-subscription`);
      if (resubscribed instanceof Error) throw new Error(`${c.label}: re-subscription failed: ${resubscribed.message}`);
      assertEq(c.conn.connection?.transport?.constructor?.name, f.cls, `${c.label}: transport after reconnecting`);
      await act(order.orderId, "accept", await newStaff(restaurantId), { estimatedDeliveryTime: inMinutes(30) }, "Accepted");
      const events = await c.waitEvents(order.orderId, 1, "ReceiveOrderStatusChanged(Accepted) after the restart");
      checkEvents(events, [["ReceiveOrderStatusChanged", "Accepted"]], {
        protocol: f.protocol,
        orderId: order.orderId,
        restaurantId,
        label: c.label,
      });
    },
    { needsOwnServer: true, timeout: 60_000 },
  );
}

// The browser: the page (another origin) forces the transport, or goes through the refusing
// proxy and falls back by itself. The requests Chromium makes show which transport it used.
async function tBrowserTrack(ctx, env, { protocol, transport, base, label }) {
  const browser = await env.browser();
  const page = await browser.newPage();
  ctx.defer(() => page.close());
  const requests = [];
  const consoleLines = [];
  page.on("request", (r) => requests.push({ url: r.url(), method: r.method(), accept: r.headers()["accept"] ?? "" }));
  page.on("console", (m) => consoleLines.push(`[console.${m.type()}] ${m.text()}`));
  ctx.defer(() => {
    if (ctx.failed && consoleLines.length) console.log(indent(consoleLines.slice(-15).join("\n")));
  });
  await page.goto(`${await env.pageBase()}/index.html`, { timeout: WAIT_MS, waitUntil: "load" });
  await page.waitForFunction(() => window.__ready === true, null, { timeout: WAIT_MS });
  const customer = await newCustomer();
  const restaurantId = randomUUID();
  const order = await placeOrder({ customerId: customer.sub, restaurantId, paymentMethod: "CashOnDelivery" });
  const started = await withTimeout(
    page.evaluate((cfg) => window.__track(cfg), {
      base,
      hub: CUSTOMER_HUB,
      token: customer.token,
      orderId: order.orderId,
      protocol,
      transport: transport && signalR.HttpTransportType[transport],
    }),
    WAIT_MS + 5000,
    `${label}: start + SubscribeToOrder`,
  );
  if (!started.ok) {
    const log = await page.evaluate(() => window.__log.slice(-10)).catch(() => []);
    throw new Error(`${label}: could not subscribe: ${started.error}\n${indent(log.join("\n"))}`);
  }
  assertEq(started.status, "Placed", `${label}: SubscribeToOrder result status`);
  // A refused subscription (an order that does not exist) completes with an error over this
  // transport too, and leaves the connection working: the events below still arrive.
  const refused = await page.evaluate(async (id) => {
    try {
      await window.__conn.invoke("SubscribeToOrder", id);
      return { refused: false };
    } catch (e) {
      return { refused: true, message: String((e && e.message) || e), state: window.__conn.state };
    }
  }, randomUUID());
  assert(refused.refused, `${label}: SubscribeToOrder of an unknown order was not refused`);
  assert(refused.message.length > 0 && !/timed out/.test(refused.message), `${label}: refusal ${show(refused.message)}`);
  assertEq(refused.state, "Connected", `${label}: connection state after the refusal`);
  const staff = await newStaff(restaurantId);
  await act(order.orderId, "accept", staff, { estimatedDeliveryTime: inMinutes(30) }, "Accepted");
  await act(order.orderId, "preparing", staff, {}, "Preparing");
  await waitUntil(async () => (await page.evaluate(() => window.__events.length)) >= 2, `${label}: 2 events`);
  await sleep(GRACE_MS);
  const events = await page.evaluate(() => window.__events);
  assertEq(events.map((e) => e.status).join(","), "Accepted,Preparing", `${label}: event statuses`);
  const hub = requests.filter((r) => r.url.includes(CUSTOMER_HUB) && /[?&]id=/.test(r.url));
  const sse = hub.some((r) => r.method === "GET" && r.accept.includes("text/event-stream"));
  const polls = hub.filter((r) => r.method === "GET" && /[?&]_=/.test(r.url)).length;
  const stopped = await page.evaluate(() => window.__stop());
  assertEq(stopped, "Disconnected", `${label}: state after stop()`);
  return { sse, polls, sseToken: hub.some((r) => r.accept.includes("text/event-stream") && /access_token=/.test(r.url)) };
}

for (const f of T_FORCED) {
  scenario(
    `t/browser-${f.id}`,
    `browser (Chromium): ${f.transport} forced, cross-origin`,
    async (ctx, env) => {
      const seen = await tBrowserTrack(ctx, env, { ...f, base: state.base, label: `browser-${f.id}` });
      if (f.transport === "ServerSentEvents") {
        assert(seen.sse, "browser: no EventSource request");
        assert(seen.sseToken, "browser: the EventSource request did not carry access_token");
      } else assert(seen.polls > 0 && !seen.sse, `browser: expected polls only (polls ${seen.polls}, sse ${seen.sse})`);
    },
    { browser: true, timeout: 60_000 },
  );
}

for (const protocol of PROTOCOLS) {
  scenario(
    `t/browser-fallback-${protocol}`,
    "browser (Chromium) behind a proxy that refuses WebSockets: falls back, gets every event",
    async (ctx, env) => {
      const { proxy, base } = await tProxy(ctx);
      const seen = await tBrowserTrack(ctx, env, { protocol, base, label: `browser-fallback-${protocol}` });
      assert(proxy.refusedUpgrades > 0, "the browser never tried WebSockets through the proxy");
      if (protocol === "json") assert(seen.sse, "browser: JSON should fall back to Server-Sent Events");
      else assert(seen.polls > 0 && !seen.sse, "browser: MessagePack should fall back to long polling");
    },
    { browser: true, timeout: 60_000 },
  );
}

// ------------------------------------------------------------------ r: stateful reconnect
// The official client with `.withStatefulReconnect()` talks to the server through a TCP proxy
// (node `net`) that the scenario cuts mid-stream while REST changes statuses in a loop. The
// client must come back on the SAME connection (no onreconnecting, same connectionId, no
// resubscribe) and see every event exactly once, in order; a client that comes back after the
// reconnect window is refused (404) and starts over through withAutomaticReconnect.

// A TCP proxy that can cut every piped connection and hold new ones for a while.
function startCutProxy(targetPort) {
  const pairs = new Set();
  let holdUntil = 0;
  let accepted = 0;
  const server = net.createServer((down) => {
    accepted += 1;
    down.pause();
    const wait = Math.max(0, holdUntil - Date.now());
    setTimeout(() => {
      if (down.destroyed) return;
      const up = net.connect(targetPort, "127.0.0.1");
      const pair = { up, down };
      pairs.add(pair);
      const drop = () => {
        pairs.delete(pair);
        up.destroy();
        down.destroy();
      };
      up.on("error", drop).on("close", drop);
      down.on("error", drop).on("close", drop);
      up.pipe(down);
      down.pipe(up);
      down.resume();
    }, wait);
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      resolve({
        base: `http://127.0.0.1:${server.address().port}`,
        accepted: () => accepted,
        // Drops every connection now; new ones wait `holdMs` before they reach the server.
        cut(holdMs = 0) {
          holdUntil = Date.now() + holdMs;
          for (const { up, down } of pairs) {
            up.destroy();
            down.destroy();
          }
          pairs.clear();
        },
        close: () => new Promise((r) => {
          for (const { up, down } of pairs) {
            up.destroy();
            down.destroy();
          }
          server.close(() => r());
        }),
      });
    });
  });
}

// A server metric's value (sum over its labels when `label` is not given).
async function metricValue(base, name, label) {
  const text = await (await fetch(`${base}/metrics`)).text();
  let sum = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (!(rest.startsWith(" ") || rest.startsWith("{"))) continue;
    if (label && !rest.includes(label)) continue;
    sum += Number(line.split(" ").pop());
  }
  return sum;
}

// Places `orders` cash orders at the restaurant and accepts each; the proxy is cut (with a hold,
// so events pile up on the server) after `cutAfter` of them. Returns the [event, orderId,
// status] list the restaurant must see, in commit order.
async function flowWithCut(restaurantId, proxy, { orders = 8, cutAfter = 3, holdMs = 800 } = {}) {
  const staff = await newStaff(restaurantId);
  const expected = [];
  for (let i = 0; i < orders; i++) {
    if (i === cutAfter) proxy.cut(holdMs);
    const customer = await newCustomer();
    const order = await placeOrder({ customerId: customer.sub, restaurantId, paymentMethod: "CashOnDelivery" });
    expected.push(["ReceiveOrderPlaced", order.orderId, "Placed"]);
    await act(order.orderId, "accept", staff, { estimatedDeliveryTime: inMinutes(30) }, "Accepted");
    expected.push(["ReceiveOrderStatusChanged", order.orderId, "Accepted"]);
  }
  return expected;
}

function statefulConnection(base, token, protocol, sink) {
  const wire = protocol === "msgpack" ? new MessagePackHubProtocol() : new signalR.JsonHubProtocol();
  const conn = new signalR.HubConnectionBuilder()
    .withUrl(base + RESTAURANT_HUB, { accessTokenFactory: () => token })
    .withHubProtocol(wire)
    .withStatefulReconnect()
    .withAutomaticReconnect([0, 200, 500, 1000, 1000, 2000])
    .configureLogging(sink.logger)
    .build();
  for (const name of EVENT_NAMES) {
    conn.on(name, (dto) => {
      sink.events.push([name, dto.orderId, dto.status, dto.eventId]);
    });
  }
  conn.onreconnecting(() => sink.reconnecting.push(Date.now()));
  conn.onreconnected((id) => sink.reconnected.push(id));
  conn.onclose((e) => sink.closed.push(e ?? null));
  return conn;
}

function checkExactlyOnce(got, expected, label) {
  const ids = new Set(got.map((e) => e[3]));
  assertEq(ids.size, got.length, `${label}: duplicate eventIds`);
  assertEq(
    JSON.stringify(got.map((e) => e.slice(0, 3))),
    JSON.stringify(expected),
    `${label}: events (name, order, status) in order`,
  );
}

for (const protocol of PROTOCOLS) {
  scenario(`r1/${protocol}`, "stateful reconnect: socket cut mid-stream, same connection, every event once", async (ctx) => {
    const proxy = await startCutProxy(new URL(state.base).port);
    ctx.defer(() => proxy.close());
    const restaurantId = randomUUID();
    const staff = await newStaff(restaurantId);
    const sink = { events: [], reconnecting: [], reconnected: [], closed: [], logger: new CaptureLogger(`r1/${protocol}`) };
    const conn = statefulConnection(proxy.base, staff.token, protocol, sink);
    ctx.defer(() => conn.stop());
    const resumesBefore = await metricValue(state.base, "ordertrack_hub_resumes_total");
    const replayedBefore = await metricValue(state.base, "ordertrack_hub_replayed_messages_total");
    await withTimeout(conn.start(), WAIT_MS, "start()");
    assert(conn.connection.features.reconnect === true, "the client did not get stateful reconnect from negotiate");
    const id = conn.connectionId;
    await withTimeout(conn.invoke("SubscribeToRestaurant", restaurantId), WAIT_MS, "SubscribeToRestaurant");
    const expected = await flowWithCut(restaurantId, proxy);
    await waitUntil(() => sink.events.length >= expected.length, `all ${expected.length} events`).catch((e) => {
      throw new Error(`${e.message}; got ${sink.events.length}\n${indent(sink.logger.lines.slice(-10).join("\n"))}`);
    });
    await sleep(GRACE_MS);
    checkExactlyOnce(sink.events, expected, `r1/${protocol}`);
    assert(proxy.accepted() >= 3, `the client did not open a new socket after the cut (${proxy.accepted()} TCP connections)`);
    assertEq(sink.reconnecting.length, 0, "onreconnecting calls (a stateful reconnect is invisible to the app)");
    assertEq(sink.closed.length, 0, "onclose calls");
    assertEq(conn.connectionId, id, "connectionId after the reconnect");
    assertEq(conn.state, "Connected", "state");
    assert(
      (await metricValue(state.base, "ordertrack_hub_resumes_total")) > resumesBefore,
      "ordertrack_hub_resumes_total did not move",
    );
    // The events committed while the socket was down reached the client by the replay.
    assert(
      (await metricValue(state.base, "ordertrack_hub_replayed_messages_total")) > replayedBefore,
      "nothing was replayed: the cut did not happen while events flowed",
    );
  });
}

scenario("r2/json", "stateful reconnect: a comeback after the window is refused and starts over", async (ctx) => {
  // A server of its own with a short window (set through the environment).
  const port = await freePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ordertrack-r2-"));
  const srv = new ServerProcess({ port, dataDir: dir, logFile: path.join(dir, "server.log") });
  process.env.ORDERTRACK_HUB_RECONNECT_WINDOW_MS = "1000";
  try {
    await srv.start();
  } finally {
    delete process.env.ORDERTRACK_HUB_RECONNECT_WINDOW_MS;
  }
  ctx.defer(() => srv.stop());
  const proxy = await startCutProxy(port);
  ctx.defer(() => proxy.close());
  const restaurantId = randomUUID();
  const staff = await newStaff(restaurantId);
  const sink = { events: [], reconnecting: [], reconnected: [], closed: [], logger: new CaptureLogger("r2/json") };
  const conn = statefulConnection(proxy.base, staff.token, "json", sink);
  ctx.defer(() => conn.stop());
  conn.onreconnected(() => conn.invoke("SubscribeToRestaurant", restaurantId).catch(() => {}));
  await withTimeout(conn.start(), WAIT_MS, "start()");
  const first = conn.connectionId;
  await conn.invoke("SubscribeToRestaurant", restaurantId);
  proxy.cut(2500);
  await waitUntil(() => sink.reconnected.length > 0 || sink.closed.length > 0, "onreconnected after the window", 15_000);
  assertEq(sink.closed.length, 0, "onclose calls");
  assert(sink.reconnecting.length > 0, "onreconnecting never fired: the client did not start over");
  assert(conn.connectionId !== first, "the client kept its old connection after the window");
  assert(
    (await metricValue(srv.base, "ordertrack_hub_resets_total", 'reason="window"')) >= 1,
    "ordertrack_hub_resets_total{reason=window} did not move",
  );
  // The new connection works (the app resubscribed in onreconnected).
  await sleep(300);
  const customer = await newCustomer();
  const res = await fetch(`${srv.base}/api/v1/orders`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${(await orderService()).token}` },
    body: JSON.stringify(orderBody({ customerId: customer.sub, restaurantId, paymentMethod: "CashOnDelivery" })),
  });
  assertEq(res.status, 201, "place an order on the r2 server");
  await waitUntil(() => sink.events.some((e) => e[0] === "ReceiveOrderPlaced"), "an event on the new connection");
});

for (const protocol of PROTOCOLS) {
  scenario(
    `r3/${protocol}`,
    "browser (Chromium): stateful reconnect through a cut proxy, every event once",
    async (ctx, env) => {
      const proxy = await startCutProxy(new URL(state.base).port);
      ctx.defer(() => proxy.close());
      const browser = await env.browser();
      const page = await browser.newPage();
      ctx.defer(() => page.close());
      await page.goto(`${await env.pageBase()}/index.html`, { timeout: WAIT_MS, waitUntil: "load" });
      await page.waitForFunction(() => window.__ready === true, null, { timeout: WAIT_MS });
      const restaurantId = randomUUID();
      const staff = await newStaff(restaurantId);
      const started = await withTimeout(
        page.evaluate(
          async (cfg) => {
            const sink = (window.__r = { events: [], reconnecting: 0, closed: 0, log: [] });
            let builder = new signalR.HubConnectionBuilder()
              .withUrl(cfg.base + cfg.hub, { accessTokenFactory: () => cfg.token })
              .withStatefulReconnect()
              .withAutomaticReconnect()
              .configureLogging({ log: (level, message) => sink.log.push(level + " " + message) });
            if (cfg.protocol === "msgpack") {
              builder = builder.withHubProtocol(new signalR.protocols.msgpack.MessagePackHubProtocol());
            }
            const conn = builder.build();
            for (const name of cfg.names) {
              conn.on(name, (dto) => sink.events.push([name, dto.orderId, dto.status, dto.eventId]));
            }
            conn.onreconnecting(() => (sink.reconnecting += 1));
            conn.onclose(() => (sink.closed += 1));
            window.__rconn = conn;
            await conn.start();
            await conn.invoke("SubscribeToRestaurant", cfg.restaurantId);
            return { id: conn.connectionId, stateful: conn.connection.features.reconnect === true };
          },
          { base: proxy.base, hub: RESTAURANT_HUB, token: staff.token, restaurantId, names: EVENT_NAMES, protocol },
        ),
        WAIT_MS + 2000,
        "page: start + SubscribeToRestaurant",
      );
      assert(started.stateful, "page: the client did not get stateful reconnect");
      const replayedBefore = await metricValue(state.base, "ordertrack_hub_replayed_messages_total");
      const expected = await flowWithCut(restaurantId, proxy);
      await waitUntil(
        async () => (await page.evaluate(() => window.__r.events.length)) >= expected.length,
        `page: all ${expected.length} events`,
      ).catch(async (e) => {
        const log = await page.evaluate(() => window.__r.log.slice(-10));
        throw new Error(`${e.message}\n${indent(log.join("\n"))}`);
      });
      await sleep(GRACE_MS);
      const r = await page.evaluate(() => ({
        events: window.__r.events,
        reconnecting: window.__r.reconnecting,
        closed: window.__r.closed,
        id: window.__rconn.connectionId,
      }));
      checkExactlyOnce(r.events, expected, "page");
      assert(proxy.accepted() >= 3, `page: no new socket after the cut (${proxy.accepted()} TCP connections)`);
      assertEq(r.reconnecting, 0, "page: onreconnecting calls");
      assertEq(r.closed, 0, "page: onclose calls");
      assertEq(r.id, started.id, "page: connectionId after the reconnect");
      assert(
        (await metricValue(state.base, "ordertrack_hub_replayed_messages_total")) > replayedBefore,
        "page: nothing was replayed: the cut did not happen while events flowed",
      );
      await page.evaluate(() => window.__rconn.stop());
    },
    { browser: true, timeout: 60_000 },
  );
}
// ------------------------------------------------------------------ s) TLS: wss:// (tls helper)
// Each s/* scenario starts a server of its own with --tls-cert/--tls-key: a private CA and a
// certificate for 127.0.0.1 made with the openssl CLI. The official client connects over
// https:// + wss:// in Node, trusting the CA through NODE_EXTRA_CA_CERTS (Node reads it only at
// start, so the client runs in a child node process), and in Chromium, trusting the server's
// key through --ignore-certificate-errors-spki-list (honoured with a --user-data-dir, which
// playwright always passes).

function makeTlsFiles(dir) {
  const { execFileSync } = require("node:child_process");
  const f = (n) => path.join(dir, n);
  const openssl = (...args) => execFileSync("openssl", args, { stdio: ["ignore", "ignore", "pipe"] });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  openssl("req", "-x509", ...ec, "-days", "2", "-subj", "/CN=interop CA", "-keyout", f("ca.key"), "-out", f("ca.pem"));
  openssl("req", ...ec, "-subj", "/CN=localhost", "-keyout", f("server.key"), "-out", f("server.csr"));
  fs.writeFileSync(f("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  openssl(
    "x509", "-req", "-days", "2", "-in", f("server.csr"), "-CA", f("ca.pem"), "-CAkey", f("ca.key"),
    "-CAcreateserial", "-extfile", f("san.ext"), "-out", f("server.pem"),
  );
  return { cert: f("server.pem"), key: f("server.key"), ca: f("ca.pem") };
}

// One HTTPS request trusting `ca`; {status, text, json}.
function tlsRequest(method, url, { ca, token, body } = {}) {
  const https = require("node:https");
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const payload = body === undefined ? undefined : JSON.stringify(body);
  if (payload !== undefined) headers["Content-Type"] = "application/json";
  return new Promise((resolve, reject) => {
    const req = https.request(url, { method, headers, ca: fs.readFileSync(ca), timeout: WAIT_MS }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (d) => (text += d));
      res.on("end", () => {
        let json;
        try {
          json = text ? JSON.parse(text) : undefined;
        } catch {
          json = undefined;
        }
        resolve({ status: res.statusCode, text, json });
      });
    });
    req.on("timeout", () => req.destroy(new Error(`${method} ${url}: timed out`)));
    req.on("error", reject);
    req.end(payload);
  });
}

// A TLS server for one scenario, stopped when it ends; places one cash order and returns
// what the scenario needs to follow it.
async function tlsServerWithOrder(ctx) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ordertrack-interop-tls-"));
  const tls = makeTlsFiles(dir);
  fs.mkdirSync(path.join(dir, "data"));
  const server = new ServerProcess({
    port: await freePort(),
    dataDir: path.join(dir, "data"),
    logFile: path.join(dir, "server.log"),
    tls,
  });
  ctx.defer(() => server.stop());
  await server.start();
  const svc = await orderService();
  const customer = await newCustomer();
  const restaurantId = randomUUID();
  const body = orderBody({ customerId: customer.sub, restaurantId, paymentMethod: "CashOnDelivery" });
  const placed = await tlsRequest("POST", `${server.base}/api/v1/orders`, { ca: tls.ca, token: svc.token, body });
  assertEq(placed.status, 201, `POST /api/v1/orders over TLS: ${placed.text.slice(0, 200)}`);
  const order = placed.json.order ?? placed.json;
  const accept = async () => {
    const staff = await newStaff(restaurantId);
    const r = await tlsRequest("POST", `${server.base}/api/v1/orders/${order.orderId}/accept`, {
      ca: tls.ca,
      token: staff.token,
      body: { estimatedDeliveryTime: inMinutes(30) },
    });
    assertEq(r.status, 200, `accept over TLS: ${r.text.slice(0, 200)}`);
  };
  return { server, tls, customer, order, accept };
}

// The official Node client in a child process: prints one JSON line per step.
const TLS_NODE_CLIENT = `
import { createRequire } from "node:module";
const require = createRequire(process.env.OT_REQUIRE_FROM);
const signalR = require("@microsoft/signalr");
const out = (o) => process.stdout.write(JSON.stringify(o) + "\\n");
const conn = new signalR.HubConnectionBuilder()
  .withUrl(process.env.OT_BASE + "${CUSTOMER_HUB}", {
    accessTokenFactory: () => process.env.OT_TOKEN,
    transport: signalR.HttpTransportType.WebSockets,
  })
  .configureLogging(signalR.LogLevel.None)
  .build();
conn.on("ReceiveOrderStatusChanged", async (dto) => {
  out({ event: "ReceiveOrderStatusChanged", orderId: dto.orderId, status: dto.status });
  await conn.stop();
  process.exit(0);
});
try {
  await conn.start();
  const current = await conn.invoke("SubscribeToOrder", process.env.OT_ORDER);
  out({ subscribed: current.status });
} catch (e) {
  out({ error: String(e?.message ?? e) });
  process.exit(2);
}
setTimeout(() => { out({ error: "no event" }); process.exit(3); }, ${WAIT_MS * 2});
`;

function spawnTlsNodeClient(ctx, env) {
  const child = spawn(process.execPath, ["--input-type=module", "-e", TLS_NODE_CLIENT], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, OT_REQUIRE_FROM: path.join(HERE, "run.mjs"), ...env },
  });
  ctx.defer(() => child.kill("SIGKILL"));
  const lines = [];
  let buffered = "";
  child.stdout.on("data", (d) => {
    buffered += d;
    const parts = buffered.split("\n");
    buffered = parts.pop();
    for (const p of parts) if (p.trim()) lines.push(JSON.parse(p));
  });
  const exited = new Promise((resolve) => child.on("exit", (code) => resolve(code)));
  return { lines, exited };
}

scenario("s/node", "TLS: official client in Node over https:// + wss:// (NODE_EXTRA_CA_CERTS)", async (ctx) => {
  const { server, tls, customer, order, accept } = await tlsServerWithOrder(ctx);
  const env = { OT_BASE: server.base, OT_TOKEN: customer.token, OT_ORDER: order.orderId };
  // Without the CA the client cannot even negotiate (undici says only "fetch failed").
  const untrusted = spawnTlsNodeClient(ctx, { ...env, NODE_EXTRA_CA_CERTS: "" });
  assertEq(await withTimeout(untrusted.exited, WAIT_MS, "untrusted client exit"), 2, "untrusted client exit code");
  assert(
    /negotiation/i.test(untrusted.lines[0]?.error ?? ""),
    `untrusted client: expected a failed negotiation, got ${show(untrusted.lines)}`,
  );
  const c = spawnTlsNodeClient(ctx, { ...env, NODE_EXTRA_CA_CERTS: tls.ca });
  const first = await waitUntil(() => c.lines[0], "Node client: subscribed over wss://");
  assertEq(first.subscribed, "Placed", `Node client: ${show(first)}`);
  await accept();
  const ev = await waitUntil(() => c.lines[1], "Node client: ReceiveOrderStatusChanged over wss://");
  assertEq(ev.event, "ReceiveOrderStatusChanged", `Node client: ${show(ev)}`);
  assertEq(ev.orderId, order.orderId, "Node client: event orderId");
  assertEq(ev.status, "Accepted", "Node client: event status");
  assertEq(await withTimeout(c.exited, WAIT_MS, "Node client exit"), 0, "Node client exit code");
});

scenario(
  "s/chromium",
  "TLS: official client in Chromium over https:// + wss:// (server key trusted by SPKI hash)",
  async (ctx, env) => {
    const { server, tls, customer, order, accept } = await tlsServerWithOrder(ctx);
    const crypto = require("node:crypto");
    const spki = new crypto.X509Certificate(fs.readFileSync(tls.cert)).publicKey.export({ type: "spki", format: "der" });
    const hash = crypto.createHash("sha256").update(spki).digest("base64");
    assert(fs.existsSync(CHROMIUM), `${CHROMIUM} not found (run scripts/install-test-deps.sh)`);
    const { chromium } = require("playwright-core");
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [...CHROMIUM_ARGS, `--ignore-certificate-errors-spki-list=${hash}`],
      timeout: 30_000,
    });
    ctx.defer(() => browser.close());
    const page = await browser.newPage();
    const sockets = [];
    page.on("websocket", (ws) => sockets.push(ws.url()));
    await page.goto(`${await env.pageBase()}/index.html`, { timeout: WAIT_MS, waitUntil: "load" });
    await page.waitForFunction(() => window.__ready === true, null, { timeout: WAIT_MS });
    const started = await withTimeout(
      page.evaluate((cfg) => window.__track(cfg), {
        base: server.base,
        hub: CUSTOMER_HUB,
        token: customer.token,
        orderId: order.orderId,
        protocol: "json",
      }),
      WAIT_MS + 2000,
      "page: start + SubscribeToOrder over TLS",
    );
    if (!started.ok) {
      const log = await page.evaluate(() => window.__log.slice(-10)).catch(() => []);
      throw new Error(`page could not subscribe over TLS: ${started.error}\n${indent(log.join("\n"))}`);
    }
    assertEq(started.status, "Placed", "page: SubscribeToOrder result status");
    assert(
      sockets.some((u) => u.startsWith("wss://127.0.0.1:") && u.includes(CUSTOMER_HUB)),
      `page: no wss:// socket to ${CUSTOMER_HUB} (saw ${show(sockets)})`,
    );
    await accept();
    const events = await waitUntil(async () => {
      const evs = await page.evaluate(() => window.__events);
      return evs.length > 0 ? evs : null;
    }, "page: ReceiveOrderStatusChanged(Accepted) over wss://");
    assertEq(events[0].name, "ReceiveOrderStatusChanged", "page: event name");
    assertEq(events[0].status, "Accepted", "page: event status");
    await page.evaluate(() => window.__stop());
  },
  { browser: true, timeout: 60_000 },
);

// w) the kitchen board: ResumeRestaurant with the official client (replay after a cursor
// from the board endpoint, then live, while writes race it; CursorExpired), and the /board
// page in Chromium following a restaurant across a server restart.
async function boardCursor(restaurantId, staff) {
  const res = await api("GET", `/api/v1/restaurants/${restaurantId}/orders?pageSize=100`, staff.token);
  return expectStatus(res, 200, "GET /api/v1/restaurants/{id}/orders");
}

for (const protocol of PROTOCOLS) {
  scenario(`w/resume/${protocol}`, "ResumeRestaurant: replay after the board's cursor, then live, racing writes", async (ctx) => {
    const restaurantId = randomUUID();
    const staff = await newStaff(restaurantId);
    const customer = await newCustomer();
    const place = () => placeOrder({ customerId: customer.sub, restaurantId, paymentMethod: "CashOnDelivery" });
    await place();
    const { cursor } = await boardCursor(restaurantId, staff);
    assert(Number.isInteger(cursor) && cursor > 0, `board cursor ${show(cursor)}`);
    const missed = [await place(), await place()];
    const c = await ctx.connect({ hub: RESTAURANT_HUB, token: staff.token, protocol, label: `resume/${protocol}` });
    // Writes race the resume: some commit before its outbox read, some after.
    const racing = Promise.all([place(), place(), place()]);
    await c.invoke("ResumeRestaurant", restaurantId, cursor);
    const raced = await racing;
    const want = [...missed, ...raced].map((o) => o.orderId);
    await waitUntil(() => c.events.length >= want.length, `${c.label}: ${want.length} events`);
    await sleep(GRACE_MS);
    const got = c.events.map((e) => e.dto.orderId);
    assertEq(got.length, want.length, `${c.label}: number of events (${fmtEvents(c.events)})`);
    assertEq(JSON.stringify(got.slice(0, 2)), JSON.stringify(want.slice(0, 2)), `${c.label}: replayed orders first`);
    assertEq(JSON.stringify([...got].sort()), JSON.stringify([...want].sort()), `${c.label}: every order once`);
    const seqs = c.events.map((e) => e.dto.sequence);
    assert(seqs.every((s, i) => s > cursor && (i === 0 || s > seqs[i - 1])), `${c.label}: sequences ${seqs}`);
    c.events.forEach((e, i) =>
      checkDto(e.dto, { protocol, orderId: e.dto.orderId, status: "Placed", restaurantId, label: `${c.label} #${i + 1}` }),
    );
    const live = await place();
    await c.waitEvents(live.orderId, 1, `${c.label}: a live event after the replay`);
    await expectRejection(c.invoke("ResumeRestaurant", restaurantId, 1e12), `${c.label}: cursor past the newest event`, c).then(
      (e) => assert(String(e?.message ?? e).startsWith("CursorExpired:"), `${c.label}: error ${show(e?.message ?? e)}`),
    );
  });
}

scenario(
  "w/board",
  "/board in Chromium: loads, follows live, survives a server restart without losing an order",
  async (ctx, env) => {
    const restaurantId = randomUUID();
    const staff = await newStaff(restaurantId);
    const customer = await newCustomer();
    const place = () => placeOrder({ customerId: customer.sub, restaurantId, paymentMethod: "CashOnDelivery" });
    const first = [await place(), await place()];
    const browser = await env.browser();
    const page = await browser.newPage({ viewport: { width: 1200, height: 600 } });
    ctx.defer(() => page.close());
    const consoleLines = [];
    const requests = [];
    page.on("console", (m) => consoleLines.push(`[console.${m.type()}] ${m.text()}`));
    page.on("pageerror", (e) => consoleLines.push(`[pageerror] ${e.message}`));
    page.on("request", (r) => requests.push(r.url()));
    ctx.defer(() => {
      if (ctx.failed && consoleLines.length) console.log(indent(consoleLines.slice(-15).join("\n")));
    });
    const shots = path.join(REPO, "target", "interop");
    fs.mkdirSync(shots, { recursive: true });
    const onBoard = (id, status) =>
      page.evaluate(
        ([id, status]) => !!document.querySelector(`section[data-status="${status}"] li[data-order-id="${id}"]`),
        [id, status],
      );
    const waitOnBoard = (id, status, what) => waitUntil(() => onBoard(id, status), `page: ${what}`, 20_000, 100);
    const live = () => page.evaluate(() => document.getElementById("state").dataset.state === "live");

    await page.goto(`${state.base}/board#token=${staff.token}&restaurant=${restaurantId}`, { timeout: WAIT_MS });
    for (const o of first) await waitOnBoard(o.orderId, "Placed", "orders from the board endpoint");
    await waitUntil(live, "page: live after ResumeRestaurant", WAIT_MS, 100);
    const third = await place();
    await waitOnBoard(third.orderId, "Placed", "a live ReceiveOrderPlaced");
    await act(first[0].orderId, "accept", staff, { estimatedDeliveryTime: inMinutes(30) }, "Accepted");
    await waitOnBoard(first[0].orderId, "Accepted", "a live status change");

    const stopped = await env.server.stop();
    assertEq(stopped.code, 0, "server exit code after SIGTERM");
    await env.server.start();
    // Placed while the page is still reconnecting: only the resume can bring it.
    const during = await place();
    await act(first[1].orderId, "accept", staff, { estimatedDeliveryTime: inMinutes(30) }, "Accepted");
    await waitOnBoard(during.orderId, "Placed", "the order placed during the reconnect");
    await waitOnBoard(first[1].orderId, "Accepted", "the change made during the reconnect");
    await waitUntil(live, "page: live again after the restart", 20_000, 100);
    const after = await place();
    await waitOnBoard(after.orderId, "Placed", "a live event after the restart");
    const shot = path.join(shots, "board-after-restart.png");
    await page.screenshot({ path: shot, fullPage: true });
    console.log(indent(`screenshot: ${shot}`));
    const count = await page.evaluate(() => document.querySelectorAll("main li").length);
    assertEq(count, 5, "page: orders on the board");
    assert(
      requests.every((u) => u.startsWith(state.base) || u.startsWith("ws://127.0.0.1")),
      `page fetched from elsewhere: ${requests.filter((u) => !u.startsWith(state.base)).join(", ")}`,
    );
    assert(
      requests.every((u) => !/[?&](token|access_token)=/.test(u) || u.startsWith("ws://")),
      "page: a token in an HTTP query string",
    );
  },
  { browser: true, needsOwnServer: true, timeout: 90_000 },
);

// ------------------------------------------------------------------ m: cluster mode (issue 14)
// The official client on a replica of a region (one real nats-server -js, two ordertrack nodes
// with --nats): subscribed there, it gets every change made through the primary and through the
// replica (forwarded), once and in order; a placement through the replica is answered by the
// primary. Each scenario starts its own NATS server and nodes (docs/cluster.md).

function natsServerBin() {
  for (const dir of [...(process.env.PATH ?? "").split(":"), "/usr/sbin", "/usr/bin"]) {
    const candidate = path.join(dir || ".", "nats-server");
    if (fs.existsSync(candidate)) return candidate;
  }
  throw new Error("nats-server is not installed (scripts/install-test-deps.sh installs it)");
}

// Starts one JetStream server on free ports with its own storage; resolves to its client URL
// once its monitoring endpoint answers. Killed by the scenario's cleanup.
async function startJetStream(ctx, dir) {
  const [port, monitor] = [await freePort(), await freePort()];
  const log = fs.openSync(path.join(dir, "nats.log"), "a");
  const proc = spawn(
    natsServerBin(),
    ["-js", "-a", "127.0.0.1", "-p", String(port), "-m", String(monitor), "-sd", path.join(dir, "nats")],
    { stdio: ["ignore", log, log] },
  );
  fs.closeSync(log);
  ctx.defer(() => proc.kill("SIGKILL"));
  await waitUntil(
    async () => (await fetch(`http://127.0.0.1:${monitor}/healthz`).catch(() => null))?.status === 200,
    "nats-server /healthz",
    WAIT_MS,
    100,
  );
  return `nats://127.0.0.1:${port}`;
}

// Starts an ordertrack node of cluster `name`; resolves once /readyz says `role`.
async function startClusterNode(ctx, dir, label, nats, name, role) {
  const node = new ServerProcess({
    port: await freePort(),
    dataDir: path.join(dir, label),
    logFile: path.join(dir, `${label}.log`),
    extra: ["--nats", nats, "--cluster", name, "--cluster-replicas", "1", "--cluster-lease-ttl", "1500ms"],
  });
  fs.mkdirSync(node.dataDir);
  ctx.defer(() => node.killNow());
  await node.start();
  const readyz = async () => (await fetch(`${node.base}/readyz`).then((r) => r.json()).catch(() => ({}))).role;
  await waitUntil(async () => (await readyz()) === role, `${label}: /readyz role ${role}`, WAIT_MS, 100);
  return node;
}

// Runs `fn` with the REST helpers (api, placeOrder, act) pointed at `base`.
async function throughNode(base, fn) {
  const saved = state.base;
  state.base = base;
  try {
    return await fn();
  } finally {
    state.base = saved;
  }
}

for (const protocol of PROTOCOLS) {
  scenario(`m/replica/${protocol}`, "cluster: official client on a replica gets changes made through either node, once, in order", async (ctx) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ordertrack-interop-m-"));
    ctx.defer(() => fs.rmSync(dir, { recursive: true, force: true }));
    const nats = await startJetStream(ctx, dir);
    const name = `interop_${protocol}_${process.pid}`;
    const primary = await startClusterNode(ctx, dir, "primary", nats, name, "primary");
    const replica = await startClusterNode(ctx, dir, "replica", nats, name, "replica");
    const customer = await newCustomer();
    const restaurantId = randomUUID();
    const staff = await newStaff(restaurantId);
    const order = await throughNode(replica.base, () =>
      placeOrder({ customerId: customer.sub, restaurantId, paymentMethod: "CashOnDelivery" }),
    );
    const label = `replica/${protocol}`;
    const c = await ctx.connect({ hub: CUSTOMER_HUB, token: customer.token, protocol, label, base: replica.base });
    // The placement was answered by the primary: wait until the replica has applied it.
    let current;
    await waitUntil(
      async () => {
        current = await c.invoke("SubscribeToOrder", order.orderId).catch(() => null);
        return current !== null;
      },
      `${label}: SubscribeToOrder once the replica has the order`,
      WAIT_MS,
      100,
    );
    checkDto(current, { protocol, orderId: order.orderId, status: "Placed", restaurantId, isEvent: false, label });
    const eta = { estimatedDeliveryTime: inMinutes(30) };
    await throughNode(primary.base, () => act(order.orderId, "accept", staff, eta, "Accepted"));
    await throughNode(replica.base, () => act(order.orderId, "preparing", staff, {}, "Preparing"));
    await throughNode(primary.base, () => act(order.orderId, "ready", staff, {}, "ReadyForDelivery"));
    await throughNode(replica.base, () => act(order.orderId, "delivered", staff, {}, "Delivered"));
    const events = await c.waitEvents(order.orderId, 4, `${label}: 4 events`);
    const statuses = ["Accepted", "Preparing", "ReadyForDelivery", "Delivered"];
    const expected = statuses.map((status) => ["ReceiveOrderStatusChanged", status]);
    checkEvents(events, expected, { protocol, orderId: order.orderId, restaurantId, label });
    await sleep(GRACE_MS);
    assertEq(c.events.length, 4, `${label}: events once (${fmtEvents(c.events)})`);
  }, { timeout: 60_000 });
}

// ------------------------------------------------------------------ the browser side

const PAGE_HTML = `<!doctype html>
<html>
<head>
<meta charset="utf-8">
<title>ordertrack interop</title>
<script src="/signalr.min.js"></script>
<script src="/signalr-protocol-msgpack.min.js"></script>
</head>
<body>
<h1>ordertrack interop</h1>
<pre id="out"></pre>
<script>
(function () {
  var EVENTS = ${JSON.stringify(EVENT_NAMES)};
  window.__events = [];
  window.__log = [];
  function describe(v) {
    if (v instanceof Date) return { kind: "Date", value: isNaN(v.getTime()) ? null : v.toISOString() };
    return { kind: v === null ? "null" : typeof v, value: v };
  }
  function note(text) {
    document.getElementById("out").textContent += text + "\\n";
  }
  window.__selfcheck = function () {
    return {
      hubConnectionBuilder: typeof (window.signalR && signalR.HubConnectionBuilder),
      messagePack: typeof (window.signalR && signalR.protocols && signalR.protocols.msgpack &&
                           signalR.protocols.msgpack.MessagePackHubProtocol),
      version: window.signalR ? signalR.VERSION : null,
      origin: location.origin
    };
  };
  window.__track = async function (cfg) {
    var builder = new signalR.HubConnectionBuilder()
      .withUrl(cfg.base + cfg.hub, { accessTokenFactory: function () { return cfg.token; }, transport: cfg.transport })
      .withAutomaticReconnect()
      .configureLogging({ log: function (level, message) { window.__log.push(level + " " + message); } });
    if (cfg.protocol === "msgpack") {
      builder = builder.withHubProtocol(new signalR.protocols.msgpack.MessagePackHubProtocol());
    }
    var conn = builder.build();
    window.__conn = conn;
    EVENTS.forEach(function (name) {
      conn.on(name, function (dto) {
        dto = dto || {};
        window.__events.push({
          name: name,
          orderId: dto.orderId,
          status: dto.status,
          eventId: dto.eventId,
          lastUpdateTimestamp: describe(dto.lastUpdateTimestamp)
        });
        note(name + " " + dto.status);
      });
    });
    try {
      await conn.start();
      var current = await conn.invoke("SubscribeToOrder", cfg.orderId);
      note("subscribed: " + (current && current.status));
      return {
        ok: true,
        orderId: current && current.orderId,
        status: current && current.status,
        lastUpdateTimestamp: describe(current && current.lastUpdateTimestamp)
      };
    } catch (e) {
      return { ok: false, error: String((e && e.message) || e) };
    }
  };
  window.__stop = async function () {
    if (!window.__conn) return "none";
    await window.__conn.stop();
    return window.__conn.state;
  };
  window.__ready = !!(window.signalR && signalR.HubConnectionBuilder);
})();
</script>
</body>
</html>
`;

const STATIC_FILES = {
  "/signalr.min.js": path.join(HERE, "node_modules/@microsoft/signalr/dist/browser/signalr.min.js"),
  "/signalr-protocol-msgpack.min.js": path.join(
    HERE,
    "node_modules/@microsoft/signalr-protocol-msgpack/dist/browser/signalr-protocol-msgpack.min.js",
  ),
};

// A tiny static server on its own port, so that the page's origin differs from the API's.
function startPageServer() {
  return new Promise((resolve, reject) => {
    const server = http.createServer((req, res) => {
      const url = new URL(req.url, "http://x");
      if (req.method !== "GET" && req.method !== "HEAD") {
        res.writeHead(405).end();
        return;
      }
      if (url.pathname === "/" || url.pathname === "/index.html") {
        res.writeHead(200, { "Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store" });
        res.end(PAGE_HTML);
        return;
      }
      const file = STATIC_FILES[url.pathname];
      if (file) {
        fs.readFile(file, (err, data) => {
          if (err) {
            res.writeHead(500, { "Content-Type": "text/plain" }).end(String(err.message));
          } else {
            res.writeHead(200, { "Content-Type": "text/javascript; charset=utf-8", "Cache-Control": "no-store" });
            res.end(data);
          }
        });
        return;
      }
      res.writeHead(404, { "Content-Type": "text/plain" }).end("not found");
    });
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => resolve(server));
  });
}

async function launchChromium() {
  assert(fs.existsSync(CHROMIUM), `${CHROMIUM} not found (run scripts/install-test-deps.sh)`);
  const { chromium } = require("playwright-core");
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: 30_000,
  });
}

// Lazily started browser and page server, shared by the browser scenarios.
function browserEnv() {
  let browserPromise = null;
  let pageServerPromise = null;
  return {
    browser() {
      browserPromise ??= launchChromium();
      return browserPromise;
    },
    async pageBase() {
      pageServerPromise ??= startPageServer();
      const s = await pageServerPromise;
      return `http://127.0.0.1:${s.address().port}`;
    },
    async close() {
      if (browserPromise) {
        try {
          const b = await browserPromise;
          await withTimeout(b.close(), 10_000, "browser close");
        } catch {
          /* best effort */
        }
      }
      if (pageServerPromise) {
        try {
          const s = await pageServerPromise;
          s.closeAllConnections?.();
          await new Promise((r) => s.close(r));
        } catch {
          /* best effort */
        }
      }
    },
  };
}

// --browser-selftest: no ordertrack server needed. Launches Chromium, loads the page
// from the static server, checks that the bundles define their globals, and that the
// client reports (rather than hangs on) a server that is not there.
async function browserSelftest() {
  const results = [];
  const env = browserEnv();
  const check = async (name, fn) => {
    const t0 = Date.now();
    try {
      await withTimeout(fn(), 40_000, name);
      results.push({ name, ok: true, ms: Date.now() - t0 });
      console.log(`PASS ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
    } catch (e) {
      results.push({ name, ok: false });
      console.log(`FAIL ${name}\n${indent(e.stack || e.message)}`);
    }
  };
  let page = null;
  await check("chromium launches via playwright-core", async () => {
    const b = await env.browser();
    console.log(indent(`chromium ${b.version()}`));
  });
  await check("test page loads from its own origin with both bundles", async () => {
    const b = await env.browser();
    page = await b.newPage();
    await page.goto(`${await env.pageBase()}/index.html`, { timeout: WAIT_MS });
    await page.waitForFunction(() => window.__ready === true, null, { timeout: WAIT_MS });
    const info = await page.evaluate(() => window.__selfcheck());
    assertEq(info.hubConnectionBuilder, "function", "signalR.HubConnectionBuilder");
    assertEq(info.messagePack, "function", "signalR.protocols.msgpack.MessagePackHubProtocol");
    assert(/^10\./.test(info.version), `signalR.VERSION ${info.version}`);
    console.log(indent(`signalR ${info.version} loaded in page ${info.origin}`));
  });
  await check("client in the page reports an unreachable server (json and msgpack)", async () => {
    assert(page, "no page");
    const deadPort = await freePort();
    for (const protocol of PROTOCOLS) {
      const r = await page.evaluate((cfg) => window.__track(cfg), {
        base: `http://127.0.0.1:${deadPort}`,
        hub: CUSTOMER_HUB,
        token: "x.y.z",
        orderId: randomUUID(),
        protocol,
      });
      assert(r.ok === false && r.error, `expected a failed start, got ${show(r)}`);
      console.log(indent(`${protocol}: ${r.error.slice(0, 120)}`));
    }
  });
  await env.close();
  const passed = results.filter((r) => r.ok).length;
  const failed = results.length - passed;
  console.log(`${passed} passed, ${failed} failed`);
  return failed === 0 ? 0 : 1;
}

// ------------------------------------------------------------------ main

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  process.on("unhandledRejection", (e) => {
    if (VERBOSE) console.log(`    (late rejection ignored: ${e?.message ?? e})`);
  });

  if (opts.browserSelftest) return browserSelftest();

  const selected = scenarios.filter((s) => {
    if (opts.only.length === 0) return true;
    const letter = s.id.split("/")[0];
    return opts.only.includes(letter) || opts.only.includes(s.id);
  });

  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "ordertrack-interop-"));
  const logFile = path.join(tmp, "server.log");
  let server = null;
  const results = [];
  const record = (s, status, ms, detail) => {
    results.push({ id: s.id, title: s.title, status, ms, detail });
    const time = ms === undefined ? "" : ` (${(ms / 1000).toFixed(1)} s)`;
    console.log(`${status} ${s.id.padEnd(15)} ${s.title}${time}`);
    if (detail) console.log(indent(detail));
  };

  const cleanupAndExit = (code) => {
    if (server) server.killNow();
    process.exit(code);
  };
  process.on("SIGINT", () => cleanupAndExit(130));
  process.on("SIGTERM", () => cleanupAndExit(143));
  process.on("exit", () => server?.killNow());

  let setupError = null;
  try {
    if (!fs.existsSync(BIN)) throw new Error(`server binary ${BIN} not found (cargo build, or set ORDERTRACK_BIN)`);
    if (opts.base) {
      state.base = opts.base;
      console.log(`using the running server at ${state.base} (restart scenario skipped)`);
    } else {
      const port = await freePort();
      const dataDir = path.join(tmp, "data");
      fs.mkdirSync(dataDir);
      server = new ServerProcess({ port, dataDir, logFile });
      state.base = server.base;
      console.log(`starting ${path.relative(process.cwd(), BIN) || BIN} on ${state.base} (data and log in ${tmp})`);
      await server.start();
    }
    // Fail fast if tokens cannot be minted at all.
    await orderService();
  } catch (e) {
    setupError = e;
    console.log(`SETUP FAILED: ${e.message}`);
  }

  const browser = browserEnv();
  const env = { server, browser: () => browser.browser(), pageBase: () => browser.pageBase() };
  const suiteStart = Date.now();

  for (const s of selected) {
    if (setupError) {
      record(s, "FAIL", undefined, "setup failed (see above)");
      continue;
    }
    if (s.browser && SKIP_BROWSER) {
      record(s, "SKIP", undefined, "INTEROP_SKIP_BROWSER=1");
      continue;
    }
    if (s.needsOwnServer && !server) {
      record(s, "SKIP", undefined, "needs a server started by this runner (not with --base)");
      continue;
    }
    if (server && !server.running()) {
      // A previous scenario left it down (or it crashed): bring it back so the
      // remaining scenarios still say something useful.
      const why = `server process had exited (code ${server.exit?.code}, signal ${server.exit?.signal})`;
      try {
        await server.start();
        console.log(`    note: ${why}; restarted it`);
      } catch (e) {
        record(s, "FAIL", undefined, `${why} and could not be restarted: ${e.message}`);
        continue;
      }
    }
    const ctx = new Context(s.id);
    const t0 = Date.now();
    try {
      await withTimeout(Promise.resolve().then(() => s.fn(ctx, env)), s.timeout, `scenario ${s.id}`);
      await ctx.close();
      record(s, "PASS", Date.now() - t0);
    } catch (e) {
      ctx.failed = true;
      const logs = ctx.clientLogs();
      await ctx.close();
      let detail = e?.message ?? String(e);
      if (logs) detail += `\nclient log (Information and above):\n${indent(logs, "  ")}`;
      record(s, "FAIL", Date.now() - t0, detail);
    }
  }

  await browser.close();

  // The server must shut down cleanly on SIGTERM (contract section 7).
  if (server && !setupError) {
    const s = { id: "shutdown", title: "SIGTERM: server exits with code 0 within 10 s" };
    const t0 = Date.now();
    const r = await server.stop();
    if (r.forced) record(s, "FAIL", Date.now() - t0, `no exit within ${STOP_MS} ms; killed`);
    else if (r.code !== 0) record(s, "FAIL", Date.now() - t0, `exit code ${r.code}, signal ${r.signal}`);
    else record(s, "PASS", Date.now() - t0);
  } else if (server) {
    await server.stop();
  }

  const passed = results.filter((r) => r.status === "PASS").length;
  const failed = results.filter((r) => r.status === "FAIL").length;
  const skipped = results.filter((r) => r.status === "SKIP").length;

  console.log("\nsummary:");
  for (const r of results) console.log(`  ${r.status} ${r.id.padEnd(15)} ${r.title}`);
  if (failed > 0 && server) {
    const panics = panicLines(logFile);
    if (panics) console.log(`\nserver panics (from ${logFile}):\n${indent(panics, "  ")}`);
    console.log(`\nlast lines of the server log (${logFile}):`);
    console.log(indent(tail(logFile, 40), "  "));
  } else if (VERBOSE && server) {
    console.log(`\nserver log:\n${indent(tail(logFile, 200), "  ")}`);
  }
  if (failed === 0 && !VERBOSE) fs.rmSync(tmp, { recursive: true, force: true });
  console.log(`\ninterop suite took ${((Date.now() - suiteStart) / 1000).toFixed(1)} s`);
  console.log(`${passed} passed, ${failed} failed` + (skipped ? `, ${skipped} skipped` : ""));
  return failed === 0 && passed > 0 ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (e) => {
    console.error(e?.stack || e);
    process.exit(1);
  },
);
