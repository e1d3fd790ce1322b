// Interop: real Socket.IO, SockJS+STOMP and `ws` servers on three nodes behind the
// real tether binary, driven by their own client libraries. Every client must land on
// the node `tether owner` names for its principal, on every transport.
// usage: node run.mjs /path/to/tether   (tests/interop.rs runs it)
import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
const require = createRequire(import.meta.url);
const { WebSocketServer, WebSocket } = require('ws');
const { Server: IoServer } = require('socket.io');
const ioClient = require('socket.io-client');
const sockjs = require('sockjs');
const SockJS = require('sockjs-client');
const { Client: StompClient } = require('@stomp/stompjs');

const withTimeout = (p, ms, what) => Promise.race([p, new Promise((_, rej) => setTimeout(() => rej(new Error(`timeout: ${what}`)), ms))]);
const fail = (m) => { console.error('FAIL:', m); process.exitCode = 1; };

function listen(server) {
  return new Promise((res) => server.listen(0, '127.0.0.1', () => res(server.address().port)));
}

// A node: socket.io on /socket.io/, sockjs (STOMP inside) on /stomp, ws on /ws/{user}.
async function node(name) {
  const server = http.createServer((req, res) => {
    if (req.url.startsWith('/push/')) {
      const user = req.url.split('/')[2];
      const sock = wsUsers.get(user);
      if (sock) sock.send(`push for ${user}`);
      res.writeHead(sock ? 200 : 404); res.end(name);
      return;
    }
    res.writeHead(200, { 'content-type': 'text/plain' }); res.end(name);
  });
  const io = new IoServer(server, { path: '/socket.io/' });
  io.on('connection', (s) => {
    s.emit('hello', { node: name, transport: s.conn.transport.name });
    s.on('echo', (m, ack) => ack({ node: name, m, transport: s.conn.transport.name }));
  });
  const sj = sockjs.createServer({ log: () => {} });
  sj.on('connection', (conn) => {
    // Minimal STOMP 1.2 server: CONNECT -> CONNECTED, SEND to a destination -> MESSAGE
    // to every subscription of this connection with the node's name in a header.
    const subs = new Map();
    conn.on('data', (data) => {
      for (const raw of data.split('\0')) {
        const frame = raw.replace(/^\n+/, '');
        if (!frame) continue;
        const [head, ...rest] = frame.split('\n\n');
        const [command, ...lines] = head.split('\n');
        const h = Object.fromEntries(lines.map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 1)]));
        const body = rest.join('\n\n');
        if (command === 'CONNECT' || command === 'STOMP') {
          conn.write(`CONNECTED\nversion:1.2\nheart-beat:0,0\nserver:${name}\n\n\0`);
        } else if (command === 'SUBSCRIBE') {
          subs.set(h.id, h.destination);
        } else if (command === 'SEND') {
          for (const [id, dest] of subs) {
            if (dest === h.destination) {
              conn.write(`MESSAGE\nsubscription:${id}\nmessage-id:${Date.now()}\ndestination:${dest}\nnode:${name}\ncontent-length:${Buffer.byteLength(body)}\n\n${body}\0`);
            }
          }
        } else if (command === 'DISCONNECT' && h.receipt) {
          conn.write(`RECEIPT\nreceipt-id:${h.receipt}\n\n\0`);
        }
      }
    });
  });
  sj.installHandlers(server, { prefix: '/stomp' });
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: true });
  const wsUsers = new Map();
  server.on('upgrade', (req, socket, head) => {
    if (!req.url.startsWith('/ws/')) return;
    wss.handleUpgrade(req, socket, head, (ws) => {
      const user = req.url.split('/')[2];
      wsUsers.set(user, ws);
      ws.send(JSON.stringify({ node: name, ext: req.headers['sec-websocket-extensions'] || '', proto: ws.protocol }));
      ws.on('message', (m, binary) => ws.send(m, { binary }));
      ws.on('close', () => wsUsers.delete(user));
    });
  });
  // Every socket, so the node can crash: destroyed without a goodbye.
  const sockets = new Set();
  server.on('connection', (sock) => { sockets.add(sock); sock.on('close', () => sockets.delete(sock)); });
  const crash = () => { server.close(); for (const sock of sockets) sock.destroy(); };
  const port = await listen(server);
  return { name, port, server, io, crash };
}

// tether on an ephemeral port: the port is read from its "listening" log line.
async function startTether(bin, nodes) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tether-interop-'));
  const conf = path.join(dir, 'tether.toml');
  const backends = nodes.map((n) => `{ addr = "127.0.0.1:${n.port}", name = "${n.name}" }`).join(', ');
  // path prefix, principal source, fallback (/stomp/info has no session yet: "ip").
  const routes = [
    ['/socket.io/', 'query:userId', 'reject'],
    ['/stomp/', 'path:3', 'ip'],
    ['/ws/', 'path:2', 'reject'],
    ['/push/', 'path:2', 'reject'],
  ].map(([p, source, fallback]) => `[[route]]\npath = "${p}"\nupstream = "app"\nprincipal = ["${source}"]\nfallback = "${fallback}"\n`);
  fs.writeFileSync(conf, `[[listener]]\nbind = "127.0.0.1:0"\n\n${routes.join('\n')}\n[upstream.app]\nbackends = [${backends}]\n`);
  const child = spawn(bin, ['run', '--config', conf], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, NO_COLOR: '1', RUST_LOG: 'info' },
  });
  let log = '';
  const port = await withTimeout(new Promise((res, rej) => {
    child.stderr.on('data', (d) => {
      log += d;
      const m = /listening.*local=127\.0\.0\.1:(\d+)/.exec(log);
      if (m) res(Number(m[1]));
    });
    child.on('exit', (code) => rej(new Error(`tether exited ${code}:\n${log}`)));
  }), 10000, 'tether start');
  return { port, child, conf, dir, log: () => log };
}

// What `tether owner` says for `key` (all backends up), or, with `without`, when that
// backend is gone: placement then picks the next node, as with the backend removed.
function owner(bin, conf, key, without) {
  if (without) {
    const other = conf.replace(/\.toml$/, `-without-${without}.toml`);
    fs.writeFileSync(other, fs.readFileSync(conf, 'utf8').replace(new RegExp(`\\{ addr = "[^"]+", name = "${without}" \\},? ?`), ''));
    conf = other;
  }
  return new Promise((res, rej) => {
    const c = spawn(bin, ['owner', '--config', conf, '--upstream', 'app', key]);
    let out = '';
    c.stdout.on('data', (d) => { out += d; });
    c.on('exit', (code) => (code === 0 ? res(out.trim()) : rej(new Error('owner failed'))));
  });
}


async function socketIo(base, user, transports) {
  const s = ioClient(base, { path: '/socket.io/', query: { userId: user }, transports, reconnection: false, forceNew: true });
  const hello = await withTimeout(new Promise((res, rej) => { s.on('hello', res); s.on('connect_error', rej); }), 5000, `socket.io hello ${user}`);
  // Wait for the polling -> websocket upgrade when both are allowed.
  if (transports.length > 1) {
    await withTimeout(new Promise((res) => { if (s.io.engine.transport.name === 'websocket') res(); else s.io.engine.on('upgrade', res); }), 5000, `socket.io upgrade ${user}`);
  }
  const reply = await withTimeout(s.emitWithAck('echo', `hi ${user}`), 5000, `socket.io echo ${user}`);
  s.close();
  return { hello, reply };
}

async function stomp(base, user, transport) {
  // The session id is the principal (path:3 of /stomp/{server}/{session}/{transport}).
  const sessionId = () => user;
  return withTimeout(new Promise((res, rej) => {
    const client = new StompClient({
      webSocketFactory: () => new SockJS(`${base}/stomp`, null, { transports: [transport], sessionId }),
      reconnectDelay: 0,
      heartbeatIncoming: 0,
      heartbeatOutgoing: 0,
      debug: () => {},
    });
    client.onConnect = (frame) => {
      client.subscribe('/topic/echo', (m) => {
        res({ connected: frame.headers.server, message: m.headers.node, body: m.body });
        client.deactivate();
      });
      client.publish({ destination: '/topic/echo', body: `hi ${user}` });
    };
    client.onStompError = (f) => rej(new Error(f.headers.message));
    client.onWebSocketError = (e) => rej(new Error(`sockjs error ${e && e.message}`));
    client.activate();
  }), 8000, `stomp ${user} ${transport}`);
}

async function plainWs(base, user) {
  const ws = new WebSocket(`${base.replace('http', 'ws')}/ws/${user}`, ['chat'], { perMessageDeflate: true });
  const q = [];
  let wake = null;
  ws.on('message', (m) => { q.push(m); if (wake) wake(); });
  const next = () => withTimeout(new Promise((res) => { if (q.length) res(q.shift()); else wake = () => { wake = null; res(q.shift()); }; }), 5000, `ws ${user}`);
  await withTimeout(new Promise((res, rej) => { ws.on('open', res); ws.on('error', rej); }), 5000, `ws open ${user}`);
  const hello = JSON.parse((await next()).toString());
  const big = Buffer.alloc(256 * 1024, 'x'.charCodeAt(0)); // compressible: permessage-deflate must work
  ws.send(big);
  const echoed = await next();
  return { ws, hello, bigOk: Buffer.compare(Buffer.from(echoed), big) === 0, next, extensions: ws.extensions };
}

const bin = process.argv[2];
const nodes = await Promise.all(['n1', 'n2', 'n3'].map(node));
const t = await startTether(bin, nodes);
const base = `http://127.0.0.1:${t.port}`;
try {
  // Socket.IO: polling first, then upgrade; both must reach the same node.
  const seen = new Set();
  for (let i = 0; i < 12; i++) {
    const user = `io-user-${i}`;
    const want = await owner(bin, t.conf, user);
    const { hello, reply } = await socketIo(base, user, ['polling', 'websocket']);
    seen.add(hello.node);
    if (hello.node !== want || reply.node !== want) fail(`socket.io ${user}: owner ${want}, hello ${hello.node}, reply ${reply.node}`);
    if (reply.transport !== 'websocket') fail(`socket.io ${user} did not upgrade: ${reply.transport}`);
    const ws = await socketIo(base, user, ['websocket']);
    if (ws.hello.node !== want) fail(`socket.io ws-only ${user}: owner ${want}, got ${ws.hello.node}`);
  }
  if (seen.size !== 3) fail(`socket.io users used ${seen.size} nodes`);
  console.log('socket.io: polling+upgrade and websocket-only pinned to owners on', [...seen].sort().join(','));

  // SockJS + STOMP over every transport: the session pins all requests of a transport.
  for (const transport of ['websocket', 'xhr-streaming', 'xhr-polling']) {
    for (let i = 0; i < 6; i++) {
      const user = `stomp${transport.replace('-', '')}${i}`;
      const want = await owner(bin, t.conf, user);
      const r = await stomp(base, user, transport);
      if (r.connected !== want || r.message !== want || r.body !== `hi ${user}`) fail(`stomp ${transport} ${user}: owner ${want}, got ${JSON.stringify(r)}`);
    }
  }
  console.log('sockjs+stomp: websocket, xhr-streaming, xhr-polling pinned to owners');

  // ws with permessage-deflate and a subprotocol; push through tether reaches the socket.
  const c = await plainWs(base, 'alice');
  const want = await owner(bin, t.conf, 'alice');
  if (c.hello.node !== want) fail(`ws alice on ${c.hello.node}, owner ${want}`);
  if (!c.hello.ext.includes('permessage-deflate') || !c.extensions.includes('permessage-deflate')) fail(`permessage-deflate not negotiated: offered ${c.hello.ext}, got ${c.extensions}`);
  if (c.hello.proto !== 'chat' || c.ws.protocol !== 'chat') fail(`subprotocol: ${c.hello.proto} / ${c.ws.protocol}`);
  if (!c.bigOk) fail('256 KiB compressed message did not echo intact');
  const push = await fetch(`${base}/push/alice`, { method: 'POST' });
  if (push.status !== 200) fail(`push answered ${push.status}`);
  const pushed = (await c.next()).toString();
  if (pushed !== 'push for alice') fail(`pushed: ${pushed}`);
  const closed = new Promise((res) => c.ws.on('close', (code) => res(code)));
  c.ws.close(1000, 'bye');
  const code = await withTimeout(closed, 5000, 'ws close');
  if (code !== 1000) fail(`close code ${code}`);
  console.log('ws: permessage-deflate, subprotocol, 256 KiB echo, push, clean close');

  // A node crashes. Its Socket.IO clients are closed by tether (1012), reconnect on
  // their own (polling, then the upgrade) and land on their next node; every other
  // client keeps its connection.
  const clients = await Promise.all(Array.from({ length: 30 }, async (_, i) => {
    const user = `fo-${i}`;
    const s = ioClient(base, { path: '/socket.io/', query: { userId: user }, forceNew: true, reconnectionDelay: 50, reconnectionDelayMax: 200 });
    const c = { user, s, nodes: [], disconnects: [], waiters: [] };
    s.on('hello', (h) => { c.nodes.push(h.node); c.waiters.splice(0).forEach((w) => w()); });
    s.on('disconnect', (why) => c.disconnects.push(why));
    c.hellos = (n) => withTimeout(new Promise((res) => { if (c.nodes.length >= n) res(); else c.waiters.push(() => c.nodes.length >= n && res()); }), 10000, `socket.io ${user} hello #${n}`);
    await c.hellos(1);
    await withTimeout(new Promise((res) => { if (s.io.engine.transport.name === 'websocket') res(); else s.io.engine.on('upgrade', res); }), 5000, `socket.io upgrade ${user}`);
    return c;
  }));
  const victim = nodes[1];
  const moved = clients.filter((c) => c.nodes[0] === victim.name);
  if (moved.length === 0 || moved.length === clients.length) fail(`${moved.length} of ${clients.length} clients on ${victim.name}`);
  victim.crash();
  // Reconnecting clients keep retrying (reconnectionDelay 50 ms) until they land.
  await Promise.all(moved.map((c) => c.hellos(2)));
  for (const c of moved) {
    const next = await owner(bin, t.conf, c.user, victim.name);
    if (c.nodes[1] !== next) fail(`socket.io ${c.user} reconnected to ${c.nodes[1]}, next node is ${next}`);
    const reply = await withTimeout(c.s.emitWithAck('echo', 'after'), 5000, `echo after failover ${c.user}`);
    if (reply.node !== next) fail(`socket.io ${c.user} answered by ${reply.node} after failover`);
  }
  const others = clients.filter((c) => !moved.includes(c));
  for (const c of others) {
    if (c.disconnects.length || c.nodes.length !== 1) fail(`socket.io ${c.user} on ${c.nodes[0]} was disturbed: ${c.disconnects}`);
  }
  for (const c of clients) c.s.close();
  console.log(`failover: ${moved.length} socket.io clients of crashed ${victim.name} reconnected to their next node, ${others.length} others undisturbed`);
} catch (e) {
  fail(e.stack || e);
} finally {
  t.child.kill('SIGTERM');
  await new Promise((r) => t.child.on('exit', r));
  for (const n of nodes) { n.io.close(); n.server.close(); }
  fs.rmSync(t.dir, { recursive: true, force: true });
  if (process.exitCode) console.error(t.log());
}
process.exit(process.exitCode || 0);
